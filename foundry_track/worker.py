"""One backend's worker: its thread, its place in the journal, its retries.

A worker starts its backend (bounded by ``start_timeout``, then the fallback
takes over; a start that failed for a reason that heals by waiting is retried
in the background), offers again the events it set aside earlier, then reads
the journal from the backend's own position, groups consecutive metric rows
into one batch and calls the backend's hook. The position moves when the
backend holds the events durably: when the hook returned, or for a backend
that buffers, when ``tracker_flush`` returned.

A failing call is retried: with backoff until ``finish``'s deadline when the
error is transient (an outage), a few times otherwise. What still fails after
that is *set aside* for this backend (recorded in the journal; ``sync``
offers it again), a batch of metric rows being split first so that only the
rows the backend refuses are, and the stream goes on. Only a backend that
refuses event after event gives up for the run.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Final, Iterator, Literal, Mapping

from pydantic import BaseModel

from foundry_track.errors import TransientError
from foundry_track.events import (
    AlertEvent,
    ArtifactEvent,
    HistogramEvent,
    ImageEvent,
    MetricRow,
    TableEvent,
    TextEvent,
)
from foundry_track.journal import Record
from foundry_track.plugins import BackendHooks

if TYPE_CHECKING:
    from foundry_track.dispatcher import Dispatcher

__all__ = ["Worker", "WorkerStats", "Batch", "hook_groups", "to_event", "is_transient", "BATCH_LIMIT"]

_log = logging.getLogger("foundry_track")
BATCH_LIMIT: Final = 2000  # records per read: bounds a lagging backend's memory
_MAX_PERMANENT_ATTEMPTS: Final = 3
_BACKOFF_CAP: Final = 10.0  # a server back from an outage is used again within 10 s
_FLUSH_EVERY: Final = 1.0  # seconds between tracker_flush calls while events flow
# Events set aside with no delivery in between: then the backend is failing, not
# the data, and setting every event aside one by one would only cost time.
_ASIDE_IN_A_ROW: Final = 10
_ASIDE_WARNINGS: Final = 3  # set-aside events warned about per worker; the rest at debug level
# Errors about local files: a missing folder or a permission does not heal by waiting.
_LOCAL_ERRORS: Final = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                        PermissionError)

Outcome = Literal["ok", "failed", "stopped"]  # failed: for good; stopped: abandoned, or strict mode


def is_transient(exc: BaseException) -> bool:
    """Whether waiting can heal the failure: a TransientError, or an OSError
    (ConnectionError, TimeoutError, socket errors and the requests/urllib3
    exceptions SDKs let through) other than a local file's."""
    if isinstance(exc, TransientError):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, _LOCAL_ERRORS)


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): 0.5, 1, 2, ... capped."""
    return float(min(0.5 * 2 ** (attempt - 1), _BACKOFF_CAP))


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
    """What one hook call delivers: the consecutive records first_seq..last_seq."""

    hook: str | None  # None: nothing to call (a "dropped" record, a kind from a newer version)
    kind: str
    deliver: Callable[[BackendHooks], None]
    first_seq: int
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
                        rec.seq, records[j - 1].seq, j - i)
            i = j
            continue
        if rec.kind == "params":
            yield Batch("tracker_log_params", "params", functools.partial(BackendHooks.log_params, params=rec.data),
                        rec.seq, rec.seq, 1)
        elif rec.kind in _EVENT_TYPES:
            hook, _, method = _EVENT_TYPES[rec.kind]
            yield Batch(hook, rec.kind, _bind(method, to_event(rec)), rec.seq, rec.seq, 1)
        else:
            yield Batch(None, rec.kind, _nothing, rec.seq, rec.seq, 1)
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
    # starting, start_retrying, start_failed, not started, running, gave_up, finished, abandoned
    state: str = "new"
    pos: int = 0  # the last event handed to the backend
    durable: int = 0  # the last event the backend holds durably: the journal's position
    aside: set[int] = field(default_factory=set)  # events set aside for this backend (mirrors the journal)
    started: bool = False  # tracker_start returned: tracker_finish is owed
    fallback_on: bool = False  # the start failed or timed out once: the fallback was asked for
    stats: WorkerStats = field(default_factory=WorkerStats)
    done: threading.Event = field(default_factory=threading.Event)
    abandon: threading.Event = field(default_factory=threading.Event)
    error_reported: bool = False
    skipped_kinds: set[str] = field(default_factory=set)
    thread: threading.Thread | None = None
    _flushed: float = field(default_factory=time.monotonic)  # when the last tracker_flush returned
    _saved_stats: tuple[int, int, float] = (0, 0, 0.0)  # the stats already added to the journal's totals
    _error: str = ""  # the last failure, as recorded with a set-aside event
    _aside_in_a_row: int = 0
    _aside_warned: int = 0
    _hurried: bool = False  # a backoff was cut short once, when finish() began
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def buffered(self) -> bool:
        """Whether the backend implements ``tracker_flush``: then its position
        moves only after a flush, not when a hook returns."""
        return "tracker_flush" in self.hooks.implemented

    def begin(self, *, synchronous: bool = False) -> None:
        journal = self.dispatcher.journal
        self.pos = self.durable = journal.position(self.name)
        self.aside = set(journal.set_aside_seqs(self.name))
        if synchronous:
            self._main()
            return
        self.thread = threading.Thread(target=self._main, name=f"foundry-track-{self.name}", daemon=True)
        self.thread.start()

    def pending(self) -> int:
        """Events the backend does not hold durably: after its position, and set aside before it."""
        behind = sum(1 for seq in self.aside.copy() if seq <= self.durable)
        return max(0, self.dispatcher.journal.last_seq - self.durable) + behind

    # -- the thread -------------------------------------------------------- #

    def _main(self) -> None:
        try:
            if self._start() and self._retry_set_aside() and self._deliver():
                self.state = "finished"
            self._close()
        except BaseException as exc:  # noqa: BLE001 - nothing may escape a worker
            self.dispatcher.report(self, "worker", exc, 0)
        finally:
            self.done.set()

    # -- start ------------------------------------------------------------- #

    def _start(self) -> bool:
        d = self.dispatcher
        self.state = "starting"
        timer = threading.Timer(d.start_timeout, self._start_timed_out)
        timer.daemon = True
        timer.start()
        try:
            ok, identity = self._start_attempts()
        finally:
            timer.cancel()
        if not ok:
            return False
        self.started = True
        if identity:
            d.save_identity(self.name, {str(k): str(v) for k, v in dict(identity).items()})
        if self.abandon.is_set():  # finish() gave up on it while it was starting: just close it
            return False
        if self.fallback_on:
            _log.warning("backend %r started after all; it catches up from the journal and goes on live "
                         "(the fallback keeps its copy too)", self.name)
        self.state = "running"
        # A first checkpoint before any event: after a crash, whatever the
        # backend wrote past it is dropped, even if no flush came later.
        return not self.buffered or self._flush()

    def _start_attempts(self) -> tuple[bool, Mapping[str, Any] | None]:
        """Call tracker_start until it returns, fails for good, or finish() gives up on it."""
        d, attempt = self.dispatcher, 0
        while True:
            try:
                # The identity tracker_start returned last time, updated with the
                # checkpoint of the last durable flush (stored with the position).
                state = {**self.resume_state, **d.journal.checkpoint(self.name)}
                return True, self.hooks.start(d.run_info, self.options, state)
            except Exception as exc:  # noqa: BLE001
                attempt += 1
                retry = d.retry_start and not d.strict and is_transient(exc)
                self._start_failed(exc, retry)
                if not retry:
                    self.state = "start_failed"
                    return False, None
                self.state = "start_retrying"
                if self._pause(backoff(attempt)):
                    self.state = "not started"
                    return False, None

    def _start_failed(self, exc: BaseException, retrying: bool) -> None:
        with self._lock:  # the start_timeout timer may be here at the same moment
            first, self.fallback_on = not self.fallback_on, True
        if first or not retrying:
            self.dispatcher.start_failed(self, exc, retrying=retrying, fallback=first)
        else:
            self.dispatcher.report(self, "tracker_start", exc, 0)

    def _start_timed_out(self) -> None:
        if self.state == "starting" and not self.fallback_on:
            self.state = "start_retrying"  # the start goes on; the fallback runs meanwhile
            self._start_failed(TimeoutError(
                f"tracker_start did not return within {self.dispatcher.start_timeout:g} s"),
                self.dispatcher.retry_start)

    # -- delivery ---------------------------------------------------------- #

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
            round_began = time.monotonic()
            for batch in hook_groups(records):
                if self.abandon.is_set():
                    return False
                if batch.hook is None or batch.hook not in self.hooks.implemented:
                    self._skip(batch.kind)
                else:
                    outcome = self._call(batch)
                    if outcome == "ok":
                        self._delivered_again(batch)
                    elif outcome == "failed":
                        outcome = self._split(journal.read_after(batch.first_seq - 1, batch.count))
                    if outcome != "ok":
                        return False
                self._moved(batch.last_seq)
                if self.buffered and time.monotonic() - self._flushed >= _FLUSH_EVERY and not self._flush():
                    return False
            if d.interval > 0 and len(records) < BATCH_LIMIT:  # caught up: durable now, then rest
                if self.durable < self.pos and not self._flush():
                    return False
                self._rest(round_began + d.interval - time.monotonic())
        return False

    def _rest(self, seconds: float) -> None:
        """Wait out the rest of the delivery interval, so that a backend gets
        one batch per interval, whatever the step rate: its fixed cost per call
        (an HTTP request, a flush, a position saved) is paid once per interval,
        on the cores the training step uses too. ``finish()`` (``closing``)
        and giving up (``abandon``) end the rest at once."""
        end = time.monotonic() + seconds
        d = self.dispatcher
        while (left := end - time.monotonic()) > 0 and not d.closing.is_set() and not self.abandon.is_set():
            d.closing.wait(min(left, 0.25))

    def _moved(self, seq: int) -> None:
        self.pos = seq
        if not self.buffered:
            self._save_position(None)

    def _flush(self) -> bool:
        """``tracker_flush``, then the position and the checkpoint in one statement."""
        box: dict[str, Mapping[str, str] | None] = {}

        def flush(hooks: BackendHooks) -> None:
            box["checkpoint"] = hooks.flush()

        outcome = self._call(Batch("tracker_flush", "flush", flush, self.pos, self.pos, 0), counted=False)
        if outcome == "failed":
            self._give_up("tracker_flush kept failing")
        if outcome != "ok":
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

    def _call(self, batch: Batch, *, counted: bool = True, attempts: int = _MAX_PERMANENT_ATTEMPTS) -> Outcome:
        d, hook, count = self.dispatcher, batch.hook or "", batch.count
        attempt = permanent = 0
        while True:
            started = time.perf_counter()
            try:
                batch.deliver(self.hooks)
            except Exception as exc:  # noqa: BLE001
                self.stats.errors += 1
                attempt += 1
                self._error = f"{type(exc).__name__}: {exc}"
                d.report(self, hook, exc, count)
                if d.strict:
                    self.state = "gave_up"
                    return "stopped"
                # Transient errors (an outage) are retried until finish's deadline;
                # only errors that will not heal by waiting count towards failing.
                permanent += not is_transient(exc)
                if permanent >= attempts:
                    return "failed"
                self.stats.retries += 1
                if self._pause(backoff(attempt)):
                    return "stopped"
                continue
            if counted:
                self.stats.busy_s += time.perf_counter() - started
                self.stats.batches += 1
                self.stats.events += count
                self._aside_in_a_row = 0
            return "ok"

    def _pause(self, seconds: float) -> bool:
        """Wait before a retry; True when finish() gave up on this backend.
        The first retry after finish() began comes at once, not at the end of
        a backoff of up to 10 s: the user is waiting on it now."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self.abandon.wait(min(left, 0.25)):
                return True
            if self.dispatcher.closing.is_set() and not self._hurried:
                self._hurried = True
                return False
        return False

    # -- events set aside -------------------------------------------------- #

    def _split(self, records: list[Record]) -> Outcome:
        """Consecutive records whose call failed for good: deliver what the
        backend takes, halving the batch, and set aside each record it still
        refuses on its own. Only metric rows share a call, so any other event
        is set aside at once."""
        if not records:  # cannot happen: the batch was read from the journal a moment ago
            self._give_up("its failing batch could not be read again from the journal")
            return "failed"
        if len(records) == 1:
            outcome = self._set_aside(records[0])
            if outcome == "ok":
                self._moved(records[0].seq)
            return outcome
        mid = len(records) // 2
        for half in (records[:mid], records[mid:]):
            if self.abandon.is_set():
                return "stopped"
            part = next(hook_groups(half))
            outcome = self._call(part, attempts=1)  # the whole batch failed a few times already
            if outcome == "ok":
                self._delivered_again(part)
                self._moved(part.last_seq)
            elif outcome == "failed":
                outcome = self._split(half)
            if outcome != "ok":
                return outcome
        return "ok"

    def _set_aside(self, record: Record) -> Outcome:
        d = self.dispatcher
        self._aside_in_a_row += 1
        if self._aside_in_a_row >= _ASIDE_IN_A_ROW:
            self._give_up(f"it failed for good on {self._aside_in_a_row} events in a row (the backend is "
                          f"failing, not the data)")
            return "failed"
        d.journal.set_aside(self.name, record.seq, self._error)
        self.aside.add(record.seq)
        self._aside_warned += 1
        level = logging.WARNING if self._aside_warned <= _ASIDE_WARNINGS else logging.DEBUG
        _log.log(level, "backend %r cannot take event %d (%s, step %d): %s. It is set aside for this backend and "
                 "the stream goes on; foundry-track sync %s --backend %s offers it again",
                 self.name, record.seq, record.kind, record.step, self._error, d.run_info.dir, self.name)
        return "ok"

    def _delivered_again(self, batch: Batch) -> None:
        """Events set aside before a crash, then offered again from the position and taken."""
        if self.aside:
            again = [s for s in self.aside.copy() if batch.first_seq <= s <= batch.last_seq]
            if again:
                self.dispatcher.journal.clear_set_aside(self.name, again)
                self.aside.difference_update(again)

    def _retry_set_aside(self) -> bool:
        """Offer the events set aside earlier (by this run, or the run ``sync``
        or a resume continues) once more; those the backend takes are cleared."""
        journal = self.dispatcher.journal
        behind = sorted(s for s in self.aside if s <= self.pos)
        if not behind:
            return True
        taken: list[int] = []
        for record in journal.read_seqs(behind):
            batch = next(hook_groups([record]))
            outcome: Outcome = "stopped" if self.abandon.is_set() else "ok"
            if outcome == "ok" and batch.hook is not None and batch.hook in self.hooks.implemented:
                outcome = self._call(batch)
            if outcome == "stopped":
                break
            if outcome == "ok":
                taken.append(record.seq)
            else:
                journal.set_aside(self.name, record.seq, self._error)
        if taken and self.buffered and not self._flush():  # durable before it is cleared
            return False
        journal.clear_set_aside(self.name, taken)
        self.aside.difference_update(taken)
        _log.info("backend %r: %d of %d events set aside earlier delivered now", self.name, len(taken), len(behind))
        return not self.abandon.is_set() and self.state != "gave_up"

    def _give_up(self, why: str) -> None:
        self.state = "gave_up"
        _log.error("backend %r gave up: %s. Its remaining events stay in the journal: foundry-track sync %s "
                   "--backend %s", self.name, why, self.dispatcher.run_info.dir, self.name)

    # -- finish ------------------------------------------------------------ #

    def _close(self) -> None:
        """``tracker_finish`` for a backend that started, once: ``complete=False``
        when it does not hold every event (gave up, abandoned at the deadline,
        events set aside), so it does not mark its run finished successfully."""
        d = self.dispatcher
        if not self.started:
            return
        if self.state == "gave_up":
            d.closing.wait()  # close with the run's own status, when the run ends
        if self.abandon.is_set():
            if self.state != "finished":  # caught up in the reserve after all: complete
                self.state = "abandoned"
            if time.monotonic() >= d.deadline:
                _log.debug("backend %r returned after finish's deadline; the next sync closes its run", self.name)
                return
        complete = self.state == "finished" and not self.aside
        try:
            self.hooks.finish(d.status, complete)
        except Exception as exc:  # noqa: BLE001
            d.report(self, "tracker_finish", exc, 0)
