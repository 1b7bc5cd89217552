"""A backend that hangs, registered through a real dist-info next to this file.

``benchmarks/memory.py`` puts this folder on ``sys.path``, so the entry point
``bench_stalled`` is discovered the way any third-party backend is. An
instance started while ``stall_flag`` exists never returns from its first
delivery (a tracker whose network call hangs); one started after the flag is
removed (``foundry_track.sync``) writes every step it receives to ``out``, one
line of space-separated steps per batch, so the benchmark can check that each
step arrived exactly once.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

import foundry_track


class StallOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path
    stall_flag: Path


class Stalled:
    def __init__(self) -> None:
        self.out: Path | None = None
        self.stalled = False

    @foundry_track.hookimpl
    def tracker_options_model(self) -> type[BaseModel]:
        return StallOptions

    @foundry_track.hookimpl
    def tracker_start(self, run: Any, options: StallOptions, resume_state: Mapping[str, str]) -> dict[str, str]:
        self.out = options.out
        self.stalled = options.stall_flag.exists()
        return {"out": str(options.out)}

    @foundry_track.hookimpl
    def tracker_log_metrics(self, rows: Sequence[Any]) -> None:
        if self.stalled:
            threading.Event().wait()  # never returns: this worker is stuck for good
        assert self.out is not None
        with open(self.out, "a") as fh:
            fh.write(" ".join(str(row.step) for row in rows) + "\n")

    @foundry_track.hookimpl
    def tracker_finish(self, status: str) -> None:
        pass
