"""A backend that raises, hangs, or is 100x slower than the producer: the training
loop does not notice, the other backends get everything, finish() keeps its
timeout, and `foundry-track sync` later delivers the rest exactly once."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

import foundry_track as ft
from tests.helpers.recorder import metric_steps, records
from tests.helpers.tb import scalars

STEPS = 2000


def _run_with(fault: str, tmp_path: Path, *, delay: float = 0.0, flush_timeout: float = 1.0):
    flag = tmp_path / f"{fault}.flag"
    flag.touch()
    out = tmp_path / f"{fault}.jsonl"
    options = {"out": str(out), "fault_flag": str(flag), "delay_per_event": delay}
    cfg = {"dir": str(tmp_path / "runs"), "flush_timeout": flush_timeout,
           "backends": {fault: options, "recorder": {"out": str(tmp_path / "healthy.jsonl")}, "tensorboard": {}}}
    run = ft.init(cfg)
    run.log_params({"lr": 0.1})
    worst = 0.0
    started = time.perf_counter()
    for step in range(STEPS):
        t0 = time.perf_counter()
        run.log({"loss": 1.0 / (step + 1), "acc": step / STEPS}, step=step)
        worst = max(worst, time.perf_counter() - t0)
    logging_s = time.perf_counter() - started
    t0 = time.perf_counter()
    undelivered = run.finish()
    finish_s = time.perf_counter() - t0
    return run, flag, out, undelivered, logging_s, worst, finish_s


def _sync_cli(run_dir: Path, backend: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "foundry_track.cli", "sync", str(run_dir), "--backend", backend],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("fault, delay", [("raising", 0.0), ("hanging", 0.0), ("slow", 0.0005)])
def test_faulty_backend_is_isolated_and_sync_delivers_the_rest(
    fault: str, delay: float, tmp_path: Path, fault_plugins: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="foundry_track")
    run, flag, out, undelivered, logging_s, worst, finish_s = _run_with(fault, tmp_path, delay=delay)

    # The training loop never waited: a blocking fan-out would take >= 1 s for the
    # slow backend and forever for the hanging one.
    assert logging_s < 1.0, logging_s
    assert finish_s < 1.0 + 2.0  # flush_timeout plus bookkeeping
    # The other backends received everything.
    assert metric_steps(tmp_path / "healthy.jsonl") == {s: 1 for s in range(STEPS)}
    assert [s for s, _ in scalars(run.backend_ids["tensorboard"]["log_dir"])["loss"]] == list(range(STEPS))
    assert undelivered.get(fault, 0) > 0
    assert f"foundry-track sync {run.dir} --backend {fault}" in caplog.text
    if fault == "raising":
        assert "injected failure" in caplog.text and "Traceback" in caplog.text
        assert caplog.text.count("Traceback") == 1  # reported once, not per retry

    # Later, the backend is healthy again: sync delivers what is missing, once.
    flag.unlink()
    first = _sync_cli(run.dir, fault)
    assert first.returncode == 0, first.stderr
    steps = metric_steps(out)
    assert steps == {s: 1 for s in range(STEPS)}
    assert sum(1 for r in records(out) if r["hook"] == "params") == 1
    second = _sync_cli(run.dir, fault)
    assert second.returncode == 0, second.stderr
    assert metric_steps(out) == steps  # idempotent: nothing delivered twice


def test_strict_mode_reraises_backend_errors(tmp_path: Path, fault_plugins: Path) -> None:
    flag = tmp_path / "flag"
    flag.touch()
    run = ft.init({"dir": str(tmp_path), "strict": True, "flush_timeout": 2,
                   "backends": {"raising": {"out": str(tmp_path / "o.jsonl"), "fault_flag": str(flag)}}})
    run.log({"x": 1.0})
    with pytest.raises(ft.BackendError, match="injected failure"):
        run.finish()


def test_start_failure_switches_on_the_fallback(tmp_path: Path, fault_plugins: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    # "out" in a missing folder: the recorder's tracker_start raises FileNotFoundError.
    bad = tmp_path / "missing" / "o.jsonl"
    cfg = {"dir": str(tmp_path / "runs"), "fallback": "tensorboard", "flush_timeout": 5,
           "backends": {"recorder": {"out": str(bad)}}}
    with ft.init(cfg) as run:
        for step in range(50):
            run.log({"loss": float(step)}, step=step)
    assert "could not start" in caplog.text and "fallback backend 'tensorboard'" in caplog.text
    assert [s for s, _ in scalars(run.backend_ids["tensorboard"]["log_dir"])["loss"]] == list(range(50))
    assert run.undelivered == {"recorder": 50}
    bad.parent.mkdir()
    assert ft.sync(run.dir) == {}
    assert metric_steps(bad) == {s: 1 for s in range(50)}


def test_start_timeout_switches_on_the_fallback(tmp_path: Path, fault_plugins: Path) -> None:
    cfg = {"dir": str(tmp_path / "runs"), "start_timeout": 0.5, "flush_timeout": 2,
           "backends": {"recorder": {"out": str(tmp_path / "o.jsonl"), "start_delay": 3}}}
    t0 = time.perf_counter()
    with ft.init(cfg) as run:
        run.log({"loss": 1.0}, step=0)
        time.sleep(1.0)  # past start_timeout: the fallback is on
    assert time.perf_counter() - t0 < 4
    assert scalars(run.backend_ids["tensorboard"]["log_dir"])["loss"] == [(0, 1.0)]
    assert run.undelivered == {"recorder": 1}
