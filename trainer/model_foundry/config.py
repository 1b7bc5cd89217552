"""The experiment configuration: plain data, validated before anything is built.

An experiment YAML has six blocks::

    experiment_name: exp0_baseline
    data:     {...}    # which text, how it is split
    model:    {...}    # the GPT's shape
    training: {...}    # optimiser, schedule, steps, checkpoints
    logging:  {...}    # console/file logs and the W&B shortcuts of the guide
    tracking: {...}    # optional: a foundry_track `tracking:` block

Every block forbids unknown keys, so ``use_wandbb: true`` is an error, not a
silently ignored setting. Errors are raised as :class:`ConfigError` with a
one-line message that names the field (``logging.use_wandbb: unknown key; did
you mean 'use_wandb'?``).

Where the tracker settings come from (highest wins)
---------------------------------------------------
1. Environment variables: ``WANDB_MODE=disabled`` drops the W&B backend (the
   others keep running); ``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_MODE``
   and the other ``WANDB_*`` variables are applied by the W&B backend to the
   W&B run only; foundry-track's own ``FOUNDRY_TRACK_MODE``,
   ``FOUNDRY_TRACK_BACKENDS`` and ``FOUNDRY_TRACK_DIR`` apply to the whole run.
2. Values written in the ``tracking:`` block.
3. The ``logging:`` shortcuts of the W&B guide: ``use_wandb`` adds the
   ``wandb`` backend, ``wandb_project`` / ``wandb_entity`` set the project and
   entity (every backend uses them: the W&B project, the MLflow experiment).
4. Defaults: project ``model-foundry``, run name = ``experiment_name``,
   TensorBoard as the local backend.

Steps 2-4 are :func:`foundry_track.config.experiment_tracking`, shared with
``foundry_track.init("configs/exp0_baseline.yaml")`` and ``foundry-track
doctor CONFIG``, so all three read an experiment file alike.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

import foundry_track
from foundry_track import TrackingConfig
from foundry_track.config import DEFAULT_EXPERIMENT_PROJECT, GUIDE_SHORTCUTS, experiment_tracking, read_yaml
from foundry_track.errors import format_validation_error

__all__ = [
    "DEFAULT_PROJECT",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "LoggingConfig",
    "ModelConfig",
    "TrainingConfig",
    "apply_overrides",
    "load_experiment",
    "run_params",
]

DEFAULT_PROJECT = DEFAULT_EXPERIMENT_PROJECT
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class ConfigError(foundry_track.ConfigError):
    """The experiment config is wrong. ``str(exc)`` is one line naming the field."""


class _Block(BaseModel):
    """Base of every block: unknown keys are errors, assignments are validated.

    ``.dict()`` is kept (the guide calls ``config.dict()``) without pydantic's
    deprecation warning: it is simply ``model_dump``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def dict(self, **kwargs: Any) -> dict[str, Any]:
        return self.model_dump(**kwargs)


class DataConfig(_Block):
    """Which text the model reads. Bytes are the tokens: no tokenizer to train or download."""

    files: list[str] | None = Field(
        default=None,
        description="Text files to train on (relative to base_dir). Default: the Spanish corpus shipped in model_foundry/data.",
        examples=[["data/my_corpus.txt"]],
    )
    val_fraction: float = Field(default=0.1, gt=0, lt=0.5, description="Fraction of the text (taken from the end) held out for validation.")
    remove_sentences_matching: list[str] = Field(
        default_factory=list,
        description="Ablations: sentences matching any of these regular expressions (case-insensitive) are removed before training.",
        examples=[[r"\b(hay|había|hubo)\b"]],
    )

    @field_validator("remove_sentences_matching")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        return patterns


