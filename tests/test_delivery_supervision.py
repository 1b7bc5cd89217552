"""The delivery process (the default) is supervised: killed mid-run, it is
started again and resumes every backend from its durable position; after
``MAX_RESTARTS`` deaths threads of the training process take over. Either way
every event reaches every backend exactly once and ``finish()`` stays bounded.
A backend the delivery process cannot import is delivered in this process."""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import foundry_track as ft
from foundry_track.delivery.process import MAX_RESTARTS, ProcessDelivery
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.tb import accumulator


def _tb_steps(log_dir: str) -> collections.Counter[int]:
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(log_dir, size_guidance={event_accumulator.SCALARS: 0},
                                             purge_orphaned_data=False)
    acc.Reload()
    return collections.Counter(e.step for e in acc.Scalars("loss"))


def _buffered_steps(out: Path) -> collections.Counter[int]:
    return collections.Counter(json.loads(line)["step"] for line in out.read_text().splitlines())


def _log_and_kill(run: ft.Run, steps: int, kill_at: set[int]) -> list[int]:
    delivery = run._dispatcher
    assert isinstance(delivery, ProcessDelivery)
    killed = []
    for step in range(steps):
        run.log({"loss": 1.0 / (step + 1), "acc": step / steps}, step=step)
        if step in kill_at and delivery.process is not None:
            time.sleep(0.3)  # let it deliver something first
            killed.append(delivery.process.pid)
            os.kill(delivery.process.pid, signal.SIGKILL)
            deadline = time.monotonic() + 1.0  # noticed within a second
            while delivery.process is not None and delivery.process.pid == killed[-1] and time.monotonic() < deadline:
                time.sleep(0.01)
            assert delivery.process is None or delivery.process.pid != killed[-1], "the death was not noticed"
        time.sleep(0.002)
    return killed


@pytest.mark.parametrize("kills", [2, MAX_RESTARTS + 1], ids=["restarted", "threads-take-over"])
def test_killing_the_delivery_process_loses_and_doubles_nothing(
        kills: int, tmp_path: Path, mlflow_server: MlflowServer, fault_plugins: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    steps = 1500
    config = {"dir": str(tmp_path / "runs"), "fallback": None, "flush_timeout": 30, "delivery": "process",
              "backends": {"tensorboard": {}, "mlflow": {"tracking_uri": mlflow_server.uri},
                           "buffered": {"out": str(tmp_path / "buffered.jsonl")}}}
    with caplog.at_level(logging.INFO, logger="foundry_track"):
        run = ft.init(config)
        killed = _log_and_kill(run, steps, {200 + 250 * i for i in range(kills)})
        started = time.monotonic()
        undelivered = run.finish()
        finish_s = time.monotonic() - started
    assert len(killed) == kills
    assert undelivered == {}
    assert finish_s < 30 + 5 + 2
    delivery = run._dispatcher
    assert isinstance(delivery, ProcessDelivery)
    assert delivery.restarts == min(kills, MAX_RESTARTS)
    if kills > MAX_RESTARTS:
        assert delivery.process is None and delivery.local is not None
        assert "delivered by threads of this process from now on" in caplog.text
    want = collections.Counter(range(steps))
    assert _tb_steps(run.backend_ids["tensorboard"]["log_dir"]) == want
    assert _buffered_steps(tmp_path / "buffered.jsonl") == want
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    history = client.get_metric_history(run.backend_ids["mlflow"]["run_id"], "loss")
    assert collections.Counter(m.step for m in history) == want
    assert client.get_run(run.backend_ids["mlflow"]["run_id"]).info.status == "FINISHED"


def test_a_backend_the_delivery_process_cannot_import_is_delivered_here(
        tmp_path: Path, fault_plugins: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # On sys.path of this process only: a fresh interpreter cannot find it.
    monkeypatch.delenv("PYTHONPATH")
    out = tmp_path / "rec.jsonl"
    config: dict[str, Any] = {"dir": str(tmp_path / "runs"), "fallback": None, "delivery": "process",
                              "backends": {"tensorboard": {}, "recorder": {"out": str(out)}}}
    with caplog.at_level(logging.INFO, logger="foundry_track"):
        with ft.init(config) as run:
            for step in range(50):
                run.log({"loss": float(step)}, step=step)
    assert run.undelivered == {}
    assert "backend 'recorder' is delivered in this process (delivery: thread), because the delivery process " \
           "cannot import it" in caplog.text
    delivery = run._dispatcher
    assert isinstance(delivery, ProcessDelivery) and delivery.local is not None
    assert set(delivery.local.workers) == {"recorder"}
    steps = [json.loads(line)["step"] for line in out.read_text().splitlines() if '"metrics"' in line]
    assert sorted(steps) == list(range(50))
    acc = accumulator(run.backend_ids["tensorboard"]["log_dir"])
    assert [e.step for e in acc.Scalars("loss")] == list(range(50))  # the other backend, in the delivery process
