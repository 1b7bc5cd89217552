"""Steps 2 and 3 of the kit: driving a backend's hooks on a thread of their own
with a deadline per call, and the end-to-end runs through ``foundry_track.init``
and ``foundry_track.sync``, with thread and process delivery; after each, the
read-back (when the author gave one) compares what the tracker holds with what
was sent."""

from __future__ import annotations

import logging
import queue
import reprlib
import secrets
import string
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from foundry_track.events import RunInfo
from foundry_track.testing.cases import (
    Case,
    log_every_kind,
    new_run_cases,
    note_metrics,
    restart_cases,
    sync_cases,
    write_inputs,
)
from foundry_track.testing.contract import Loaded
from foundry_track.testing.readback import MAY_DROP, MAY_SKIP, MUST, ReadBack, Sent, compare, stored_from
from foundry_track.testing.report import Checker

if TYPE_CHECKING:
    from foundry_track.plugins import BackendHooks

__all__ = ["HookThread", "ReadBackCheck", "drive_hooks", "end_to_end"]


# --------------------------------------------------------------------------- #
# Calling hooks on a thread of their own, with a deadline
# --------------------------------------------------------------------------- #


class _Hung(Exception):
    """A hook call did not return in time (control flow, never leaves this module)."""


@dataclass
class _Call:
    call: Callable[[BackendHooks], object]
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None
    traceback: str = ""


class HookThread:
    """Calls one backend instance's hooks on one thread, as its dispatcher worker would."""

    def __init__(self, hooks: BackendHooks, name: str) -> None:
        self._hooks = hooks
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self.hung = False
        self._thread = threading.Thread(target=self._loop, name=f"foundry-track-conformance-{name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            try:
                item.result = item.call(self._hooks)
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                item.error, item.traceback = exc, traceback.format_exc()
            item.done.set()

    def call(self, call: Callable[[BackendHooks], object], timeout: float) -> _Call:
        """Make ``call`` on the backend's thread; raise :class:`_Hung` after ``timeout`` seconds."""
        if self.hung:
            raise _Hung
        item = _Call(call)
        self._calls.put(item)
        if not item.done.wait(timeout):
            self.hung = True  # the thread is stuck in the backend; abandon it like the dispatcher does
            raise _Hung
        return item

    def close(self) -> None:
        if not self.hung:
            self._calls.put(None)
            self._thread.join(5)


# --------------------------------------------------------------------------- #
# The read-back: what the tracker holds, against what was sent
# --------------------------------------------------------------------------- #


@dataclass
class ReadBackCheck:
    """The author's read-back function, and where it was checked."""

    function: ReadBack
    checked: list[str] = field(default_factory=list)
    not_read: dict[str, None] = field(default_factory=dict)  # what the tracker could not be asked, in order

    def check(self, checker: Checker, case: str, identity: Mapping[str, str], sent: Sent, *, exact: bool,
              where: str) -> None:
        """Ask the tracker what it holds for the run ``identity`` names and report
        what differs from ``sent`` (``exact``: each value held no more often than sent)."""
        label = f"read-back after {where}"
        try:
            result = self.function(dict(identity))
        except Exception as exc:  # noqa: BLE001 - the author's function, reported
            checker.problem(label, None, f"the read-back raised {type(exc).__name__}: {exc}", traceback.format_exc())
            return
        try:
            findings, not_read = compare(sent, stored_from(result), exact=exact,
                                         implemented=checker.report.implemented)
        except TypeError as exc:
            checker.problem(label, None, f"the read-back's result cannot be read: {exc}")
            return
        self.checked.append(where)
        self.not_read.update(dict.fromkeys(not_read))
        for finding in findings:
            if finding.advice:
                checker.advise(f"{label} [{finding.case}] {finding.hook}: {finding.message}")
            else:
                checker.problem(f"{label}: {finding.case}", finding.hook, finding.message)

    def note(self) -> str:
        if not self.checked:
            return "the read-back was never asked: no part got far enough"
        text = f"checked after {', '.join(self.checked)}"
        return text + (f"; not read back: {', '.join(self.not_read)}" if self.not_read else "")


def _run_identity(name: str, run_dir: Path) -> dict[str, str]:
    """What the backend's ``tracker_start`` returned for a run, as ``run.json`` keeps it."""
    from foundry_track.rundir import read_run_file

    identity = read_run_file(run_dir).get("backend_ids", {}).get(name) or {}
    return {str(k): str(v) for k, v in identity.items()}


# --------------------------------------------------------------------------- #
# Step 2: every hook, on three instances
# --------------------------------------------------------------------------- #


def _run_id() -> str:
    return "ck" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))


