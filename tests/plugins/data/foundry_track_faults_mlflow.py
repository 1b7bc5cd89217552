"""The real MLflow backend, slowed down: while the file ``fault_flag`` exists,
each metrics call first waits ``delay_per_call`` seconds, so a run ends with
it still behind (a tracker slower than the training loop) and ``finish``
abandons it; without the flag (a later ``sync``) it is the MLflow backend."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from foundry_track_mlflow import MlflowBackend, MlflowOptions
from pydantic import BaseModel

import foundry_track


class SlowMlflowOptions(MlflowOptions):
    delay_per_call: float = 0.0
    fault_flag: Path | None = None


class SlowMlflow(MlflowBackend):
    def __init__(self) -> None:
        super().__init__()
        self.slow: SlowMlflowOptions | None = None

    @foundry_track.hookimpl
    def tracker_options_model(self) -> type[BaseModel]:
        return SlowMlflowOptions

    @foundry_track.hookimpl
    def tracker_start(self, run: Any, options: SlowMlflowOptions, resume_state: Any) -> dict[str, str]:
        self.slow = options
        return super().tracker_start(run, options, resume_state)

    @foundry_track.hookimpl
    def tracker_log_metrics(self, rows: Sequence[Any]) -> None:
        if self.slow is not None and self.slow.fault_flag is not None and self.slow.fault_flag.exists():
            time.sleep(self.slow.delay_per_call)
        super().tracker_log_metrics(rows)
