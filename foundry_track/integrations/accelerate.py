"""An Accelerate tracker that logs once, to every backend of a foundry-track run.

Replace ``log_with=["wandb", "tensorboard", "mlflow"]`` with one tracker::

    from accelerate import Accelerator
    from foundry_track.integrations.accelerate import FoundryTrackTracker

    accelerator = Accelerator(log_with=[FoundryTrackTracker("configs/exp.yaml")])
    accelerator.init_trackers("my-project", config={"lr": 1e-3})   # config -> params, secrets redacted
    accelerator.log({"train/loss": loss}, step=step)
    accelerator.end_training()                                       # the run ends as success

Only the main process logs (``main_process_only``); the step passed to
``accelerator.log`` is the step.
"""

from __future__ import annotations

from typing import Any, Mapping

from foundry_track.events import Status
from foundry_track.integrations._common import Config, RunHandle, log_numbers
from foundry_track.run import Run

try:
    from accelerate.tracking import GeneralTracker, on_main_process
except ImportError:
    raise ImportError("foundry_track.integrations.accelerate needs accelerate: "
                      "pip install 'foundry-track[accelerate]'") from None

__all__ = ["FoundryTrackTracker"]


class FoundryTrackTracker(GeneralTracker):  # type: ignore[misc]  # accelerate is untyped
    """Accelerate tracker: one foundry-track run, every backend."""

    name = "foundry_track"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, config: Config = None, **overrides: Any) -> None:
        """
        :param config: the ``tracking:`` config: a YAML path, a dict or a TrackingConfig.
        :param overrides: fields of the config to replace (``run_name=``, ``backends=``...).
        """
        super().__init__()
        self._handle = RunHandle(config, overrides=overrides)
        self._warned: list[str] = []

    @on_main_process  # type: ignore[untyped-decorator]
    def start(self) -> None:
        self._handle.get()

    @property
    def tracker(self) -> Run | None:
        """The foundry-track :class:`~foundry_track.Run` (None on other processes)."""
        return self._handle.run

    @on_main_process  # type: ignore[untyped-decorator]
    def store_init_configuration(self, values: Mapping[str, Any]) -> None:
        self._handle.get().log_params(values)

    @on_main_process  # type: ignore[untyped-decorator]
    def log(self, values: Mapping[str, Any], step: int | None = None, **kwargs: Any) -> None:
        log_numbers(self._handle.get(), values, step, self._warned)

    @on_main_process  # type: ignore[untyped-decorator]
    def log_images(self, values: Mapping[str, Any], step: int | None = None, **kwargs: Any) -> None:
        """Images by key (arrays, tensors, PIL images), as Accelerate's TensorBoard and W&B trackers take them."""
        run = self._handle.get()
        for key, image in values.items():
            run.log_image(key, image, step=step)

    @on_main_process  # type: ignore[untyped-decorator]
    def log_table(self, table_name: str, columns: list[str] | None = None, data: list[list[Any]] | None = None,
                  dataframe: Any = None, step: int | None = None, **kwargs: Any) -> None:
        self._handle.get().log_table(table_name, columns, data, dataframe=dataframe, step=step)

    @on_main_process  # type: ignore[untyped-decorator]
    def finish(self, status: Status = "success") -> None:
        """``accelerator.end_training()`` ends the run as ``success``."""
        self._handle.finish(status)
