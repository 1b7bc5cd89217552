"""What the conformance kit found: one :class:`Problem` per thing the backend got
wrong, one :class:`CaseResult` per call, one :class:`Part` per part of the check
(ran, or skipped and why), gathered in a :class:`ConformanceReport`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from foundry_track.errors import FoundryTrackError

__all__ = ["PARTS", "CaseResult", "Checker", "ConformanceError", "ConformanceReport", "Part", "Problem"]

#: The parts of a check, in the order they run.
PARTS: Final = ("contract", "hook cases", "end to end", "process delivery", "read-back")


class ConformanceError(FoundryTrackError, AssertionError):
    """A backend does not conform; the message lists every problem.

    An ``AssertionError``, so a test that calls ``assert_ok()`` fails as any
    failed assertion does.
    """


@dataclass(frozen=True)
class Problem:
    """One thing the backend got wrong: in which case, in which hook, and why."""

    case: str
    hook: str | None
    message: str
    details: str = ""  # the traceback, when there is one

    def __str__(self) -> str:
        return f"[{self.case}] {self.hook or 'backend'}: {self.message}"


@dataclass(frozen=True)
class CaseResult:
    """One hook call the kit made, and how long it took."""

    case: str
    hook: str
    seconds: float
    ok: bool


@dataclass(frozen=True)
class Part:
    """One part of the check: whether it ran, and what it did or why it was skipped."""

    name: str
    ran: bool
    note: str

    def __str__(self) -> str:
        return f"{'ran' if self.ran else 'skipped':7}  {self.name}: {self.note}"


@dataclass
class ConformanceReport:
    """What :func:`check_backend` found. ``problems`` empty means the backend conforms."""

    backend: str
    dir: Path
    implemented: frozenset[str] = frozenset()
    results: list[CaseResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)  # worth fixing, not a contract violation
    skipped: list[str] = field(default_factory=list)  # hooks and cases that did not apply, and why
    parts: list[Part] = field(default_factory=list)  # each part of the check: ran, or skipped and why

    @property
    def ok(self) -> bool:
        return not self.problems

    def part(self, name: str) -> Part | None:
        """The part called ``name`` (one of :data:`PARTS`), or None if the check never got to it."""
        return next((p for p in self.parts if p.name == name), None)

    @property
    def skipped_parts(self) -> list[Part]:
        return [p for p in self.parts if not p.ran]

    @property
    def cases(self) -> list[str]:
        """Every case that called at least one hook, in order."""
        return list(dict.fromkeys(r.case for r in self.results))

    def problems_with(self, *, hook: str | None = None, case: str | None = None) -> list[Problem]:
        """Problems of one hook and/or whose case name contains ``case``."""
        return [p for p in self.problems
                if (hook is None or p.hook == hook) and (case is None or case in p.case)]

    def format(self) -> str:
        ran = [p.name for p in self.parts if p.ran]
        lines = [(f"backend {self.backend!r}: {len(self.problems)} problem(s) in {len(self.results)} hook calls "
                  f"({len(self.cases)} cases; parts run: {', '.join(ran) or 'none'}; files in {self.dir})")]
        lines += [f"  {part}" for part in self.parts]
        for problem in self.problems:
            lines.append(f"  - {problem}")
            if problem.details:
                lines.extend("      " + line for line in problem.details.rstrip().splitlines()[-6:])
        lines += [f"  advice: {a}" for a in self.advice]
        lines += [f"  skipped: {s}" for s in self.skipped]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def assert_ok(self) -> ConformanceReport:
        """Raise ``AssertionError`` (a :class:`ConformanceError`) listing every
        problem, else return the report."""
        if self.problems:
            raise ConformanceError(self.format())
        return self


@dataclass
class Checker:
    """What every step of :func:`check_backend` shares: the backend's name, the
    folder for its files, the deadline of one hook call, and the report the
    steps write to."""

    name: str
    root: Path
    hook_timeout: float
    report: ConformanceReport

    def problem(self, case: str, hook: str | None, message: str, details: str = "") -> None:
        self.report.problems.append(Problem(case, hook, message, details))

    def advise(self, text: str) -> None:
        if text not in self.report.advice:
            self.report.advice.append(text)

    def skip(self, text: str) -> None:
        if text not in self.report.skipped:
            self.report.skipped.append(text)

    def part(self, name: str, ran: bool, note: str) -> None:
        """Record that part ``name`` ran (what it did) or was skipped (why); the last word counts."""
        assert name in PARTS, name
        parts = [p for p in self.report.parts if p.name != name] + [Part(name, ran, note)]
        self.report.parts[:] = sorted(parts, key=lambda p: PARTS.index(p.name))

    def result(self, case: str, hook: str, seconds: float, ok: bool) -> None:
        self.report.results.append(CaseResult(case, hook, seconds, ok))

    def timed(self, case: str, what: str, started: float) -> None:
        """Note a call of ``what`` begun at ``started``, ok if ``case`` has no problem yet."""
        self.result(case, what, time.perf_counter() - started, not self.report.problems_with(case=case))
