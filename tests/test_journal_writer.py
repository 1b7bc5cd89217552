"""The journal's writer when commits fail (a full disk, simulated: no root
needed; tests/test_disk_full.py does it for real on a tmpfs)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import foundry_track as ft
from foundry_track.journal import JOURNAL_FILE, Journal
from foundry_track.rundir import RUN_FILE
from tests.helpers.recorder import metric_steps


class DiskFull:
    """Makes the journal's inserts (or position updates) fail while ``full`` is set."""

    def __init__(self) -> None:
        self.full = threading.Event()
        self.failures = 0

    def check(self) -> None:
        if self.full.is_set():
            self.failures += 1
            raise sqlite3.OperationalError("database or disk is full")

    def break_inserts(self, journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
        insert = journal._insert

        def failing_insert(rows: list[Any], count: int) -> None:
            self.check()
            insert(rows, count)

        monkeypatch.setattr(journal, "_insert", failing_insert)


@pytest.fixture
def run(tmp_path: Path, fault_plugins: Path) -> ft.Run:
    return ft.init({"dir": str(tmp_path / "runs"), "fallback": None, "flush_timeout": 2,
                    "journal_flush_interval": 0.02, "backends": {"recorder": {"out": str(tmp_path / "rec.jsonl")}}})


def _wait(condition: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _journaled(run: ft.Run) -> list[int]:
    assert run.dir is not None
    reader = Journal(run.dir / JOURNAL_FILE, readonly=True)
    try:
        return [r.step for r in reader.iter_records("metrics")]
    finally:
        reader.close()


def _log_through_an_outage(run: ft.Run, disk: DiskFull, monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps 0..999 committed, then 1000..2999 logged while every commit fails."""
    journal = run._journal
    assert journal is not None
    for step in range(1000):
        run.log({"a": float(step)}, step=step)
    _wait(lambda: journal.last_seq >= 1000)
    disk.break_inserts(journal, monkeypatch)
    disk.full.set()
    for step in range(1000, 3000):
        run.log({"a": float(step)}, step=step)
    _wait(lambda: disk.failures >= 3)  # retried, once per interval


def test_a_retried_commit_checks_each_event_once_and_loses_nothing(
    run: ft.Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="foundry_track")
    disk = DiskFull()
    _log_through_an_outage(run, disk, monkeypatch)
    assert run._journal is not None and run._journal.not_journaled == 2000
    disk.full.clear()
    assert run.finish() == {}
    assert run.not_journaled == 0
    assert _journaled(run) == list(range(3000))
    delivered = metric_steps(tmp_path / "rec.jsonl")
    assert sorted(delivered) == list(range(3000)) and set(delivered.values()) == {1}
    # Before: each retry ran the step check again ("step 1000 is lower than step 2999").
    assert "is lower than step" not in caplog.text
    assert caplog.text.count("cannot write the journal") == 1


def test_finish_reports_what_a_journal_that_stays_unwritable_did_not_get(
    run: ft.Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = DiskFull()
    _log_through_an_outage(run, disk, monkeypatch)
    t0 = time.monotonic()
    assert run.finish() == {}  # never raises
    assert time.monotonic() - t0 < 2 + 3
    assert run.not_journaled == 2000 and run.journal_error == "OperationalError: database or disk is full"
    assert _journaled(run) == list(range(1000))
    assert run.dir is not None
    data = json.loads((run.dir / RUN_FILE).read_text())
    assert data["status"] == "success" and data["not_journaled"] == 2000
    assert data["journal_error"] == "OperationalError: database or disk is full"


def test_events_held_for_an_unwritable_journal_are_bounded_and_drops_counted(
    run: ft.Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    journal = run._journal
    assert journal is not None
    journal.max_held_scalars = 100  # one value an event: ~100 events held
    disk = DiskFull()
    _log_through_an_outage(run, disk, monkeypatch)
    slowest = 0.0
    for step in range(3000, 6000):
        t0 = time.perf_counter()
        run.log({"a": float(step)}, step=step)
        slowest = max(slowest, time.perf_counter() - t0)
    assert slowest < 0.5  # never waits for the disk
    _wait(lambda: journal.dropped > 0 and len(journal._pending) <= 100)
    assert "newer events are dropped and counted" in caplog.text
    disk.full.clear()
    assert run.finish() == {}
    journaled = _journaled(run)
    assert run.not_journaled == journal.dropped
    assert len(journaled) + run.not_journaled == 6000
    assert journaled == list(range(len(journaled)))  # the oldest are kept
    assert sorted(metric_steps(tmp_path / "rec.jsonl")) == journaled


class _FailingPositions:
    """A connection whose position updates fail while ``disk.full`` is set."""

    def __init__(self, con: sqlite3.Connection, disk: DiskFull) -> None:
        self.con, self.disk = con, disk

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("INSERT INTO positions"):
            self.disk.check()
        return self.con.execute(sql, *args)

    def close(self) -> None:
        self.con.close()


def test_a_position_that_cannot_be_saved_is_saved_with_the_next_or_at_close(tmp_path: Path) -> None:
    journal = Journal(tmp_path / JOURNAL_FILE)
    disk = DiskFull()
    journal._local.con = _FailingPositions(journal._conn(), disk)
    disk.full.set()
    journal.set_position("a", 10, batches=1, checkpoint={"offset": "100"})  # does not raise
    journal.set_position("a", 20, batches=2)
    journal.set_position("b", 5, batches=1)
    assert journal.positions() == {}
    disk.full.clear()
    journal.set_position("a", 30, batches=3)
    assert journal.positions()["a"]["seq"] == 30 and journal.positions()["a"]["batches"] == 6
    assert journal.checkpoint("a") == {"offset": "100"}
    journal.close()  # saves b's
    reader = Journal(tmp_path / JOURNAL_FILE, readonly=True)
    assert reader.positions()["b"]["seq"] == 5
    reader.close()
