"""Reading run directories without disturbing them: ``run.json`` + ``journal.db``
become run summaries, metric series and each backend's delivered/pending counts.

This is what ``foundry-track runs | show | plot | export | clean`` see. A run may
be live in another process while they look, so everything here is read-only:
the journal is opened with SQLite's ``mode=ro`` (WAL lets readers and the one
writer work at once) and ``run.json`` is replaced atomically by its writer, so a
read sees the old file or the new one, never half of one.

Deliberately light: no pydantic, no plugin discovery, no backend SDK, so
``foundry-track runs`` answers at once on a login node.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from foundry_track.checks import mask_url
from foundry_track.errors import MissingDependency, RunDirError
from foundry_track.journal import JOURNAL_FILE, Journal
from foundry_track.rundir import (
    RUN_FILE,
    find_runs,
    is_run_dir,
    load_run_file,
    process_state,
)

__all__ = [
    "RUN_FILE",
    "BackendState",
    "MetricPoint",
    "MetricStats",
    "MissingDependency",
    "RunContents",
    "RunDirError",
    "RunSummary",
    "find_runs",
    "is_run_dir",
    "load_run",
    "load_runs",
    "local_copies",
    "mask_url",
    "metric_points",
    "metric_series",
    "resolve_run",
    "scan",
]



# --------------------------------------------------------------------------- #
# What a run directory says
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class BackendState:
    """One backend of one run, as its journal and ``run.json`` record it.

    Journal sequence numbers run 1..N without gaps and a backend's position is
    the last one it acknowledged, so ``delivered`` and ``pending`` are event
    counts. ``errors`` counts failed hook calls (every retry counts), not events.
    ``set_aside`` events (the backend refused them for good, its position moved
    past them; ``sync`` offers them again) count as pending, not delivered.
    """

    name: str
    delivered: int
    pending: int
    errors: int
    last_error: str | None
    updated: float | None
    batches: int
    retries: int
    busy_s: float
    undelivered_at_finish: int | None  # what finish() or sync reported into run.json
    identity: Mapping[str, str]  # the backend's run identity (W&B run id and URL, MLflow run id, TB dir)
    options: Mapping[str, Any]  # as run.json keeps them: secrets already redacted
    is_fallback: bool
    awaiting_upload: str | None = None  # an offline copy (folder) that still has to be uploaded
    set_aside: int = 0  # events the backend refused for good, behind its position: counted in pending

    @property
    def link(self) -> str | None:
        url = self.identity.get("url")
        return url if url and url.startswith(("http://", "https://")) else None

    @property
    def mean_batch_ms(self) -> float | None:
        """Mean time a hook call took (the backend's latency per batch)."""
        return self.busy_s / self.batches * 1e3 if self.batches else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "delivered": self.delivered, "pending": self.pending, "errors": self.errors,
            "last_error": self.last_error, "updated": self.updated, "batches": self.batches,
            "retries": self.retries, "busy_s": self.busy_s, "mean_batch_ms": self.mean_batch_ms,
            "undelivered_at_finish": self.undelivered_at_finish, "identity": dict(self.identity),
            "link": self.link, "options": dict(self.options), "fallback": self.is_fallback,
            "awaiting_upload": self.awaiting_upload, "set_aside": self.set_aside,
        }


