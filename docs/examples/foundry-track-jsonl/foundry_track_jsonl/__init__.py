"""foundry-track-jsonl: every event of a run as one JSON object per line.

Each line has an ``"event"`` field (start, metrics, params, image, histogram,
table, text, artifact, alert, finish) and the event's own fields. JSON has no
NaN or infinity, so those are written as the strings "NaN", "Infinity" and
"-Infinity".

Each event is in the file once, even after a crash: the lines go through a
buffer, ``tracker_flush`` makes them durable and returns the file's length as
the checkpoint, and a restart cuts the file back to that length before the
events after it are offered again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

import foundry_track
from foundry_track import checks

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

__all__ = ["JsonlBackend", "JsonlOptions"]


class JsonlOptions(BaseModel):
    """Options under ``tracking.backends.jsonl``."""

    model_config = ConfigDict(extra="forbid")  # a typo in the YAML is an error, not ignored

    path: Path | None = Field(
        None,
        description="File the events are appended to. Default: `events.jsonl` in the run directory.",
        examples=["logs/events.jsonl"],
    )
    fsync: bool = Field(
        False,
        description="Also ask the OS to put the file on disk at each flush, about once a second "
        "(then the events survive a power cut, not only a crash of the process; costs a few milliseconds "
        "per flush).",
        examples=[True],
    )


def _plain(value: Any) -> Any:
    """What ``json.dumps`` can write in strict JSON: no NaN, no infinities, no Paths."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class JsonlBackend:
    """One instance per run. Every hook runs on this backend's own worker
    thread, one call at a time, so it needs no locks."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None
        self._fsync = False
        self.path: Path | None = None

    @foundry_track.hookimpl
    def tracker_options_model(self) -> type[BaseModel]:
        return JsonlOptions

    @foundry_track.hookimpl
    def tracker_start(self, run: RunInfo, options: JsonlOptions, resume_state: Mapping[str, str]) -> dict[str, str]:
        # A resumed run, or `foundry-track sync`, gets back what we return below
        # as `resume_state`: keep appending to the same file...
        path = Path(resume_state.get("path") or options.path or run.dir / "events.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        if "offset" in resume_state and path.is_file():
            # ...after cutting off what was written past the checkpoint of our last
            # tracker_flush: those events are offered again, and each must be in the
            # file once. (min: never lengthen the file, that would add zero bytes.)
            os.truncate(path, min(int(resume_state["offset"]), path.stat().st_size))
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in tracker_finish
        self._fsync = options.fsync
        self.path = path.resolve()
        self._write([{"event": "start", "run_id": run.id, "name": run.name, "project": run.project,
                      "tags": list(run.tags), "resumed": run.resumed, "config": run.config}])
        return {"path": str(self.path)}

    def _write(self, records: Sequence[Mapping[str, Any]]) -> None:
        assert self._file is not None, "tracker_start has not run"
        self._file.write("".join(json.dumps(_plain(r), ensure_ascii=False, default=str) + "\n" for r in records))
        self._file.flush()  # readable with `tail -f`; durable only once tracker_flush returned

    @foundry_track.hookimpl
    def tracker_log_metrics(self, rows: Sequence[MetricRow]) -> None:
        # One line per row, written with one call: a batch can hold thousands of rows.
        self._write([{"event": "metrics", "step": r.step, "time": r.time, "values": r.values} for r in rows])

    @foundry_track.hookimpl
    def tracker_log_params(self, params: Mapping[str, ParamValue]) -> None:
        self._write([{"event": "params", "params": params}])

    def _event(self, kind: str, event: Any) -> None:
        self._write([{"event": kind, **dataclasses.asdict(event)}])

    @foundry_track.hookimpl
    def tracker_log_image(self, image: ImageEvent) -> None:
        self._event("image", image)  # the PNG stays in the run directory; the line holds its path

    @foundry_track.hookimpl
    def tracker_log_histogram(self, histogram: HistogramEvent) -> None:
        self._event("histogram", histogram)

    @foundry_track.hookimpl
    def tracker_log_table(self, table: TableEvent) -> None:
        self._event("table", table)

    @foundry_track.hookimpl
    def tracker_log_text(self, text: TextEvent) -> None:
        self._event("text", text)

    @foundry_track.hookimpl
    def tracker_log_artifact(self, artifact: ArtifactEvent) -> None:
        self._event("artifact", artifact)  # a real tracker would upload artifact.path here

    @foundry_track.hookimpl
    def tracker_alert(self, alert: AlertEvent) -> None:
        self._event("alert", alert)

    @foundry_track.hookimpl
    def tracker_flush(self) -> dict[str, str]:
        # Everything written so far becomes durable; the dispatcher then moves our
        # journal position and stores this checkpoint with it, in one transaction.
        assert self._file is not None, "tracker_start has not run"
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())  # on disk: survives a power cut too
        return {"path": str(self.path), "offset": str(os.fstat(self._file.fileno()).st_size)}

    @foundry_track.hookimpl
    def tracker_finish(self, status: Status, complete: bool) -> None:
        # `foundry-track sync` may close the run again later, with a new
        # instance; on this instance a second call has nothing left to do.
        if self._file is None:
            return
        # complete=False: some events are still in the journal, for a later sync.
        self._write([{"event": "finish", "status": status, "complete": complete}])
        self.tracker_flush()  # the finish line is durable too
        self._file.close()
        self._file = None

    @foundry_track.hookimpl
    def tracker_doctor(self, options: JsonlOptions, runs_dir: Path) -> list[DoctorCheck]:
        # `foundry-track doctor` calls this on a fresh instance, before any run:
        # can the events file be written where it will go?
        folder = options.path.parent if options.path else runs_dir
        return [checks.folder_check("jsonl", "events file folder", folder)]
