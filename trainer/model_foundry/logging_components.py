"""Local logs (console, rotating file, JSON lines), system metrics, and the
guide's ``WandBLogger`` rebuilt on foundry_track.

The W&B guide's ``WandBLogger`` called ``wandb`` directly. Here it is a thin
layer over a foundry_track run: the same methods and arguments, but the
events also reach TensorBoard (so the guide's code works offline and without
an account), and ``log_metrics`` never waits on the network. The guide's
direct ``wandb.log`` / ``wandb.log_artifact`` / ``wandb.alert`` calls go to
the same run while a W&B-enabled ``WandBLogger`` or ``Trainer`` is open
(:func:`start_run`, :mod:`foundry_track.integrations.wandb`).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import foundry_track
from foundry_track import TrackingConfig

if TYPE_CHECKING:
    import torch
    from typing_extensions import Self

    from model_foundry.config import ExperimentConfig, LoggingConfig

    _StreamHandler = logging.StreamHandler[TextIO]
else:  # StreamHandler is subscriptable at runtime only from Python 3.11
    _StreamHandler = logging.StreamHandler

__all__ = ["JsonFormatter", "WandBLogger", "setup_logging", "start_run", "system_metrics", "wandb_requested"]

LOGGER_NAME = "model_foundry"
_LOG_FILE_BYTES = 10 * 2**20  # a single run's file rolls over past this size too
_log = logging.getLogger(LOGGER_NAME)


# --------------------------------------------------------------------------- #
# Console and file logging
# --------------------------------------------------------------------------- #

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _ConsoleHandler(_StreamHandler):
    """Clears a live progress bar before printing, so lines do not collide."""

    before_emit: Callable[[], None] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.before_emit is not None:
            self.before_emit()
        super().emit(record)


class _FileHandler(logging.handlers.RotatingFileHandler):
    """The run's log file (a class of its own, so a second setup_logging replaces it)."""


