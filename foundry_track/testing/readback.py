"""The read-back: what the tracker holds for a run, as the backend author's own
function reads it, checked against what the kit sent.

A hook that returns without raising has not necessarily stored anything. Given
``readback=``, :func:`~foundry_track.testing.check_backend` asks the tracker
what it holds after each part and compares: every metric value there (and,
where the kit's data reached the backend exactly once, there once), every
param with a value the kit sent, every media key, artifact name and alert title
of the hooks the backend implements.
"""

from __future__ import annotations

import math
import reprlib
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Union

from foundry_track.events import ParamValue

__all__ = ["MAY_DROP", "MAY_SKIP", "MUST", "Finding", "ReadBack", "Sent", "Stored", "compare", "stored_from"]


@dataclass(frozen=True)
class Stored:
    """What the tracker holds for one run, as a read-back function returns it.

    Each field left ``None`` is a kind of data this tracker cannot be asked
    about: the kit says so in the report instead of checking it. A plain
    mapping with the same keys works as well.

    - ``metrics``: ``(step, key, value)`` triples, one per value the tracker
      holds (a value held twice is there twice), or rows: a ``MetricRow``, or a
      mapping with ``"step"`` and ``"values"``. Values are compared as floats
      to float32 precision; a string such as ``"NaN"`` or ``"Infinity"`` is
      read with ``float()``.
    - ``params``: key -> value (flat keys, as ``tracker_log_params`` received
      them). Values are compared as sent, as ``str`` or as numbers.
    - ``media``: the keys under which images, histograms, tables and texts are
      stored.
    - ``artifacts``: the names of the artifacts stored.
    - ``alerts``: the titles of the alerts stored.
    """

    metrics: Iterable[Any] | None = None
    params: Mapping[str, Any] | None = None
    media: Iterable[str] | None = None
    artifacts: Iterable[str] | None = None
    alerts: Iterable[str] | None = None


#: ``readback(identity)``: what the tracker holds for the run ``tracker_start``
#: returned ``identity`` for (an empty mapping if it returned None).
ReadBack = Callable[[Mapping[str, str]], Union[Stored, Mapping[str, Any]]]

_FIELDS: Final = ("metrics", "params", "media", "artifacts", "alerts")
# The hooks whose data each field holds.
_HOOKS: Final = {
    "metrics": frozenset({"tracker_log_metrics"}), "params": frozenset({"tracker_log_params"}),
    "media": frozenset({"tracker_log_image", "tracker_log_histogram", "tracker_log_table", "tracker_log_text"}),
    "artifacts": frozenset({"tracker_log_artifact"}), "alerts": frozenset({"tracker_alert"}),
}

#: The tracker must hold it.
MUST: Final = "must"
#: Data a backend may skip with one warning (``NO_RAISE`` cases: unicode keys,
#: NaN, empty tables...): a missing one is advice, not a problem.
MAY_SKIP: Final = "may skip"
#: Written after the checkpoint of the instance's last ``tracker_flush``, then
#: the run was restarted with that checkpoint: the backend may drop it (a
#: real sync would offer it again).
MAY_DROP: Final = "may drop"
_RANK: Final = {MUST: 0, MAY_SKIP: 1, MAY_DROP: 2}

Canon = Union[float, str]
Triple = tuple[int, str, Canon]


def _float32(value: float) -> float:
    if not math.isfinite(value):
        return value
    try:
        return float(struct.unpack("<f", struct.pack("<f", value))[0])
    except OverflowError:  # beyond float32: what a float32 tracker stores
        return math.copysign(math.inf, value)


def canon(value: Any) -> Canon:
    """A metric value as the kit compares it: a float to float32 precision, NaN as ``"nan"``."""
    number = float(value)
    return "nan" if math.isnan(number) else _float32(number) + 0.0  # + 0.0: -0.0 and 0.0 are one value


@dataclass
class _Expected:
    case: str  # the first case that sent it
    level: str
    shown: str  # how the report shows it
    count: int = 0

    def add(self, level: str) -> None:
        self.count += 1
        if _RANK[level] < _RANK[self.level]:
            self.level = level


@dataclass
class _ExpectedParam:
    case: str
    level: str
    values: list[ParamValue] = field(default_factory=list)