@dataclass
class _Saved:
    """What the journal and ``run.json`` keep between two instances of a run:
    the identity ``tracker_start`` returned and the checkpoint of the last
    ``tracker_flush``. The next ``tracker_start`` gets both, merged."""

    identity: dict[str, str] = field(default_factory=dict)
    checkpoint: dict[str, str] = field(default_factory=dict)

    def resume_state(self) -> dict[str, str]:
        return {**self.identity, **self.checkpoint}


@dataclass
class _Delivered:
    """The cases one instance returned from without raising, and how many of
    them came before the checkpoint of its last flush (None: no checkpoint)."""

    cases: list[Case] = field(default_factory=list)
    checkpointed: int | None = None


def drive_hooks(checker: Checker, backend: Loaded, reader: ReadBackCheck | None = None) -> None:
    """A new run on a fresh instance; a restart with the identity it returned
    and the checkpoint of its last flush on a second; a sync with nothing to
    deliver on a third. Then the read-back, if given, of the run the first
    instance started."""
    from foundry_track.plugins import BackendHooks, build_plugin_manager

    run_dir = checker.root / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    files = write_inputs(checker.root / "inputs")
    # What init(params=...) hands to tracker_start: nested, secrets already redacted.
    config = {"lr": 0.001, "model": {"layers": 2, "name": "tiny"}, "data": {"files": ["a.txt", "ñ.txt"]},
              "wandb_api_key": "***", "seed": None}
    info = RunInfo(id=_run_id(), name="conformance", project="foundry-track-conformance", entity=None,
                   tags=("conformance", "ünïcode-tag"), notes="foundry_track.testing.check_backend",
                   group="conformance-kit", config=config, dir=run_dir, resumed=False)

    saved = _Saved()
    instances: list[_Delivered] = []
    stopped: list[str] = []

    def instance(cases: list[Case]) -> bool:
        hooks = BackendHooks(build_plugin_manager({checker.name: backend.factory()}, trace=False), checker.name)
        thread = HookThread(hooks, checker.name)
        delivered = _Delivered()
        instances.append(delivered)
        try:
            ok = _drive(checker, thread, hooks.implemented, cases, saved, delivered)
        finally:
            thread.close()
        if not ok:
            stopped.append("a hook did not return" if thread.hung else "tracker_start failed")
        return ok

    calls = len(checker.report.results)
    labels = ["a new run", "a restart after a failed run", "a sync of a closed run"]
    ran = instance(new_run_cases(info, backend.options, files))
    identity = dict(saved.identity)  # the run the read-back is asked about
    if ran:
        resumed = replace(info, resumed=True)
        if instance(restart_cases(resumed, backend.options, saved.resume_state())):
            instance(sync_cases(resumed, backend.options, saved.resume_state()))
    done = f"{len(checker.report.results) - calls} calls on {len(instances)} instance(s): " + ", ".join(
        labels[:len(instances)])
    checker.part("hook cases", True, done + (f" (stopped: {stopped[0]})" if stopped else ""))
    if reader is None:
        return
    if not ran:
        checker.skip(f"read-back of the hook cases ({stopped[0]})")
        return
    reader.check(checker, "the hook cases", identity, _sent_by(instances), exact=True, where="the hook cases")


def _sent_by(instances: list[_Delivered]) -> Sent:
    """What the instances delivered. What an instance sent after the checkpoint
    of its last flush may be gone once the next instance started with that
    checkpoint (a real sync would offer it again); data a backend may skip with
    a warning may be missing (advice)."""
    sent = Sent()
    for number, delivered in enumerate(instances):
        restarted = number + 1 < len(instances)
        for index, case in enumerate(delivered.cases):
            if restarted and delivered.checkpointed is not None and index >= delivered.checkpointed:
                level = MAY_DROP
            else:
                level = MAY_SKIP if case.may_skip else MUST
            sent.add(case.hook, case.payload, case.name, level)
    return sent