class ModelConfig(_Block):
    """Shape of the GPT-2 style decoder (vocabulary: the 256 byte values)."""

    layers: int = Field(default=4, ge=1, description="Number of transformer blocks.")
    hidden_size: int = Field(default=128, ge=8, description="Width of the residual stream (embedding size).")
    heads: int = Field(default=4, ge=1, description="Attention heads per block; must divide hidden_size.")
    context_length: int = Field(default=128, ge=2, description="Longest sequence the model sees, in bytes.")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on attention, residual and embeddings.")

    @field_validator("heads")
    @classmethod
    def _divides(cls, heads: int, info: ValidationInfo) -> int:
        hidden = info.data.get("hidden_size")
        if hidden is not None and hidden % heads:
            raise ValueError(f"heads={heads} must divide hidden_size={hidden}")
        return heads


class TrainingConfig(_Block):
    """Optimisation: AdamW, linear warmup then cosine decay, gradient clipping."""

    steps: int = Field(default=1000, ge=1, description="Total optimiser steps (the schedule ends here).")
    batch_size: int = Field(default=16, ge=1, description="Sequences per step.")
    lr: float = Field(default=1e-3, gt=0, description="Peak learning rate, reached after warmup_steps.")
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="Learning rate at the end of the cosine, as a fraction of lr.")
    warmup_steps: int = Field(default=100, ge=0, description="Steps of linear warmup from 0 to lr.")
    weight_decay: float = Field(default=0.1, ge=0, description="AdamW weight decay (not applied to biases, norms and embeddings).")
    betas: tuple[float, float] = Field(default=(0.9, 0.95), description="AdamW betas.")
    grad_clip: float = Field(default=1.0, ge=0, description="Clip the global gradient norm to this value (0 disables clipping).")
    use_amp: bool = Field(default=False, description="Mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling). Ignored on CPU.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="'auto' picks CUDA when available.")
    seed: int = Field(default=1337, description="Seed for weights, batches and dropout.")
    eval_batches: int = Field(default=8, ge=1, description="Validation batches averaged for val/loss.")
    checkpoint_every_n_steps: int = Field(default=0, ge=0, description="Save a checkpoint every N steps (0: only at the end).")
    resume_from: str | None = Field(default=None, description="Checkpoint to resume from (model, optimiser, schedule, RNG and the tracker runs).")
    num_threads: int | None = Field(default=None, ge=1, description="CPU threads for PyTorch (default: PyTorch's choice).")


class LoggingConfig(_Block):
    """The guide's logging block: local logs plus the W&B shortcuts."""

    console_level: LogLevel = Field(default="INFO", description="Level of the log lines printed on the console.")
    file_level: LogLevel = Field(default="DEBUG", description="Level of the log lines written to the log file under `dir`.")
    dir: str = Field(default="logs", description="Folder of the log files (relative to base_dir).")
    use_wandb: bool = Field(default=False, description="Shortcut: add the `wandb` backend to the tracking block.")
    wandb_project: str | None = Field(default=None, description="Shortcut: the project of the run (W&B project, MLflow experiment) unless `tracking.project` is set.")
    wandb_entity: str | None = Field(default=None, description="Shortcut: the W&B team or user unless `tracking.entity` is set.")
    use_structured_logging: bool = Field(default=False, description="Write the log file as JSON lines (one object per record) instead of text.")
    log_metrics_every_n_steps: int = Field(default=10, ge=1, description="Log train/* metrics (loss, lr, grad norm, tokens/s, perplexity) every N steps.")
    log_detailed_metrics_every_n_steps: int = Field(default=100, ge=1, description="Evaluate and log val/* metrics every N steps (and at the last step).")
    profile_performance: bool = Field(default=False, description="Also log perf/* timings with the train metrics: time per step, data loading time and its fraction.")
    log_memory_every_n_steps: int = Field(default=100, ge=1, description="Log system/* metrics (process RSS, CUDA memory) every N steps.")
    max_log_files: int = Field(default=10, ge=1, description="Log files kept per experiment; the oldest is deleted when a run starts a new one.")
    # Not in the guide's block: its trainer calls `watch_model` itself; here it is a switch.
    watch_model: bool = Field(default=False, description="Log histograms of the model's weights and gradients (`parameters/*`, `gradients/*`; the guide's `watch_model`) to every backend, every `watch_log_freq` forward passes.")
    watch_log_freq: int = Field(default=100, ge=1, description="With `watch_model`: forward passes between histograms (training steps; evaluation batches count too).")

    @field_validator("console_level", "file_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class ExperimentConfig(_Block):
    """One experiment: the whole YAML file.

    ``ExperimentConfig(**yaml.safe_load(f))`` validates everything and raises
    :class:`ConfigError` (one line naming the field) before any model is built.
    """

    experiment_name: str = Field(..., min_length=1, description="Name of the experiment: the run name and a tag.")
    data: DataConfig = Field(default_factory=DataConfig, description="The training text.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model's shape.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Optimisation and checkpoints.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Local logs and the W&B shortcuts.")
    tracking: TrackingConfig | None = Field(default=None, description="foundry_track's tracking block (backends, project, run dir...). Explicit values win over the logging shortcuts.")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            # The project's one formatter, on one line: `logging.use_wandbb: unknown key; did you mean 'use_wandb'?`
            raise ConfigError(format_validation_error(exc, type(self), sep="; ")) from None

    def tracking_config(self) -> TrackingConfig:
        """The tracking block foundry_track receives, with the precedence in the module docstring.

        The mapping is :func:`foundry_track.config.experiment_tracking`, which
        ``foundry_track.init(path)`` and ``foundry-track doctor`` apply to the same file.
        """
        return experiment_tracking(self.tracking, experiment_name=self.experiment_name,
                                   logging=self.logging.model_dump(include=set(GUIDE_SHORTCUTS)))


# --------------------------------------------------------------------------- #
# The run's params
# --------------------------------------------------------------------------- #

#: The blocks of the run's params, in the order trackers list them: what is trained first.
PARAM_ORDER = ("training", "model", "data", "experiment_name", "logging")


def run_params(config: ExperimentConfig, tracking: TrackingConfig,
               extra: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """What the trainer logs as the run's params (``run.log_params`` flattens it to ``training/lr``...).

    The hyperparameters that matter come first (``training``, ``model``, then
    ``data``), then the experiment's name, its ``logging:`` block and the
    tracking settings *in effect* (``tracking``: the ``logging:`` shortcuts and
    ``FOUNDRY_TRACK_*`` applied: the project the run really went to, not the
    ``tracking:`` block's default). ``extra`` adds values per block
    (``{"model": {"num_parameters": ...}}``). Lists are written as in the YAML
    file (``[gpt2, spanish]``, ``['\\b(hay|había)\\b']``), not as Python reprs.
    """
    dumped = config.model_dump(mode="json", exclude={"tracking"})
    params: dict[str, Any] = {}
    for block in PARAM_ORDER:
        value = dumped[block]
        if isinstance(value, dict):
            value = {**value, **(extra or {}).get(block, {})}
        params[block] = _as_written(value)
    params["tracking"] = _as_written({
        "project": tracking.project, "entity": tracking.entity, "group": tracking.group,
        "run_name": tracking.run_name, "tags": tracking.tags, "backends": list(tracking.backends),
    })
    return params


def _as_written(value: Any) -> Any:
    """Lists as YAML flow sequences (what the config file shows); None entries of a block dropped."""
    if isinstance(value, dict):
        return {k: _as_written(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return yaml.safe_dump(list(value), default_flow_style=True, allow_unicode=True, width=10**9).strip()
    return value


# --------------------------------------------------------------------------- #
# Loading YAML and applying command-line overrides
# --------------------------------------------------------------------------- #


def load_experiment(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Read an experiment YAML, apply dotted ``overrides`` and validate it."""
    data = read_yaml(path, "config file", ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return ExperimentConfig(**apply_overrides(data, overrides or {}))


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with ``{"training.lr": 3e-4}`` style overrides set.

    Missing intermediate blocks are created; a key that does not exist is left
    for validation to report (with a suggestion), so typos fail the same way
    in YAML and on the command line.
    """
    result: dict[str, Any] = _deep_copy(data)
    for dotted, value in overrides.items():
        keys = dotted.split(".")
        node = result
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {dotted}: {key!r} is a value ({child!r}), not a block")
            node = child
        node[keys[-1]] = value
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
