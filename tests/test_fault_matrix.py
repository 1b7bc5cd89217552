"""The fault matrix: a trainer logging 10 scalars per step to TensorBoard,
MLflow (a real server), W&B (offline) and a buffered third-party backend is
SIGKILLed at different moments — while the backends start, early and late in
the run, right after a burst (mid-batch), during ``finish()``, and the whole
job at once (trainer, delivery process, the trackers' services) — then
``foundry-track sync RUN_DIR`` runs. Afterwards every backend holds exactly the
journal's steps, each once, read back with each tracker's own reader, and the
MLflow run is not left RUNNING.

``FT_FAULT_MATRIX_REPORT=FILE`` appends one JSON line per case with the
counts (expected / received / duplicated per backend), for the docs.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import event_accumulator

from foundry_track.journal import JOURNAL_FILE, Journal
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.wandb_offline import read_all_offline_runs

STEP_METRIC = "trainer/step"

CHILD = textwrap.dedent("""
    import json, sys, time
    import foundry_track as ft
    config, mode = json.loads(sys.argv[1]), sys.argv[2]
    run = ft.init(config)
    print(run.dir, flush=True)
    step = 0
    while True:
        run.log({f"m{i}": step + i / 10 for i in range(10)}, step=step)
        step += 1
        if step == 20:
            print("logging", flush=True)
        if mode == "burst" and step % 200 == 0:
            print("burst", step, flush=True)   # 200 steps at once, then a pause
            time.sleep(0.3)
        elif mode == "finish" and step == 1500:
            print("finishing", flush=True)
            run.finish()
            print("finished", flush=True)
            time.sleep(60)
        elif mode != "burst":
            time.sleep(0.002)
""")

# (case, child mode, seconds after the run directory is printed, or a line to wait for)
CASES = [
    ("during start", "steady", "logging"),
    ("early", "steady", 1.5),
    ("late", "steady", 4.0),
    ("mid-batch", "burst", "burst 600"),
    ("during finish", "finish", "finishing"),
    # The whole job at once (a scheduler cancelling it): the trainer, its
    # delivery process and the trackers' own service processes.
    ("whole job", "steady", 3.0),
]


def _tensorboard_steps(log_dir: Path) -> list[int]:
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.SCALARS: 0},
                                             purge_orphaned_data=False)
    acc.Reload()
    return [e.step for e in acc.Scalars("m0")] if "m0" in acc.Tags()["scalars"] else []


def _mlflow(uri: str, run_id: str) -> tuple[list[int], str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return [m.step for m in client.get_metric_history(run_id, "m0")], client.get_run(run_id).info.status


def _wandb_steps(root: Path) -> list[int]:
    runs = read_all_offline_runs(root)
    assert len(runs) <= 1, [r.run_id for r in runs]
    return [int(row[STEP_METRIC]) for r in runs for row in r.history if "m0" in row]


def _buffered_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in out.read_text().splitlines()] if out.exists() else []


def _kill_at(child: subprocess.Popen[str], moment: float | str, *, group: bool = False) -> None:
    assert child.stdout is not None
    if isinstance(moment, float):
        time.sleep(moment)
    else:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not child.stdout.readline().startswith(moment):
            pass
        # "logging": 20 steps in, the backends still starting (W&B takes a second);
        # "finishing": inside finish(), delivering what is left, closing the backends.
        time.sleep(0.15 if moment == "logging" else 0.2 if moment == "finishing" else 0.0)
    if group:
        os.killpg(child.pid, signal.SIGKILL)
    else:
        os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)


@pytest.mark.parametrize(("case", "mode", "moment"), CASES, ids=[c[0].replace(" ", "-") for c in CASES])
def test_sigkill_then_sync_leaves_every_backend_with_every_step_once(
        case: str, mode: str, moment: float | str, tmp_path: Path, mlflow_server: MlflowServer,
        fault_plugins: Path) -> None:
    config = {
        "dir": str(tmp_path / "runs"), "project": "fault-matrix", "fallback": None, "flush_timeout": 20,
        "backends": {"tensorboard": {}, "mlflow": {"tracking_uri": mlflow_server.uri},
                     "wandb": {"dir": str(tmp_path / "wandb")}, "buffered": {"out": str(tmp_path / "buffered.jsonl")}},
    }
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(config), mode], stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    assert child.stdout is not None
    run_dir = Path(child.stdout.readline().strip())
    _kill_at(child, moment, group=case == "whole job")

    result = subprocess.run([sys.executable, "-m", "foundry_track.cli", "sync", str(run_dir), "--timeout", "120"],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = sorted(r.step for r in Journal(run_dir / JOURNAL_FILE, readonly=True).iter_records("metrics"))
    assert expected, "the child logged nothing before the kill"
    ids = json.loads((run_dir / "run.json").read_text())["backend_ids"]
    mlflow_steps, mlflow_status = _mlflow(mlflow_server.uri, ids["mlflow"]["run_id"])
    got = {
        "tensorboard": _tensorboard_steps(Path(ids["tensorboard"]["log_dir"])),
        "mlflow": mlflow_steps,
        "wandb": _wandb_steps(tmp_path / "wandb"),
        "buffered": _buffered_steps(tmp_path / "buffered.jsonl"),
    }
    report = {name: {"expected": len(expected), "received": len(steps),
                     "missing": len(set(expected) - set(steps)),
                     "duplicated": sum(c - 1 for c in collections.Counter(steps).values())}
              for name, steps in got.items()}
    if os.environ.get("FT_FAULT_MATRIX_REPORT"):
        with open(os.environ["FT_FAULT_MATRIX_REPORT"], "a") as fh:
            fh.write(json.dumps({"case": case, **report}) + "\n")
    wrong = {name: r for name, r in report.items() if sorted(got[name]) != expected}
    assert not wrong, f"{case}: {wrong}"
    assert mlflow_status != "RUNNING"
