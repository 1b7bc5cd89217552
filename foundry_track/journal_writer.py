"""The journal's producer side: the queue ``run.log`` appends to, and the one
thread that commits it to ``journal.db``.

The training thread never touches SQLite: :meth:`JournalWriter.append` is a
``deque.append`` (atomic under the GIL). One writer thread commits whatever has
accumulated every ``flush_interval`` seconds; a process killed with SIGKILL
loses at most the events of one interval.

The queue of events not yet committed is bounded twice:

- A loop that logs faster than the writer commits (~100k events/s; no real
  training step is that short) makes the writer report a backlog of more than
  ``_BACKLOG_SCALARS`` values through ``on_backlog``, and the run makes its log
  calls wait until the queue is short again.
- A journal that cannot be written (a full disk, a run directory gone
  read-only) keeps the events in memory, never blocking the log calls, and
  retries once per interval. Events are numbered and encoded once, when first
  taken from the queue, so a retried commit checks nothing twice. Above
  ``max_held_scalars`` values held, the newest are dropped and counted
  (:attr:`dropped`): what was accepted is either in the journal, or still held,
  or counted, and :attr:`not_journaled` says how many of those there are.

Inserts go as multi-row statements: the sqlite3 module releases the GIL around
every statement, and a writer that must win the GIL back from a busy training
thread once per row would commit a few hundred rows a second.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import threading
import time
from array import array
from collections import deque
from pathlib import Path
from typing import Any, Callable, Final, NamedTuple

__all__ = ["JournalWriter", "Record", "pack_floats", "unpack_floats"]

_log = logging.getLogger("foundry_track")
_BUSY_QUEUE: Final = 2000  # queued events above which the writer commits at once
_POLL: Final = 0.01  # how often the writer looks at a busy queue between commits
_QUIET_QUEUE: Final = 500  # events per interval below which the writer sleeps to the next commit
_QUIET_POLL: Final = 0.1  # ... or this long, if the interval is longer: a burst is seen within it
_BATCH_EVENTS: Final = 4096  # most events one commit takes, so a backlog is not copied whole
_BACKLOG_SCALARS: Final = 100_000  # ~10 MB of queued values: log calls wait above this
_HELD_SCALARS: Final = 1_000_000  # ~100 MB of values held while the journal cannot be written
_STEP_LIMIT: Final = 2**63  # SQLite's INTEGER


class Record(NamedTuple):
    seq: int
    kind: str
    step: int
    time: float
    data: Any


class _Encoded(NamedTuple):
    """A batch taken from the queue, numbered and encoded, not yet committed."""

    seq: int  # the batch's last seq
    records: list[Record]
    rows: list[Any]  # the INSERT's parameters, five per record


def _number(value: Any) -> float | int:
    """Turn what ``Run.log`` accepted into a plain number, off the training thread.

    This is where a CUDA tensor handed to ``run.log`` is synchronised, on the
    journal's thread rather than the training step.
    """
    if type(value) in (float, int):
        return value  # type: ignore[no-any-return]
    item = getattr(value, "item", None)
    if item is not None:
        value = item()
    if isinstance(value, bool):
        return int(value)
    return value if isinstance(value, int) else float(value)


_STRICT_JSON: Final = json.JSONEncoder(separators=(",", ":"))
_LENIENT_JSON: Final = json.JSONEncoder(separators=(",", ":"), default=str)
_FLOAT_TYPE: Final = frozenset({float})
_STR_TYPE: Final = frozenset({str})
# The keys part of packed metrics (see pack_floats), per key tuple; a run logs
# a handful of key sets, a loop that makes up new keys every step is bounded.
_KEY_HEADS: dict[tuple[str, ...], bytes] = {}
_KEYS: dict[bytes, list[str]] = {}  # and back, for readers
_KEY_HEADS_MAX: Final = 1024
_SWAP: Final = sys.byteorder != "little"


def pack_floats(data: dict[str, float]) -> bytes:
    r"""The journal's compact form of a metrics event whose values are all floats.

    A BLOB ``<JSON list of keys>\n<little-endian float64 values>``, where every
    other event is JSON text. Why: the writer thread shares the interpreter with
    the training step, and at a 1 ms step ``json`` writing ten floats' shortest
    round-trip digits was the largest part of its time (6.4 us of 15 per event);
    copying the doubles as they are takes a fraction of that, and reads back
    bit for bit (NaN, inf and -0.0 included).
    :func:`foundry_track.journal.decode_data` reads both forms.
    """
    keys = tuple(data)
    head = _KEY_HEADS.get(keys)
    if head is None:
        if len(_KEY_HEADS) >= _KEY_HEADS_MAX:
            _KEY_HEADS.clear()
        head = _KEY_HEADS[keys] = _STRICT_JSON.encode(keys).encode() + b"\n"
    values = array("d", data.values())
    if _SWAP:
        values.byteswap()
    return head + values.tobytes()


def unpack_floats(blob: bytes) -> dict[str, float]:
    """The metrics :func:`pack_floats` packed."""
    cut = blob.index(b"\n")  # JSON escapes a newline inside a key
    head = blob[:cut]
    keys = _KEYS.get(head)
    if keys is None:
        if len(_KEYS) >= _KEY_HEADS_MAX:
            _KEYS.clear()
        keys = _KEYS[head] = json.loads(head)
    values = array("d", blob[cut + 1:])
    if _SWAP:
        values.byteswap()
    return dict(zip(keys, values.tolist()))


def _encode(kind: str, data: Any) -> tuple[Any, str | bytes]:
    if kind == "metrics":
        if _FLOAT_TYPE.issuperset(map(type, data.values())) and _STR_TYPE.issuperset(map(type, data)):
            return data, pack_floats(data)  # the common case: what Run.log took from floats and CPU tensors
        try:
            # Run.log already turned everything but GPU tensors into numbers.
            return data, _STRICT_JSON.encode(data)
        except TypeError:
            data = {k: _number(v) for k, v in data.items()}
            return data, _STRICT_JSON.encode(data)
    return data, _LENIENT_JSON.encode(data)


def _insert_sql(rows: int) -> str:
    return "INSERT INTO events VALUES " + ",".join(["(?,?,?,?,?)"] * rows)


def _rows_per_statement(con: sqlite3.Connection) -> int:
    # 32,766 parameters since SQLite 3.32, 999 before; getlimit is Python 3.11+.
    getlimit = getattr(con, "getlimit", None)
    limit = getlimit(getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER", 9)) if getlimit else 999
    return max(1, min(_BATCH_EVENTS, limit // 5))


class JournalWriter:
    """The writing half of :class:`foundry_track.journal.Journal` (its base class)."""

    # Set by the Journal before _init_writer.
    path: Path
    flush_interval: float
    _tail: deque[Record]
    _committed: threading.Condition
    _last_seq: int

    def _connect(self, cached_statements: int = 128) -> sqlite3.Connection:
        raise NotImplementedError  # the Journal's

    def _init_writer(self) -> None:
        self._pending: deque[tuple[str, int, float, Any]] = deque()
        # append((kind, step, time, data)): what append() does, without the
        # cost of a Python call, for the training loop's hot path.
        self.append_event: Callable[[tuple[str, int, float, Any]], None] = self._pending.append
        self._write_lock = threading.Lock()
        self._write_con: sqlite3.Connection | None = None
        self._rows_per_statement = 1
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._unwritten: _Encoded | None = None
        self._drop_lock = threading.Lock()
        # Why the journal cannot be written now (None when it can).
        self.write_error: BaseException | None = None
        # The last such reason, kept after recovery: why events were dropped.
        self.last_write_error: str | None = None
        self.dropped = 0
        self.max_held_scalars = _HELD_SCALARS
        # Set by the Run; both are called on the writer thread.
        self.check_metrics: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None
        self.on_backlog: Callable[[bool], None] | None = None
        self.backlogged = False
        self._backlog_events = _BACKLOG_SCALARS // 10  # re-estimated from the values per event seen

    # -- producer side ----------------------------------------------------- #

    def append(self, kind: str, step: int, time_: float, data: Any) -> None:
        """Queue one event; it is committed by the writer thread within one interval."""
        self._pending.append((kind, step, time_, data))

    @property
    def not_journaled(self) -> int:
        """Events accepted and not in the journal: queued, held by a failed
        commit, or dropped while the journal could not be written."""
        unwritten = self._unwritten
        return len(self._pending) + (len(unwritten.records) if unwritten is not None else 0) + self.dropped

    def start(self) -> None:
        """Start the writer thread that commits pending events every interval."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="foundry-track-journal", daemon=True)
            self._writer.start()

    def _write_loop(self) -> None:
        # Commit every interval. A loop that logged fewer than _QUIET_QUEUE
        # events in the last interval (a 1 ms step logs 100) is left alone
        # until the next commit (at most _QUIET_POLL): every wake-up of this
        # thread takes the GIL and, on a machine whose other cores are busy,
        # the training thread's core. Faster than that, look at the queue
        # every _POLL seconds, so a burst of log calls is committed, or held
        # back by the backlog wait, before it piles up; while the queue is
        # long, commit back to back.
        last = time.monotonic()
        quiet = False
        try:
            while not self._stop.is_set():
                failing = self.write_error is not None  # a full disk: retry once per interval, no faster
                if failing or (len(self._pending) < _BUSY_QUEUE and not self.backlogged):
                    wait = min(self.flush_interval - (time.monotonic() - last), _QUIET_POLL) if quiet else _POLL
                    self._stop.wait(max(0.0, min(wait, _POLL if failing else self.flush_interval)))
                    if failing:
                        self._check_backlog()  # holds what the loop logs meanwhile, within the bound
                    due = time.monotonic() - last >= self.flush_interval
                    if not due and (failing or len(self._pending) < _BUSY_QUEUE):
                        continue
                # Quiet takes events: a loop not logging yet (right after init,
                # while the delivery process starts) is looked at every _POLL.
                quiet = 0 < len(self._pending) < _QUIET_QUEUE
                self.flush()
                last = time.monotonic()
            self.flush()
        except BaseException as exc:  # noqa: BLE001 - reported; log calls must not wait on a dead writer
            self.write_error = exc
            self.last_write_error = f"the journal's writer thread stopped: {exc!r}"
            _log.exception("foundry-track: the journal's writer thread stopped; events stay in memory and "
                           "are committed when the run finishes")
        finally:
            self._set_backlogged(False)

    def _check_backlog(self) -> None:
        queued = len(self._pending)
        if self.write_error is not None:
            # A full disk keeps events in memory rather than stalling training,
            # up to the bound; beyond it the newest are dropped and counted.
            self._set_backlogged(False)
            unwritten = self._unwritten
            held = queued + (len(unwritten.records) if unwritten is not None else 0)
            limit = max(1, self._backlog_events * self.max_held_scalars // _BACKLOG_SCALARS)
            if held > limit:
                self._drop_newest(held - limit)
        elif queued > self._backlog_events:
            self._set_backlogged(True)
        elif queued <= self._backlog_events // 4:
            self._set_backlogged(False)

    def _drop_newest(self, count: int) -> None:
        with self._drop_lock:
            dropped = 0
            pending = self._pending
            while dropped < count and pending:
                pending.pop()  # atomic, like the training thread's append
                dropped += 1
            if dropped and not self.dropped:
                _log.error(
                    "foundry-track: the journal %s still cannot be written (%s) and holds the most events it "
                    "keeps in memory (~%d values); newer events are dropped and counted until it can be written "
                    "again. Free space on that disk.", self.path, self.last_write_error, self.max_held_scalars)
            self.dropped += dropped

    def _set_backlogged(self, value: bool) -> None:
        if value != self.backlogged:
            self.backlogged = value
            if self.on_backlog is not None:
                self.on_backlog(value)
            if not value:
                with self._committed:
                    self._committed.notify_all()

    def wait_backlog(self, timeout: float) -> None:
        """Block the calling (training) thread while the writer reports a backlog."""
        writer = self._writer
        if writer is None or not writer.is_alive():
            return
        with self._committed:
            self._committed.wait_for(lambda: not self.backlogged, timeout)

    # -- committing -------------------------------------------------------- #

    def flush(self) -> int:
        """Commit everything appended so far; return the last committed seq."""
        seq = self._commit_batch()
        while (self._pending or self._unwritten is not None) and self.write_error is None:
            seq = self._commit_batch()
        self._check_backlog()
        return seq

    def commit_pending(self, timeout: float) -> bool:
        """Commit everything appended so far; while the journal cannot be
        written, try again once per interval for up to ``timeout`` seconds.
        Returns whether everything is committed."""
        deadline = time.monotonic() + timeout
        while True:
            self.flush()  # commits everything unless a commit fails
            if self.write_error is None:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self.flush_interval, left))

    def _commit_batch(self) -> int:
        self._check_backlog()  # first thing once this thread has the GIL back
        with self._write_lock:
            batch = self._unwritten
            if batch is None:
                batch = self._unwritten = self._take_batch()
                if batch is None:
                    return self._last_seq
            try:
                self._insert(batch.rows, len(batch.records))
            except sqlite3.Error as exc:
                # Keep the batch (numbered and encoded) and try again next
                # interval: a full disk is transient, and losing metrics is not an option.
                self._write_failed(exc)
                return self._last_seq
            self._unwritten = None
            if self.write_error is not None:
                self._write_recovered()
            with self._committed:
                self._tail.extend(batch.records)
                self._last_seq = batch.seq
                self._committed.notify_all()
            return batch.seq

    def _take_batch(self) -> _Encoded | None:
        """Take up to a batch of events from the queue, number and encode them
        (the run's checks on metrics run here, once per event)."""
        pending = self._pending
        count = min(len(pending), _BATCH_EVENTS)
        if count == 0:
            return None
        # popleft is atomic, so producers may keep appending meanwhile.
        batch = [pending.popleft() for _ in range(count)]
        seq = self._last_seq
        records: list[Record] = []
        rows: list[Any] = []
        check, scalars = self.check_metrics, 0
        for kind, step, t, data in batch:
            if not seq & 511:
                # Encoding a batch takes several GIL hand-offs with a busy
                # training thread: look at the queue meanwhile, not only between batches.
                self._check_backlog()
            try:
                step, t = int(step), float(t)
                if not 0 <= step < _STEP_LIMIT:  # SQLite would raise OverflowError for the whole batch
                    raise ValueError(f"step {step} is outside 0..2**63-1")
                if kind == "metrics":
                    scalars += len(data)
                    if check is not None:
                        data = check(step, data)
                data, text = _encode(kind, data)
            except Exception as exc:  # noqa: BLE001 - a bad value must not stop the journal
                data = {"error": f"could not encode {kind} event: {exc!r}"}
                kind, text = "dropped", json.dumps(data)
                step = step if type(step) is int and 0 <= step < _STEP_LIMIT else 0
                t = t if type(t) is float else time.time()
            seq += 1
            records.append(Record(seq, kind, step, t, data))
            rows += (seq, kind, step, t, text)
        self._backlog_events = max(1000, _BACKLOG_SCALARS * count // max(scalars, count))
        return _Encoded(seq, records, rows)

    def _insert(self, rows: list[Any], count: int) -> None:
        # One statement for the whole batch where SQLite allows that many
        # parameters: the sqlite3 module releases the GIL around each
        # statement it prepares or steps, and with a busy training thread each
        # release costs up to a switch interval (5 ms) to win back.
        # executemany would pay that once per row.
        con = self._write_con
        if con is None:
            # Its own connection, with no statement cache: batch sizes vary,
            # and a cache would keep up to 128 large statements.
            con = self._write_con = self._connect(cached_statements=0)
            self._rows_per_statement = _rows_per_statement(con)
        per = self._rows_per_statement
        if count <= per:
            con.execute(_insert_sql(count), rows)
            return
        con.execute("BEGIN")
        for start in range(0, count, per):
            n = min(per, count - start)
            con.execute(_insert_sql(n), rows[5 * start:5 * (start + n)])
        con.execute("COMMIT")

    def _write_failed(self, exc: sqlite3.Error) -> None:
        con = self._write_con
        if con is not None and con.in_transaction:
            try:
                con.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        if self.write_error is None:
            _log.warning("foundry-track: cannot write the journal %s (%s: %s); the events stay in memory (up to "
                         "~%d values) and are written when it can be written again (a full disk: free space on it)",
                         self.path, type(exc).__name__, exc, self.max_held_scalars)
        self.write_error = exc
        self.last_write_error = f"{type(exc).__name__}: {exc}"

    def _write_recovered(self) -> None:
        self.write_error = None
        if self.dropped:
            _log.warning("foundry-track: the journal %s can be written again; %d events logged meanwhile were "
                         "dropped (the memory bound), the others are committed", self.path, self.dropped)
        else:
            _log.info("foundry-track: the journal %s can be written again; no event was lost", self.path)

    def _close_writer(self) -> None:
        """Stop the writer thread after its final commit, and commit what it left."""
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=30)
            self._writer = None
        if self._pending or self._unwritten is not None:  # no writer thread, it died, or the disk is full
            self.flush()
        with self._write_lock:
            if self._write_con is not None:
                self._write_con.close()
                self._write_con = None