@dataclass(frozen=True, slots=True)
class RunSummary:
    """Everything ``foundry-track runs`` shows about one run; cheap to build
    (a handful of indexed SQLite queries, no scan of the events)."""

    dir: Path
    id: str
    name: str
    project: str | None
    entity: str | None
    group: str | None
    tags: tuple[str, ...]
    notes: str | None
    status: str  # as run.json records it: running, success, failed, killed
    state: str  # what is true now: a `running` run whose process is gone is `crashed`
    host: str | None
    pid: int | None
    started: float | None
    finished: float | None
    last_event: float | None  # wall time of the newest committed event
    last_step: int | None  # highest metrics step
    events: int  # committed events (every kind)
    backends: Mapping[str, BackendState]
    raw: Mapping[str, Any] = field(repr=False)  # run.json as read

    @property
    def live(self) -> bool:
        """A process may still be writing this run: never delete or sync it."""
        return self.state in ("running", "running?")

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        if self.finished is not None:
            end: float | None = self.finished
        elif self.state == "running":
            end = time.time()
        else:  # crashed, or on another host: the last sign of life
            end = self.last_event
        return None if end is None else max(0.0, end - self.started)

    @property
    def pending(self) -> dict[str, int]:
        return {name: b.pending for name, b in self.backends.items() if b.pending}

    @property
    def activity(self) -> float | None:
        """When the run last did anything (for ``clean --older-than``)."""
        times = [t for t in (self.finished, self.last_event, self.started) if t is not None]
        return max(times) if times else None

    def to_json(self) -> dict[str, Any]:
        return {
            "dir": str(self.dir), "id": self.id, "name": self.name, "project": self.project,
            "entity": self.entity, "group": self.group, "tags": list(self.tags), "notes": self.notes,
            "status": self.status, "state": self.state, "host": self.host, "pid": self.pid,
            "started": self.started, "finished": self.finished, "last_event": self.last_event,
            "duration_s": self.duration, "last_step": self.last_step, "events": self.events,
            "backends": {n: b.to_json() for n, b in self.backends.items()},
        }


def open_journal(run_dir: Path) -> Journal:
    """The run's journal, read-only. Raises RunDirError if it cannot be read."""
    try:
        return Journal(Path(run_dir) / JOURNAL_FILE, readonly=True)
    except sqlite3.Error as exc:
        raise RunDirError(f"cannot read {Path(run_dir) / JOURNAL_FILE}: {exc}") from None


def load_run(run_dir: str | os.PathLike[str]) -> RunSummary:
    """Summarise one run directory (read-only; the run may be live)."""
    path = Path(run_dir).resolve()
    if not path.is_dir():
        raise RunDirError(f"{run_dir} is not a directory")
    data = load_run_file(path)
    if not (path / JOURNAL_FILE).is_file():
        raise RunDirError(f"{path} has {RUN_FILE} but no {JOURNAL_FILE}; it is not a foundry-track run directory")
    journal = open_journal(path)
    try:
        last = journal.refresh()
        positions = journal.positions()
        set_aside = journal.set_aside_counts()
        last_step = journal.max_step()
        tail = journal.read_after(last - 1, 1) if last else []
    except sqlite3.Error as exc:
        raise RunDirError(f"cannot read {path / JOURNAL_FILE}: {exc}") from None
    finally:
        journal.close()
    configured = data.get("backends") or {}
    identities = data.get("backend_ids") or {}
    undelivered = data.get("undelivered") if data.get("status") != "running" else None
    backends: dict[str, BackendState] = {}
    # Backends named in run.json but never registered in the journal have
    # acknowledged nothing: everything is pending for them.
    for name in dict.fromkeys([*configured, *positions]):
        pos = positions.get(name, {})
        seq = int(pos.get("seq", 0))
        aside = min(set_aside.get(name, 0), seq)
        backends[name] = BackendState(
            name=name, delivered=min(seq, last) - aside, pending=max(0, last - seq) + aside,
            errors=int(pos.get("errors", 0)),
            last_error=pos.get("last_error"), updated=pos.get("updated"), batches=int(pos.get("batches", 0)),
            retries=int(pos.get("retries", 0)), busy_s=float(pos.get("busy_s", 0.0)),
            undelivered_at_finish=(int(undelivered.get(name, 0)) if isinstance(undelivered, dict) else None),
            identity=dict(identities.get(name) or {}), options=dict(configured.get(name) or {}),
            is_fallback=name == data.get("fallback"), awaiting_upload=_awaiting_upload(identities.get(name) or {}),
            set_aside=aside,
        )
    return RunSummary(
        dir=path, id=str(data["id"]), name=str(data.get("name") or data["id"]), project=data.get("project"),
        entity=data.get("entity"), group=data.get("group"), tags=tuple(data.get("tags") or ()),
        notes=data.get("notes"), status=str(data.get("status") or "unknown"), state=process_state(data),
        host=data.get("host"), pid=data.get("pid"), started=data.get("started"), finished=data.get("finished"),
        last_event=tail[0].time if tail else None, last_step=last_step, events=last, backends=backends, raw=data,
    )


