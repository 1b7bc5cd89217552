"""A backend that raises, hangs, or is 100x slower than the producer: the training
loop does not notice, the other backends get everything, finish() keeps its
timeout, and `foundry-track sync` later delivers the rest exactly once."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

import foundry_track as ft
from foundry_track.journal import JOURNAL_FILE, Journal
from foundry_track.worker import _ASIDE_IN_A_ROW
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
    # Every backend started (a delivery process takes a moment under load), so
    # what is measured is delivery against finish's deadline, not start-up.
    end = time.monotonic() + 30
    while set(cfg["backends"]) - set(run.backend_ids) and time.monotonic() < end:
        time.sleep(0.05)
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


@pytest.mark.parametrize("fault, delay", [("raising", 0.0), ("hanging", 0.0), ("slow", 0.002)])
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
    finishes = [(r["status"], r["complete"]) for r in records(out) if r["hook"] == "finish"]
    if fault == "raising":
        assert finishes == [("success", False)]  # abandoned at the deadline, closed anyway, as incomplete
    elif fault == "hanging":
        assert finishes == []  # stuck in a call past the deadline: the next sync closes its run
    else:
        assert finishes in ([], [("success", False)])  # closed if its last call returned in time

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
    # The sync that completed the stream closed the run as complete.
    assert [r["complete"] for r in records(out) if r["hook"] == "finish"][-1] is True


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
        t0 = time.perf_counter()
    assert time.perf_counter() - t0 < 2  # a start that failed for good is not waited for
    assert "could not start" in caplog.text and "fallback backend 'tensorboard'" in caplog.text
    assert "Retrying" not in caplog.text
    assert Journal(run.dir / JOURNAL_FILE, readonly=True).positions()["recorder"]["errors"] == 1  # not retried
    assert [s for s, _ in scalars(run.backend_ids["tensorboard"]["log_dir"])["loss"]] == list(range(50))
    assert run.undelivered == {"recorder": 50}
    bad.parent.mkdir()
    assert ft.sync(run.dir) == {}
    assert metric_steps(bad) == {s: 1 for s in range(50)}


def test_start_timeout_switches_on_the_fallback(tmp_path: Path, fault_plugins: Path) -> None:
    # Still starting when finish's deadline comes: counted as undelivered, and
    # finish keeps its bound.
    cfg = {"dir": str(tmp_path / "runs"), "start_timeout": 0.5, "flush_timeout": 1,
           "backends": {"recorder": {"out": str(tmp_path / "o.jsonl"), "start_delay": 3}}}
    with ft.init(cfg) as run:
        run.log({"loss": 1.0}, step=0)
        time.sleep(1.0)  # past start_timeout: the fallback is on
        t0 = time.perf_counter()
    assert time.perf_counter() - t0 < 1 + 0.5
    assert scalars(run.backend_ids["tensorboard"]["log_dir"])["loss"] == [(0, 1.0)]
    assert run.undelivered == {"recorder": 1}


def test_a_start_that_returns_after_the_fallback_took_over_just_continues(tmp_path: Path,
                                                                         fault_plugins: Path) -> None:
    out = tmp_path / "o.jsonl"
    cfg = {"dir": str(tmp_path / "runs"), "start_timeout": 0.3, "flush_timeout": 20,
           "backends": {"recorder": {"out": str(out), "start_delay": 1.5}}}
    with ft.init(cfg) as run:
        for step in range(30):
            run.log({"loss": float(step)}, step=step)
            time.sleep(0.01)
        time.sleep(0.5)  # past start_timeout: the fallback is on
    # Both hold every event: the fallback took over, then the backend started after all.
    assert run.undelivered == {}
    assert [s for s, _ in scalars(run.backend_ids["tensorboard"]["log_dir"])["loss"]] == list(range(30))
    assert metric_steps(out) == {s: 1 for s in range(30)}
    assert [(r["status"], r["complete"]) for r in records(out) if r["hook"] == "finish"] == [("success", True)]


# --------------------------------------------------------------------------- #
# events a backend refuses for good are set aside, not fatal
# --------------------------------------------------------------------------- #


def _picky_run(tmp_path: Path, values: list[float], *, flush_timeout: float = 20) -> tuple[ft.Run, Path, Path, float]:
    flag, out = tmp_path / "picky.flag", tmp_path / "picky.jsonl"
    flag.touch()
    cfg = {"dir": str(tmp_path / "runs"), "flush_timeout": flush_timeout,
           "backends": {"picky": {"out": str(out), "fault_flag": str(flag)},
                        "recorder": {"out": str(tmp_path / "healthy.jsonl")}}}
    run = ft.init(cfg)
    for step, value in enumerate(values):
        run.log({"loss": value, "acc": 0.5}, step=step)
    t0 = time.perf_counter()
    run.finish()
    return run, flag, out, time.perf_counter() - t0


def test_a_value_refused_for_good_is_set_aside_and_the_stream_goes_on(
        tmp_path: Path, fault_plugins: Path, caplog: pytest.LogCaptureFixture) -> None:
    from foundry_track.history import load_run

    caplog.set_level(logging.WARNING, logger="foundry_track")
    bad, steps = 10, 61  # 50 events after the bad one
    values = [math.inf if s == bad else 1.0 / (s + 1) for s in range(steps)]
    run, flag, out, finish_s = _picky_run(tmp_path, values)

    # Only the bad row is missing (a batch that fails is split until the bad row is alone).
    assert metric_steps(out) == {s: 1 for s in range(steps) if s != bad}
    assert metric_steps(tmp_path / "healthy.jsonl") == {s: 1 for s in range(steps)}
    assert run.undelivered == {"picky": 1}
    assert finish_s < 10, finish_s
    seq = Journal(run.dir / JOURNAL_FILE, readonly=True).set_aside_seqs("picky")
    assert len(seq) == 1
    assert f"cannot take event {seq[0]} (metrics, step {bad})" in caplog.text
    assert [(r["status"], r["complete"]) for r in records(out) if r["hook"] == "finish"] == [("success", False)]
    state = load_run(run.dir).backends["picky"]
    assert (state.set_aside, state.pending, state.delivered) == (1, 1, steps - 1)

    # `foundry-track show` lists it; sync offers it again once the backend takes it.
    shown = subprocess.run([sys.executable, "-m", "foundry_track.cli", "show", str(run.dir), "--json"],
                           capture_output=True, text=True, timeout=120)
    assert json.loads(shown.stdout)["run"]["backends"]["picky"]["set_aside"] == 1
    assert ft.sync(run.dir) == {"picky": 1}  # still refused: stays set aside
    flag.unlink()
    assert ft.sync(run.dir) == {}
    assert metric_steps(out) == {s: 1 for s in range(steps)}
    assert [r["complete"] for r in records(out) if r["hook"] == "finish"] == [False, False, True]
    assert Journal(run.dir / JOURNAL_FILE, readonly=True).set_aside_seqs("picky") == []
    assert ft.sync(run.dir) == {} and metric_steps(out) == {s: 1 for s in range(steps)}


def test_a_backend_that_refuses_everything_gives_up_and_sync_completes_it(
        tmp_path: Path, fault_plugins: Path) -> None:
    steps = 40
    run, flag, out, finish_s = _picky_run(tmp_path, [math.nan] * steps)
    # Not set aside one by one: after 10 in a row the backend, not the data, is failing.
    aside = _ASIDE_IN_A_ROW - 1
    assert run.undelivered == {"picky": steps}
    assert metric_steps(out) == {}
    assert [(r["status"], r["complete"]) for r in records(out) if r["hook"] == "finish"] == [("success", False)]
    assert finish_s < 5, finish_s  # it gave up long before the deadline
    assert len(Journal(run.dir / JOURNAL_FILE, readonly=True).set_aside_seqs("picky")) == aside

    flag.unlink()
    assert ft.sync(run.dir) == {}
    assert metric_steps(out) == {s: 1 for s in range(steps)}
    assert [r["complete"] for r in records(out) if r["hook"] == "finish"] == [False, True]
