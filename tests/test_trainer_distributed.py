"""The Model Foundry trainer under `torchrun --nproc_per_node=2` (gloo, CPU, DDP).

One job gives one tracker run in every backend (TensorBoard, MLflow on SQLite,
W&B offline), and the logged ``train/loss`` is the mean of the two ranks' own
losses. Each rank writes its local loss to its structured log file (the
trainer does so at DEBUG level), and the test compares the backends with those.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.tb import scalars
from tests.helpers.wandb_offline import finished_runs
from tests.test_trainer_run import mlflow_client, only_run, tiny, wandb_steps

TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
pytestmark = pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
LOGGED_STEPS = [5, 10, 15, 20]


def _train_under_torchrun(tmp_path: Path, config: dict) -> tuple[subprocess.CompletedProcess[str], float]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # WANDB_MODE/WANDB_DIR come from the conftest
    t0 = time.monotonic()
    result = subprocess.run(
        [TORCHRUN, "--nproc_per_node=2", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0",
         "-m", "model_foundry.cli", "train", str(path), "--base-dir", str(tmp_path), "--no-progress", "--sample", "0"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    return result, time.monotonic() - t0


def _local_losses(log_file: Path) -> dict[int, float]:
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    return {e["step"]: e["local_loss"] for e in entries if "local_loss" in e}


def test_one_run_per_backend_and_loss_is_the_mean_of_the_ranks(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny(
        tmp_path,
        training={"steps": 20, "num_threads": 1, "checkpoint_every_n_steps": 10},
        logging={"file_level": "DEBUG", "use_structured_logging": True},
        tracking={"flush_timeout": 30, "backends": {"tensorboard": {}, "mlflow": {"tracking_uri": uri}, "wandb": {}}},
    )
    result, elapsed = _train_under_torchrun(tmp_path, config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("checkpoint:") == 1  # only rank 0 prints the summary

    # Each rank trained on its own batches: different local losses at every logged step.
    local = [_local_losses(tmp_path / "logs" / "tiny.jsonl"), _local_losses(tmp_path / "logs" / "tiny-rank1.jsonl")]
    assert sorted(local[0]) == sorted(local[1]) == LOGGED_STEPS
    assert all(local[0][s] != local[1][s] for s in LOGGED_STEPS)
    expected = [(s, pytest.approx((local[0][s] + local[1][s]) / 2, rel=1e-5)) for s in LOGGED_STEPS]

    # One run directory, one TensorBoard directory, one set of checkpoints (rank 0's).
    run_dirs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(run_dirs) == 1, run_dirs
    tb_dirs = {p.parent for p in (tmp_path / "runs").rglob("events.out.tfevents.*")}
    assert len(tb_dirs) == 1, tb_dirs
    assert sorted(p.name for p in (run_dirs[0] / "checkpoints").iterdir()) == ["step-000010.pt", "step-000020.pt"]
    tb = scalars(tb_dirs.pop())
    assert tb["train/loss"] == expected
    assert [s for s, _ in tb["val/loss"]] == [10, 20]

    client = mlflow_client(uri)
    run = only_run(client, config["tracking"]["project"])
    history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == expected

    wandb_runs = finished_runs(tmp_path)
    assert len(wandb_runs) == 1, [r.run_id for r in wandb_runs]
    rows = wandb_steps(wandb_runs[0])
    assert [(s, rows[s]["train/loss"]) for s in sorted(rows) if "train/loss" in rows[s]] == expected
    print(f"2-rank torchrun job: {elapsed:.1f} s")
