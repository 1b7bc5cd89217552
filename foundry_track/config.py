"""The ``tracking:`` block: pydantic models, YAML loading, environment overrides
and secret redaction; and the experiment files of the Model Foundry W&B guide,
whose ``logging:`` shortcuts fill the tracking block (:func:`experiment_tracking`).

Every error a user can make here ends in one :class:`ConfigError` whose message
names the field, the value and the fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Final, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Re-exported: they live in a pydantic-free module so the CLI can use them cheaply.
from foundry_track.errors import ConfigError, format_validation_error
from foundry_track.params import REDACTED, flatten, mask_credentials, redact

RUN_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

__all__ = [
    "TrackingConfig",
    "ConfigError",
    "load_config",
    "redact",
    "flatten",
    "REDACTED",
    "DEFAULT_EXPERIMENT_PROJECT",
    "EXPERIMENT_KEYS",
    "GUIDE_SHORTCUTS",
    "experiment_tracking",
    "from_experiment_file",
    "is_experiment",
]



class TrackingConfig(BaseModel):
    """The ``tracking:`` block of an experiment's YAML."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    project: str = Field("foundry-track", description="Project the run belongs to (W&B project, MLflow experiment).", examples=["spanish-subject-drop"])
    entity: str | None = Field(None, description="Team or user that owns the project (W&B entity).", examples=["my-team"])
    run_name: str | None = Field(None, description="Human-readable run name; defaults to the run id.", examples=["exp0-baseline"])
    run_id: str | None = Field(None, description="Fixed run id: 1-64 characters of `[A-Za-z0-9_-]`, starting with a letter or digit (it names the run directory and the W&B run); generated when omitted.", examples=["exp0a1b2"])
    sweep: str | None = Field(None, description="The sweep this run is a trial of (set by `foundry-track sweep` and `agent` through `FOUNDRY_TRACK_SWEEP`); backends that show sweeps use it (MLflow nests the trials under a parent run).", examples=["sweep-3"])
    group: str | None = Field(None, description="Group runs together (W&B group, an MLflow tag, a TensorBoard subdirectory).", examples=["sweep-3"])
    tags: list[str] = Field(default_factory=list, description="Tags attached to the run in every backend.", examples=[["baseline", "gpt2"]])
    notes: str | None = Field(None, description="Free-text description of the run.", examples=["first try with warmup"])
    backends: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"tensorboard": dict[str, Any]()},
        description="Backend name -> that backend's options (validated by the backend). `FOUNDRY_TRACK_BACKENDS=a,b` overrides the selection.",
        examples=[{"tensorboard": {}, "mlflow": {"tracking_uri": "sqlite:///mlflow.db"}}],
    )
    fallback: str | None = Field("tensorboard", description="Backend switched on when a configured backend cannot start; null for none.", examples=["tensorboard"])
    dir: Path = Field(Path("runs"), description="Root folder of run directories (journal, run.json, local backend files). `FOUNDRY_TRACK_DIR` overrides it.", examples=["runs"])
    mode: Literal["online", "disabled"] = Field("online", description="`disabled` turns tracking off: no files, no threads. `FOUNDRY_TRACK_MODE` overrides it.", examples=["disabled"])
    flush_timeout: float = Field(30.0, ge=0, description="Seconds `finish()` waits for backends before reporting what is undelivered.", examples=[30.0])
    start_timeout: float = Field(60.0, gt=0, description="Seconds a backend may take to start before the fallback takes over.", examples=[60.0])
    every_n_steps: int = Field(1, ge=1, description="Keep metrics only at steps divisible by N (1 keeps all).", examples=[10])
    journal_flush_interval: float = Field(0.1, gt=0, le=10, description="Seconds between journal commits: the most a hard crash (SIGKILL) can lose.", examples=[0.1])
    system_metrics_interval: float | None = Field(None, gt=0, description="Seconds between samples of CPU %, process memory and GPU memory/utilisation, logged as `system/*`; null turns the sampler off.", examples=[10.0])
    per_rank: bool = Field(False, description="Under torchrun: every rank logs its own run `<run>-rank<N>`, grouped; default: rank 0 logs for the job.", examples=[False])
    strict: bool = Field(False, description="Re-raise backend errors instead of isolating them (tests, plugin authors).", examples=[False])
    delivery_interval: float = Field(1.0, ge=0, le=60, description="Seconds between two deliveries to a backend while the run goes on: each backend gets what was logged meanwhile as one batch, so its fixed cost per call (an HTTP request, a flush) is paid once per interval, whatever the step rate. Metrics show up in the trackers within about this long; `finish()` and `sync` deliver at once. 0 delivers as soon as events are committed.", examples=[1.0])
    delivery_priority: Literal["idle", "batch", "normal"] = Field("idle", description="How the delivery process (`delivery: process`) shares the CPU with training, on Linux: `idle` (default) runs it on CPU time the training leaves free (SCHED_IDLE), so the step does not slow down, but on a machine whose every core is kept busy the trackers fall behind until the cores free up (the journal holds the events; `finish()` and `sync` catch up); `batch` gives it a fair share without letting it preempt the training thread (SCHED_BATCH); `normal` changes nothing. With the journal on a network file system (SQLite's rollback journal, where a reader's lock holds up the training process's commits) `idle` is taken as `batch`.", examples=["batch"])
    delivery: Literal["thread", "process"] = Field("process", description="Where the backends run: `process` (default: a delivery process reads the journal and feeds the backends, so the trackers' SDKs never share the training process's interpreter; it is restarted if it dies, and a backend it cannot import is delivered by threads of the training process, with a notice) or `thread` (a thread per backend in the training process). `FOUNDRY_TRACK_DELIVERY` overrides it.", examples=["thread"])

    @field_validator("run_id")
    @classmethod
    def _safe_run_id(cls, value: str | None) -> str | None:
        # It becomes a folder name and a tracker's run id: no path separators,
        # no '..', nothing a tracker would refuse.
        if value is not None and not RUN_ID_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid run id: use 1-64 characters of letters, digits, '_' "
                             f"and '-', starting with a letter or digit (e.g. 'exp0a1b2')")
        return value

    @field_validator("entity", "project", "group", "run_name")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        # A name that carries a credential (``user:token@team``) is masked
        # before any backend, file or log sees it.
        return None if value is None else mask_credentials(value)