def _drive(checker: Checker, thread: HookThread, implemented: frozenset[str], cases: list[Case],
           saved: _Saved, delivered: _Delivered) -> bool:
    """Run the cases on one instance, noting its identity and checkpoints in
    ``saved`` and the cases it returned from in ``delivered``; False if the
    instance is unusable."""
    for case in cases:
        if case.hook not in implemented:
            if case.hook != "tracker_start":
                checker.skip(f"{case.hook} (not implemented)")
            continue
        started = time.perf_counter()
        try:
            call = thread.call(case.call, checker.hook_timeout)
        except _Hung:
            checker.problem(case.name, case.hook, f"did not return within {checker.hook_timeout:g} s: a hook must "
                            "not block forever (use timeouts on network calls)")
            checker.result(case.name, case.hook, time.perf_counter() - started, False)
            return False
        checker.result(case.name, case.hook, time.perf_counter() - started, call.error is None)
        if call.error is not None:
            hint = f" ({case.hint})" if case.hint else ""
            checker.problem(case.name, case.hook, f"raised {type(call.error).__name__}: {call.error}{hint}",
                            call.traceback)
            if case.hook == "tracker_start":
                checker.skip(f"the cases after {case.name!r} (tracker_start failed)")
                return False
            continue  # a flush that raised keeps the previous checkpoint, as the journal does
        delivered.cases.append(case)
        if case.hook == "tracker_start":
            identity = _identity(checker, case, call.result)
            if identity:  # the dispatcher saves a non-empty identity only
                saved.identity = dict(identity)
        elif case.hook == "tracker_flush":
            checkpoint = _checkpoint(checker, case, call.result)
            if checkpoint is not None:
                saved.checkpoint = checkpoint
                delivered.checkpointed = len(delivered.cases) if checkpoint else None
    return True


def _identity(checker: Checker, case: Case, result: object) -> Mapping[str, str]:
    """What ``tracker_start`` returned, as the str-to-str mapping the journal keeps."""
    if result is None:
        return {}
    if not isinstance(result, Mapping):
        checker.problem(case.name, case.hook, f"must return a mapping of str to str or None, "
                        f"returned {type(result).__name__}")
        return {}
    if any(not isinstance(k, str) or not isinstance(v, str) for k, v in result.items()):
        checker.advise("tracker_start's identity should map str to str (other values are converted with str())")
    return {str(k): str(v) for k, v in result.items()}


def _checkpoint(checker: Checker, case: Case, result: object) -> dict[str, str] | None:
    """What ``tracker_flush`` returned, as the journal stores it with the
    position (empty for None); None, with a problem, if it is not a str-to-str mapping."""
    if result is None:
        return {}
    if not isinstance(result, Mapping) or any(not isinstance(k, str) or not isinstance(v, str)
                                              for k, v in result.items()):
        checker.problem(case.name, case.hook, f"must return None or a mapping of str to str (the checkpoint), "
                        f"returned {reprlib.repr(result)}")
        return None
    return dict(result)


# --------------------------------------------------------------------------- #
# Step 3: end to end, through foundry_track.init and foundry_track.sync
# --------------------------------------------------------------------------- #


def end_to_end(checker: Checker, raw_options: Mapping[str, Any], reader: ReadBackCheck | None = None) -> None:
    """A new run, its resume ending ``failed``, a sync that replays everything,
    then a run with the backend in the delivery process; the read-back, if
    given, after each."""
    from foundry_track.params import flatten, redact

    cfg = {
        "project": "foundry-track-conformance", "run_name": "conformance-e2e",
        "tags": ["conformance", "ünïcode-tag"], "group": "conformance-kit",
        "dir": str(checker.root / "runs"), "backends": {checker.name: dict(raw_options)}, "fallback": None,
        "strict": True, "flush_timeout": checker.hook_timeout, "start_timeout": checker.hook_timeout,
    }
    case = "end to end: a new run through foundry_track.init (strict)"
    params = {"lr": 0.001, "model": {"layers": 2}, "api_key": "hidden"}
    sent = Sent()
    for key, value in flatten(redact(params)).items():
        sent.param(key, value, case, MUST)
    checker.part("end to end", True, "a new run through foundry_track.init (strict)")
    made = _logged_run(checker, case, cfg, range(30), sent=sent, params=params)
    if made is None or made[1] is None:
        checker.part("process delivery", False, "not run: the end-to-end run failed")
        return
    run_dir = made[0]
    _check_delivered(checker, case, run_dir, made[1])
    _read_back(checker, reader, case, run_dir, sent, exact=True, where="the new run")
    if not _resume_ending_failed(checker, cfg, run_dir, sent, reader):
        checker.part("end to end", True, "a new run through foundry_track.init (strict); its resume failed")
        checker.part("process delivery", False, "not run: the end-to-end resume failed")
        return
    _sync_replays(checker, run_dir, sent, reader)
    checker.part("end to end", True, "a new run through foundry_track.init (strict), its resume ending "
                 "failed, and foundry_track.sync replaying every event")
    _in_a_delivery_process(checker, cfg, reader)


