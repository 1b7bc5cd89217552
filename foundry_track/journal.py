"""The run's durable, append-only event log, and each backend's place in it.

Storage is SQLite in WAL mode (``journal.db`` in the run directory) rather than
a home-made framed log, because it gives us for free what we would otherwise
have to write and test: atomic commits that survive a SIGKILL, readers in other
processes (``foundry-track sync``, ``runs``, ``export``) while the run is live,
recovery of a torn tail, and queries for the CLI. ``synchronous=NORMAL``: a
commit is safe against a process crash, not against power loss — the trade a
training job wants, since an fsync per commit would cost milliseconds.

The training thread never touches SQLite: :meth:`Journal.append` is a
``deque.append`` (atomic under the GIL). One writer thread commits whatever has
accumulated every ``flush_interval`` seconds; a process killed with SIGKILL
loses at most the events of one interval. Committed records are also kept in a
small in-memory tail so backends that keep up never read the disk; a backend
that falls behind reads from the file, so memory stays bounded.

The one unbounded thing is the queue of events not yet committed. A loop that
logs faster than the writer commits (~100k events/s; no real training step is
that short) would grow it without limit, so the writer reports a backlog of
more than ``_BACKLOG_SCALARS`` values through ``on_backlog`` and the run makes
its log calls wait until the queue is short again. Inserts go as multi-row
statements: the sqlite3 module releases the GIL around every statement, and a
writer that must win the GIL back from a busy training thread once per row
would commit a few hundred rows a second.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Final, Iterator, Mapping, NamedTuple

__all__ = ["Journal", "Record", "JOURNAL_FILE"]

_log = logging.getLogger("foundry_track")
JOURNAL_FILE: Final = "journal.db"
_BUSY_QUEUE: Final = 2000  # queued events above which the writer commits at once
_POLL: Final = 0.01  # how often the writer looks at the queue between commits
_BATCH_EVENTS: Final = 4096  # most events one commit takes, so a backlog is not copied whole
_BACKLOG_SCALARS: Final = 100_000  # ~10 MB of queued values: log calls wait above this
_STEP_LIMIT: Final = 2**63  # SQLite's INTEGER
_TAIL_RECORDS: Final = 4096  # ~ a few MB of recent events kept for fast readers
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    seq  INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    step INTEGER NOT NULL,
    time REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_kind_step ON events (kind, step);
CREATE TABLE IF NOT EXISTS positions (
    backend    TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    errors     INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated    REAL NOT NULL,
    batches    INTEGER NOT NULL DEFAULT 0,
    retries    INTEGER NOT NULL DEFAULT 0,
    busy_s     REAL NOT NULL DEFAULT 0,
    checkpoint TEXT
);
"""


class Record(NamedTuple):
    seq: int
    kind: str
    step: int
    time: float
    data: Any


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


def _encode(kind: str, data: Any) -> tuple[Any, str]:
    if kind == "metrics":
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


