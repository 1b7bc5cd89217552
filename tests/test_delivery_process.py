"""``tracking.delivery: process``: the backends run in a delivery process that
reads the journal, so no tracker SDK shares the training process's interpreter.
Every backend is the real one; the faults are the fault-injection plugins."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import foundry_track as ft
from foundry_track.rundir import RUN_FILE
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.recorder import metric_steps, records
from tests.helpers.tb import scalars
from tests.helpers.wandb_offline import finished_runs

STEPS = 60


def _backend_threads() -> list[str]:
    # Workers are named foundry-track-<backend> (see dispatcher.Worker.begin).
    names = {f"foundry-track-{b}" for b in ("tensorboard", "wandb", "mlflow")}
    return [t.name for t in threading.enumerate() if t.name in names]


def test_three_backends_get_every_step_from_the_delivery_process(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    from mlflow import MlflowClient

    cfg = {"dir": str(tmp_path / "runs"), "fallback": None, "strict": True, "delivery": "process",
           "backends": {"tensorboard": {}, "wandb": {}, "mlflow": {"tracking_uri": mlflow_server.uri}}}
    with ft.init(cfg, run_name="in-a-child") as run:
        run.log_params({"optimizer": {"lr": 0.001}, "api_key": "sk-secret"})
        for step in range(STEPS):
            run.log({"train/loss": 1.0 / (step + 1)}, step=step)
        child = run._dispatcher.process  # type: ignore[union-attr]
        assert child.pid != os.getpid() and child.poll() is None
        assert _backend_threads() == []  # no tracker worker in the training process
    assert child.returncode == 0

    ids = run.backend_ids
    assert [s for s, _ in scalars(ids["tensorboard"]["log_dir"])["train/loss"]] == list(range(STEPS))
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    history = client.get_metric_history(ids["mlflow"]["run_id"], "train/loss")
    assert sorted(m.step for m in history) == list(range(STEPS))
    mlflow_run = client.get_run(ids["mlflow"]["run_id"])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.params["api_key"] == "***"
    (wandb_run,) = finished_runs(tmp_path)
    assert wandb_run.run_id == ids["wandb"]["run_id"]
    assert json.loads((run.dir / RUN_FILE).read_text())["status"] == "success"


def test_a_hanging_backend_is_stopped_at_flush_timeout_and_sync_delivers_later(
    tmp_path: Path, fault_plugins: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="foundry_track")
    out, healthy, flag = tmp_path / "hang.jsonl", tmp_path / "healthy.jsonl", tmp_path / "flag"
    flag.touch()
    cfg = {"dir": str(tmp_path / "runs"), "fallback": None, "delivery": "process", "flush_timeout": 1.0,
           "backends": {"hanging": {"out": str(out), "fault_flag": str(flag)}, "recorder": {"out": str(healthy)}}}
    run = ft.init(cfg)
    for step in range(STEPS):
        run.log({"loss": float(step)}, step=step)
    child = run._dispatcher.process  # type: ignore[union-attr]
    started = time.monotonic()
    undelivered = run.finish()
    took = time.monotonic() - started
    assert took < 1.0 + 5.0 + 2.0, took  # flush_timeout, the child's grace, bookkeeping
    assert child.poll() is not None  # the delivery process is gone, never left behind
    assert undelivered.get("hanging", 0) > 0 and not undelivered.get("recorder")
    assert metric_steps(healthy) == {s: 1 for s in range(STEPS)}
    # The child's log records reach this process's logging.
    assert f"foundry-track sync {run.dir} --backend hanging" in caplog.text

    flag.unlink()  # the tracker is back
    assert ft.sync(run.dir, backend="hanging") == {}
    assert metric_steps(out) == {s: 1 for s in range(STEPS)}


CHILD = textwrap.dedent(
    """
    import json, sys, time, foundry_track as ft
    out, root = sys.argv[1:3]
    backends = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {"recorder": {"out": out}}
    run = ft.init({"dir": root, "fallback": None, "delivery": "process", "flush_timeout": 10,
                   "backends": backends})
    for step in range(100):
        run.log({"loss": float(step)}, step=step)
    time.sleep(0.5)  # committed: the journal writer commits every 0.1 s
    print(run.dir, flush=True)
    time.sleep(60)
    """
)


def test_when_the_training_process_dies_the_delivery_process_delivers_and_closes_as_killed(
    tmp_path: Path, fault_plugins: Path
) -> None:
    out = tmp_path / "out.jsonl"
    trainer = subprocess.Popen([sys.executable, "-c", CHILD, str(out), str(tmp_path / "runs")],
                               stdout=subprocess.PIPE, text=True)
    assert trainer.stdout is not None
    run_dir = Path(trainer.stdout.readline().strip())
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait(timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if json.loads((run_dir / RUN_FILE).read_text()).get("status") == "killed":
            break
        time.sleep(0.1)
    assert json.loads((run_dir / RUN_FILE).read_text())["status"] == "killed"
    assert metric_steps(out) == {s: 1 for s in range(100)}
    assert [r["status"] for r in records(out) if r["hook"] == "finish"] == ["killed"]


def test_a_run_resumed_right_after_the_kill_waits_for_the_orphaned_delivery(
    tmp_path: Path, fault_plugins: Path
) -> None:
    # The orphan of the killed trainer and the resumed run's delivery process must
    # not deliver the same journal at once: every step arrives once, and the
    # backend run is closed as killed before the resumed one starts it again.
    out, flag = tmp_path / "out.jsonl", tmp_path / "flag"
    flag.touch()  # 20 ms per event: the orphan is still delivering when the run resumes
    backends = {"slow": {"out": str(out), "fault_flag": str(flag), "delay_per_event": 0.02}}
    trainer = subprocess.Popen([sys.executable, "-c", CHILD, str(out), str(tmp_path / "runs"), json.dumps(backends)],
                               stdout=subprocess.PIPE, text=True)
    assert trainer.stdout is not None
    run_dir = Path(trainer.stdout.readline().strip())
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait(timeout=10)
    cfg = {"dir": str(tmp_path / "runs"), "fallback": None, "delivery": "process", "backends": backends}
    with ft.init(cfg, resume=run_dir) as resumed:
        for step in range(100, 150):
            resumed.log({"loss": float(step)}, step=step)
    assert metric_steps(out) == {s: 1 for s in range(150)}
    hooks = [(r["hook"], r.get("status")) for r in records(out) if r["hook"] in ("start", "finish")]
    assert hooks == [("start", None), ("finish", "killed"), ("start", None), ("finish", "success")]
    assert json.loads((run_dir / RUN_FILE).read_text())["status"] == "success"


def test_delivery_is_checked_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ft.ConfigError, match="delivery"):
        ft.init({"dir": str(tmp_path), "delivery": "processes"})
    monkeypatch.setenv("FOUNDRY_TRACK_DELIVERY", "subprocess")
    with pytest.raises(ft.ConfigError, match="FOUNDRY_TRACK_DELIVERY='subprocess'"):
        ft.init({"dir": str(tmp_path)})


def _started(out: Path) -> bool:
    return any(r["hook"] == "start" for r in records(out))


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="scheduling policies are Linux's")
@pytest.mark.parametrize(("priority", "journal_mode", "policy"), [
    (None, None, "SCHED_IDLE"),
    ("batch", None, "SCHED_BATCH"),
    ("normal", None, "SCHED_OTHER"),
    # A rollback journal (network file systems): a starved reader would hold up the training process's commits.
    (None, "delete", "SCHED_BATCH"),
])
def test_the_delivery_process_yields_the_cpu_to_training(tmp_path: Path, fault_plugins: Path,
                                                         monkeypatch: pytest.MonkeyPatch, priority: str | None,
                                                         journal_mode: str | None, policy: str) -> None:
    """By default it runs under SCHED_IDLE (only on CPU time training leaves free);
    ``delivery_priority: batch`` is SCHED_BATCH, ``normal`` leaves it as it is.
    The training process keeps its own policy either way."""
    if journal_mode is not None:
        monkeypatch.setenv("FOUNDRY_TRACK_JOURNAL_MODE", journal_mode)
    out = tmp_path / "out.jsonl"
    cfg: dict[str, object] = {"dir": str(tmp_path / "runs"), "fallback": None, "delivery": "process",
                              "backends": {"recorder": {"out": str(out)}}}
    if priority is not None:
        cfg["delivery_priority"] = priority
    with ft.init(cfg) as run:
        run.log({"loss": 1.0}, step=0)
        child = run._dispatcher.process  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while not _started(out) and time.monotonic() < deadline:  # the policy is set before the backend starts
            time.sleep(0.05)
        assert _started(out)
        assert os.sched_getscheduler(child.pid) == getattr(os, policy)
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert metric_steps(out) == {0: 1}
