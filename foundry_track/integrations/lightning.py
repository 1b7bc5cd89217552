"""A Lightning ``Logger`` that logs once, to every backend of a foundry-track run.

Replace ``[TensorBoardLogger(...), WandbLogger(...), MLFlowLogger(...)]`` with::

    from foundry_track.integrations.lightning import FoundryTrackLogger

    trainer = lightning.Trainer(logger=FoundryTrackLogger("configs/exp.yaml"), ...)

The config is the ``tracking:`` block ``foundry_track.init`` reads (a YAML
path, a dict or a :class:`~foundry_track.TrackingConfig`). Lightning's step
(``trainer.global_step``) is the step; its metric dicts are handed to
``run.log`` as they come, so the step never waits on a tracker.

The logger subclasses ``lightning.pytorch.loggers.Logger`` when ``lightning``
is installed, otherwise ``pytorch_lightning.loggers.Logger``; with both
installed, ``pytorch_lightning`` users import the same class from
:mod:`foundry_track.integrations.pytorch_lightning`.

Like Lightning's own loggers it logs on global rank 0 only
(``rank_zero_only``); ``logger.experiment`` is the :class:`~foundry_track.Run`
there and a no-op object on the other ranks.
"""

from __future__ import annotations

import os
import sys
import threading
from argparse import Namespace
from pathlib import Path
from typing import Any, Literal, Mapping

from foundry_track.integrations._common import Config, RunHandle, keep_for_upload, log_numbers, status_of
from foundry_track.run import Run

try:
    # One object for lightning and pytorch_lightning: their strategies set its rank.
    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.pytorch.loggers import Logger as _Logger
    from lightning_utilities.core.rank_zero import rank_zero_only
except ImportError:  # pragma: no cover - only pytorch_lightning installed
    try:
        from lightning_fabric.loggers.logger import rank_zero_experiment
        from pytorch_lightning.loggers import Logger as _Logger  # type: ignore[assignment]
    except ImportError:
        raise ImportError("foundry_track.integrations.lightning needs Lightning: "
                          "pip install 'foundry-track[lightning]'") from None

__all__ = ["FoundryTrackLogger", "LoggerMixin"]

LogModel = bool | Literal["all"]


