"""Issue 3's acceptance across the three built-in backends at once: an outage from
the start with the fallback, resume into the same runs, and the disabled modes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import foundry_track as ft
from tests.helpers.mlflow_server import MlflowServer, free_port
from tests.helpers.tb import scalars
from tests.helpers.wandb_offline import finished_runs

STEP_METRIC = "trainer/step"


def _mlflow_steps(uri: str, run_id: str, key: str = "train/loss") -> list[int]:
    from mlflow import MlflowClient

    return sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


@pytest.fixture
def fast_failing_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    # A dead server answers "connection refused" at once without client retries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def test_mlflow_down_and_wandb_without_key_then_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      fast_failing_mlflow: None) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")  # and no API key anywhere: W&B cannot start
    port = free_port()
    server = MlflowServer(port=port, db_path=tmp_path / "srv" / "mlflow.db", artifacts_dir=tmp_path / "srv" / "art")
    cfg = {"dir": str(tmp_path / "runs"), "fallback": "tensorboard", "flush_timeout": 3,
           "backends": {"mlflow": {"tracking_uri": f"http://127.0.0.1:{port}"}, "wandb": {}}}
    run = ft.init(cfg)
    worst = 0.0
    for step in range(300):
        t0 = time.perf_counter()
        run.log({"train/loss": 1.0 / (step + 1)}, step=step)
        worst = max(worst, time.perf_counter() - t0)
    undelivered = run.finish()
    assert worst < 0.05, worst  # never waited on a dead server (a sync client blocks ~250 s)
    assert undelivered == {"mlflow": 300, "wandb": 300}
    assert [s for s, _ in scalars(run.backend_ids["tensorboard"]["log_dir"])["train/loss"]] == list(range(300))

    server.start()
    try:
        assert ft.sync(run.dir, backend="mlflow") == {}
        ids = run.backend_ids
        mlflow_id = ids["mlflow"]["run_id"]
        assert _mlflow_steps(server.uri, mlflow_id) == list(range(300))
        assert ft.sync(run.dir, backend="mlflow") == {}
        assert _mlflow_steps(server.uri, mlflow_id) == list(range(300))  # a second sync adds nothing
    finally:
        server.stop()


def test_resume_continues_one_run_in_every_backend(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    cfg = {"dir": str(tmp_path / "runs"), "run_name": "resume-me", "project": f"resume-{tmp_path.name}",
           "fallback": None, "strict": True,
           "backends": {"tensorboard": {}, "wandb": {}, "mlflow": {"tracking_uri": mlflow_server.uri}}}
    with ft.init(cfg) as first:
        for step in range(100):
            first.log({"train/loss": float(step)}, step=step)
    with ft.init(cfg, resume=first.dir) as second:
        for step in range(100, 200):
            second.log({"train/loss": float(step)}, step=step)
    ids_before, ids_after = first.backend_ids, second.backend_ids
    assert ids_before == ids_after  # same W&B run, same MLflow run, same TensorBoard directory

    assert [s for s, _ in scalars(ids_after["tensorboard"]["log_dir"])["train/loss"]] == list(range(200))
    assert _mlflow_steps(mlflow_server.uri, ids_after["mlflow"]["run_id"]) == list(range(200))
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment(ids_after["mlflow"]["experiment_id"])
    assert len(client.search_runs([experiment.experiment_id])) == 1
    runs = finished_runs(tmp_path)
    assert len(runs) == 1 and runs[0].run_id == ids_after["wandb"]["run_id"]
    steps = sorted(row[STEP_METRIC] for row in runs[0].history if "train/loss" in row)
    assert steps == list(range(200))


def test_wandb_disabled_creates_no_wandb_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with ft.init({"dir": str(tmp_path / "runs"), "backends": {"wandb": {}, "tensorboard": {}}}) as run:
        run.log({"x": 1.0})
    assert not [p for p in tmp_path.rglob("*") if "wandb" in p.name]
    assert scalars(run.backend_ids["tensorboard"]["log_dir"])["x"] == [(0, 1.0)]


def test_foundry_track_disabled_creates_nothing_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_TRACK_MODE", "disabled")
    before = sorted(tmp_path.rglob("*"))
    cfg = {"dir": str(tmp_path / "runs"), "backends": {"wandb": {}, "tensorboard": {},
                                                        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/m.db"}}}
    with ft.init(cfg) as run:
        run.log({"x": 1.0})
        run.log_params({"lr": 0.1})
    assert sorted(tmp_path.rglob("*")) == before