def _decode_json(text: str) -> Any:
    # NaN and inf are written as JSON's NaN/Infinity extensions and read back.
    return json.loads(text, parse_constant=lambda c: {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[c])


class Journal:
    """One run's event log. Safe to use from many threads.

    ``append`` may be called from any thread; ``read_after``, ``position`` and
    ``set_position`` each use a per-thread SQLite connection.
    """

    def __init__(self, path: Path, *, flush_interval: float = 0.1, readonly: bool = False) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.readonly = readonly
        self._pending: deque[tuple[str, int, float, Any]] = deque()
        # append((kind, step, time, data)): what append() does, without the
        # cost of a Python call, for the training loop's hot path.
        self.append_event: Callable[[tuple[str, int, float, Any]], None] = self._pending.append
        self._local = threading.local()
        self._committed = threading.Condition()
        self._tail: deque[Record] = deque(maxlen=_TAIL_RECORDS)
        self._write_lock = threading.Lock()
        self._write_con: sqlite3.Connection | None = None
        self._rows_per_statement = 1
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self.write_error: BaseException | None = None
        # Set by the Run; both are called on the writer thread.
        self.check_metrics: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None
        self.on_backlog: Callable[[bool], None] | None = None
        self.backlogged = False
        self._backlog_events = _BACKLOG_SCALARS // 10  # re-estimated from the values per event seen
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as con:
                con.executescript(_SCHEMA)
                columns = {row[1] for row in con.execute("PRAGMA table_info(positions)")}
                if "checkpoint" not in columns:  # a run directory from version 0.1
                    con.execute("ALTER TABLE positions ADD COLUMN checkpoint TEXT")
        row = self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        self._last_seq: int = row[0]

    # -- connections ------------------------------------------------------- #

    def _connect(self, cached_statements: int = 128) -> sqlite3.Connection:
        if self.readonly:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
        else:
            con = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None,
                                  cached_statements=cached_statements)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
        return con

    def _conn(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._connect()
        return con

    # -- producer side ----------------------------------------------------- #

    def append(self, kind: str, step: int, time_: float, data: Any) -> None:
        """Queue one event; it is committed by the writer thread within one interval."""
        self._pending.append((kind, step, time_, data))

    def start(self) -> None:
        """Start the writer thread that commits pending events every interval."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="foundry-track-journal", daemon=True)
            self._writer.start()

    def _write_loop(self) -> None:
        # Commit every interval; look at the queue every _POLL seconds in
        # between, so a burst of log calls (tens of thousands in one interval)
        # is committed, or held back by the backlog wait, before it piles up.
        # While the queue is long, commit back to back.
        last = time.monotonic()
        try:
            while not self._stop.is_set():
                failing = self.write_error is not None  # a full disk: retry once per interval, no faster
                if failing or (len(self._pending) < _BUSY_QUEUE and not self.backlogged):
                    self._stop.wait(min(_POLL, self.flush_interval))
                    due = time.monotonic() - last >= self.flush_interval
                    if not due and (failing or len(self._pending) < _BUSY_QUEUE):
                        continue
                self.flush()
                last = time.monotonic()
            self.flush()
        except BaseException as exc:  # noqa: BLE001 - reported; log calls must not wait on a dead writer
            self.write_error = exc
            _log.exception("foundry-track: the journal's writer thread stopped; events stay in memory and "
                           "are committed when the run finishes")
        finally:
            self._set_backlogged(False)

    def _check_backlog(self) -> None:
        queued = len(self._pending)
        if self.write_error is not None:
            # A full disk keeps events in memory rather than stalling training.
            self._set_backlogged(False)
        elif queued > self._backlog_events:
            self._set_backlogged(True)
        elif queued <= self._backlog_events // 4:
            self._set_backlogged(False)

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

    def flush(self) -> int:
        """Commit everything appended so far; return the last committed seq."""
        seq = self._commit_batch()
        while self._pending and self.write_error is None:
            seq = self._commit_batch()
        self._check_backlog()
        return seq

    def _commit_batch(self) -> int:
        self._check_backlog()  # first thing once this thread has the GIL back
        with self._write_lock:
            pending = self._pending
            count = min(len(pending), _BATCH_EVENTS)
            if count == 0:
                return self._last_seq
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
            try:
                # One statement for the whole batch where SQLite allows that
                # many parameters: the sqlite3 module releases the GIL around
                # each statement it prepares or steps, and with a busy training
                # thread each release costs up to a switch interval (5 ms) to
                # win back. executemany would pay that once per row.
                con = self._write_con
                if con is None:
                    # Its own connection, with no statement cache: batch sizes
                    # vary, and a cache would keep up to 128 large statements.
                    con = self._write_con = self._connect(cached_statements=0)
                    self._rows_per_statement = _rows_per_statement(con)
                per = self._rows_per_statement
                if count <= per:
                    con.execute(_insert_sql(count), rows)
                else:
                    con.execute("BEGIN")
                    for start in range(0, count, per):
                        n = min(per, count - start)
                        con.execute(_insert_sql(n), rows[5 * start:5 * (start + n)])
                    con.execute("COMMIT")
            except sqlite3.Error as exc:
                # Keep the events in memory and try again next interval: a full
                # disk is transient, and losing metrics is not an option.
                if self._write_con is not None and self._write_con.in_transaction:
                    try:
                        self._write_con.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                self.write_error = exc
                pending.extendleft(reversed(batch))
                return self._last_seq
            self.write_error = None
            with self._committed:
                self._tail.extend(records)
                self._last_seq = seq
                self._committed.notify_all()
            return seq

    def close(self) -> None:
        """Stop the writer after a final flush, and close this thread's connection."""
        if not self.readonly:
            self._stop.set()
            if self._writer is not None:
                self._writer.join(timeout=30)
                self._writer = None
            if self._pending:  # no writer thread, or it died
                self.flush()
        with self._write_lock:
            if self._write_con is not None:
                self._write_con.close()
                self._write_con = None
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # -- reader side ------------------------------------------------------- #

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def refresh(self) -> int:
        """Re-read the last seq from disk (for readers in another process)."""
        row = self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        self._last_seq = max(self._last_seq, row[0])
        return self._last_seq

    def wake(self) -> None:
        """Wake every reader waiting in :meth:`wait_for` (the run is closing)."""
        with self._committed:
            self._committed.notify_all()

    def wait_for(self, after_seq: int, timeout: float) -> bool:
        """Block until a record with seq > ``after_seq`` is committed, or timeout."""
        with self._committed:
            return self._committed.wait_for(lambda: self._last_seq > after_seq, timeout)

    def read_after(self, seq: int, limit: int = 1000) -> list[Record]:
        """Up to ``limit`` committed records with seq > ``seq``, in order."""
        with self._committed:
            tail = self._tail
            if tail and tail[0].seq <= seq + 1 <= tail[-1].seq:
                start = seq + 1 - tail[0].seq
                return [tail[i] for i in range(start, min(start + limit, len(tail)))]
        rows = self._conn().execute(
            "SELECT seq, kind, step, time, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        ).fetchall()
        return [Record(s, k, st, t, _decode_json(d)) for s, k, st, t, d in rows]

    def iter_records(self, kind: str | None = None, batch: int = 5000) -> Iterator[Record]:
        """Every committed record (optionally of one kind), in order, read from disk."""
        last = 0
        while True:
            if kind is None:
                query, args = "SELECT seq, kind, step, time, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (last, batch)
            else:
                query = "SELECT seq, kind, step, time, data FROM events WHERE kind = ? AND seq > ? ORDER BY seq LIMIT ?"
                args = (kind, last, batch)  # type: ignore[assignment]
            rows = self._conn().execute(query, args).fetchall()
            if not rows:
                return
            for s, k, st, t, d in rows:
                yield Record(s, k, st, t, _decode_json(d))
            last = rows[-1][0]

    def max_step(self) -> int | None:
        row = self._conn().execute("SELECT MAX(step) FROM events WHERE kind = 'metrics'").fetchone()
        return None if row[0] is None else int(row[0])

    # -- delivery positions ------------------------------------------------ #

    def position(self, backend: str) -> int:
        row = self._conn().execute("SELECT seq FROM positions WHERE backend = ?", (backend,)).fetchone()
        return row[0] if row else 0

    def positions(self) -> dict[str, dict[str, Any]]:
        """Each backend's delivered seq and health: errors, last error, batches, retries, busy seconds."""
        rows = self._conn().execute(
            "SELECT backend, seq, errors, last_error, updated, batches, retries, busy_s FROM positions"
        ).fetchall()
        return {b: {"seq": s, "errors": e, "last_error": le, "updated": u, "batches": n, "retries": r, "busy_s": busy}
                for b, s, e, le, u, n, r, busy in rows}

    def set_position(self, backend: str, seq: int, *, checkpoint: Mapping[str, str] | None = None,
                     batches: int = 0, retries: int = 0, busy_s: float = 0.0) -> None:
        """Record that ``backend`` holds every event up to ``seq`` durably.

        ``checkpoint`` (what the backend's ``tracker_flush`` returned) is
        stored in the same statement, so the position and the checkpoint it
        corresponds to never disagree after a crash; None keeps the previous
        one. ``batches``, ``retries`` and ``busy_s`` are added to the
        backend's totals (the health that ``foundry-track show`` reports).
        """
        state = None if checkpoint is None else json.dumps({str(k): str(v) for k, v in checkpoint.items()})
        self._conn().execute(
            "INSERT INTO positions (backend, seq, updated, batches, retries, busy_s, checkpoint) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(backend) DO UPDATE SET seq = excluded.seq, updated = excluded.updated, "
            "batches = batches + excluded.batches, retries = retries + excluded.retries, "
            "busy_s = busy_s + excluded.busy_s, checkpoint = COALESCE(excluded.checkpoint, checkpoint)",
            (backend, seq, time.time(), batches, retries, busy_s, state),
        )

    def checkpoint(self, backend: str) -> dict[str, str]:
        """The checkpoint stored with ``backend``'s position (empty if none)."""
        try:
            row = self._conn().execute("SELECT checkpoint FROM positions WHERE backend = ?", (backend,)).fetchone()
        except sqlite3.OperationalError:  # a read-only journal of version 0.1
            return {}
        return dict(json.loads(row[0])) if row and row[0] else {}

    def record_error(self, backend: str, message: str) -> None:
        self._conn().execute(
            "INSERT INTO positions (backend, seq, errors, last_error, updated) VALUES (?, 0, 1, ?, ?) "
            "ON CONFLICT(backend) DO UPDATE SET errors = errors + 1, last_error = excluded.last_error, "
            "updated = excluded.updated",
            (backend, message, time.time()),
        )

    def register_backend(self, backend: str) -> None:
        """Make ``backend`` known with position 0 so ``sync`` sees it even if it never started."""
        self._conn().execute(
            "INSERT OR IGNORE INTO positions (backend, seq, updated) VALUES (?, 0, ?)", (backend, time.time())
        )