def _read_back(checker: Checker, reader: ReadBackCheck | None, case: str, run_dir: Path, sent: Sent, *,
               exact: bool, where: str) -> None:
    """The read-back of an end-to-end run, if one was given and the case went well so far."""
    if reader is not None and not checker.report.problems_with(case=case):
        reader.check(checker, case, _run_identity(checker.name, run_dir), sent, exact=exact, where=where)


def _resume_ending_failed(checker: Checker, cfg: Mapping[str, Any], run_dir: Path, sent: Sent,
                          reader: ReadBackCheck | None) -> bool:
    """Resume the run, log steps lower than its last, end it ``failed``; False if that went wrong."""
    import foundry_track

    case = "end to end: resume the run, log lower steps, end as failed"
    started = time.perf_counter()
    with _failures() as failures:
        try:
            run = foundry_track.init(cfg, resume=run_dir)
        except Exception as exc:  # noqa: BLE001
            checker.problem(case, None, f"foundry_track.init(resume=...) failed: {type(exc).__name__}: {exc}",
                            traceback.format_exc())
            return False

        def resumed() -> dict[str, int]:
            for step in range(20, 40):  # 20..29 were logged before the "crash"
                values = {"train/loss": 1.0 / (step + 1), "train/ñandú": float(step)}
                run.log(values, step=step)
                note_metrics(sent, step, values, case)
            return run.finish("failed")

        undelivered = _guarded(checker, case, failures, resumed)
    checker.timed(case, "foundry_track.init", started)
    if undelivered is None:
        return False
    _check_delivered(checker, case, run_dir, undelivered)
    _read_back(checker, reader, case, run_dir, sent, exact=True, where="its resume")
    return True


def _sync_replays(checker: Checker, run_dir: Path, sent: Sent, reader: ReadBackCheck | None) -> None:
    """``foundry_track.sync`` after the journal forgot every delivery: each event arrives again."""
    import foundry_track
    from foundry_track.journal import JOURNAL_FILE, Journal

    case = "end to end: foundry-track sync replays every event the backend already has"
    journal = Journal(run_dir / JOURNAL_FILE)
    # As if the process died after each hook returned, before the journal noted it. A buffered backend's
    # checkpoint stays where it was, so it is offered events it holds before the checkpoint too: it must cope.
    journal.set_position(checker.name, 0)
    journal.close()
    box: dict[str, Any] = {}

    def replay() -> None:
        try:
            box["left"] = foundry_track.sync(run_dir, backend=checker.name)
        except BaseException as exc:  # noqa: BLE001
            box["error"], box["traceback"] = exc, traceback.format_exc()

    deadline = checker.hook_timeout * 2
    started = time.perf_counter()
    with _failures() as failures:
        thread = threading.Thread(target=replay, name="foundry-track-conformance-sync", daemon=True)
        thread.start()
        thread.join(deadline)
    _report_failures(checker, case, failures)
    checker.timed(case, "foundry_track.sync", started)
    if thread.is_alive():
        checker.problem(case, None, f"foundry_track.sync did not return within {deadline:g} s")
    elif "error" in box:
        checker.problem(case, None, f"sync raised {type(box['error']).__name__}: {box['error']}", box["traceback"])
    elif box.get("left"):
        checker.problem(case, None, f"events left undelivered after sync: {box['left']}")
    else:
        # Every event was offered again: each must still be there, copies allowed.
        _read_back(checker, reader, case, run_dir, sent, exact=False, where="the sync")


def _in_a_delivery_process(checker: Checker, cfg: Mapping[str, Any], reader: ReadBackCheck | None) -> None:
    """The same run with ``tracking.delivery: process``: the backend in a fresh
    interpreter, found through its entry point, options sent as JSON."""
    case = "end to end: the backend in the delivery process (tracking.delivery: process)"
    errors: list[str] = []
    sent = Sent()
    made = _logged_run(checker, case, {**cfg, "run_name": "conformance-e2e-process", "delivery": "process"},
                       range(10), sent=sent, errors=errors)
    if any("not available in the delivery process" in message for message in errors):
        checker.part("process delivery", False, "the delivery process (a fresh interpreter) did not find the "
                     "backend: install it as a distribution (its entry point), or put it on PYTHONPATH")
        return
    checker.part("process delivery", True, "a run with tracking.delivery: process, the backend in a fresh "
                 "interpreter")
    if made is None or made[1] is None:
        return
    _check_delivered(checker, case, made[0], made[1])
    _read_back(checker, reader, case, made[0], sent, exact=True, where="the process-delivery run")


