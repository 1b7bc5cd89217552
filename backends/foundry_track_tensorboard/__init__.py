"""TensorBoard backend: event files built from the ``tensorboard`` package's own
protos (not ``torch.utils.tensorboard``, whose import alone costs seconds).

One ``Event`` per step holds all of that step's scalars; params become an
HParams session so the run shows up in TensorBoard's HParams tab.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

import foundry_track

if TYPE_CHECKING:
    from foundry_track.events import MetricRow, ParamValue, RunInfo, Status

__all__ = ["TensorBoardBackend", "TensorBoardOptions"]

_log = logging.getLogger("foundry_track.tensorboard")
INSTALL = "pip install 'foundry-track[tensorboard]'"


class TensorBoardOptions(BaseModel):
    """Options under ``tracking.backends.tensorboard``."""

    model_config = ConfigDict(extra="forbid")

    log_dir: Path | None = Field(
        None,
        description="Folder that holds one subfolder per run (`<log_dir>/[<group>/]<run name>-<id>`), "
        "so `tensorboard --logdir <log_dir>` compares runs. Default: `<run dir>/tensorboard`.",
        examples=["runs/tb"],
    )
    flush_secs: float = Field(5.0, gt=0, description="Seconds between flushes of the event file to disk.", examples=[5.0])


class TensorBoardBackend:
    """One instance per run; every hook runs on this backend's worker thread."""

    def __init__(self) -> None:
        self._writer: Any = None
        self._pb: Any = None
        self.log_dir: Path | None = None

    # -- discovery --------------------------------------------------------- #

    @foundry_track.hookimpl
    def tracker_options_model(self) -> type[BaseModel]:
        return TensorBoardOptions

    @foundry_track.hookimpl
    def tracker_unavailable(self) -> str | None:
        if importlib.util.find_spec("tensorboard") is None:
            return f"the 'tensorboard' package is not installed: {INSTALL}"
        return None

    # -- start ------------------------------------------------------------- #

    @foundry_track.hookimpl
    def tracker_start(self, run: RunInfo, options: TensorBoardOptions, resume_state: Mapping[str, str]) -> dict[str, str]:
        from foundry_track_tensorboard import _protos

        self._pb = _protos
        if resume_state.get("log_dir"):
            log_dir = Path(resume_state["log_dir"])  # a resumed run keeps its directory
        elif options.log_dir is None:
            log_dir = run.dir / "tensorboard"
        else:
            parts = [run.group] if run.group else []
            log_dir = Path(options.log_dir).joinpath(*parts, f"{run.name}-{run.id}" if run.name != run.id else run.id)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir.resolve()
        self._writer = _protos.EventFile(self.log_dir, options.flush_secs)
        return {"log_dir": str(self.log_dir)}

    # -- log --------------------------------------------------------------- #

    @foundry_track.hookimpl
    def tracker_log_metrics(self, rows: Sequence[MetricRow]) -> None:
        pb, add = self._pb, self._writer.write
        i, n = 0, len(rows)
        while i < n:
            # Rows of the same step become one Event, as TensorBoard expects.
            step, wall = rows[i].step, rows[i].time
            values = []
            while i < n and rows[i].step == step:
                values.extend(pb.scalar(k, v) for k, v in rows[i].values.items())
                i += 1
            add(pb.event(step, wall, values))

    @foundry_track.hookimpl
    def tracker_log_params(self, params: Mapping[str, ParamValue]) -> None:
        self._writer.write(self._pb.hparams_start(params))

    # -- finish ------------------------------------------------------------ #

    @foundry_track.hookimpl
    def tracker_finish(self, status: Status) -> None:
        if self._writer is None:
            return
        self._writer.write(self._pb.hparams_end(status))
        self._writer.flush()
        self._writer.close()
        self._writer = None
