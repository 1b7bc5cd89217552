"""A Hugging Face ``TrainerCallback`` that logs once, to every backend of a foundry-track run.

Replace ``report_to=["wandb", "tensorboard", "mlflow"]`` with one callback::

    from foundry_track.integrations.transformers import FoundryTrackCallback

    args = TrainingArguments(..., report_to="none")     # the Trainer's own integrations off
    trainer = Trainer(model, args, callbacks=[FoundryTrackCallback("configs/exp.yaml")], ...)

The Trainer's logs are grouped as its W&B integration groups them
(``loss`` -> ``train/loss``, ``eval_loss`` -> ``eval/loss``, ``test_*`` ->
``test/*``) and logged at ``state.global_step``. The training arguments and the
model's config are logged as params, secrets redacted. Only the main process
(``state.is_world_process_zero``) logs.

Resuming: at each save the callback writes ``foundry_track.json`` (the run's
directory and id) into the checkpoint folder; ``trainer.train(resume_from_checkpoint=...)``
then continues the same run in every backend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from foundry_track.integrations._common import Config, RunHandle, keep_for_upload, log_numbers

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("foundry_track.integrations.transformers needs transformers: "
                      "pip install 'foundry-track[transformers]'") from None

__all__ = ["FoundryTrackCallback", "IDENTITY_FILE", "group_logs"]

#: Written into each checkpoint folder: the run to continue when the Trainer resumes from it.
IDENTITY_FILE = "foundry_track.json"
_CHECKPOINT_PREFIX = "checkpoint"


def group_logs(logs: Mapping[str, Any]) -> dict[str, Any]:
    """The Trainer's log keys grouped as its W&B integration groups them."""
    grouped: dict[str, Any] = {}
    for key, value in logs.items():
        if key.startswith("eval_"):
            grouped["eval/" + key[5:]] = value
        elif key.startswith("test_"):
            grouped["test/" + key[5:]] = value
        else:
            grouped["train/" + key] = value
    return grouped


class FoundryTrackCallback(TrainerCallback):
    """Hugging Face Trainer callback: one foundry-track run, every backend."""

    def __init__(self, config: Config = None, *, log_checkpoints: bool = False, **overrides: Any) -> None:
        """
        :param config: the ``tracking:`` config: a YAML path, a dict or a TrackingConfig.
        :param log_checkpoints: log each checkpoint folder as a ``model`` artifact when it is saved.
        :param overrides: fields of the config to replace (``run_name=``, ``backends=``...).
        """
        self._handle = RunHandle(config, overrides=overrides)
        self._log_checkpoints = log_checkpoints
        self._warned: list[str] = []

    @property
    def run(self) -> Any:
        """The foundry-track :class:`~foundry_track.Run` (None before training begins and on other ranks)."""
        return self._handle.run

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        if self._handle.run is None and state.global_step > 0:
            self._resume_from(Path(args.output_dir) / f"{_CHECKPOINT_PREFIX}-{state.global_step}")
        run = self._handle.get()
        params: dict[str, Any] = {}
        model_config = getattr(model, "config", None)
        if model_config is not None and hasattr(model_config, "to_dict"):
            params["model"] = _json_safe(model_config.to_dict())
        params["args"] = _json_safe(args.to_dict())
        run.log_params(params)

    def _resume_from(self, checkpoint: Path) -> None:
        """The run saved with the checkpoint the Trainer resumes from, if any."""
        try:
            saved = json.loads((checkpoint / IDENTITY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        run_dir = saved.get("dir")
        if isinstance(run_dir, str) and Path(run_dir).is_dir():
            self._handle.resume = Path(run_dir)

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        log_numbers(self._handle.get(), group_logs(logs), state.global_step, self._warned)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        run = self._handle.get()
        checkpoint = Path(args.output_dir) / f"{_CHECKPOINT_PREFIX}-{state.global_step}"
        if not checkpoint.is_dir():
            return
        (checkpoint / IDENTITY_FILE).write_text(json.dumps({"dir": str(run.dir), "id": run.id}), encoding="utf-8")
        if self._log_checkpoints:
            run.log_artifact(keep_for_upload(run, checkpoint), type="model", name=checkpoint.name,
                             metadata={"global_step": state.global_step})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Training ended normally: the run is ``success``. A later ``trainer.evaluate()``
        continues the same run. A Trainer that raises never calls this: the run is
        closed as ``killed`` when the process exits."""
        if state.is_world_process_zero:
            self._handle.finish("success")


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