def _logged_run(checker: Checker, case: str, cfg: Mapping[str, Any], steps: range, *, sent: Sent,
                errors: list[str] | None = None, **init_kwargs: Any) -> tuple[Path, dict[str, int] | None] | None:
    """A run through ``foundry_track.init`` that logs every kind of event at
    ``steps`` and finishes: (run dir, undelivered, or None if it raised), or
    None when ``init`` itself failed. What it logs is noted in ``sent``; error
    messages logged meanwhile are added to ``errors``."""
    import foundry_track

    started = time.perf_counter()
    with _failures() as failures, _errors() as logged:
        try:
            run = foundry_track.init(dict(cfg), **init_kwargs)
        except Exception as exc:  # noqa: BLE001
            checker.problem(case, None, f"foundry_track.init failed: {type(exc).__name__}: {exc}",
                            traceback.format_exc())
            return None
        run_dir = run.dir
        assert run_dir is not None
        undelivered = _guarded(checker, case, failures, lambda: log_every_kind(run, checker.root, steps, sent, case))
    checker.timed(case, "foundry_track.init", started)
    if errors is not None:
        errors.extend(logged)
    return run_dir, undelivered


def _guarded(checker: Checker, case: str, failures: list[logging.LogRecord], body: Callable[[], dict[str, int]]
             ) -> dict[str, int] | None:
    """``body()``, with a strict run's :class:`BackendError` reported as the hook that failed."""
    from foundry_track.errors import BackendError

    try:
        return body()
    except BackendError as exc:
        _report_failures(checker, case, failures)
        if not checker.report.problems_with(case=case):
            checker.problem(case, None, f"the backend failed: {exc}", traceback.format_exc())
    except Exception as exc:  # noqa: BLE001
        checker.problem(case, None, f"the run raised {type(exc).__name__}: {exc}", traceback.format_exc())
    return None


def _report_failures(checker: Checker, case: str, failures: list[logging.LogRecord]) -> None:
    for record in failures:
        hook, tb = _failed_hook(record)
        last = tb.strip().splitlines()[-1] if tb.strip() else record.getMessage()
        checker.problem(case, hook, f"raised {last}", tb)


def _check_delivered(checker: Checker, case: str, run_dir: Path, undelivered: Mapping[str, int]) -> None:
    from foundry_track.journal import JOURNAL_FILE, Journal

    if undelivered:
        checker.problem(case, None, f"events not delivered when the run finished: {dict(undelivered)}")
        return
    journal = Journal(run_dir / JOURNAL_FILE, readonly=True)
    position, last = journal.position(checker.name), journal.refresh()
    if position != last:
        checker.problem(case, None, f"the journal says the backend has events up to {position} of {last}")


# --------------------------------------------------------------------------- #
# What the dispatcher logs while a run goes on
# --------------------------------------------------------------------------- #

# The dispatcher's report of a failing hook: args are (backend, hook, ..., traceback).
_FAILED_PREFIX: Final = "backend %r failed in %s"


class _FailureHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith(_FAILED_PREFIX):
            self.records.append(record)


class _failures:
    """Collect the dispatcher's "backend X failed in HOOK" reports while a block runs."""

    def __enter__(self) -> list[logging.LogRecord]:
        self.handler = _FailureHandler()
        logging.getLogger("foundry_track").addHandler(self.handler)
        return self.handler.records

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("foundry_track").removeHandler(self.handler)


class _ErrorHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _errors:
    """Collect every error message of foundry_track's loggers while a block runs
    (the delivery process's arrive as plain records)."""

    def __enter__(self) -> list[str]:
        self.handler = _ErrorHandler()
        logging.getLogger("foundry_track").addHandler(self.handler)
        return self.handler.messages

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("foundry_track").removeHandler(self.handler)


def _failed_hook(record: logging.LogRecord) -> tuple[str | None, str]:
    args = record.args if isinstance(record.args, tuple) else ()
    hook = str(args[1]) if len(args) > 1 else None
    tb = str(args[-1]) if args else ""
    return hook, tb
