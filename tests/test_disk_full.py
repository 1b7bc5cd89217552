"""A run directory whose disk fills up mid-run, on a real (small) tmpfs.

Every event ``run.log`` accepted ends up counted: in the journal (and then
delivered), or reported by ``finish()`` as not journaled, with the reason, in
``run.not_journaled`` and in run.json. Needs root for ``mount``; skipped
otherwise.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import foundry_track as ft
from foundry_track.rundir import RUN_FILE
from tests.helpers.recorder import metric_steps

ACCEPTED = 4000  # events logged: 1000 before the disk fills, 3000 while it is full
BEFORE = 1000


@pytest.fixture
def small_fs(tmp_path: Path, fault_plugins: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs, unmounted afterwards (and the recorder backend installed)."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        gc.collect()  # SQLite connections left in reference cycles keep the mount busy
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


def _fill(fs: Path) -> Path:
    filler = fs / "filler"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: close() has nothing left to write
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == 28, exc
    return filler


def _journaled_steps(run_dir: Path) -> list[int]:
    con = sqlite3.connect(f"file:{run_dir / 'journal.db'}?mode=ro", uri=True)
    try:
        return [s for (s,) in con.execute("SELECT step FROM events WHERE kind = 'metrics' ORDER BY seq")]
    finally:
        con.close()


def _wait(condition: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def _start(fs: Path, tmp_path: Path, flush_timeout: float) -> ft.Run:
    return ft.init({"dir": str(fs / "runs"), "fallback": None, "flush_timeout": flush_timeout,
                    "journal_flush_interval": 0.05,
                    "backends": {"recorder": {"out": str(tmp_path / "rec.jsonl")}}})


def _log_through_a_full_disk(run: ft.Run, fs: Path) -> tuple[Path, float]:
    """Log BEFORE events, fill the disk, log the rest; return the filler and the slowest call."""
    for step in range(BEFORE):
        run.log({"loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
    journal = run._journal
    assert journal is not None
    _wait(lambda: journal.last_seq >= BEFORE)
    filler = _fill(fs)
    slowest = 0.0
    for step in range(BEFORE, ACCEPTED):
        t0 = time.perf_counter()
        run.log({"loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
        slowest = max(slowest, time.perf_counter() - t0)
    _wait(lambda: journal.write_error is not None)  # the writer met the full disk
    return filler, slowest


def test_events_logged_on_a_full_disk_are_committed_and_delivered_when_space_returns(
    small_fs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="foundry_track")
    run = _start(small_fs, tmp_path, flush_timeout=30)
    filler, slowest = _log_through_a_full_disk(run, small_fs)
    assert slowest < 0.5, slowest  # the training loop never waited on the disk
    assert len(_journaled_steps(run.dir)) < ACCEPTED
    filler.unlink()
    assert run.finish() == {}
    assert run.not_journaled == 0 and run.journal_error is None
    assert _journaled_steps(run.dir) == list(range(ACCEPTED))
    delivered = metric_steps(tmp_path / "rec.jsonl")
    assert sorted(delivered) == list(range(ACCEPTED)) and set(delivered.values()) == {1}
    # A retried commit does not run the step check again.
    assert "is lower than step" not in caplog.text
    assert "can be written again; no event was lost" in caplog.text
    data = json.loads((run.dir / RUN_FILE).read_text())
    assert data["status"] == "success" and data["not_journaled"] == 0


def test_a_disk_that_stays_full_is_reported_by_finish_and_in_run_json(
    small_fs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = _start(small_fs, tmp_path, flush_timeout=2)
    filler, _ = _log_through_a_full_disk(run, small_fs)
    t0 = time.monotonic()
    assert run.finish() == {}  # returns, never raises; the backend has everything that was journaled
    assert time.monotonic() - t0 < 2 + 5
    assert run.not_journaled > 0 and "database or disk is full" in str(run.journal_error)
    assert f"{run.not_journaled} logged events could not be written to the journal" in caplog.text
    # run.json was rewritten in the space it held: the run is not left `running`.
    data = json.loads((run.dir / RUN_FILE).read_text())
    assert data["status"] == "success"
    assert data["not_journaled"] == run.not_journaled and "disk is full" in data["journal_error"]
    filler.unlink()
    journaled = _journaled_steps(run.dir)
    assert len(journaled) + run.not_journaled == ACCEPTED
    assert journaled == list(range(len(journaled)))  # a complete prefix: nothing in between lost
    delivered = metric_steps(tmp_path / "rec.jsonl")
    assert sorted(delivered) == journaled and set(delivered.values()) == {1}
    print(f"accepted {ACCEPTED}, journaled {len(journaled)}, reported not journaled {run.not_journaled}")


def test_memory_held_for_a_full_disk_is_bounded_and_what_is_dropped_is_counted(
    small_fs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = _start(small_fs, tmp_path, flush_timeout=30)
    journal = run._journal
    assert journal is not None
    journal.max_held_scalars = 1000  # two values an event: ~500 events held
    filler, _ = _log_through_a_full_disk(run, small_fs)
    # The first failed commit holds one batch; what comes after it is held up
    # to the bound, and the newest beyond it are dropped.
    for step in range(ACCEPTED, 2 * ACCEPTED):
        run.log({"loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
    _wait(lambda: journal.dropped > 0 and len(journal._pending) <= 500)
    unwritten = journal._unwritten
    held = journal.not_journaled - journal.dropped
    assert 0 < held <= max(500, len(unwritten.records) if unwritten else 0), held
    assert "newer events are dropped and counted" in caplog.text
    filler.unlink()
    assert run.finish() == {}
    journaled = _journaled_steps(run.dir)
    assert run.not_journaled == journal.dropped > 0
    assert len(journaled) + run.not_journaled == 2 * ACCEPTED
    assert journaled == list(range(len(journaled)))  # the newest were dropped, the oldest kept
    assert sorted(metric_steps(tmp_path / "rec.jsonl")) == journaled
    assert json.loads((run.dir / RUN_FILE).read_text())["not_journaled"] == run.not_journaled
    print(f"accepted {2 * ACCEPTED}, journaled {len(journaled)}, dropped and reported {run.not_journaled}")
