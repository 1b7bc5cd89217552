"""The run's durable, append-only event log, and each backend's place in it.

Storage is SQLite in WAL mode (``journal.db`` in the run directory) rather than
a home-made framed log, because it gives us for free what we would otherwise
have to write and test: atomic commits that survive a SIGKILL, readers in other
processes (``foundry-track sync``, ``runs``, ``export``) while the run is live,
recovery of a torn tail, and queries for the CLI. ``synchronous=NORMAL``: a
commit is safe against a process crash, not against power loss — the trade a
training job wants, since an fsync per commit would cost milliseconds.

SQLite's rollback journal replaces WAL where WAL does not work: on a network
file system (:mod:`foundry_track.journal_mode`).

The producer side, the queue ``run.log`` appends to and the writer thread that
commits it (and what happens when the disk is full), is
:class:`~foundry_track.journal_writer.JournalWriter`, the Journal's base class.
Committed records are also kept in a small in-memory tail so backends that
keep up never read the disk; a backend that falls behind reads from the file,
so memory stays bounded.
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
from typing import Any, Final, Iterable, Iterator, Mapping

from foundry_track.errors import RunDirError
from foundry_track.journal_mode import JournalMode, choose_journal_mode
from foundry_track.journal_writer import JournalWriter, Record, unpack_floats

__all__ = ["Journal", "Record", "JOURNAL_FILE", "JOURNAL_FORMAT", "decode_data"]

_log = logging.getLogger("foundry_track")
JOURNAL_FILE: Final = "journal.db"
_TAIL_RECORDS: Final = 4096  # ~ a few MB of recent events kept for fast readers
_SET_POSITION: Final = (
    "INSERT INTO positions (backend, seq, updated, batches, retries, busy_s, checkpoint) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(backend) DO UPDATE SET seq = excluded.seq, updated = excluded.updated, "
    "batches = batches + excluded.batches, retries = retries + excluded.retries, "
    "busy_s = busy_s + excluded.busy_s, checkpoint = COALESCE(excluded.checkpoint, checkpoint)"
)
_mode_logged: set[Path] = set()
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    seq  INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    step INTEGER NOT NULL,
    time REAL NOT NULL,
    data TEXT NOT NULL  -- JSON, or a BLOB of packed floats for a metrics event
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
CREATE TABLE IF NOT EXISTS set_aside (
    backend TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    error   TEXT,
    time    REAL NOT NULL,
    PRIMARY KEY (backend, seq)
);
"""


def _log_mode_once(path: Path, mode: str, why: str) -> None:
    """One line per run directory and process (the delivery process and sync open the journal too)."""
    if path not in _mode_logged:
        _mode_logged.add(path)
        _log.info("foundry-track: %s: the journal uses SQLite's journal_mode=%s (%s)%s", path, mode.upper(), why,
                  "; WAL needs memory shared by its readers, which hosts do not share. One host may write a "
                  "run directory at a time" if mode == "delete" else "")


_CONSTANTS: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
# PRAGMA user_version of journal.db. 0: version 0.1, every event JSON; 1: a
# metrics event may be packed floats. A journal of a later format is refused
# with a clear error rather than misread.
JOURNAL_FORMAT: Final = 1


def decode_data(data: str | bytes) -> Any:
    """An event's ``data`` column: JSON text, or a metrics event's packed
    floats (:func:`foundry_track.journal_writer.pack_floats`)."""
    if type(data) is bytes:
        return unpack_floats(data)
    # NaN and inf are written as JSON's NaN/Infinity extensions and read back.
    return json.loads(data, parse_constant=_CONSTANTS.__getitem__)