def setup_logging(cfg: LoggingConfig, log_dir: Path, experiment_name: str) -> Path:
    """Console at ``console_level``, a file at ``file_level``; returns the file's path.

    Each run starts a new file (``<dir>/<experiment>.log``, or ``.jsonl`` when
    ``use_structured_logging``); earlier ones are rotated to ``.1``, ``.2``...
    and at most ``max_log_files`` are kept. foundry_track's own warnings (a
    backend that failed, events left undelivered) go to the same places.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".jsonl" if cfg.use_structured_logging else ".log"
    path = log_dir / f"{experiment_name}{suffix}"
    file_handler = _FileHandler(
        path, maxBytes=_LOG_FILE_BYTES, backupCount=cfg.max_log_files - 1, encoding="utf-8", delay=True
    )
    if path.exists() and path.stat().st_size > 0:
        file_handler.doRollover()  # one file per run; the oldest beyond max_log_files is deleted
    file_handler.setLevel(cfg.file_level)
    file_handler.setFormatter(
        JsonFormatter() if cfg.use_structured_logging else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    console = _ConsoleHandler()
    console.setLevel(cfg.console_level)
    console.setFormatter(logging.Formatter("%(message)s"))

    for name in (LOGGER_NAME, "foundry_track"):
        logger = logging.getLogger(name)
        for old in [handler for handler in logger.handlers if isinstance(handler, (_FileHandler, _ConsoleHandler))]:
            logger.removeHandler(old)
            old.close()
        logger.addHandler(file_handler)
        logger.addHandler(console)
        logger.setLevel(min(logging.getLevelName(cfg.console_level), logging.getLevelName(cfg.file_level)))
    logging.getLogger(LOGGER_NAME).propagate = False
    return path


def set_console_hook(hook: Callable[[], None] | None) -> None:
    """Call ``hook()`` before each console line (the progress bar clears itself)."""
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        if isinstance(handler, _ConsoleHandler):
            handler.before_emit = hook


# --------------------------------------------------------------------------- #
# System metrics
# --------------------------------------------------------------------------- #

_process: Any = None


def system_metrics(device: torch.device | str | None = None) -> dict[str, float]:
    """``system/*`` gauges: process RSS and CPU, and CUDA memory on a CUDA device.

    ``system/process_rss_gb`` and ``system/cpu_percent`` are named and scaled
    as foundry_track's own sampler does; the CUDA names are the W&B guide's.
    None of these synchronises the GPU: the CUDA numbers come from the caching
    allocator's counters.
    """
    global _process
    metrics: dict[str, float] = {}
    try:
        import psutil

        if _process is None:
            _process = psutil.Process()
            _process.cpu_percent(None)  # the first call only starts the measurement
        metrics["system/process_rss_gb"] = _process.memory_info().rss / 2**30
        metrics["system/cpu_percent"] = _process.cpu_percent(None)
    except ImportError:  # psutil is optional: fall back to the peak RSS the kernel reports
        import resource

        metrics["system/process_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    import torch

    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        metrics["system/gpu_memory_allocated_gb"] = torch.cuda.memory_allocated() / 1e9
        metrics["system/gpu_memory_reserved_gb"] = torch.cuda.memory_reserved() / 1e9
        metrics["system/gpu_memory_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return metrics


# --------------------------------------------------------------------------- #
# The guide's WandBLogger
# --------------------------------------------------------------------------- #


def wandb_backend_problem() -> str | None:
    """Why the ``wandb`` backend cannot run here (None when it can)."""
    from foundry_track.plugins import discover

    info = discover().get("wandb")
    if info is None:
        return "no 'wandb' backend is installed: pip install 'foundry-track[wandb]'"
    return info.problem


def wandb_requested(config: ExperimentConfig) -> bool:
    """Whether the experiment asks for W&B (``logging.use_wandb`` or a ``wandb`` backend),
    whatever ``WANDB_MODE`` says: its direct ``wandb.*`` calls are then bridged."""
    explicit = config.tracking.backends if config.tracking is not None else {}
    return config.logging.use_wandb or "wandb" in explicit


def start_run(cfg: TrackingConfig, *, resume: str | os.PathLike[str] | None = None,
              wandb_calls: bool = False) -> foundry_track.Run:
    """``foundry_track.init(cfg)``; with ``wandb_calls``, also bridge the ``wandb`` module.

    The guide's direct calls (``wandb.log``, ``wandb.log_artifact``,
    ``wandb.alert``, ``wandb.watch``) then go to this run, and through it to
    every backend, until it finishes (:mod:`foundry_track.integrations.wandb`).
    """
    if not wandb_calls:
        return foundry_track.init(cfg, resume=resume)
    from foundry_track.integrations import wandb as wandb_bridge

    return wandb_bridge.init(cfg, resume=resume)


class WandBLogger:
    """Integration with Weights & Biases, through foundry_track.

    Same constructor and methods as the guide's class. The run goes to W&B
    when the ``wandb`` backend is installed (``WANDB_MODE=offline`` keeps it
    local) and always to TensorBoard under ``runs/``. While it is open, the
    ``wandb`` module's own ``log``, ``log_artifact``, ``alert`` and ``watch``
    go to the same run (and so to W&B *and* TensorBoard), as in the guide's
    Advanced Features.

    ``WANDB_MODE=disabled`` turns W&B off and nothing else, as in the trainer:
    the run, the direct ``wandb.*`` calls included, goes to TensorBoard.
    ``enabled=False`` turns the logger into a no-op.
    """

    def __init__(self, project: str, name: str, config: dict[str, Any],
                 tags: list[str] | None = None, enabled: bool = True) -> None:
        """
        Args:
            project: WandB project name
            name: Run name (experiment name)
            config: Configuration dictionary to log (secrets are redacted)
            tags: Optional tags for organizing runs
            enabled: Whether logging is enabled
        """
        self.enabled = enabled
        self.run: foundry_track.Run | None = None
        self._step = 0
        if not self.enabled:
            return
        backends: dict[str, dict[str, Any]] = {"tensorboard": {}}
        problem = wandb_backend_problem()
        if os.environ.get("WANDB_MODE", "").lower() == "disabled":
            _log.info("WANDB_MODE=disabled: W&B is off; logging to TensorBoard")
        elif problem is None:
            backends["wandb"] = {}
        else:
            _log.warning("W&B is not available, logging to TensorBoard only: %s", problem.splitlines()[0])
        self.run = start_run(TrackingConfig.model_validate(
            {"project": project, "run_name": name, "tags": list(tags or []), "backends": backends}), wandb_calls=True)
        self.run.log_params(config)

    @property
    def wandb(self) -> Any:
        """The ``wandb`` module, as the guide's class kept it: its ``log``, ``log_artifact``,
        ``alert`` and ``watch`` go to this logger's run while it is open."""
        from foundry_track.integrations import wandb as wandb_bridge

        return wandb_bridge.import_sdk()

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Log metrics (floats or 0-d tensors) at a global training step."""
        if self.run is not None:
            self._step = step
            self.run.log(metrics, step=step)

    def log_system_metrics(self) -> None:
        """Log system resource usage (RSS, CPU, CUDA memory) at the last logged step."""
        if self.run is not None:
            self.run.log(system_metrics(), step=self._step)

    def watch_model(self, model: Any, log_freq: int = 100) -> None:
        """Histograms of the model's parameters and gradients every ``log_freq`` backward passes."""
        if self.run is not None:
            self.run.watch(model, log="all", log_freq=log_freq)

    def log_artifact(self, artifact_path: str, artifact_type: str, name: str) -> None:
        """Log an artifact (a checkpoint file or directory, a dataset...)."""
        if self.run is not None:
            self.run.log_artifact(artifact_path, type=artifact_type, name=name)

    def finish(self) -> None:
        """Finish the run: deliver what is queued (bounded by the tracking flush_timeout)."""
        if self.run is not None:
            self.run.finish()
            from foundry_track.integrations import wandb as wandb_bridge

            wandb_bridge.uninstall(self.run)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()
