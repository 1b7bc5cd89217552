"""The Model Foundry W&B guide (model-foundry-wandb-guide.md), run as written.

Each test makes the calls of one code block of the guide: its Python copied
here verbatim (marked ``# --- the guide ---``), its YAML and shell lines as
strings, with the guide's environment variables. Nothing is read from the
guide itself, so the suite runs on any clone. W&B runs offline (the conftest
sets ``WANDB_MODE=offline``); what the SDK wrote is read back from its
``.wandb`` file, TensorBoard from its event files.

Only the data the guide's code opens is made smaller: the YAML files it
reads (``configs/*.yaml`` in the test's working directory) are the shipped
ones with a tiny model and 20 training steps (``apply_overrides``, the
config API behind ``--set``), so each training takes about a second.
"""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from model_foundry.config import apply_overrides

from foundry_track.integrations import wandb as ft_wandb
from foundry_track.plugins import discover
from tests.helpers.tb import accumulator
from tests.helpers.wandb_offline import finished_runs

REPO = Path(__file__).resolve().parents[1]

#: "Configuration File Setup"
GUIDE_EXPERIMENT_YAML = """\
# configs/experiment_with_wandb.yaml

experiment_name: "exp0_baseline_wandb"

# ... other configs ...

logging:
  # Basic logging
  console_level: "INFO"
  file_level: "DEBUG"
  dir: "logs"

  # Enable WandB
  use_wandb: true
  wandb_project: "model-foundry-experiments"  # Your project name

  # Structured logging
  use_structured_logging: true

  # Metrics logging frequency
  log_metrics_every_n_steps: 10
  log_detailed_metrics_every_n_steps: 100

  # Performance profiling (optional - logs to WandB)
  profile_performance: true
  log_memory_every_n_steps: 100
"""

#: "Project Organization"
GUIDE_PROJECT_YAMLS = [
    '# Research project\nwandb_project: "spanish-subject-drop"\n',
    '# Ablation study\nwandb_project: "spanish-subject-drop-ablations"\n',
    '# Architecture comparison\nwandb_project: "gpt2-vs-llama-comparison"\n',
    'wandb_entity: "your-username"  # or "your-team-name"\nwandb_project: "model-foundry-experiments"\n',
]

#: "2. Hyperparameter Sweeps"
GUIDE_SWEEP_YAML = """\
# sweep_config.yaml
program: model_foundry.cli
method: bayes
metric:
  name: val/loss
  goal: minimize
parameters:
  learning_rate:
    distribution: log_uniform_values
    min: 0.00001
    max: 0.001
  batch_size:
    values: [16, 32, 64]
  dropout:
    distribution: uniform
    min: 0.0
    max: 0.3
"""

#: The shipped configs with a tiny model and 20 steps: train/* at steps 10 and 20.
FAST = {
    "model.layers": 1, "model.hidden_size": 32, "model.heads": 2, "model.context_length": 32,
    "training.steps": 20, "training.batch_size": 2, "training.eval_batches": 1, "training.warmup_steps": 5,
    "training.checkpoint_every_n_steps": 0,
}


def need_wandb() -> None:
    info = discover().get("wandb")
    if info is None or not info.available:
        pytest.skip(f"the wandb backend is not available: {info.problem if info else 'not installed'}")


@pytest.fixture(autouse=True)
def _bridge_left_clean() -> Any:
    yield
    ft_wandb.uninstall()


def write_fast_copy(config: str, dest: Path | str) -> Path:
    """``configs/<config>`` from the repository, made small, at ``dest`` (relative to the working directory).

    MLflow, which the shipped files add next to W&B and TensorBoard, is left
    out: creating its SQLite store takes seconds, and the guide is about W&B
    (tests/test_mlflow_backend.py covers MLflow).
    """
    data = yaml.safe_load((REPO / "configs" / config).read_text())
    ((data.get("tracking") or {}).get("backends") or {}).pop("mlflow", None)
    path = Path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(apply_overrides(data, FAST), sort_keys=False))
    return path


