"""`foundry-track import`: runs of TensorBoard, W&B and MLflow, written by each
tracker's own SDK, replayed into another tracker and read back with that
tracker's own reader: steps, values and wall times exact; importing twice
changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foundry_track.cli import main
from foundry_track.errors import ConfigError, RunDirError
from foundry_track.importers import import_run
from foundry_track.importers import mlflow as mlflow_source
from foundry_track.importers import tensorboard as tb_source
from foundry_track.importers import wandb as wandb_source
from foundry_track.journal import Journal
from foundry_track.rundir import find_runs, load_run_file
from tests.helpers.tb import accumulator, scalars
from tests.helpers.wandb_offline import finished_runs

STEPS = 30


def _write_tensorboard(logdir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(logdir))
    for step in range(STEPS):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
        writer.add_scalar("val/acc", step / STEPS, step)
    writer.add_image("samples", np.linspace(0, 1, 3 * 4 * 5).reshape(3, 4, 5), 7)
    writer.add_histogram("weights", np.arange(100, dtype=np.float64), 7)
    from torch.utils.tensorboard.summary import hparams

    _, session_start, _ = hparams({"lr": 0.5, "api_token": "tok-123"}, {})
    writer.file_writer.add_summary(session_start)
    writer.close()


def _journal(run_dir: Path) -> list[Any]:
    journal = Journal(run_dir / "journal.db", readonly=True)
    try:
        return list(journal.iter_records())
    finally:
        journal.close()


def _mlflow_history(uri: str, run_id: str, key: str) -> list[tuple[int, float, int]]:
    from mlflow import MlflowClient

    return sorted((m.step, m.value, m.timestamp) for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


def test_tensorboard_to_mlflow_round_trip(tmp_path: Path, mlflow_server: Any) -> None:
    logdir = tmp_path / "tb" / "exp-a"
    _write_tensorboard(logdir)
    source = accumulator(logdir)
    config = tmp_path / "tracking.yaml"
    config.write_text(json.dumps({"backends": {"mlflow": {"tracking_uri": mlflow_server.uri,
                                                          "experiment": "imported-tb"}}}))
    args = ["import", "tensorboard", str(tmp_path / "tb"), "--config", str(config), "--dir", str(tmp_path / "runs")]
    assert main(args) == 0
    (run_dir,) = find_runs(tmp_path / "runs")
    data = load_run_file(run_dir)
    assert data["status"] == "success" and data["imported_from"]["kind"] == "tensorboard"
    mlflow_id = data["backend_ids"]["mlflow"]["run_id"]
    for tag in ("train/loss", "val/acc"):
        want = sorted((e.step, e.value, int(e.wall_time * 1000)) for e in source.Scalars(tag))
        assert _mlflow_history(mlflow_server.uri, mlflow_id, tag) == want  # steps, values, wall times exact
    kinds = [r.kind for r in _journal(run_dir)]
    assert kinds.count("image") == 1 and kinds.count("histogram") == 1
    (hist,) = [r.data for r in _journal(run_dir) if r.kind == "histogram"]
    assert sum(hist["counts"]) == 100 and hist["min"] == 0.0 and hist["max"] == 99.0
    edges = hist["edges"]
    assert edges[0] <= 0.0 and edges[-1] >= 99.0 and len(edges) == len(hist["counts"]) + 1
    assert all(a < b for a, b in zip(edges, edges[1:]))  # no zero-width bucket from TensorBoard's padding
    assert [r.data for r in _journal(run_dir) if r.kind == "params"] == [{"lr": 0.5, "api_token": "***"}]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    assert client.get_run(mlflow_id).data.params == {"lr": "0.5", "api_token": "***"}
    uploaded = {a.path for a in client.list_artifacts(mlflow_id)}
    assert {"images", "histograms"} <= uploaded, uploaded  # the image and the histogram reached MLflow too

    # Twice: the same run, no duplicate rows, nothing journaled again.
    before = len(_journal(run_dir))
    assert main(args) == 0
    assert find_runs(tmp_path / "runs") == [run_dir]
    assert len(_journal(run_dir)) == before
    assert load_run_file(run_dir)["backend_ids"]["mlflow"]["run_id"] == mlflow_id
    want = sorted((e.step, e.value, int(e.wall_time * 1000)) for e in source.Scalars("train/loss"))
    assert _mlflow_history(mlflow_server.uri, mlflow_id, "train/loss") == want


def _write_wandb(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_DIR", str(root))
    run = wandb.init(project="legacy", name="wandb-run", dir=str(root), tags=["old", "baseline"],
                     config={"lr": 0.01, "layers": 4, "api_key": "sk-secret"})
    for step in range(STEPS):
        run.log({"train/loss": 2.0 / (step + 1), "epoch": step // 10}, step=step)
    run.log({"samples": wandb.Image(np.full((4, 6, 3), 200, dtype=np.uint8)),
             "weights": wandb.Histogram(np_histogram=(np.array([1, 2, 3]), np.array([0.0, 1.0, 2.0, 3.0])))},
            step=STEPS)
    run.finish()


def test_wandb_offline_to_tensorboard_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_wandb(tmp_path / "src", monkeypatch)
    (source,) = finished_runs(tmp_path / "src")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    config = {"dir": str(tmp_path / "runs"), "backends": {"tensorboard": {}}}
    (found,) = wandb_source.runs(tmp_path / "src" / "wandb")
    assert found.status == "success" and found.tags == ("old", "baseline")
    result = import_run(found, config)
    assert result.remaining == {}
    data = load_run_file(result.run_dir)
    assert data["name"] == "wandb-run" and data["config"]["api_key"] == "***" and data["config"]["lr"] == 0.01
    log_dir = data["backend_ids"]["tensorboard"]["log_dir"]
    got = scalars(log_dir)
    want = [(row["_step"], row["train/loss"]) for row in source.history if "train/loss" in row]
    assert [(s, v) for s, v in got["train/loss"]] == [(s, pytest.approx(v, rel=1e-6)) for s, v in want]
    times = [e.wall_time for e in accumulator(log_dir).Scalars("train/loss")]
    assert times == pytest.approx([row["_timestamp"] for row in source.history if "train/loss" in row], abs=1e-6)
    acc = accumulator(log_dir)
    assert len(acc.Images("samples")) == 1 and acc.Images("samples")[0].step == STEPS
    (hist,) = [r.data for r in _journal(result.run_dir) if r.kind == "histogram"]
    assert hist["counts"] == [1, 2, 3] and hist["edges"] == [0.0, 1.0, 2.0, 3.0]
    params = [r.data for r in _journal(result.run_dir) if r.kind == "params"]
    assert params == [{"lr": 0.01, "layers": 4, "api_key": "***"}]

    again = import_run(wandb_source.runs(tmp_path / "src" / "wandb")[0], config)
    assert again.run_dir == result.run_dir and again.events == 0 and again.delivered == {}
    assert len(scalars(log_dir)["train/loss"]) == STEPS


def test_mlflow_to_wandb_offline_round_trip(tmp_path: Path, mlflow_server: Any) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    exp = client.get_experiment_by_name("legacy-mlflow") or client.get_experiment(
        client.create_experiment("legacy-mlflow"))
    run = client.create_run(exp.experiment_id, run_name="mlflow-run", tags={"team": "nlp"})
    base = 1_700_000_000_000
    client.log_batch(run.info.run_id, metrics=[Metric("loss", 1.0 / (s + 1), base + 1000 * s, s) for s in range(STEPS)],
                     params=[Param("lr", "0.001"), Param("db_password", "hunter2")], tags=[RunTag("stage", "")])
    artifact = tmp_path / "notes.txt"
    artifact.write_text("trained on the old cluster")
    client.log_artifact(run.info.run_id, str(artifact))
    client.set_terminated(run.info.run_id, "FINISHED")

    config = {"dir": str(tmp_path / "runs"), "backends": {"wandb": {}}}
    (found,) = mlflow_source.runs(mlflow_server.uri, run_id=run.info.run_id)
    assert found.status == "success" and set(found.tags) == {"team=nlp", "stage"}
    result = import_run(found, config)
    assert result.remaining == {}
    data = load_run_file(result.run_dir)
    assert data["config"] == {"lr": "0.001", "db_password": "***"}
    (copied,) = [r.data for r in _journal(result.run_dir) if r.kind == "artifact"]  # artifacts are copied
    assert Path(copied["path"]).read_text() == "trained on the old cluster"
    assert Path(copied["path"]).is_relative_to(result.run_dir)
    wandb_dir = Path(data["backend_ids"]["wandb"]["dir"])
    (got,) = finished_runs(wandb_dir)  # once the exit record (and the last block) is written
    rows = [r for r in got.history if "loss" in r]
    assert [(r["trainer/step"], r["loss"]) for r in rows] == [(s, 1.0 / (s + 1)) for s in range(STEPS)]
    assert [r["_timestamp"] for r in rows] == pytest.approx([(base + 1000 * s) / 1000 for s in range(STEPS)])
    assert got.name.startswith("mlflow-run") and got.exit_code == 0

    again = import_run(mlflow_source.runs(mlflow_server.uri, run_id=run.info.run_id)[0], config)
    assert again.run_dir == result.run_dir and again.events == 0
    assert len([r for r in finished_runs(wandb_dir)[0].history if "loss" in r]) == STEPS


def test_interrupted_import_resumes_and_is_not_listed(tmp_path: Path) -> None:
    _write_tensorboard(tmp_path / "tb")
    (found,) = tb_source.runs(tmp_path / "tb")
    events = found.events

    def broken(media_dir: Path) -> Any:
        for index, event in enumerate(events(media_dir)):
            if index == 20:
                raise KeyboardInterrupt
            yield event

    found.events = broken
    with pytest.raises(KeyboardInterrupt):
        import_run(found, {"backends": {}}, tmp_path / "runs")
    assert find_runs(tmp_path / "runs") == []  # no run.json yet: `runs` does not list it
    found.events = events
    result = import_run(found, {"backends": {}}, tmp_path / "runs")
    records = _journal(result.run_dir)
    assert result.events == len(records) - 20
    steps = [r.step for r in records if r.kind == "metrics" and "train/loss" in r.data]
    assert steps == list(range(STEPS))


def test_clear_errors(tmp_path: Path, mlflow_server: Any) -> None:
    with pytest.raises(RunDirError, match="does not exist"):
        tb_source.runs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="no TensorBoard event files"):
        tb_source.runs(tmp_path / "empty")
    _write_tensorboard(tmp_path / "torn")
    (event_file,) = (tmp_path / "torn").glob("*tfevents*")
    raw = bytearray(event_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    event_file.write_bytes(bytes(raw))
    (torn,) = tb_source.runs(tmp_path / "torn")
    with pytest.raises(RunDirError, match="corrupt at byte"):
        import_run(torn, {"backends": {}}, tmp_path / "runs")
    bad = tmp_path / "bad" / "offline-run-x" / "run-x.wandb"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a wandb file")
    with pytest.raises(RunDirError, match="not a W&B transaction log"):
        wandb_source.runs(tmp_path / "bad")
    with pytest.raises(ConfigError, match="no run 'f00'"):
        mlflow_source.runs(mlflow_server.uri, run_id="f00")
    with pytest.raises(ConfigError, match="no experiment 'nope'"):
        mlflow_source.runs(mlflow_server.uri, experiment="nope")
    assert main(["import", "mlflow", "--tracking-uri", "http://127.0.0.1:9", "--run", "x"]) == 2


def test_import_rate_benchmark_runs() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "import_rate.py", "--steps", "300", "--repeat", "1"], cwd=root / "benchmarks",
                         capture_output=True, text=True, timeout=120)
    assert "TensorBoard event file" in out.stdout and "W&B offline run file" in out.stdout, out.stderr
