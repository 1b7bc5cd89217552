"""TensorBoard backend: event files built from the ``tensorboard`` package's own
protos (not ``torch.utils.tensorboard``, whose import alone costs seconds).

One ``Event`` per step holds all of that step's scalars; params become an
HParams session so the run shows up in TensorBoard's HParams tab (the
hyperparameters: ``logging/*`` and ``tracking/*`` settings are left out, see
``_protos.hparams``; TensorBoard shows only the first session a run writes,
so log params in one call). Images,
histograms and text use TensorBoard's own summaries; tables become markdown
text, artifacts and alerts a text note (TensorBoard stores no files).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

import foundry_track

if TYPE_CHECKING:
    from foundry_track.events import (
        AlertEvent,
        ArtifactEvent,
        DoctorCheck,
        HistogramEvent,
        ImageEvent,
        MetricRow,
        ParamValue,
        RunInfo,
        Status,
        TableEvent,
        TextEvent,
    )

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

    @foundry_track.hookimpl
    def tracker_doctor(self, options: TensorBoardOptions, runs_dir: Path,
                       check_disk: Callable[[str, Path], None]) -> list[DoctorCheck]:
        from foundry_track_tensorboard._doctor import doctor

        return doctor(options, runs_dir, check_disk)

    # -- start ------------------------------------------------------------- #

    @foundry_track.hookimpl
    def tracker_start(self, run: RunInfo, options: TensorBoardOptions, resume_state: Mapping[str, str]) -> dict[str, str]:
        self._pb = _protos = foundry_track.import_sdk("foundry_track_tensorboard._protos")
        if resume_state.get("log_dir"):
            log_dir = Path(resume_state["log_dir"])  # a resumed run keeps its directory
        elif options.log_dir is None:
            log_dir = run.dir / "tensorboard"
        else:
            parts = [run.group] if run.group else []
            log_dir = Path(options.log_dir).joinpath(*parts, f"{run.name}-{run.id}" if run.name != run.id else run.id)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir.resolve()
        if resume_state.get("event_file"):
            # The events written past the last durable flush of the previous
            # process are offered again: drop them so none is there twice.
            _protos.truncate(self.log_dir / resume_state["event_file"], int(resume_state.get("offset", "0")))
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
            values: list[Any] = []
            while i < n and rows[i].step == step:
                values.extend(pb.scalar(k, v) for k, v in rows[i].values.items())
                i += 1
            add(pb.event(step, wall, values))

    @foundry_track.hookimpl
    def tracker_log_params(self, params: Mapping[str, ParamValue]) -> None:
        self._writer.write(self._pb.hparams_start(params))

    @foundry_track.hookimpl
    def tracker_log_image(self, image: ImageEvent) -> None:
        png = image.path.read_bytes()
        value = self._pb.image(image.key, png, image.width, image.height)
        self._writer.write(self._pb.event(image.step, image.time, [value]))
        if image.caption:
            self._writer.write(self._pb.event(image.step, image.time, [self._pb.text(f"{image.key}/caption", image.caption)]))

    @foundry_track.hookimpl
    def tracker_log_histogram(self, histogram: HistogramEvent) -> None:
        h = histogram
        value = self._pb.histogram(h.key, h.edges, h.counts, h.min, h.max, h.num, h.sum, h.sum_squares)
        self._writer.write(self._pb.event(h.step, h.time, [value]))

    @foundry_track.hookimpl
    def tracker_log_text(self, text: TextEvent) -> None:
        self._writer.write(self._pb.event(text.step, text.time, [self._pb.text(text.key, text.text)]))

    @foundry_track.hookimpl
    def tracker_log_table(self, table: TableEvent) -> None:
        body = self._pb.markdown_table(table.columns, table.rows)
        self._writer.write(self._pb.event(table.step, table.time, [self._pb.text(table.key, body)]))

    @foundry_track.hookimpl
    def tracker_log_artifact(self, artifact: ArtifactEvent) -> None:
        note = (f"**{artifact.type}** `{artifact.name}` at `{artifact.path}` (sha256 {artifact.digest})"
                + (f": {artifact.description}" if artifact.description else ""))
        self._writer.write(self._pb.event(artifact.step, artifact.time, [self._pb.text(f"artifacts/{artifact.name}", note)]))

    @foundry_track.hookimpl
    def tracker_alert(self, alert: AlertEvent) -> None:
        note = f"**{alert.level.upper()}: {alert.title}**\n\n{alert.text}"
        self._writer.write(self._pb.event(alert.step, alert.time, [self._pb.text("alerts", note)]))

    # -- finish ------------------------------------------------------------ #

    @foundry_track.hookimpl
    def tracker_flush(self) -> dict[str, str]:
        # The file is written through a buffer: flushed and fsynced here, the
        # events are durable, and the checkpoint says where they end.
        name, offset = self._writer.sync()
        return {"event_file": name, "offset": str(offset)}

    @foundry_track.hookimpl
    def tracker_finish(self, status: Status, complete: bool) -> None:
        if self._writer is None:
            return
        # An incomplete stream is not closed as a success in the HParams tab.
        self._writer.write(self._pb.hparams_end(status if complete or status != "success" else "killed"))
        self._writer.sync()
        self._writer.close()
        self._writer = None