def by_step(run: Any) -> dict[int, dict[str, Any]]:
    """W&B history merged by training step (the W&B backend's x-axis is ``trainer/step``)."""
    merged: dict[int, dict[str, Any]] = {}
    for row in run.history:
        merged.setdefault(row["trainer/step"], {}).update({k: v for k, v in row.items() if not k.startswith("_")})
    return merged


def tb_scalars(root: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every TensorBoard run under ``root``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for folder in sorted({p.parent for p in root.rglob("events.out.tfevents.*")}):
        acc = accumulator(folder)
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def tb_texts(root: Path, tag: str) -> list[str]:
    return [e.tensor_proto.string_val[0].decode() for folder in sorted({p.parent for p in root.rglob("events.*")})
            for e in (accumulator(folder).Tensors(tag) if tag in accumulator(folder).Tags()["tensors"] else [])]


def run_module(*argv: str) -> int:
    """``python -m model_foundry.cli ARGV...``, in this process."""
    saved = sys.argv
    sys.argv = [str(REPO / "trainer" / "model_foundry" / "cli.py"), *argv]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is imported already
            runpy.run_module("model_foundry.cli", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = saved
    return 0


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #


def test_configuration_file_setup_is_the_shipped_config() -> None:
    """The guide's YAML is configs/experiment_with_wandb.yaml (whose "other configs" are filled in)."""
    from model_foundry.config import ExperimentConfig

    guide = yaml.safe_load(GUIDE_EXPERIMENT_YAML)
    shipped = yaml.safe_load((REPO / "configs" / "experiment_with_wandb.yaml").read_text())
    assert shipped["experiment_name"] == guide["experiment_name"]
    assert shipped["logging"] == guide["logging"]
    tracking = ExperimentConfig(**guide).tracking_config()  # the block alone is a valid experiment
    assert (tracking.project, tracking.run_name, set(tracking.backends)) == (
        "model-foundry-experiments", "exp0_baseline_wandb", {"tensorboard", "wandb"})
    assert yaml.safe_load((REPO / "configs" / "sweep_config.yaml").read_text()) == yaml.safe_load(GUIDE_SWEEP_YAML)


@pytest.mark.parametrize("snippet", GUIDE_PROJECT_YAMLS)
def test_project_organization(snippet: str) -> None:
    from model_foundry.config import ExperimentConfig

    values = yaml.safe_load(snippet)
    tracking = ExperimentConfig(experiment_name="exp", logging={"use_wandb": True, **values}).tracking_config()
    assert tracking.project == values["wandb_project"]
    assert tracking.entity == values.get("wandb_entity")


def test_full_logging_config_with_wandb() -> None:
    # --- the guide ---
    from model_foundry.config import LoggingConfig

    logging_config = LoggingConfig(
        # WandB settings
        use_wandb=True,
        wandb_project="my-project-name",

        # Log levels
        console_level="INFO",
        file_level="DEBUG",

        # Metrics logging
        log_metrics_every_n_steps=10,        # Log to WandB every 10 steps
        log_detailed_metrics_every_n_steps=100,  # Detailed logs every 100 steps

        # Performance monitoring
        profile_performance=True,            # Enable performance profiling
        log_memory_every_n_steps=50,        # Log GPU memory every 50 steps

        # Local logging
        use_structured_logging=True,
        dir="logs",
        max_log_files=10
    )
    # --- end ---
    cfg = logging_config
    assert (cfg.use_wandb, cfg.wandb_project, cfg.log_memory_every_n_steps, cfg.max_log_files) == (
        True, "my-project-name", 50, 10)


def test_environment_variables_override_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``WANDB_PROJECT`` / ``WANDB_ENTITY`` win over the config's, for the W&B run."""
    need_wandb()
    from model_foundry.logging_components import WandBLogger

    monkeypatch.setenv("WANDB_PROJECT", "my-experiment")
    monkeypatch.setenv("WANDB_ENTITY", "my-team")
    wandb_logger = WandBLogger(project="model-foundry", name="env", config={})
    wandb_logger.log_metrics(step=1, metrics={"train/loss": 1.0})
    wandb_logger.finish()
    (run,) = finished_runs(tmp_path)
    assert (run.project, run.entity) == ("my-experiment", "my-team")


# --------------------------------------------------------------------------- #
# Usage examples
# --------------------------------------------------------------------------- #


def test_example_1_basic_training_and_example_2_manual_logging(tmp_path: Path) -> None:
    need_wandb()
    write_fast_copy("experiment_with_wandb.yaml", "configs/experiment_with_wandb.yaml")

    # --- the guide: Example 1 ---
    from model_foundry.trainer import Trainer  # noqa: I001 (as the guide has it)
    from model_foundry.config import ExperimentConfig
    import yaml

    # Load config with WandB enabled
    with open('configs/experiment_with_wandb.yaml', 'r') as f:
        config_dict = yaml.safe_load(f)

    config = ExperimentConfig(**config_dict)

    # Initialize trainer (WandB will auto-initialize)
    trainer = Trainer(config, base_dir=".")

    # Start training - metrics automatically logged to WandB
    trainer.train()

    # --- the guide: Example 2 ---
    from model_foundry.logging_components import WandBLogger

    # Initialize WandB logger
    wandb_logger = WandBLogger(
        project="model-foundry",
        name="exp0_baseline",
        config=config.dict(),  # Log full experiment config
        tags=["baseline", "gpt2", "spanish"]
    )

    # Log training metrics
    wandb_logger.log_metrics(
        step=100,
        metrics={
            "train/loss": 2.456,
            "train/lr": 0.001,
            "train/grad_norm": 1.23,
            "train/tokens_per_sec": 8500
        }
    )

    # Log system metrics
    wandb_logger.log_system_metrics()

    # Finish run
    wandb_logger.finish()
    # --- end ---

    runs = {r.name.removesuffix(f"-{r.run_id}"): r for r in finished_runs(tmp_path)}  # W&B names: <run name>-<id>
    assert set(runs) == {"exp0_baseline_wandb", "exp0_baseline"}

    trained = runs["exp0_baseline_wandb"]
    assert trained.project == "model-foundry-experiments"
    assert {"exp0_baseline_wandb", "layers-1", "hidden-32"} <= set(trained.tags)  # no "amp" on the CPU
    assert trained.config["model/layers"] == 1 and trained.config["logging/use_wandb"] is True
    rows = by_step(trained)
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec", "train/perplexity", "perf/step_ms"):
        assert key in rows[10] and key in rows[20], key
    assert "val/loss" in rows[20] and rows[20]["train/tokens_per_sec"] > 0
    assert [a["type"] for a in trained.artifacts] == ["model"]  # the final checkpoint
    assert [a["title"] for a in trained.alerts] == ["Training complete"]
    assert trained.exit_code == 0

    manual = runs["exp0_baseline"]
    assert manual.project == "model-foundry"
    assert set(manual.tags) == {"baseline", "gpt2", "spanish"}
    assert manual.config["experiment_name"] == "exp0_baseline_wandb"  # config.dict() of Example 1's config
    (row,) = by_step(manual).values()
    assert row["trainer/step"] == 100 and row["train/loss"] == pytest.approx(2.456)
    assert row["train/tokens_per_sec"] == 8500
    assert row["system/process_rss_gb"] > 0  # log_system_metrics() lands on the last step, not a new one

    # The same runs went to TensorBoard; structured logging wrote JSON lines.
    tb = tb_scalars(tmp_path / "runs")
    assert (100, pytest.approx(2.456)) in tb["train/loss"]
    assert [s for s, _ in tb["train/grad_norm"] if s != 100] == [10, 20]
    assert (tmp_path / "logs" / "exp0_baseline_wandb.jsonl").read_text().lstrip().startswith("{")


def test_example_3_comparing_multiple_experiments(tmp_path: Path) -> None:
    need_wandb()
    for name in ("exp0_baseline", "exp1_remove_expletives", "exp2_remove_topic_shift"):
        write_fast_copy(f"{name}.yaml", f"configs/{name}.yaml")

    # --- the guide ---
    # Baseline
    assert run_module("train", "configs/exp0_baseline.yaml") == 0
    # Remove expletives
    assert run_module("train", "configs/exp1_remove_expletives.yaml") == 0
    # Remove topic shift
    assert run_module("train", "configs/exp2_remove_topic_shift.yaml") == 0
    # --- end ---

    runs = {r.name.removesuffix(f"-{r.run_id}"): r for r in finished_runs(tmp_path)}  # W&B names: <run name>-<id>
    assert sorted(runs) == ["exp0_baseline", "exp1_remove_expletives", "exp2_remove_topic_shift"]
    assert {(r.project, r.group) for r in runs.values()} == {("spanish-subject-drop", "subject-drop-ablations")}
    for run in runs.values():
        assert sorted(by_step(run)) == [10, 20] and run.exit_code == 0
    assert runs["exp1_remove_expletives"].config["data/removed_sentences"] > 0


def test_example_4_offline_mode_then_sync(tmp_path: Path) -> None:
    """The user's shell: ``WANDB_MODE=offline`` exported, then the training command."""
    need_wandb()
    write_fast_copy("experiment_with_wandb.yaml", "configs/experiment.yaml")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("WANDB_DIR")  # not the conftest's: where W&B puts it for a user

    # --- the guide ---
    # Set offline mode
    env["WANDB_MODE"] = "offline"
    # Run training (logs saved locally)
    done = subprocess.run([sys.executable, "-m", "model_foundry.cli", "train", "configs/experiment.yaml"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    # --- end ---

    assert done.returncode == 0, done.stderr
    # Later, `wandb sync wandb/offline-run-YYYYMMDD_HHMMSS-<run_id>`: the folder is there, complete.
    (folder,) = [p for p in tmp_path.rglob("offline-run-*") if p.is_dir()]
    assert re.fullmatch(r"offline-run-\d{8}_\d{6}-[a-z0-9]+", folder.name)
    assert folder.parent.name == "wandb"
    (run,) = finished_runs(folder)
    assert folder.name.endswith(run.run_id) and run.exit_code == 0
    assert sorted(by_step(run)) == [10, 20]


# --------------------------------------------------------------------------- #
# Advanced features
# --------------------------------------------------------------------------- #


def test_advanced_1_custom_metrics_grouping(tmp_path: Path) -> None:
    need_wandb()
    from model_foundry.logging_components import WandBLogger

    wandb_logger = WandBLogger(project="model-foundry", name="grouping", config={}, tags=["grouping"])
    # --- the guide ---
    wandb_logger.log_metrics(
        step=100,
        metrics={
            # Training metrics
            "train/loss": 2.5,
            "train/perplexity": 12.18,

            # Validation metrics
            "val/loss": 2.7,
            "val/perplexity": 14.88,

            # System metrics
            "system/gpu_memory_gb": 3.2,
            "system/tokens_per_sec": 8500,

            # Learning rate
            "optimization/lr": 0.001,
            "optimization/grad_norm": 1.23
        }
    )
    # --- end ---
    wandb_logger.finish()

    (run,) = finished_runs(tmp_path)
    row = by_step(run)[100]
    expected = {
        "train/loss": 2.5, "train/perplexity": 12.18, "val/loss": 2.7, "val/perplexity": 14.88,
        "system/gpu_memory_gb": 3.2, "system/tokens_per_sec": 8500, "optimization/lr": 0.001,
        "optimization/grad_norm": 1.23,
    }
    assert {k: row[k] for k in expected} == pytest.approx(expected)
    tb = tb_scalars(tmp_path / "runs")
    assert {k: tb[k][-1][1] for k in expected} == pytest.approx(expected)


def test_advanced_2_sweep_parameters_map_onto_the_cli() -> None:
    """Every parameter of the guide's sweep is an argument of the program it names."""
    from model_foundry.cli import SWEEP_PARAMETERS

    sweep = yaml.safe_load(GUIDE_SWEEP_YAML)
    assert sweep["program"] == "model_foundry.cli"
    assert set(sweep["parameters"]) <= set(SWEEP_PARAMETERS)


def test_advanced_3_log_model_artifacts_from_a_trainer(tmp_path: Path) -> None:
    """A W&B-enabled ``Trainer``: the guide's artifact code, run when the trainer saves
    its checkpoint, lands in the trainer's W&B run."""
    need_wandb()
    from model_foundry.config import load_experiment
    from model_foundry.trainer import Trainer

    class CheckpointArtifacts(Trainer):
        def save_checkpoint(self) -> Path | None:
            saved = super().save_checkpoint()
            assert saved is not None
            Path("output/checkpoint-1000").mkdir(parents=True, exist_ok=True)
            shutil.copy(saved, "output/checkpoint-1000/model.pt")
            step = self.step
            # --- the guide ---
            # In your training code
            import wandb

            # Save checkpoint as artifact
            artifact = wandb.Artifact(
                name=f"model-checkpoint-{step}",
                type="model",
                description=f"Model checkpoint at step {step}"
            )
            artifact.add_dir("output/checkpoint-1000")
            wandb.log_artifact(artifact)
            # --- end ---
            return saved

    config = load_experiment(write_fast_copy("experiment_with_wandb.yaml", "configs/experiment_with_wandb.yaml"))
    CheckpointArtifacts(config, base_dir=".", progress=False).train()

    (run,) = finished_runs(tmp_path)
    artifacts = {a["name"]: a for a in run.artifacts}
    assert artifacts["model-checkpoint-20"]["type"] == "model"
    assert artifacts["model-checkpoint-20"]["entries"] == ["model.pt"]
    assert "exp0_baseline_wandb-checkpoint" in artifacts  # the trainer's own, in the same run
    assert any("model-checkpoint-20" in note for note in tb_texts(tmp_path / "runs", "artifacts/model-checkpoint-20"))


def test_advanced_4_log_training_curves_as_images(tmp_path: Path) -> None:
    need_wandb()
    import matplotlib

    matplotlib.use("Agg")
    from model_foundry.logging_components import WandBLogger

    wandb_logger = WandBLogger(project="model-foundry", name="curves", config={})
    wandb_logger.log_metrics(step=30, metrics={"train/loss": 2.8})
    steps, losses = [10, 20, 30], [3.2, 3.0, 2.8]
    # --- the guide ---
    import matplotlib.pyplot as plt
    import wandb

    # Create plot
    plt.figure(figsize=(10, 6))
    plt.plot(steps, losses)
    plt.xlabel("Step")
    plt.ylabel("Loss")
    plt.title("Training Loss")

    # Log to WandB
    wandb.log({"charts/loss_curve": wandb.Image(plt)})
    plt.close()
    # --- end ---
    wandb_logger.finish()

    (run,) = finished_runs(tmp_path)
    image = by_step(run)[30]  # the step of the last metrics
    assert image["charts/loss_curve._type"] == "image-file"
    assert (image["charts/loss_curve.width"], image["charts/loss_curve.height"]) == (1000, 600)
    (folder,) = {p.parent for p in (tmp_path / "runs").rglob("events.*")}
    (curve,) = accumulator(folder).Images("charts/loss_curve")
    assert (curve.step, curve.width, curve.height) == (30, 1000, 600)


def test_advanced_6_custom_tables(tmp_path: Path) -> None:
    need_wandb()
    from model_foundry.logging_components import WandBLogger

    wandb_logger = WandBLogger(project="model-foundry", name="tables", config={})
    import wandb

    # --- the guide ---
    # Create table
    table = wandb.Table(
        columns=["epoch", "step", "loss", "perplexity"],
        data=[
            [1, 100, 3.2, 24.5],
            [1, 200, 3.0, 20.1],
            [2, 300, 2.8, 16.4],
        ]
    )

    wandb.log({"training_metrics": table})
    # --- end ---
    wandb_logger.finish()

    (run,) = finished_runs(tmp_path)
    logged = next(row for row in run.history if "training_metrics._type" in row)
    assert (logged["training_metrics._type"], logged["training_metrics.ncols"], logged["training_metrics.nrows"]) == (
        "table-file", 4, 3)
    assert tb_texts(tmp_path / "runs", "training_metrics") == [
        "| epoch | step | loss | perplexity |\n|---|---|---|---|\n| 1 | 100 | 3.2 | 24.5 |\n"
        "| 1 | 200 | 3.0 | 20.1 |\n| 2 | 300 | 2.8 | 16.4 |"]


def test_advanced_7_alerts(tmp_path: Path) -> None:
    need_wandb()
    from model_foundry.logging_components import WandBLogger

    experiment_name = "exp0_baseline"
    wandb_logger = WandBLogger(project="model-foundry", name=experiment_name, config={})
    import wandb

    loss, step = 11.5, 42
    # --- the guide ---
    # Alert if loss spikes
    if loss > 10.0:
        wandb.alert(
            title="High Loss Detected",
            text=f"Loss spiked to {loss} at step {step}",
            level=wandb.AlertLevel.WARN
        )

    # Alert if training completes
    wandb.alert(
        title="Training Complete",
        text=f"Experiment {experiment_name} finished successfully",
        level=wandb.AlertLevel.INFO
    )
    # --- end ---
    wandb_logger.finish()

    (run,) = finished_runs(tmp_path)
    assert [(a["title"], a["text"], a["level"]) for a in run.alerts] == [
        ("High Loss Detected", "Loss spiked to 11.5 at step 42", "WARN"),
        ("Training Complete", "Experiment exp0_baseline finished successfully", "INFO"),
    ]
    assert tb_texts(tmp_path / "runs", "alerts") == [
        "**WARN: High Loss Detected**\n\nLoss spiked to 11.5 at step 42",
        "**INFO: Training Complete**\n\nExperiment exp0_baseline finished successfully",
    ]


# --------------------------------------------------------------------------- #
# Troubleshooting: "Want to disable WandB without changing config"
# --------------------------------------------------------------------------- #


def test_wandb_mode_disabled_turns_off_wandb_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``export WANDB_MODE=disabled``: the trainer and ``WandBLogger`` alike drop W&B
    and keep TensorBoard; the guide's direct ``wandb.*`` calls still work (TensorBoard)."""
    write_fast_copy("experiment_with_wandb.yaml", "configs/experiment_with_wandb.yaml")
    # --- the guide ---
    monkeypatch.setenv("WANDB_MODE", "disabled")
    # --- end ---
    from model_foundry.config import load_experiment
    from model_foundry.logging_components import WandBLogger
    from model_foundry.trainer import Trainer

    trainer = Trainer(load_experiment("configs/experiment_with_wandb.yaml"), base_dir=".", progress=False)
    trainer.train()
    assert set(trainer.run.backend_ids) == {"tensorboard"}

    wandb_logger = WandBLogger(project="p", name="off", config={"a": 1})
    import wandb

    wandb_logger.log_metrics(step=1, metrics={"train/loss": 1.0})
    wandb.log({"val/loss": 2.0}, step=2)
    wandb.alert(title="Still here", text="TensorBoard got it", level=wandb.AlertLevel.INFO)
    wandb_logger.finish()

    assert wandb_logger.enabled and wandb_logger.run is not None
    assert set(wandb_logger.run.backend_ids) == {"tensorboard"}
    assert not list(tmp_path.rglob("*.wandb")) and not list(tmp_path.rglob("offline-run-*"))
    tb = tb_scalars(tmp_path / "runs")
    assert [s for s, _ in tb["train/loss"]] == [10, 20, 1] and tb["val/loss"][-1] == (2, 2.0)
    assert "**INFO: Still here**\n\nTensorBoard got it" in tb_texts(tmp_path / "runs", "alerts")


# --------------------------------------------------------------------------- #
# The guide's WandBLogger class
# --------------------------------------------------------------------------- #


def test_wandb_logger_watch_and_artifact(tmp_path: Path) -> None:
    """watch_model and log_artifact of the guide's class reach the backends."""
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

    (events,) = {p.parent for p in (tmp_path / "runs").rglob("events.out.tfevents.*")}
    acc = accumulator(events)
    histograms = acc.Tags()["histograms"] + acc.Tags()["tensors"]
    assert any("weight" in tag and "grad" in tag for tag in histograms), histograms
    assert any("weight" in tag and "grad" not in tag for tag in histograms), histograms
    if discover()["wandb"].available:
        (wandb_run,) = finished_runs(tmp_path)
        assert [(a["name"], a["type"]) for a in wandb_run.artifacts] == [("checkpoint-1", "model")]
