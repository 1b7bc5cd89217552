"""Training end to end with real backends: the quickstart, resume, Ctrl-C, local logs.

TensorBoard is read back with its EventAccumulator, MLflow with MlflowClient
(on the quickstart's SQLite file, or on the session's real `mlflow server`),
W&B from the offline ``.wandb`` file.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from model_foundry.config import ExperimentConfig
from model_foundry.trainer import Trainer

from tests.helpers.wandb_offline import read_offline_run

REPO = Path(__file__).resolve().parents[1]


def tensorboard_scalars(root: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar under ``root`` (all event files), read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for folder in sorted({p.parent for p in root.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def wandb_steps(run: Any) -> dict[int, dict[str, Any]]:
    """History rows merged by training step (the W&B backend's x-axis is ``trainer/step``)."""
    merged: dict[int, dict[str, Any]] = {}
    for row in run.history:
        merged.setdefault(row["trainer/step"], {}).update({k: v for k, v in row.items() if not k.startswith("_")})
    return merged


def tiny(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """A model small enough to train 40 steps in about a second."""
    config: dict[str, Any] = {
        "experiment_name": "tiny",
        "model": {"layers": 2, "hidden_size": 32, "heads": 2, "context_length": 32},
        "training": {"steps": 40, "batch_size": 8, "lr": 0.01, "warmup_steps": 5, "eval_batches": 2},
        "logging": {"console_level": "WARNING", "log_metrics_every_n_steps": 5,
                    "log_detailed_metrics_every_n_steps": 10, "log_memory_every_n_steps": 10},
        "tracking": {"project": f"trainer-{tmp_path.name}", "flush_timeout": 30},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(name, {}).update(values)
        else:
            config[name] = values
    return config


def mlflow_client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def mlflow_steps(client: Any, run_id: str, key: str) -> list[int]:
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def only_run(client: Any, experiment: str) -> Any:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, f"expected one MLflow run, found {len(runs)}"
    return runs[0]


# --------------------------------------------------------------------------- #
# The quickstart
# --------------------------------------------------------------------------- #


def test_quickstart_loss_falls_and_tensorboard_and_mlflow_agree(tmp_path: Path) -> None:
    """configs/quickstart.yaml (TensorBoard + MLflow on SQLite) with fewer steps."""
    data = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    data["training"].update(steps=40, warmup_steps=10)
    data["logging"].update(log_metrics_every_n_steps=5, log_detailed_metrics_every_n_steps=20, log_memory_every_n_steps=20)
    summary = Trainer(ExperimentConfig(**data), base_dir=tmp_path, progress=False).train()

    assert summary["final_loss"] < 0.7 * summary["first_loss"], summary  # about 4.5 at step 5, below 3 at step 40
    run_dir = Path(summary["run_dir"])

    tb = tensorboard_scalars(run_dir / "tensorboard")
    client = mlflow_client("sqlite:///mlflow.db")  # the quickstart's relative URI, from the working directory
    run = only_run(client, "model-foundry")
    assert run.info.status == "FINISHED"
    run_id = run.info.run_id
    every_5 = list(range(5, 41, 5))
    for key, steps in {
        "train/loss": every_5, "train/tokens_per_sec": every_5, "train/lr": every_5, "train/grad_norm": every_5,
        "train/perplexity": every_5, "val/loss": [20, 40], "val/perplexity": [20, 40], "system/process_rss_gb": [20, 40],
    }.items():
        assert [s for s, _ in tb[key]] == steps, key
        assert mlflow_steps(client, run_id, key) == steps, key
    mlflow_loss = [m.value for m in sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)]
    assert mlflow_loss == pytest.approx([v for _, v in tb["train/loss"]], rel=1e-6)
    assert all(v > 0 for _, v in tb["train/tokens_per_sec"])
    assert all(0.01 < v < 100 for _, v in tb["system/process_rss_gb"])
    assert run.data.params["model/layers"] == "4"
    assert {"quickstart", "layers-4", "hidden-128"} <= set(run.data.tags.get("foundry_track.tags", "").split(",")) or \
        {"quickstart", "layers-4", "hidden-128"} <= set(run.data.tags)
    artifacts = [f.path for f in client.list_artifacts(run_id, "model/quickstart-checkpoint")]
    assert artifacts == ["model/quickstart-checkpoint/step-000040.pt"]


def logged_steps(root: Path) -> int:
    """The highest step in the journal of the run under ``root/runs`` (0 before there is one)."""
    from foundry_track.journal import Journal

    journals = list(root.glob("runs/*/journal.db"))
    if not journals:
        return 0
    try:
        return Journal(journals[0], readonly=True).max_step() or 0
    except sqlite3.Error:  # created but not yet initialised
        return 0


# --------------------------------------------------------------------------- #
# Resume
# --------------------------------------------------------------------------- #


def test_resume_continues_the_same_tracker_runs(tmp_path: Path, mlflow_server: Any) -> None:
    """Train to step 20, resume from its checkpoint to step 40: one run per backend, no step twice."""
    backends = {"tensorboard": {}, "mlflow": {"tracking_uri": mlflow_server.uri}, "wandb": {}}
    first = Trainer(ExperimentConfig(**tiny(tmp_path, training={"steps": 20}, tracking={"backends": backends})),
                    base_dir=tmp_path, progress=False)
    s1 = first.train()
    checkpoint = Path(s1["checkpoint"])
    assert checkpoint.name == "step-000020.pt" and checkpoint.parent == Path(s1["run_dir"]) / "checkpoints"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["tracker"]["run_dir"] == s1["run_dir"]

    config = ExperimentConfig(**tiny(tmp_path, training={"steps": 40, "resume_from": str(checkpoint)},
                                     tracking={"backends": backends}))
    second = Trainer(config, base_dir=tmp_path, progress=False)
    assert second.step == 20 and second.run.dir == first.run.dir and second.run.id == first.run.id
    s2 = second.train()
    assert s2["steps"] == 20 and s2["first_loss"] < s1["first_loss"] - 1.0  # it went on from the trained weights

    expected = list(range(5, 41, 5))
    client = mlflow_client(mlflow_server.uri)
    run = only_run(client, f"trainer-{tmp_path.name}")
    assert run.info.run_id == first.run.backend_ids["mlflow"]["run_id"] == second.run.backend_ids["mlflow"]["run_id"]
    assert mlflow_steps(client, run.info.run_id, "train/loss") == expected
    assert mlflow_steps(client, run.info.run_id, "val/loss") == [10, 20, 30, 40]
    assert [s for s, _ in tensorboard_scalars(Path(s1["run_dir"]) / "tensorboard")["train/loss"]] == expected
    wandb_run = read_offline_run(tmp_path)  # both segments of the one W&B run, merged
    assert len(wandb_run.run_files) == 2
    assert [step for step, row in sorted(wandb_steps(wandb_run).items()) if "train/loss" in row] == expected
    assert [row["trainer/step"] for row in wandb_run.history if "train/loss" in row] == expected  # no row twice


def test_ctrl_c_checkpoints_and_cli_resume_continues(tmp_path: Path, mlflow_server: Any) -> None:
    """SIGINT stops after the current step with a checkpoint (exit 130); --resume finishes the run.

    The resumed model equals one trained without interruption: the optimiser,
    schedule and RNG states (including the data order) were all restored.
    """
    total = 150
    config = tiny(tmp_path, training={"steps": total},
                  tracking={"backends": {"tensorboard": {}, "mlflow": {"tracking_uri": mlflow_server.uri}}})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "model_foundry.cli", "train", "tiny.yaml", "--no-progress", "--sample", "0"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # Interrupt once step 10 is in the tracker's journal (the loop is running).
        while logged_steps(tmp_path) < 10:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "SIGINT: stopping after this step" in err
    (ckpt,) = tmp_path.glob("runs/*/checkpoints/*.pt")
    stopped_at = int(ckpt.stem.split("-")[1])
    assert 10 <= stopped_at < total, stopped_at
    assert f"--resume {ckpt}" in err

    done = subprocess.run([*cmd, "--resume", str(ckpt)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    client = mlflow_client(mlflow_server.uri)
    run = only_run(client, f"trainer-{tmp_path.name}")
    steps = mlflow_steps(client, run.info.run_id, "train/loss")
    assert steps == list(range(5, total + 1, 5)), "steps missing or logged twice across the resume"
    assert run.info.status == "FINISHED"
    (run_dir,) = tmp_path.glob("runs/*")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "success"

    # The same steps without interruption (and without tracking) give the same weights.
    os.environ["FOUNDRY_TRACK_MODE"] = "disabled"
    try:
        straight = Trainer(ExperimentConfig(**config), base_dir=tmp_path / "straight", progress=False)
        straight.train()
    finally:
        del os.environ["FOUNDRY_TRACK_MODE"]
    resumed = torch.load(run_dir / "checkpoints" / f"step-{total:06d}.pt", weights_only=True)["model"]
    for name, tensor in straight.model.state_dict().items():
        torch.testing.assert_close(resumed[name], tensor, msg=name)


# --------------------------------------------------------------------------- #
# Local logs, tracking disabled
# --------------------------------------------------------------------------- #


def test_structured_log_files_rotate_and_disabled_tracking_checkpoints_under_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOUNDRY_TRACK_MODE", "disabled")
    config = ExperimentConfig(**tiny(tmp_path, training={"steps": 10},
                                     logging={"use_structured_logging": True, "max_log_files": 2}))
    for _ in range(3):
        summary = Trainer(config, base_dir=tmp_path, progress=False).train()
    assert summary["run_dir"] is None and not (tmp_path / "runs").exists()
    assert Path(summary["checkpoint"]) == tmp_path / "output" / "tiny" / "checkpoints" / "step-000010.pt"
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["tiny.jsonl", "tiny.jsonl.1"]  # max_log_files=2: the third run pushed the first out
    records = [json.loads(line) for line in (tmp_path / "logs" / "tiny.jsonl").read_text().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    val = [r for r in records if r["message"].startswith("step 10: val loss")]
    assert len(val) == 1 and val[0]["step"] == 10 and val[0]["val/loss"] > 0
    assert records[-1]["summary"]["steps"] == 10


# --------------------------------------------------------------------------- #
# What a user looks at: histograms, tags, the summary, TensorBoard's HParams
# --------------------------------------------------------------------------- #


def test_watch_model_histograms_no_amp_tag_on_cpu_and_hparams_as_written(tmp_path: Path) -> None:
    """`logging.watch_model` reaches TensorBoard as histograms; `use_amp` on the CPU is not tagged `amp`
    (it trains in float32); a run whose length is not a multiple of the interval logs its last step;
    the HParams session holds the hyperparameters, values as written in the YAML."""
    from tensorboard.plugins.hparams import metadata as hp_metadata
    from tensorboard.plugins.hparams import plugin_data_pb2

    from foundry_track.history import load_run
    from tests.helpers.tb import accumulator

    config = tiny(tmp_path, training={"steps": 7, "use_amp": True, "device": "cpu"},
                  data={"remove_sentences_matching": [r"\b(hay|había)\b"]},
                  logging={"watch_model": True, "watch_log_freq": 5},
                  tracking={"backends": {"tensorboard": {}}})
    summary = Trainer(ExperimentConfig(**config), base_dir=tmp_path, progress=False).train()
    run_dir = Path(summary["run_dir"])
    assert "amp" not in load_run(run_dir).tags and "layers-2" in load_run(run_dir).tags

    acc = accumulator(run_dir / "tensorboard")
    histograms = acc.Tags()["histograms"]
    assert any(t.startswith("parameters/") for t in histograms) and any(t.startswith("gradients/") for t in histograms)
    assert [e.step for e in acc.Scalars("train/loss")] == [5, 7]  # the last step too

    content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)[hp_metadata.SESSION_START_INFO_TAG]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["data/remove_sentences_matching"].string_value == r"[\b(hay|había)\b]"
    assert hparams["training/lr"].number_value == pytest.approx(0.01)
    assert hparams["model/num_parameters"].number_value > 0  # logged with the config, in one session
    assert not [k for k in hparams if k.startswith(("logging/", "tracking/"))]


def test_without_watch_model_no_histograms(tmp_path: Path) -> None:
    from tests.helpers.tb import accumulator

    config = tiny(tmp_path, training={"steps": 5}, tracking={"backends": {"tensorboard": {}}})
    summary = Trainer(ExperimentConfig(**config), base_dir=tmp_path, progress=False).train()
    assert accumulator(Path(summary["run_dir"]) / "tensorboard").Tags()["histograms"] == []


def test_first_and_final_loss_are_the_first_and_last_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One logged loss (5 steps, every 5): the first loss is still the untrained model's, at step 1."""
    import math

    monkeypatch.setenv("FOUNDRY_TRACK_MODE", "disabled")
    summary = Trainer(ExperimentConfig(**tiny(tmp_path, training={"steps": 5})), base_dir=tmp_path,
                      progress=False).train()
    assert summary["first_loss"] == pytest.approx(math.log(256), abs=0.3)  # bytes, uniformly unsure
    assert summary["final_loss"] < summary["first_loss"] - 0.2