class Journal(JournalWriter):
    """One run's event log. Safe to use from many threads.

    ``append`` may be called from any thread; ``read_after``, ``position`` and
    ``set_position`` each use a per-thread SQLite connection.
    """

    def __init__(self, path: Path, *, flush_interval: float = 0.1, readonly: bool = False) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.readonly = readonly
        self._local = threading.local()
        self._committed = threading.Condition()
        self._tail: deque[Record] = deque(maxlen=_TAIL_RECORDS)
        self._init_writer()
        # Position updates a full disk refused: saved with the next one, or at close.
        self._unsaved_positions: dict[str, tuple[Any, ...]] = {}
        self._unregistered: set[str] = set()
        self.journal_mode: JournalMode = "wal"
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.journal_mode, why = choose_journal_mode(self.path.parent)
            if why is not None:
                _log_mode_once(self.path, self.journal_mode, why)
            with self._connect() as con:
                con.executescript(_SCHEMA)
                columns = {row[1] for row in con.execute("PRAGMA table_info(positions)")}
                if "checkpoint" not in columns:  # a run directory from version 0.1
                    con.execute("ALTER TABLE positions ADD COLUMN checkpoint TEXT")
                if self._format(con) < JOURNAL_FORMAT:
                    con.execute(f"PRAGMA user_version = {JOURNAL_FORMAT}")
        else:
            self._format(self._conn())
        row = self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        self._last_seq: int = row[0]

    def _format(self, con: sqlite3.Connection) -> int:
        version: int = con.execute("PRAGMA user_version").fetchone()[0]
        if version > JOURNAL_FORMAT:
            raise RunDirError(f"{self.path} was written by a newer foundry-track (journal format {version}, this "
                              f"version reads up to {JOURNAL_FORMAT}): pip install -U foundry-track")
        return version

    # -- connections ------------------------------------------------------- #

    def _connect(self, cached_statements: int = 128) -> sqlite3.Connection:
        if self.readonly:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
        else:
            con = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None,
                                  cached_statements=cached_statements)
            con.execute(f"PRAGMA journal_mode={self.journal_mode}")
            con.execute("PRAGMA synchronous=NORMAL")
        return con

    def _conn(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._connect()
        return con

    def close(self) -> None:
        """Stop the writer after a final flush, and close this thread's connection."""
        if not self.readonly:
            self._close_writer()
            self._save_unsaved_positions()
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
        return [Record(s, k, st, t, decode_data(d)) for s, k, st, t, d in rows]

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
                yield Record(s, k, st, t, decode_data(d))
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
        row: tuple[Any, ...] = (backend, seq, time.time(), batches, retries, busy_s, state)
        unsaved = self._unsaved_positions.pop(backend, None)
        if unsaved is not None:  # an earlier position that could not be saved: its totals are added
            row = (*row[:3], *(a + b for a, b in zip(row[3:6], unsaved[3:6])),
                   unsaved[6] if state is None else state)
        try:
            self._conn().execute(_SET_POSITION, row)
            self._unregistered.discard(backend)
        except sqlite3.OperationalError as exc:
            if self.readonly:
                raise
            # A full disk: the backend holds the events, its position is saved
            # with the next one (or at close). A crash meanwhile makes sync
            # offer them again from the last saved position, which stays
            # consistent with its saved checkpoint.
            self._unsaved_positions[backend] = row
            _log.debug("foundry-track: the position of backend %r could not be saved yet: %s", backend, exc)

    def _save_unsaved_positions(self) -> None:
        for backend in list(self._unregistered):
            self._unregistered.discard(backend)
            try:
                self.register_backend(backend)
            except sqlite3.Error:
                pass
        for backend, row in list(self._unsaved_positions.items()):
            self._unsaved_positions.pop(backend, None)
            try:
                self._conn().execute(_SET_POSITION, row)
            except sqlite3.Error as exc:
                _log.warning("foundry-track: the position of backend %r (event %d) could not be saved in %s (%s); "
                             "foundry-track sync will offer it the events after its last saved position again",
                             backend, row[1], self.path, exc)

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
        try:
            self._conn().execute(
                "INSERT OR IGNORE INTO positions (backend, seq, updated) VALUES (?, 0, ?)", (backend, time.time())
            )
        except sqlite3.OperationalError:
            if self.readonly:
                raise
            self._unregistered.add(backend)  # a full disk: again at close, unless a position is saved first

    # -- events set aside -------------------------------------------------- #

    def set_aside(self, backend: str, seq: int, error: str) -> None:
        """Record that ``backend`` failed on event ``seq`` for good (its
        position moves past it): ``sync`` offers it again later."""
        self._conn().execute(
            "INSERT INTO set_aside (backend, seq, error, time) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(backend, seq) DO UPDATE SET error = excluded.error, time = excluded.time",
            (backend, seq, error, time.time()),
        )

    def clear_set_aside(self, backend: str, seqs: Iterable[int]) -> None:
        """``backend`` holds these events now."""
        self._conn().executemany("DELETE FROM set_aside WHERE backend = ? AND seq = ?", [(backend, s) for s in seqs])

    def set_aside_seqs(self, backend: str) -> list[int]:
        """The events ``backend`` set aside, in journal order."""
        try:
            rows = self._conn().execute("SELECT seq FROM set_aside WHERE backend = ? ORDER BY seq", (backend,))
            return [row[0] for row in rows.fetchall()]
        except sqlite3.OperationalError:  # a read-only journal made before events were set aside
            return []

    def set_aside_counts(self) -> dict[str, int]:
        """How many events each backend set aside (behind its position: what only ``sync`` offers again)."""
        try:
            rows = self._conn().execute(
                "SELECT s.backend, COUNT(*) FROM set_aside s JOIN positions p ON p.backend = s.backend "
                "WHERE s.seq <= p.seq GROUP BY s.backend").fetchall()
        except sqlite3.OperationalError:
            return {}
        return {backend: count for backend, count in rows}

    def read_seqs(self, seqs: Iterable[int]) -> list[Record]:
        """The committed records with these seqs, in order."""
        wanted = sorted(set(seqs))
        records: list[Record] = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            rows = self._conn().execute(
                f"SELECT seq, kind, step, time, data FROM events WHERE seq IN ({','.join('?' * len(chunk))}) "
                "ORDER BY seq", chunk).fetchall()
            records += [Record(s, k, st, t, decode_data(d)) for s, k, st, t, d in rows]
        return records