def _awaiting_upload(identity: Mapping[str, Any]) -> str | None:
    """The folder of an offline copy not uploaded yet, else None.

    A backend that logs offline says so in its identity (``mode: offline`` and
    its ``dir``); its files are a queue for a later upload, not the final copy.
    An upload leaves a ``*.synced`` marker next to them (``wandb sync`` writes
    ``<run>.wandb.synced``), which ends the wait.
    """
    if identity.get("mode") != "offline" or not identity.get("dir"):
        return None
    folder = Path(str(identity["dir"]))
    if not folder.is_dir() or _uploaded(identity):
        return None
    return str(folder)


def _uploaded(identity: Mapping[str, Any]) -> bool:
    """An offline copy whose upload finished: the data is on the server now."""
    if identity.get("mode") != "offline" or not identity.get("dir"):
        return False
    return any(Path(str(identity["dir"])).glob("*.synced"))


def load_runs(root: str | os.PathLike[str]) -> tuple[list[RunSummary], list[tuple[Path, str]]]:
    """Every run under ``root`` sorted by start time, and the directories that
    could not be read (with why), so one damaged run does not hide the others."""
    runs: list[RunSummary] = []
    broken: list[tuple[Path, str]] = []
    for path in find_runs(Path(root)):
        try:
            runs.append(load_run(path))
        except RunDirError as exc:
            broken.append((path, str(exc)))
    runs.sort(key=lambda r: (r.started or 0.0, r.name))
    return runs, broken


def resolve_run(ref: str, root: str | os.PathLike[str]) -> Path:
    """A run directory from a path, or a run id, name or directory name under ``root``.

    A unique prefix of an id or directory name is enough; an ambiguous one is an
    error listing the candidates.
    """
    path = Path(ref)
    if is_run_dir(path):
        return path.resolve()
    if path.is_dir():
        raise RunDirError(f"{ref} is a directory but not a foundry-track run (it needs {RUN_FILE} and {JOURNAL_FILE})")
    root_path = Path(root)
    if not root_path.is_dir():
        raise RunDirError(f"no run {ref!r}: it is not a run directory, and the runs folder {root} does not exist "
                          f"(pass a run directory, or --dir / FOUNDRY_TRACK_DIR)")
    exact: list[Path] = []
    prefix: list[Path] = []
    for candidate in find_runs(root_path):
        try:
            data = json.loads((candidate / RUN_FILE).read_text())
        except (OSError, ValueError):
            continue
        names = {candidate.name, str(data.get("id", "")), str(data.get("name", ""))}
        if ref in names:
            exact.append(candidate)
        elif candidate.name.startswith(ref) or str(data.get("id", "")).startswith(ref):
            prefix.append(candidate)
    matches = exact or prefix
    if len(matches) == 1:
        return matches[0].resolve()
    if not matches:
        raise RunDirError(f"no run {ref!r} under {root}: give a run directory, id or name "
                          f"(`foundry-track runs {root}` lists them)")
    listed = ", ".join(str(m) for m in matches[:10])
    raise RunDirError(f"{ref!r} matches {len(matches)} runs under {root}: {listed}; give the directory or the full id")


def local_copies(summary: RunSummary) -> dict[str, list[str]]:
    """Backends whose only copy of the data lives inside the run directory.

    A backend that reports a web ``url`` keeps its data on a server, and so
    does an offline copy that was uploaded (``*.synced`` marker). Otherwise
    every path in its identity (a TensorBoard ``log_dir``, a W&B offline
    ``dir``, a ``sqlite:///`` or ``file:`` MLflow store) that lies inside the run
    directory would be deleted with it. No backend is named: this reads only
    the identities the backends returned.
    """
    found: dict[str, list[str]] = {}
    for name, backend in summary.backends.items():
        if backend.link is not None or _uploaded(backend.identity):
            continue
        for value in backend.identity.values():
            target = _as_local_path(str(value))
            if target is not None and _inside(target, summary.dir) and target.exists():
                found.setdefault(name, []).append(str(target))
    return found


