"""Fan-out: every backend reads the journal on its own worker thread.

The training thread only appends to the journal. Each backend has one worker
that starts the backend (bounded by ``start_timeout``), then reads the journal
from its own delivered position, groups consecutive metric rows into one
batch, calls the backend's hook, and moves its position only after the hook
returned. A backend that raises is reported once, retried with backoff, and
never touches the training loop or the other workers.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Final, Iterator, Mapping

from pydantic import BaseModel

from foundry_track.errors import BackendError, TransientError
from foundry_track.events import (
    AlertEvent,
    ArtifactEvent,
    HistogramEvent,
    ImageEvent,
    MetricRow,
    RunInfo,
    Status,
    TableEvent,
    TextEvent,
)
from foundry_track.journal import Journal, Record
from foundry_track.plugins import BackendHooks

__all__ = ["Dispatcher", "TransientError", "BackendError", "is_transient"]

_log = logging.getLogger("foundry_track")
BATCH_LIMIT: Final = 2000  # records per read: bounds a lagging backend's memory
_MAX_PERMANENT_ATTEMPTS: Final = 3
_BACKOFF_CAP: Final = 10.0  # a server back from an outage is used again within 10 s
_FLUSH_EVERY: Final = 1.0  # seconds between tracker_flush calls while events flow


def is_transient(exc: BaseException) -> bool:
    # OSError covers ConnectionError, TimeoutError, socket errors and the
    # requests/urllib3 exceptions that SDKs let through.
    return isinstance(exc, (TransientError, OSError))


# kind -> (hook name, event class, the typed call on the backend's hooks)
_EVENT_TYPES: Final[dict[str, tuple[str, type, Callable[[BackendHooks, Any], None]]]] = {
    "image": ("tracker_log_image", ImageEvent, BackendHooks.log_image),
    "histogram": ("tracker_log_histogram", HistogramEvent, BackendHooks.log_histogram),
    "table": ("tracker_log_table", TableEvent, BackendHooks.log_table),
    "text": ("tracker_log_text", TextEvent, BackendHooks.log_text),
    "artifact": ("tracker_log_artifact", ArtifactEvent, BackendHooks.log_artifact),
    "alert": ("tracker_alert", AlertEvent, BackendHooks.alert),
}


def to_event(record: Record) -> Any:
    """Rebuild the event dataclass a hook receives from a journal record."""
    _, cls, _ = _EVENT_TYPES[record.kind]
    data = dict(record.data)
    if "path" in data:
        data["path"] = Path(data["path"])
    for name in ("edges", "counts", "columns"):
        if name in data:
            data[name] = tuple(data[name])
    if "rows" in data:
        data["rows"] = tuple(tuple(r) for r in data["rows"])
    return cls(step=record.step, time=record.time, **data)


@dataclass(frozen=True, slots=True)
class Batch:
    """What one hook call delivers: consecutive records of the journal."""

    hook: str | None  # None: nothing to call (a "dropped" record, a kind from a newer version)
    kind: str
    deliver: Callable[[BackendHooks], None]
    last_seq: int
    count: int


def _nothing(_hooks: BackendHooks) -> None:
    return None


def _bind(method: Callable[[BackendHooks, Any], None], event: Any) -> Callable[[BackendHooks], None]:
    return lambda hooks: method(hooks, event)


def hook_groups(records: list[Record]) -> Iterator[Batch]:
    """The hook calls that deliver ``records``; consecutive metrics are one batch."""
    i, n = 0, len(records)
    while i < n:
        rec = records[i]
        if rec.kind == "metrics":
            j = i
            while j < n and records[j].kind == "metrics":
                j += 1
            rows = [MetricRow(r.step, r.time, r.data) for r in records[i:j]]
            yield Batch("tracker_log_metrics", "metrics", functools.partial(BackendHooks.log_metrics, rows=rows),
                        records[j - 1].seq, j - i)
            i = j
            continue
        if rec.kind == "params":
            yield Batch("tracker_log_params", "params", functools.partial(BackendHooks.log_params, params=rec.data),
                        rec.seq, 1)
        elif rec.kind in _EVENT_TYPES:
            hook, _, method = _EVENT_TYPES[rec.kind]
            yield Batch(hook, rec.kind, _bind(method, to_event(rec)), rec.seq, 1)
        else:
            yield Batch(None, rec.kind, _nothing, rec.seq, 1)
        i += 1


@dataclass
class WorkerStats:
    batches: int = 0
    events: int = 0
    retries: int = 0
    errors: int = 0
    busy_s: float = 0.0


@dataclass(eq=False)
class Worker:
    """One backend's thread and its place in the journal."""

    name: str
    hooks: BackendHooks
    options: BaseModel
    resume_state: Mapping[str, str]
    dispatcher: Dispatcher
    state: str = "new"  # starting, running, start_failed, gave_up, finished, abandoned
    pos: int = 0  # the last event handed to the backend
    durable: int = 0  # the last event the backend holds durably: the journal's position
    stats: WorkerStats = field(default_factory=WorkerStats)
    done: threading.Event = field(default_factory=threading.Event)
    abandon: threading.Event = field(default_factory=threading.Event)
    error_reported: bool = False
    skipped_kinds: set[str] = field(default_factory=set)
    thread: threading.Thread | None = None
    _flushed: float = field(default_factory=time.monotonic)  # when the last tracker_flush returned
    _saved_stats: tuple[int, int, float] = (0, 0, 0.0)  # the stats already added to the journal's totals

    @property
    def buffered(self) -> bool:
        """Whether the backend implements ``tracker_flush``: then its position
        moves only after a flush, not when a hook returns."""
        return "tracker_flush" in self.hooks.implemented

    def begin(self, *, synchronous: bool = False) -> None:
        self.pos = self.durable = self.dispatcher.journal.position(self.name)
        if synchronous:
            self._main()
            return
        self.thread = threading.Thread(target=self._main, name=f"foundry-track-{self.name}", daemon=True)
        self.thread.start()

    # -- the thread -------------------------------------------------------- #

    def _main(self) -> None:
        try:
            if self._start() and self._deliver():
                self.state = "finished"
            self._finish()
        except BaseException as exc:  # noqa: BLE001 - nothing may escape a worker
            self.dispatcher.report(self, "worker", exc, 0)
        finally:
            self.done.set()

    def _start(self) -> bool:
        d = self.dispatcher
        self.state = "starting"
        timer = threading.Timer(d.start_timeout, self._start_timed_out)
        timer.daemon = True
        timer.start()
        try:
            # The identity tracker_start returned last time, updated with the
            # checkpoint of the last durable flush (stored with the position).
            state = {**self.resume_state, **d.journal.checkpoint(self.name)}
            identity = self.hooks.start(d.run_info, self.options, state)
        except Exception as exc:  # noqa: BLE001
            timer.cancel()
            if self.state == "starting":
                self.state = "start_failed"
                d.start_failed(self, exc)
            return False
        timer.cancel()
        if self.state != "starting":
            # The timeout fired first and the fallback took over: close what the
            # backend opened late, so no remote run stays RUNNING.
            try:
                self.hooks.finish("killed", False)
            except Exception:  # noqa: BLE001
                _log.debug("backend %r: closing a late start failed", self.name, exc_info=True)
            return False
        self.state = "running"
        if identity:
            d.save_identity(self.name, {str(k): str(v) for k, v in dict(identity).items()})
        # A first checkpoint before any event: after a crash, whatever the
        # backend wrote past it is dropped, even if no flush came later.
        return not self.buffered or self._flush()

    def _start_timed_out(self) -> None:
        if self.state == "starting":
            self.state = "start_failed"
            self.dispatcher.start_failed(
                self, TimeoutError(f"tracker_start did not return within {self.dispatcher.start_timeout:g} s")
            )

    def _deliver(self) -> bool:
        d, journal = self.dispatcher, self.dispatcher.journal
        while not self.abandon.is_set():
            records = journal.read_after(self.pos, BATCH_LIMIT)
            if not records:
                if self.durable < self.pos and not self._flush():  # caught up: make it durable now
                    return False
                # `closing` is set only after the final journal flush, so once it
                # is set, last_seq is final.
                if d.closing.is_set() and journal.last_seq <= self.pos:
                    return True
                journal.wait_for(self.pos, 0.25)
                continue
            for batch in hook_groups(records):
                if batch.hook is None or batch.hook not in self.hooks.implemented:
                    self._skip(batch.kind)
                elif not self._call(batch):
                    return False
                self.pos = batch.last_seq
                if not self.buffered:
                    self._save_position(None)
                elif time.monotonic() - self._flushed >= _FLUSH_EVERY and not self._flush():
                    return False
        return False

    def _flush(self) -> bool:
        """``tracker_flush``, then the position and the checkpoint in one statement."""
        box: dict[str, Mapping[str, str] | None] = {}

        def flush(hooks: BackendHooks) -> None:
            box["checkpoint"] = hooks.flush()

        if not self._call(Batch("tracker_flush", "flush", flush, self.pos, 0), counted=False):
            return False
        self._flushed = time.monotonic()
        self._save_position(box.get("checkpoint") or {})
        return True

    def _save_position(self, checkpoint: Mapping[str, str] | None) -> None:
        stats, saved = self.stats, self._saved_stats
        self.dispatcher.journal.set_position(self.name, self.pos, checkpoint=checkpoint,
                                             batches=stats.batches - saved[0], retries=stats.retries - saved[1],
                                             busy_s=stats.busy_s - saved[2])
        self._saved_stats = (stats.batches, stats.retries, stats.busy_s)
        self.durable = self.pos

    def _skip(self, kind: str) -> None:
        if kind not in self.skipped_kinds and kind not in ("params", "dropped"):
            self.skipped_kinds.add(kind)
            _log.info("backend %r cannot show %s events; skipping them for this run", self.name, kind)

    def _call(self, batch: Batch, *, counted: bool = True) -> bool:
        d, hook, count = self.dispatcher, batch.hook or "", batch.count
        attempt = permanent = 0
        while True:
            started = time.perf_counter()
            try:
                batch.deliver(self.hooks)
            except Exception as exc:  # noqa: BLE001
                self.stats.errors += 1
                attempt += 1
                d.report(self, hook, exc, count)
                if d.strict:
                    self.state = "gave_up"
                    return False
                # Transient errors (an outage) are retried until finish's deadline;
                # only errors that will not heal by waiting count towards giving up.
                permanent += not is_transient(exc)
                if permanent >= _MAX_PERMANENT_ATTEMPTS:
                    self.state = "gave_up"
                    _log.error(
                        "backend %r gave up after %d failures that are not transient; its remaining events stay "
                        "in the journal: foundry-track sync %s --backend %s", self.name, permanent, d.run_info.dir,
                        self.name,
                    )
                    return False
                self.stats.retries += 1
                if self.abandon.wait(min(0.5 * 2 ** (attempt - 1), _BACKOFF_CAP)):
                    return False
                continue
            if counted:
                self.stats.busy_s += time.perf_counter() - started
                self.stats.batches += 1
                self.stats.events += count
            return True

    def _finish(self) -> None:
        if self.state not in ("finished", "gave_up") or self.abandon.is_set():
            return
        try:
            # complete=False tells the backend its stream has a gap (it gave up
            # on an event): it must not mark the run finished successfully.
            self.hooks.finish(self.dispatcher.status, self.state == "finished")
        except Exception as exc:  # noqa: BLE001
            self.dispatcher.report(self, "tracker_finish", exc, 0)

    def pending(self) -> int:
        """Events the backend does not hold durably yet."""
        return max(0, self.dispatcher.journal.last_seq - self.durable)