class LoggerMixin:
    """The logger's behaviour, kept apart from Lightning's base class so that
    ``lightning.pytorch`` and ``pytorch_lightning`` get the same code."""

    LOGGER_JOIN_CHAR = "-"

    def __init__(self, config: Config = None, *, version: str | os.PathLike[str] | None = None,
                 log_model: LogModel = False, prefix: str = "", **overrides: Any) -> None:
        """
        :param config: the ``tracking:`` config: a YAML path, a dict or a TrackingConfig.
        :param version: continue an earlier run: its run id, or its run directory.
        :param log_model: ``True`` logs the checkpoints of ``ModelCheckpoint`` as
            ``model`` artifacts when training ends, ``"all"`` as soon as each is
            saved, ``False`` (default) none.
        :param prefix: put in front of every metric key (joined with ``-``).
        :param overrides: fields of the config to replace (``run_name=``, ``backends=``...).
        """
        super().__init__()
        self._handle = RunHandle(config, version=version, overrides=overrides)
        self._log_model: LogModel = log_model
        self._prefix = prefix
        self._checkpoint_callback: Any = None
        self._logged_checkpoints: dict[str, float] = {}
        self._warned: list[str] = []
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- what Lightning and its callbacks read ---------------------------- #

    @property
    @rank_zero_experiment
    def experiment(self) -> Run:
        """The foundry-track :class:`~foundry_track.Run` (started on first use)."""
        return self._handle.get()

    @property
    def name(self) -> str:
        """The project (W&B project, MLflow experiment)."""
        return self._handle.config.project

    @property
    def version(self) -> str | None:
        """The run id (the run is started on rank 0 to know it)."""
        run = self._handle.run
        if run is not None:
            return run.id
        if _rank() == 0:
            return self._handle.get().id
        return self._handle.config.run_id

    @property
    def save_dir(self) -> str:
        """The root of run directories (``tracking.dir``): checkpoints go to ``<save_dir>/<project>/<run id>/checkpoints``."""
        return str(self._handle.config.dir)

    @property
    def root_dir(self) -> str:
        return os.path.join(self.save_dir, self.name)

    @property
    def log_dir(self) -> str | None:
        """The run directory (journal, run.json, local backend files)."""
        run = self._handle.run
        return str(run.dir) if run is not None and run.dir is not None else None

    # -- logging ----------------------------------------------------------- #

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self._prefix:
            metrics = {f"{self._prefix}{self.LOGGER_JOIN_CHAR}{k}": v for k, v in metrics.items()}
        log_numbers(self.experiment, metrics, step, self._warned)

    @rank_zero_only
    def log_hyperparams(self, params: Namespace | Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        """Logged as params, secrets redacted (``foundry_track.params.redact``) and nested keys joined with ``/``."""
        values = vars(params) if isinstance(params, Namespace) else dict(params)
        self.experiment.log_params({str(k): _param(v) for k, v in values.items()})

    @rank_zero_only
    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """WandbLogger's ``log_image``: ``images`` (arrays, tensors, PIL images) with optional ``caption=[...]``."""
        captions = kwargs.get("caption") or [None] * len(images)
        run = self.experiment
        for index, (image, caption) in enumerate(zip(images, captions)):
            run.log_image(key if len(images) == 1 else f"{key}/{index}", image, step=step, caption=caption)

    @rank_zero_only
    def log_table(self, key: str, columns: list[str] | None = None, data: list[list[Any]] | None = None,
                  dataframe: Any = None, step: int | None = None) -> None:
        """WandbLogger's ``log_table``: ``columns`` and ``data`` rows, or a pandas ``dataframe``."""
        self.experiment.log_table(key, columns, data, dataframe=dataframe, step=step)

    # -- checkpoints and the end ------------------------------------------ #

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if _rank() != 0 or not self._log_model:
            return
        if self._log_model == "all" or checkpoint_callback.save_top_k == -1:
            self._log_checkpoints(checkpoint_callback)
        else:
            self._checkpoint_callback = checkpoint_callback

    def _log_checkpoints(self, callback: Any) -> None:
        """Every checkpoint of ``callback`` not logged yet (or rewritten since), best ones marked."""
        found: dict[str, str] = {}
        for attr, tag in (("last_model_path", "latest"), ("best_model_path", "best")):
            path = getattr(callback, attr, None)
            if path:
                found[path] = tag
        for path in getattr(callback, "best_k_models", {}) or {}:
            found.setdefault(path, "best_k")
        run = self.experiment
        with self._lock:
            for path, tag in found.items():
                file = Path(path)
                if not file.is_file():
                    continue
                mtime = file.stat().st_mtime
                if self._logged_checkpoints.get(path, -1.0) >= mtime:
                    continue
                self._logged_checkpoints[path] = mtime
                score = getattr(callback, "best_model_score", None) if tag == "best" else None
                metadata = {"original_filename": file.name, "tag": tag, "monitor": getattr(callback, "monitor", None),
                            "score": float(score) if score is not None else None}
                run.log_artifact(keep_for_upload(run, file), type="model", name=file.stem, metadata=metadata)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Lightning's end (``success``, ``failed``) is the run's status; an end
        while a KeyboardInterrupt is handled is ``killed``. Logging again (``trainer.test``
        after ``fit``) continues the same run."""
        if not self._handle.live:
            return
        if self._checkpoint_callback is not None:
            self._log_checkpoints(self._checkpoint_callback)
            self._checkpoint_callback = None
        self._handle.finish(status_of(status, sys.exc_info()[1]))


def _rank() -> int:
    return int(getattr(rank_zero_only, "rank", 0))


def _param(value: Any) -> Any:
    """Lightning's ``save_hyperparameters`` may hold classes and functions: their names."""
    if isinstance(value, Namespace):
        return {str(k): _param(v) for k, v in vars(value).items()}
    if isinstance(value, Mapping):
        return {str(k): _param(v) for k, v in value.items()}
    if callable(value):
        return getattr(value, "__qualname__", None) or getattr(value, "__name__", None) or repr(value)
    return value


class FoundryTrackLogger(LoggerMixin, _Logger):
    """Lightning logger: one foundry-track run, every backend. See the module docstring."""