def _as_local_path(value: str) -> Path | None:
    for scheme in ("sqlite:///", "file://"):
        if value.startswith(scheme):
            value = value[len(scheme):]
            break
    if "://" in value or not value.startswith(("/", "~")):
        return None  # a server URL, a relative path or not a path at all
    return Path(value).expanduser()


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- #
# Metrics
# --------------------------------------------------------------------------- #


class MetricPoint(NamedTuple):
    """One value of one ``run.log`` call: ``seq`` is the journal event, shared by
    the values logged together."""

    seq: int
    step: int
    time: float
    key: str
    value: float | int


def metric_points(run_dir: str | os.PathLike[str], keys: Iterable[str] | None = None) -> Iterator[MetricPoint]:
    """Every logged scalar in journal order (the order ``run.log`` was called)."""
    wanted = set(keys) if keys is not None else None
    journal = open_journal(Path(run_dir))
    try:
        for record in journal.iter_records("metrics"):
            for key, value in record.data.items():
                if wanted is None or key in wanted:
                    yield MetricPoint(record.seq, record.step, record.time, key, value)
    finally:
        journal.close()


@dataclass(slots=True)
class Series:
    """One metric of one run, in logged order."""

    steps: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def metric_series(run_dir: str | os.PathLike[str], keys: Sequence[str]) -> dict[str, Series]:
    """The given metrics of one run; a key never logged is absent."""
    series: dict[str, Series] = {}
    for point in metric_points(run_dir, keys):
        s = series.setdefault(point.key, Series())
        s.steps.append(point.step)
        s.times.append(point.time)
        s.values.append(point.value)
    return series


@dataclass(slots=True)
class MetricStats:
    """Latest value and range of one metric. NaN and infinities are counted,
    not used for min/max (a single NaN would otherwise hide the range)."""

    count: int = 0
    first_step: int | None = None
    last_step: int | None = None
    last: float | int | None = None
    min: float | int | None = None
    max: float | int | None = None
    non_finite: int = 0

    def add(self, step: int, value: float) -> None:
        self.count += 1
        if self.first_step is None:
            self.first_step = step
        self.last_step, self.last = step, value
        if isinstance(value, float) and not math.isfinite(value):
            self.non_finite += 1
            return
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "first_step": self.first_step, "last_step": self.last_step,
                "last": _json_number(self.last), "min": self.min, "max": self.max, "non_finite": self.non_finite}


def _json_number(value: Any) -> Any:
    # Strict JSON has no NaN/Infinity; --json output must parse everywhere.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


@dataclass(slots=True)
class RunContents:
    """One pass over a run's events: what ``foundry-track show`` reports."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, MetricStats] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)


def scan(run_dir: str | os.PathLike[str]) -> RunContents:
    """Read every event once: params (later calls override earlier keys),
    per-metric statistics and a count of events by kind."""
    contents = RunContents()
    journal = open_journal(Path(run_dir))
    try:
        for record in journal.iter_records():
            contents.kinds[record.kind] = contents.kinds.get(record.kind, 0) + 1
            if record.kind == "metrics":
                for key, value in record.data.items():
                    stats = contents.metrics.get(key)
                    if stats is None:
                        stats = contents.metrics[key] = MetricStats()
                    stats.add(record.step, value)
            elif record.kind == "params" and isinstance(record.data, dict):
                contents.params.update(record.data)
    except sqlite3.Error as exc:
        raise RunDirError(f"cannot read {Path(run_dir) / JOURNAL_FILE}: {exc}") from None
    finally:
        journal.close()
    return contents