class Dispatcher:
    """Owns the workers of one run: start, fallback, errors, bounded finish."""

    def __init__(
        self,
        journal: Journal,
        run_info: RunInfo,
        *,
        start_timeout: float,
        strict: bool,
        fallback: Callable[[str], Worker | None] | None = None,
        on_identity: Callable[[str, dict[str, str]], None] | None = None,
    ) -> None:
        self.journal = journal
        self.run_info = run_info
        self.start_timeout = start_timeout
        self.strict = strict
        self.workers: dict[str, Worker] = {}
        self.closing = threading.Event()
        self.status: Status = "success"
        self.error: BaseException | None = None
        self.on_error: Callable[[], None] | None = None  # the run's log() stops taking its short path
        self._fallback = fallback
        self._on_identity = on_identity
        self._lock = threading.Lock()

    def add(self, name: str, hooks: BackendHooks, options: BaseModel, resume_state: Mapping[str, str],
            *, synchronous: bool = False) -> Worker:
        worker = Worker(name, hooks, options, resume_state, self)
        with self._lock:
            self.workers[name] = worker
        self.journal.register_backend(name)
        worker.begin(synchronous=synchronous)
        return worker

    # -- called from workers ----------------------------------------------- #

    def report(self, worker: Worker, hook: str, exc: BaseException, count: int) -> None:
        message = f"{type(exc).__name__}: {exc}"
        try:
            self.journal.record_error(worker.name, message)
        except Exception:  # noqa: BLE001 - reporting must not fail the worker
            pass
        if self.strict and self.error is None:
            self.error = exc
            if self.on_error is not None:
                self.on_error()
        if not worker.error_reported:
            worker.error_reported = True
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            if hook in ("tracker_start", "tracker_finish", "worker"):
                retry = "not retried"
            else:
                retry = "retrying with backoff" if is_transient(exc) else "retrying a few times"
            _log.error(
                "backend %r failed in %s (%d events affected; %s; the training loop is not affected). "
                "Later errors of this backend are counted, not printed.\n%s",
                worker.name, hook, count, retry, tb,
            )
        else:
            _log.debug("backend %r failed again in %s: %s", worker.name, hook, message)

    def start_failed(self, worker: Worker, exc: BaseException) -> None:
        # One warning says it all (a missing API key needs no traceback); the
        # traceback goes to debug level for plugin authors.
        worker.error_reported = True
        self.report(worker, "tracker_start", exc, 0)
        _log.debug("backend %r: tracker_start failed", worker.name, exc_info=exc)
        fallback = self._fallback(worker.name) if self._fallback else None
        also = f"; events now also go to the fallback backend {fallback.name!r}" if fallback else ""
        _log.warning(
            "backend %r could not start (%s: %s). Its events are kept in the journal%s. "
            "Deliver them later with: foundry-track sync %s --backend %s",
            worker.name, type(exc).__name__, exc, also, self.run_info.dir, worker.name,
        )
        worker.done.set()

    def save_identity(self, name: str, identity: dict[str, str]) -> None:
        if self._on_identity is not None:
            self._on_identity(name, identity)

    # -- called from the run ----------------------------------------------- #

    def finish(self, status: Status, timeout: float) -> dict[str, int]:
        """Deliver what is left within ``timeout`` seconds; return undelivered counts."""
        deadline = time.monotonic() + timeout
        self.status = status
        self.journal.flush()
        self.closing.set()
        self.journal.wake()  # workers idling in wait_for see `closing` now, not 0.25 s later
        while True:
            # A worker that fails to start adds the fallback's worker before it is
            # done, so look again until no new worker appeared while waiting.
            workers = list(self.workers.values())
            for worker in workers:
                worker.done.wait(max(0.0, deadline - time.monotonic()))
            if len(self.workers) == len(workers):
                break
        undelivered: dict[str, int] = {}
        for worker in workers:
            if not worker.done.is_set():
                worker.abandon.set()
                worker.state = "abandoned"
            pending = worker.pending()
            if pending:
                undelivered[worker.name] = pending
                _log.warning(
                    "backend %r: %d events not delivered (%s). Deliver them with: foundry-track sync %s --backend %s",
                    worker.name, pending, worker.state, self.run_info.dir, worker.name,
                )
        return undelivered
