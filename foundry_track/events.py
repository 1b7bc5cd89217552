"""The events that travel from ``Run`` through the journal to every backend.

They are plain frozen dataclasses: cheap to build on the training thread, easy to
serialise into the journal, and safe to hand to several backend threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Mapping, Union

__all__ = [
    "Status",
    "AlertLevel",
    "ParamValue",
    "RunInfo",
    "MetricRow",
    "ImageEvent",
    "HistogramEvent",
    "TableEvent",
    "TextEvent",
    "ArtifactEvent",
    "AlertEvent",
    "CheckLevel",
    "DoctorCheck",
    "STATUSES",
]

Status = Literal["success", "failed", "killed"]
STATUSES: Final = ("success", "failed", "killed")
AlertLevel = Literal["info", "warn", "error"]
CheckLevel = Literal["ok", "info", "warn", "error"]
ParamValue = Union[str, int, float, bool, None]


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Who the run is: what every backend receives at start.

    ``config`` is the experiment's configuration given to ``init(params=...)``
    (nested, secrets already replaced by ``***``; empty if none was given);
    ``dir`` is the run directory, which a backend may write below;
    ``sweep`` names the sweep a trial belongs to (its runs share ``group``).
    """

    id: str
    name: str
    project: str
    entity: str | None
    tags: tuple[str, ...]
    notes: str | None
    group: str | None
    config: Mapping[str, Any]
    dir: Path
    resumed: bool
    #: The sweep this run is a trial of (``tracking.sweep``), or None.
    sweep: str | None = None


@dataclass(frozen=True, slots=True)
class MetricRow:
    """All scalars of one ``run.log`` call: one step, one wall time."""

    step: int
    time: float
    values: Mapping[str, float | int]


@dataclass(frozen=True, slots=True)
class ImageEvent:
    """An image already encoded as PNG, stored in the run directory."""

    key: str
    step: int
    time: float
    path: Path
    caption: str | None = None
    width: int = 0
    height: int = 0


@dataclass(frozen=True, slots=True)
class HistogramEvent:
    """A histogram: ``len(counts) == len(edges) - 1`` plus the raw statistics."""

    key: str
    step: int
    time: float
    edges: tuple[float, ...]
    counts: tuple[float, ...]
    min: float
    max: float
    num: int
    sum: float
    sum_squares: float


@dataclass(frozen=True, slots=True)
class TableEvent:
    key: str
    step: int
    time: float
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True, slots=True)
class TextEvent:
    key: str
    step: int
    time: float
    text: str


@dataclass(frozen=True, slots=True)
class ArtifactEvent:
    """A file or directory to upload. Backends read it from ``path``; the journal
    keeps only the path and its content hash, never the bytes."""

    path: Path
    type: str
    name: str
    step: int
    time: float
    digest: str
    description: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    title: str
    text: str
    level: AlertLevel
    step: int
    time: float


@dataclass(frozen=True, slots=True)
class DoctorCheck:
    """One outcome of a ``foundry-track doctor`` check: what
    :func:`~foundry_track.hookspecs.tracker_doctor` returns a list of.

    ``scope`` is the backend's name, or ``"general"`` for a setting that
    affects every connection (a proxy, a CA bundle); ``check`` a short id
    (``sdk``, ``credentials``, ``reachable``, ``folder``, ``tls``...);
    ``level`` ``ok``, ``info``, ``warn`` or ``error`` (a warning or an error is
    a problem: doctor exits 1); ``message`` what was found, never a secret;
    ``fix`` what to do about it (shown for problems); ``answers`` the
    troubleshooting entries it settles (:data:`foundry_track.checks.GUIDE_ISSUES`).
    """

    scope: str
    check: str
    level: CheckLevel
    message: str
    fix: str | None = None
    answers: tuple[str, ...] = ()
