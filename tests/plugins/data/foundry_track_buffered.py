"""A third-party backend that buffers, for the fault matrix: metric rows are
kept in memory and written to a JSON-lines file only now and then (every 50
rows) and at ``tracker_flush``; a crash loses the buffer. It follows the
contract (hookspecs.py): ``tracker_flush`` makes the rows durable and returns
the file's length as the checkpoint, and a restart cuts the file back to it,
since every event past the checkpoint is offered again."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

import foundry_track


class BufferedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: Path


class Buffered:
    def __init__(self) -> None:
        self._buffer: list[str] = []
        self._file: Any = None

    @foundry_track.hookimpl
    def tracker_options_model(self) -> type[BaseModel]:
        return BufferedOptions

    @foundry_track.hookimpl
    def tracker_start(self, run: Any, options: BufferedOptions, resume_state: Mapping[str, str]) -> dict[str, str]:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(options.out, "ab")  # noqa: SIM115 - closed in tracker_finish
        if "offset" in resume_state and self._file.tell() > int(resume_state["offset"]):
            self._file.truncate(int(resume_state["offset"]))
        return {"out": str(options.out)}

    @foundry_track.hookimpl
    def tracker_log_metrics(self, rows: Sequence[Any]) -> None:
        self._buffer += [json.dumps({"step": r.step, "time": r.time}) + "\n" for r in rows]
        if len(self._buffer) >= 50:  # an SDK's own write-behind: part of the buffer reaches the file
            self._file.write("".join(self._buffer[:50]).encode())
            self._file.flush()
            del self._buffer[:50]

    @foundry_track.hookimpl
    def tracker_flush(self) -> dict[str, str]:
        self._file.write("".join(self._buffer).encode())
        self._buffer.clear()
        self._file.flush()
        os.fsync(self._file.fileno())
        return {"offset": str(self._file.tell())}

    @foundry_track.hookimpl
    def tracker_finish(self, status: str, complete: bool) -> None:
        if self._file is not None:
            self.tracker_flush()
            self._file.close()
            self._file = None
