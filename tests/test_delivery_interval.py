"""``tracking.delivery_interval``: while the run goes on, each backend gets one
batch per interval, whatever the step rate, so a tracker's fixed cost per call
(an HTTP request, a flush) is paid once per interval; ``finish()`` does not
wait out the interval. Checked in both deliveries, with the recorder plugin
(registered the normal way) and the batch counts the journal keeps per backend."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import foundry_track as ft
from foundry_track.errors import ConfigError
from foundry_track.journal import JOURNAL_FILE, Journal
from tests.helpers.recorder import metric_steps

SECONDS = 3.0  # of logging, a step every 5 ms


def _run(tmp_path: Path, interval: float, delivery: str) -> tuple[int, int, float, Path]:
    """Log for SECONDS; return (steps logged, batches delivered, finish seconds, recorder file)."""
    out = tmp_path / f"recorder-{interval}-{delivery}.jsonl"
    cfg = {"dir": str(tmp_path / "runs"), "fallback": None, "strict": True, "delivery": delivery,
           "delivery_interval": interval, "backends": {"recorder": {"out": str(out)}}}
    run = ft.init(cfg)
    step = 0
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        run.log({"loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
        step += 1
        time.sleep(0.005)
    t0 = time.monotonic()
    undelivered = run.finish()
    finish_s = time.monotonic() - t0
    assert not any(undelivered.values()), undelivered
    assert run.dir is not None
    journal = Journal(run.dir / JOURNAL_FILE, readonly=True)
    try:
        batches = journal.positions()["recorder"]["batches"]
    finally:
        journal.close()
    return step, batches, finish_s, out


@pytest.mark.parametrize("delivery", ["process", "thread"])
def test_one_batch_per_interval_and_finish_does_not_wait_for_the_next(
        tmp_path: Path, fault_plugins: Path, delivery: str) -> None:
    steps, batches, finish_s, out = _run(tmp_path, 1.0, delivery)
    # Every step arrived, once.
    assert metric_steps(out) == {s: 1 for s in range(steps)}
    # ~3 s of logging with a 1 s interval: a round when the backend started,
    # then at most one per second, then what finish() delivers.
    assert 1 <= batches <= SECONDS / 1.0 + 3, batches
    assert finish_s < 10, finish_s  # a_long_interval_does_not_hold_finish checks the rest is cut short


def test_interval_zero_delivers_as_soon_as_committed(tmp_path: Path, fault_plugins: Path) -> None:
    steps, batches, _, out = _run(tmp_path, 0.0, "thread")
    assert metric_steps(out) == {s: 1 for s in range(steps)}
    # The journal commits every 0.1 s: without an interval, many more, smaller batches.
    assert batches > SECONDS / 1.0 + 3, batches


def test_a_long_interval_does_not_hold_finish(tmp_path: Path, fault_plugins: Path) -> None:
    out = tmp_path / "recorder.jsonl"
    cfg = {"dir": str(tmp_path / "runs"), "fallback": None, "delivery_interval": 30,
           "backends": {"recorder": {"out": str(out)}}}
    with ft.init(cfg) as run:
        for step in range(50):
            run.log({"loss": float(step)}, step=step)
        deadline = time.monotonic() + 60
        while len(metric_steps(out)) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        # The backend holds the first 50 steps: it delivered a round and now rests for 30 s.
        assert len(metric_steps(out)) == 50
        for step in range(50, 100):
            run.log({"loss": float(step)}, step=step)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 10
    assert metric_steps(out) == {s: 1 for s in range(100)}


@pytest.mark.parametrize("bad", [-1, 61, "soon"])
def test_a_bad_interval_is_refused_with_the_field_named(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match="delivery_interval"):
        ft.init({"dir": str(tmp_path / "runs"), "delivery_interval": bad, "backends": {"tensorboard": {}}})