def read_yaml(path: str | os.PathLike[str], what: str = "config file",
              error: type[ConfigError] = ConfigError) -> Any:
    """A YAML file's content; an unreadable file or a syntax error raises ``error``
    naming the file, the line and column, and the problem."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{path}: YAML syntax error{where}: {problem}") from None


def with_overrides(cfg: TrackingConfig, overrides: Mapping[str, Any], origin: str) -> TrackingConfig:
    """``cfg`` with some fields replaced (``init(project=...)``, an integration's
    keyword arguments); a bad one raises ConfigError naming ``origin``."""
    if not overrides:
        return cfg
    try:
        return TrackingConfig.model_validate({**cfg.model_dump(), **overrides})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, TrackingConfig, origin)) from None


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | TrackingConfig | None) -> TrackingConfig:
    """Build a :class:`TrackingConfig` from a YAML path, a dict or a model.

    A YAML file or dict may hold the block itself or a top-level ``tracking:``
    key. An experiment file (:func:`is_experiment`: the Model Foundry
    trainer's ``experiment_name``, ``logging:`` or ``training:`` at the top)
    is read as the trainer reads it (:func:`from_experiment_file`: its
    ``logging:`` shortcuts such as ``use_wandb`` count); its other blocks are
    the trainer's and are not read here. Environment
    overrides are applied last: ``FOUNDRY_TRACK_BACKENDS``, ``FOUNDRY_TRACK_MODE``,
    ``FOUNDRY_TRACK_DELIVERY``, ``FOUNDRY_TRACK_DIR``, ``FOUNDRY_TRACK_PROJECT``, ``FOUNDRY_TRACK_GROUP``,
    ``FOUNDRY_TRACK_RUN_NAME`` and ``FOUNDRY_TRACK_TAGS`` (appended).
    """
    origin = "tracking"
    if source is None:
        cfg = TrackingConfig()
    elif isinstance(source, TrackingConfig):
        cfg = source.model_copy(deep=True)
    else:
        if isinstance(source, (str, os.PathLike)):
            data = read_yaml(source)
            origin = f"{source}: tracking"
        else:
            data = source
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{origin}: expected a mapping of tracking options, got {type(data).__name__}")
        if is_experiment(data):
            return _apply_env(from_experiment_file(data, str(source) if isinstance(source, (str, os.PathLike)) else ""))
        if "tracking" in data:
            data = data["tracking"] or {}
            if not isinstance(data, Mapping):
                raise ConfigError(f"{origin}: expected a mapping, got {type(data).__name__}")
        try:
            cfg = TrackingConfig.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, TrackingConfig, origin)) from None
    return _apply_env(cfg)


def _apply_env(cfg: TrackingConfig) -> TrackingConfig:
    selected = os.environ.get("FOUNDRY_TRACK_BACKENDS")
    if selected is not None:
        names = [n.strip() for n in selected.split(",") if n.strip()]
        cfg.backends = {name: cfg.backends.get(name, {}) for name in names}
    mode = os.environ.get("FOUNDRY_TRACK_MODE")
    if mode:
        if mode not in ("online", "disabled"):
            raise ConfigError(f"FOUNDRY_TRACK_MODE={mode!r}: expected 'online' or 'disabled'")
        cfg.mode = mode  # type: ignore[assignment]
    delivery = os.environ.get("FOUNDRY_TRACK_DELIVERY")
    if delivery:
        if delivery not in ("thread", "process"):
            raise ConfigError(f"FOUNDRY_TRACK_DELIVERY={delivery!r}: expected 'thread' or 'process'")
        cfg.delivery = delivery  # type: ignore[assignment]
    if os.environ.get("FOUNDRY_TRACK_DIR"):
        cfg.dir = Path(os.environ["FOUNDRY_TRACK_DIR"])
    # Set by launchers (foundry-track sweep, schedulers) to place and group runs
    # without editing the experiment's YAML.
    for var, field in (("FOUNDRY_TRACK_PROJECT", "project"), ("FOUNDRY_TRACK_GROUP", "group"),
                       ("FOUNDRY_TRACK_RUN_NAME", "run_name"), ("FOUNDRY_TRACK_SWEEP", "sweep")):
        if os.environ.get(var):
            setattr(cfg, field, os.environ[var])
    if os.environ.get("FOUNDRY_TRACK_TAGS"):
        extra = [t.strip() for t in os.environ["FOUNDRY_TRACK_TAGS"].split(",") if t.strip()]
        cfg.tags = [*cfg.tags, *(t for t in extra if t not in cfg.tags)]
    return cfg


# --------------------------------------------------------------------------- #
# Experiment files: the Model Foundry W&B guide's `logging:` shortcuts
# --------------------------------------------------------------------------- #
#
# An experiment YAML (configs/exp0_baseline.yaml) is more than a tracking
# block: its `logging:` block carries the guide's W&B shortcuts and
# `experiment_name` names the run. The trainer (model_foundry.config), `init`
# and `foundry-track doctor` all turn it into a TrackingConfig here, so they
# agree without the core importing the trainer.

#: The project of an experiment whose file names none (``tracking.project`` or ``logging.wandb_project``).
DEFAULT_EXPERIMENT_PROJECT: Final = "model-foundry"
#: Top-level keys that make a file an experiment file (the trainer requires
#: ``experiment_name``; ``logging:`` holds the shortcuts); none is a key of the tracking block.
EXPERIMENT_KEYS: Final = ("experiment_name", "logging", "training")
#: The ``logging:`` keys that reach the tracking block, with their types.
GUIDE_SHORTCUTS: Final[Mapping[str, type]] = {"use_wandb": bool, "wandb_project": str, "wandb_entity": str}


def is_experiment(data: Mapping[str, Any]) -> bool:
    """Whether a YAML mapping is an experiment file (a top-level key of :data:`EXPERIMENT_KEYS`)
    rather than a tracking block (or a file that only holds a ``tracking:`` key)."""
    return any(key in data for key in EXPERIMENT_KEYS)


def experiment_tracking(tracking: TrackingConfig | Mapping[str, Any] | None, *, experiment_name: str | None = None,
                        logging: Mapping[str, Any] | None = None, origin: str = "") -> TrackingConfig:
    """An experiment's tracking block: ``tracking`` as written, with the W&B guide's
    ``logging:`` shortcuts and the experiment defaults filled in.

    Precedence (highest wins): values written in ``tracking``; the shortcuts
    (``use_wandb: true`` adds the ``wandb`` backend next to the others;
    ``wandb_project`` / ``wandb_entity`` set the project and entity of every
    backend); the defaults (project ``model-foundry``, run name =
    ``experiment_name``). ``WANDB_MODE=disabled`` drops the ``wandb`` backend
    (the others keep running). ``FOUNDRY_TRACK_*`` are applied later, by
    :func:`load_config`, as for any config.

    Only the keys of :data:`GUIDE_SHORTCUTS` are read from ``logging`` (the rest
    are the trainer's, validated by it); a wrong type raises :class:`ConfigError`
    naming ``logging.<key>``. ``origin`` (the file) starts error messages.
    """
    prefix = f"{origin}: " if origin else ""
    shortcuts = _guide_shortcuts(logging or {}, prefix)
    if isinstance(tracking, TrackingConfig):
        explicit = tracking
    else:
        try:
            explicit = TrackingConfig.model_validate(dict(tracking or {}))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, TrackingConfig, f"{prefix}tracking")) from None
    given = explicit.model_fields_set
    values = explicit.model_dump()
    backends = dict(values["backends"])
    if shortcuts.get("use_wandb"):
        backends.setdefault("wandb", {})
    if "project" not in given:
        values["project"] = shortcuts.get("wandb_project") or DEFAULT_EXPERIMENT_PROJECT
    if "entity" not in given and shortcuts.get("wandb_entity"):
        values["entity"] = shortcuts["wandb_entity"]
    if "run_name" not in given and experiment_name:
        values["run_name"] = experiment_name
    # The guide's "disable W&B without changing the config". (WANDB_PROJECT and
    # friends are applied by the W&B backend, to the W&B run only.)
    if "wandb" in backends and os.environ.get("WANDB_MODE", "").lower() == "disabled":
        del backends["wandb"]
    values["backends"] = backends
    return TrackingConfig.model_validate(values)


def from_experiment_file(data: Mapping[str, Any], origin: str = "") -> TrackingConfig:
    """:func:`experiment_tracking` of a whole experiment file, as YAML read it."""
    tracking = data.get("tracking")
    if tracking is not None and not isinstance(tracking, Mapping):
        raise ConfigError(f"{origin + ': ' if origin else ''}tracking: expected a mapping, got {type(tracking).__name__}")
    name = data.get("experiment_name")
    return experiment_tracking(tracking, experiment_name=None if name is None else str(name),
                               logging=data.get("logging"), origin=origin)


def _guide_shortcuts(logging: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if not isinstance(logging, Mapping):
        raise ConfigError(f"{prefix}logging: expected a mapping, got {type(logging).__name__}")
    found: dict[str, Any] = {}
    for key, kind in GUIDE_SHORTCUTS.items():
        value = logging.get(key)
        if value is None:
            continue
        if not isinstance(value, kind):
            wanted = "true or false" if kind is bool else "a string"
            raise ConfigError(f"{prefix}logging.{key}: expected {wanted}, got {value!r}")
        found[key] = value
    return found
