"""How the journal stores events, and how often its writer thread wakes.

Metrics events whose values are all floats are stored as packed doubles (a
BLOB); everything else as JSON text. Both must read back exactly, and journals
written before packing existed must still read.
"""

from __future__ import annotations

import json
import math
import sqlite3
import struct
import threading
import time
from pathlib import Path

import pytest

from foundry_track.errors import RunDirError
from foundry_track.journal import JOURNAL_FILE, JOURNAL_FORMAT, Journal, decode_data
from foundry_track.journal_writer import pack_floats


def _write_and_read(tmp_path: Path, events: list[tuple[str, dict]]) -> tuple[list[object], list[dict]]:
    journal = Journal(tmp_path / JOURNAL_FILE)
    for step, (kind, data) in enumerate(events):
        journal.append(kind, step, time.time(), data)
    journal.flush()
    journal.close()
    con = sqlite3.connect(tmp_path / JOURNAL_FILE)
    stored = [d for (d,) in con.execute("SELECT data FROM events ORDER BY seq")]
    con.close()
    reader = Journal(tmp_path / JOURNAL_FILE, readonly=True)
    try:
        read = [r.data for r in reader.read_after(0, 10**7)]
    finally:
        reader.close()
    return stored, read


def test_float_metrics_are_packed_and_read_back_bit_for_bit(tmp_path: Path) -> None:
    values = {"loss": 0.1 + 0.2, "lr": 3e-4, "nan": math.nan, "inf": math.inf, "-inf": -math.inf,
              "neg_zero": -0.0, "tiny": 5e-324, "big": 1.7976931348623157e308, "é/ключ \"q\"\n": 1.0}
    stored, read = _write_and_read(tmp_path, [("metrics", values), ("metrics", values)])
    assert all(type(d) is bytes for d in stored), stored
    for got in read:
        assert list(got) == list(values)  # keys and their order
        assert all(type(v) is float for v in got.values())
        # Bit for bit: NaN, the infinities and -0.0 included.
        assert [struct.pack("<d", v) for v in got.values()] == [struct.pack("<d", v) for v in values.values()]


def test_other_events_stay_json_and_read_back_with_their_types(tmp_path: Path) -> None:
    events = [
        ("metrics", {"step_count": 3, "loss": 0.5}),  # an int among floats: JSON keeps it an int
        ("metrics", {"ok": True}),
        ("params", {"lr": 0.001, "name": "run", "layers": [1, 2]}),
        ("text", {"key": "notes", "text": "hello"}),
    ]
    stored, read = _write_and_read(tmp_path, events)
    assert all(type(d) is str for d in stored), stored
    assert read[0] == {"step_count": 3, "loss": 0.5} and type(read[0]["step_count"]) is int
    assert read[1] == {"ok": True}
    assert read[2] == {"lr": 0.001, "name": "run", "layers": [1, 2]}
    assert read[3] == {"key": "notes", "text": "hello"}


def test_a_journal_written_as_json_only_still_reads(tmp_path: Path) -> None:
    # What version 0.1 wrote: every data column JSON text, NaN as JSON's extension.
    journal = Journal(tmp_path / JOURNAL_FILE)
    journal.close()
    con = sqlite3.connect(tmp_path / JOURNAL_FILE)
    con.execute("INSERT INTO events VALUES (1, 'metrics', 0, 1.0, ?)", ('{"loss":0.5,"nan":NaN,"inf":-Infinity}',))
    con.execute("PRAGMA user_version = 0")
    con.commit()
    con.close()
    # Resumed by this version: its events are packed, the old one still reads.
    resumed = Journal(tmp_path / JOURNAL_FILE)
    resumed.append("metrics", 1, 2.0, {"loss": 0.25})
    resumed.close()
    reader = Journal(tmp_path / JOURNAL_FILE, readonly=True)
    try:
        old, new = reader.read_after(0, 10)
    finally:
        reader.close()
    assert old.data["loss"] == 0.5 and math.isnan(old.data["nan"]) and old.data["inf"] == -math.inf
    assert new.data == {"loss": 0.25}


def test_the_journal_says_its_format_and_a_newer_one_is_refused_clearly(tmp_path: Path) -> None:
    Journal(tmp_path / JOURNAL_FILE).close()
    con = sqlite3.connect(tmp_path / JOURNAL_FILE)
    assert con.execute("PRAGMA user_version").fetchone()[0] == JOURNAL_FORMAT
    con.execute(f"PRAGMA user_version = {JOURNAL_FORMAT + 1}")
    con.close()
    for readonly in (True, False):
        with pytest.raises(RunDirError, match=r"newer foundry-track .*pip install -U foundry-track"):
            Journal(tmp_path / JOURNAL_FILE, readonly=readonly)


def test_packing_is_smaller_than_json_and_self_describing() -> None:
    values = {f"train/metric_{i}": 1 / (i + 3) for i in range(10)}
    packed = pack_floats(values)
    assert len(packed) < len(json.dumps(values))
    assert decode_data(packed) == values
    assert decode_data(json.dumps(values)) == values


def test_many_key_sets_stay_correct_past_the_caches(tmp_path: Path) -> None:
    # A loop that makes up new metric names every step must not grow the key
    # caches without bound, nor read one step's keys for another's.
    events = [("metrics", {f"m{i}": float(i), "shared": -float(i)}) for i in range(2500)]
    _, read = _write_and_read(tmp_path, events)
    assert read == [data for _, data in events]


class _CountingEvent(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


@pytest.mark.parametrize(("every", "most", "least"), [(1, 20, 5), (20, 10**9, 30)])
def test_the_writer_sleeps_between_commits_unless_the_loop_logs_fast(
        tmp_path: Path, every: int, most: int, least: int) -> None:
    # A 1 ms training step logs ~100 events per 0.1 s commit: the writer wakes
    # about once per commit (each wake-up takes the GIL and, with the other
    # cores busy, the training thread's core). A loop logging as fast as it can
    # 20 times faster (20,000 events/s) is looked at every 10 ms so its queue stays short.
    journal = Journal(tmp_path / JOURNAL_FILE, flush_interval=0.1)
    journal._stop = stop = _CountingEvent()
    journal.start()
    try:
        time.sleep(0.25)  # past the first commit
        before, end, step = stop.waits, time.monotonic() + 1.0, 0
        while time.monotonic() < end:
            journal.append("metrics", step, time.time(), {"loss": float(step)})
            step += 1
            if step % every == 0:
                time.sleep(0.001)
        waits = stop.waits - before
    finally:
        journal.close()
    assert least <= waits <= most, f"{waits} wake-ups in 1 s, {step} events"
    reader = Journal(tmp_path / JOURNAL_FILE, readonly=True)
    try:
        assert [r.step for r in reader.read_after(0, 10**7)] == list(range(step))
    finally:
        reader.close()