@dataclass
class Sent:
    """What the kit sent to one run of the backend, to compare with what the tracker holds."""

    metrics: dict[Triple, _Expected] = field(default_factory=dict)
    params: dict[str, _ExpectedParam] = field(default_factory=dict)
    media: dict[str, tuple[str, _Expected]] = field(default_factory=dict)  # key -> (hook, expected)
    artifacts: dict[str, _Expected] = field(default_factory=dict)
    alerts: dict[str, _Expected] = field(default_factory=dict)

    def metric(self, step: int, key: str, value: float | int, case: str, level: str) -> None:
        triple = (int(step), str(key), canon(value))
        expected = self.metrics.get(triple)
        if expected is None:
            expected = self.metrics[triple] = _Expected(case, level, f"step {step} {key!r} = {value!r}")
        expected.add(level)

    def param(self, key: str, value: ParamValue, case: str, level: str) -> None:
        expected = self.params.setdefault(key, _ExpectedParam(case, level))
        expected.values.append(value)
        if _RANK[level] < _RANK[expected.level]:
            expected.level = level

    def _named(self, table: dict[str, _Expected], name: str, case: str, level: str) -> None:
        table.setdefault(name, _Expected(case, level, repr(name))).add(level)

    def media_key(self, hook: str, key: str, case: str, level: str) -> None:
        if key not in self.media:
            self.media[key] = (hook, _Expected(case, level, repr(key)))
        self.media[key][1].add(level)

    def artifact(self, name: str, case: str, level: str) -> None:
        self._named(self.artifacts, name, case, level)

    def alert(self, title: str, case: str, level: str) -> None:
        self._named(self.alerts, title, case, level)

    def add(self, hook: str, payload: Any, case: str, level: str) -> None:
        """What one successful hook call of a case sent (``payload`` as the hook received it)."""
        if hook == "tracker_log_metrics":
            for row in payload:
                for key, value in row.values.items():
                    self.metric(row.step, key, value, case, level)
        elif hook == "tracker_log_params":
            for key, value in payload.items():
                self.param(key, value, case, level)
        elif hook in ("tracker_log_image", "tracker_log_histogram", "tracker_log_table", "tracker_log_text"):
            self.media_key(hook, payload.key, case, level)
        elif hook == "tracker_log_artifact":
            self.artifact(payload.name, case, level)
        elif hook == "tracker_alert":
            self.alert(payload.title, case, level)


@dataclass(frozen=True)
class Finding:
    """One thing the read-back found: a problem (``advice=False``) or advice."""

    case: str
    hook: str | None
    message: str
    advice: bool = False


def stored_from(result: object) -> Stored:
    """A read-back function's result as :class:`Stored`; ``TypeError`` if it is neither that nor a mapping of its fields."""
    if isinstance(result, Stored):
        return result
    if isinstance(result, Mapping):
        unknown = sorted(str(k) for k in result if k not in _FIELDS)
        if unknown:
            raise TypeError(f"unknown key(s) {', '.join(unknown)}; a read-back returns {', '.join(_FIELDS)}")
        return Stored(**{str(k): v for k, v in result.items()})
    raise TypeError(f"returned {reprlib.repr(result)}: a read-back returns foundry_track.testing.Stored or a "
                    f"mapping with the keys {', '.join(_FIELDS)}")


def _triples(metrics: Iterable[Any]) -> Counter[Triple]:
    held: Counter[Triple] = Counter()
    for item in metrics:
        if isinstance(item, Mapping) and "step" in item and "values" in item:
            step, values = item["step"], item["values"]
        elif hasattr(item, "step") and hasattr(item, "values") and isinstance(item.values, Mapping):
            step, values = item.step, item.values
        elif isinstance(item, (tuple, list)) and len(item) == 3:
            step, values = item[0], {item[1]: item[2]}
        else:
            raise TypeError(f"a metric item must be a (step, key, value) triple or a row with step and values, "
                            f"got {reprlib.repr(item)}")
        for key, value in values.items():
            try:
                held[(int(step), str(key), canon(value))] += 1
            except (TypeError, ValueError):
                raise TypeError(f"the value of {key!r} at step {step} is not a number: {reprlib.repr(value)}") from None
    return held


