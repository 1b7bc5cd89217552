"""Fault-injection backends, registered through a real dist-info's entry points.

Each writes what it received to a JSON-lines file (``out``), so a test can check
that every event arrived exactly once. A fault is active only while the file
named by ``fault_flag`` exists: the test removes it to get "a healthy instance
of the same backend" for ``foundry-track sync``.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

import foundry_track


class FaultOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path
    fault_flag: Path | None = None
    delay_per_event: float = 0.0
    start_delay: float = 0.0


class Recorder:
    """Healthy: records every event."""

    def __init__(self) -> None:
        self.options: FaultOptions | None = None

    def _faulty(self) -> bool:
        flag = self.options.fault_flag if self.options else None
        return flag is not None and flag.exists()

    def fault(self, events: int) -> None:
        """Overridden by the faulty variants; called before anything is written."""

    def _write(self, records: list[dict[str, Any]]) -> None:
        self.fault(len(records))
        assert self.options is not None
        with open(self.options.out, "a") as fh:
            for record in records:
                fh.write(json.dumps({"pid": os.getpid(), **record}) + "\n")

    @foundry_track.hookimpl
    def tracker_options_model(self) -> type[BaseModel]:
        return FaultOptions

    @foundry_track.hookimpl
    def tracker_start(self, run: Any, options: FaultOptions, resume_state: Mapping[str, str]) -> dict[str, str]:
        self.options = options
        time.sleep(options.start_delay)
        with open(options.out, "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "hook": "start", "run_id": run.id,
                                 "resumed": bool(resume_state)}) + "\n")
        return {"out": str(options.out)}

    @foundry_track.hookimpl
    def tracker_log_metrics(self, rows: Sequence[Any]) -> None:
        self._write([{"hook": "metrics", "step": r.step, "values": dict(r.values)} for r in rows])

    @foundry_track.hookimpl
    def tracker_log_params(self, params: Mapping[str, Any]) -> None:
        self._write([{"hook": "params", "params": dict(params)}])

    @foundry_track.hookimpl
    def tracker_finish(self, status: str, complete: bool) -> None:
        assert self.options is not None
        with open(self.options.out, "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "hook": "finish", "status": status,
                                 "complete": complete}) + "\n")


class Raising(Recorder):
    """Raises on every log call while the fault flag exists."""

    def fault(self, events: int) -> None:
        if self._faulty():
            raise RuntimeError("injected failure")


class Hanging(Recorder):
    """Never returns from a log call while the fault flag exists."""

    def fault(self, events: int) -> None:
        if self._faulty():
            threading.Event().wait()


class Slow(Recorder):
    """Takes ``delay_per_event`` seconds per event while the fault flag exists."""

    def fault(self, events: int) -> None:
        if self._faulty() and self.options is not None:
            time.sleep(self.options.delay_per_event * events)


class Picky(Recorder):
    """Refuses (for good: ValueError) a batch of metric rows holding a value that
    is not finite, while the fault flag exists; takes everything else."""

    @foundry_track.hookimpl
    def tracker_log_metrics(self, rows: Sequence[Any]) -> None:
        bad = [r.step for r in rows if not all(math.isfinite(v) for v in r.values.values())]
        if bad and self._faulty():
            raise ValueError(f"cannot store a value that is not finite (step {bad[0]})")
        super().tracker_log_metrics(rows)


class Unreachable(Recorder):
    """tracker_start fails as a tracker that is down does (ConnectionRefusedError)
    while the fault flag exists; healthy once it is gone."""

    @foundry_track.hookimpl
    def tracker_start(self, run: Any, options: FaultOptions, resume_state: Mapping[str, str]) -> dict[str, str]:
        if options.fault_flag is not None and options.fault_flag.exists():
            raise ConnectionRefusedError(111, "Connection refused (injected)")
        return super().tracker_start(run, options, resume_state)


class Misspelled:
    """A hook name with a typo: loading must fail and name the plugin."""

    @foundry_track.hookimpl
    def tracker_log_metric(self, rows: Sequence[Any]) -> None:  # sic
        pass


class Unmarked:
    """A hook without the marker: it would never be called."""

    def tracker_log_metrics(self, rows: Sequence[Any]) -> None:
        pass
