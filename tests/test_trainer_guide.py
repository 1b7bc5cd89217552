"""The Model Foundry W&B guide's code, run as written, against real backends.

The code blocks are read from the guide itself (``../shared/model-foundry-
wandb-guide.md``) so the test fails when the guide and the trainer drift
apart. W&B runs offline (the conftest sets ``WANDB_MODE=offline``); what the
SDK wrote is read back from its ``.wandb`` file, TensorBoard from its event
files.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from foundry_track.plugins import discover
from tests.helpers.wandb_offline import read_all_offline_runs

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO.parent / "shared" / "model-foundry-wandb-guide.md"

pytestmark = pytest.mark.skipif(not GUIDE.is_file(), reason=f"the W&B guide is not at {GUIDE}")


def guide_block(heading: str, lang: str = "python") -> str:
    """The first ```lang block after the line starting with ``heading``."""
    text = GUIDE.read_text()
    start = text.index(heading)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    assert match, f"no {lang} block after {heading!r} in the guide"
    return textwrap.dedent(match.group(1))


def need_wandb() -> None:
    info = discover().get("wandb")
    if info is None or not info.available:
        pytest.skip(f"the wandb backend is not available: {info.problem if info else 'not installed'}")


def tensorboard_scalars(root: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar under ``root`` (all event files), read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for folder in sorted({p.parent for p in root.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags().get("tensors", []):
            for e in acc.Tensors(tag):
                if e.tensor_proto.dtype == 1 and not e.tensor_proto.tensor_shape.dim:  # scalar float
                    out.setdefault(tag, []).append((e.step, float(e.tensor_proto.float_val[0])))
    return out


def wandb_steps(run: Any) -> dict[int, dict[str, Any]]:
    """History rows merged by training step (the W&B backend's x-axis is ``trainer/step``)."""
    merged: dict[int, dict[str, Any]] = {}
    for row in run.history:
        merged.setdefault(row["trainer/step"], {}).update({k: v for k, v in row.items() if not k.startswith("_")})
    return merged


def write_fast_copy(config: str, dest: Path, **training: Any) -> None:
    """``configs/<config>`` copied to ``dest`` with only ``training`` values changed (to keep tests fast)."""
    data = yaml.safe_load((REPO / "configs" / config).read_text())
    data["training"].update(training)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(data, sort_keys=False))


def test_guide_yaml_blocks_are_the_shipped_configs() -> None:
    """configs/experiment_with_wandb.yaml holds the guide's logging block; sweep_config.yaml is the guide's."""
    guide_logging = yaml.safe_load(guide_block("### Configuration File Setup", "yaml"))
    shipped = yaml.safe_load((REPO / "configs" / "experiment_with_wandb.yaml").read_text())
    assert shipped["experiment_name"] == guide_logging["experiment_name"]
    assert shipped["logging"] == guide_logging["logging"]
    assert yaml.safe_load((REPO / "configs" / "sweep_config.yaml").read_text()) == yaml.safe_load(
        guide_block("### 2. Hyperparameter Sweeps", "yaml")
    )


def test_guide_full_logging_config_block_runs() -> None:
    namespace: dict[str, Any] = {}
    exec(guide_block("### Full LoggingConfig with WandB"), namespace)
    cfg = namespace["logging_config"]
    assert (cfg.use_wandb, cfg.wandb_project, cfg.log_memory_every_n_steps, cfg.max_log_files) == (True, "my-project-name", 50, 10)


def test_guide_examples_1_and_2(tmp_path: Path) -> None:
    """Example 1 trains from configs/experiment_with_wandb.yaml; Example 2 logs by hand with its config."""
    need_wandb()
    # The guide's code opens configs/experiment_with_wandb.yaml from the working
    # directory (tmp_path): the shipped file with fewer, smaller steps.
    write_fast_copy("experiment_with_wandb.yaml", tmp_path / "configs" / "experiment_with_wandb.yaml",
                    steps=20, batch_size=2, eval_batches=1, warmup_steps=5, checkpoint_every_n_steps=0)
    namespace: dict[str, Any] = {}
    exec(guide_block("### Example 1: Basic Training with WandB"), namespace)
    exec(guide_block("### Example 2: Manual WandB Logging"), namespace)

    runs = {r.name: r for r in read_all_offline_runs(tmp_path)}
    assert set(runs) == {"exp0_baseline_wandb", "exp0_baseline"}

    trained = runs["exp0_baseline_wandb"]
    assert trained.project == "model-foundry-experiments"
    assert {"exp0_baseline_wandb", "layers-6", "hidden-256", "amp"} <= set(trained.tags)
    assert trained.config["model/layers"] == 6 and trained.config["logging/use_wandb"] is True
    by_step = wandb_steps(trained)
    assert sorted(by_step) == [10, 20]
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec", "train/perplexity", "perf/step_ms"):
        assert key in by_step[10] and key in by_step[20], key
    assert "val/loss" in by_step[20]
    assert by_step[20]["train/tokens_per_sec"] > 0
    assert [a["type"] for a in trained.artifacts] == ["model"]  # the final checkpoint
    assert [a["title"] for a in trained.alerts] == ["Training complete"]
    assert trained.exit_code == 0

    manual = runs["exp0_baseline"]
    assert manual.project == "model-foundry"
    assert set(manual.tags) == {"baseline", "gpt2", "spanish"}
    assert manual.config["experiment_name"] == "exp0_baseline_wandb"  # config.dict() of Example 1's config
    (row,) = wandb_steps(manual).values()
    assert row["trainer/step"] == 100
    assert row["train/loss"] == pytest.approx(2.456)
    assert row["train/tokens_per_sec"] == 8500
    assert row["system/process_rss_gb"] > 0  # log_system_metrics() lands on the last step, not a new one

    # The same runs went to TensorBoard.
    tb = tensorboard_scalars(tmp_path / "runs")
    assert (100, pytest.approx(2.456)) in tb["train/loss"]
    assert [s for s, _ in tb["train/grad_norm"] if s != 100] == [10, 20]
    # Structured logging (use_structured_logging: true) wrote JSON lines.
    assert (tmp_path / "logs" / "exp0_baseline_wandb.jsonl").read_text().lstrip().startswith("{")


def test_guide_custom_metrics_grouping(tmp_path: Path) -> None:
    need_wandb()
    from model_foundry.config import ExperimentConfig
    from model_foundry.logging_components import WandBLogger

    config = ExperimentConfig(**yaml.safe_load((REPO / "configs" / "experiment_with_wandb.yaml").read_text()))
    wandb_logger = WandBLogger(project="model-foundry", name="grouping", config=config.dict(), tags=["grouping"])
    namespace = {"wandb_logger": wandb_logger}
    exec(guide_block("### 1. Custom Metrics Grouping"), namespace)
    wandb_logger.finish()

    (run,) = read_all_offline_runs(tmp_path)
    row = wandb_steps(run)[100]
    expected = {
        "train/loss": 2.5, "train/perplexity": 12.18, "val/loss": 2.7, "val/perplexity": 14.88,
        "system/gpu_memory_gb": 3.2, "system/tokens_per_sec": 8500, "optimization/lr": 0.001,
        "optimization/grad_norm": 1.23,
    }
    assert {k: row[k] for k in expected} == pytest.approx(expected)
    tb = tensorboard_scalars(tmp_path / "runs")
    assert {k: tb[k][-1][1] for k in expected} == pytest.approx(expected)


def test_wandb_logger_disabled_by_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guide's emergency switch: WANDB_MODE=disabled makes the logger a no-op."""
    from model_foundry.logging_components import WandBLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = WandBLogger(project="p", name="off", config={"a": 1})
    logger.log_metrics(step=1, metrics={"train/loss": 1.0})
    logger.log_system_metrics()
    logger.finish()
    assert logger.run is None
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("wandb"))


def test_sweep_config_parameters_map_onto_the_cli() -> None:
    """Every parameter of the guide's sweep is accepted by the CLI the sweep names as its program."""
    from model_foundry.cli import SWEEP_PARAMETERS

    sweep = yaml.safe_load((REPO / "configs" / "sweep_config.yaml").read_text())
    assert sweep["program"] == "model_foundry.cli"
    assert set(sweep["parameters"]) <= set(SWEEP_PARAMETERS)


def test_wandb_logger_watch_and_artifact(tmp_path: Path) -> None:
    """watch_model and log_artifact of the guide's class reach the backends (TensorBoard here)."""
    import torch
    from model_foundry.logging_components import WandBLogger

    model = torch.nn.Linear(4, 2)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model.pt").write_bytes(b"weights")
    logger = WandBLogger(project="p", name="watched", config={}, tags=["t"])
    logger.watch_model(model, log_freq=1)
    model(torch.ones(3, 4)).sum().backward()
    logger.log_metrics(step=1, metrics={"train/loss": 1.0})
    logger.log_artifact(str(checkpoint), artifact_type="model", name="checkpoint-1")
    logger.finish()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in (tmp_path / "runs").rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events), size_guidance={"histograms": 0, "tensors": 0})
    acc.Reload()
    histograms = acc.Tags()["histograms"] + acc.Tags()["tensors"]
    assert any("weight" in tag and "grad" in tag for tag in histograms), histograms
    assert any("weight" in tag and "grad" not in tag for tag in histograms), histograms
    if discover()["wandb"].available:
        (wandb_run,) = read_all_offline_runs(tmp_path)
        assert [(a["name"], a["type"]) for a in wandb_run.artifacts] == [("checkpoint-1", "model")]