def _same_param(held: Any, sent: ParamValue) -> bool:
    if held == sent or str(held) == str(sent):
        return True
    if isinstance(sent, (int, float)) and not isinstance(sent, bool):
        try:
            return math.isclose(float(held), float(sent), rel_tol=1e-6)
        except (TypeError, ValueError):
            return False
    # A tracker may shorten a long value to its limit (MLflow: 6,000 characters).
    return isinstance(sent, str) and isinstance(held, str) and len(held) >= 100 and sent.startswith(held)


def _examples(items: list[str], limit: int = 3) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def compare(sent: Sent, stored: Stored, *, exact: bool, implemented: frozenset[str]) -> tuple[list[Finding], list[str]]:
    """Compare what the kit sent with what the tracker holds: (findings, what was
    not read back). ``exact``: each value must be held no more often than the
    kit sent it (the journal delivered each event once); otherwise at least
    once (a replay may leave copies)."""
    findings: list[Finding] = []
    not_read = [name for name in _FIELDS if getattr(stored, name) is None and _HOOKS[name] & implemented]
    if stored.metrics is not None and "tracker_log_metrics" in implemented:
        findings += _compare_metrics(sent, _triples(stored.metrics), exact)
    if stored.params is not None and "tracker_log_params" in implemented:
        findings += _compare_params(sent, stored.params)
    if stored.media is not None:
        held = set(stored.media)
        for key, (hook, expected) in sent.media.items():
            if hook in implemented and key not in held:
                findings += _missing(expected, hook, f"the tracker holds nothing under the key {key!r} ({hook})")
    for attr, hook, what in (("artifacts", "tracker_log_artifact", "artifact"), ("alerts", "tracker_alert", "alert")):
        values = getattr(stored, attr)
        if values is None or hook not in implemented:
            continue
        held = set(values)
        for name, expected in getattr(sent, attr).items():
            if name not in held:
                findings += _missing(expected, hook, f"the tracker holds no {what} {name!r}")
    return findings, not_read


def _missing(expected: _Expected | _ExpectedParam, hook: str, message: str) -> list[Finding]:
    if expected.level == MAY_DROP:
        return []
    if expected.level == MAY_SKIP:
        return [Finding(expected.case, hook, f"{message}: allowed for data the tracker cannot store, if the "
                        "backend says so once (a warning)", advice=True)]
    return [Finding(expected.case, hook, message)]


def _compare_metrics(sent: Sent, held: Counter[Triple], exact: bool) -> list[Finding]:
    hook = "tracker_log_metrics"
    missing: dict[tuple[str, str], list[str]] = {}
    extra: dict[str, list[str]] = {}
    total: Counter[str] = Counter()
    for triple, expected in sent.metrics.items():
        total[expected.case] += 1
        count = held.get(triple, 0)
        if count == 0 and expected.level != MAY_DROP:
            missing.setdefault((expected.case, expected.level), []).append(expected.shown)
        elif exact and count > expected.count:
            times = "once" if expected.count == 1 else f"{expected.count} times"
            extra.setdefault(expected.case, []).append(f"{expected.shown} held {count} times, delivered {times}")
    findings = []
    for (case, level), shown in missing.items():
        message = (f"the tracker does not hold {len(shown):,} of the {total[case]:,} metric value(s) this case "
                   f"sent: {_examples(shown)}")
        if level == MAY_SKIP:
            findings.append(Finding(case, hook, f"{message}: allowed for data the tracker cannot store, if the "
                                    "backend says so once (a warning)", advice=True))
        else:
            findings.append(Finding(case, hook, message))
    for case, shown in extra.items():
        findings.append(Finding(case, hook, f"{len(shown):,} metric value(s) are in the tracker more often than "
                                f"they were delivered: {_examples(shown)} (each event must be stored once)"))
    return findings


def _compare_params(sent: Sent, held: Mapping[str, Any]) -> list[Finding]:
    findings = []
    for key, expected in sent.params.items():
        values = [v for v in expected.values if v is not None]
        if key not in held:
            if values:  # a None value may be left out: not every tracker stores one
                findings += _missing(expected, "tracker_log_params", f"the tracker holds no param {key!r}")
        elif not any(_same_param(held[key], v) for v in expected.values):
            sent_values = " or ".join(dict.fromkeys(reprlib.repr(v) for v in expected.values))
            findings.append(Finding(expected.case, "tracker_log_params",
                                    f"the param {key!r} holds {reprlib.repr(held[key])}; the kit sent {sent_values}"))
    return findings
