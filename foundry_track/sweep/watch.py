"""Watching a running trial: its run directory, its metric, its trackers.

Read-only, as ``foundry-track runs`` is: the trial's process writes its run
directory and journal; the sweep finds the directory by run name (through
:mod:`foundry_track.rundir`) and reads the sweep's metric from the journal as
the trial commits it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from foundry_track.errors import RunDirError
from foundry_track.history import load_run
from foundry_track.journal import Journal
from foundry_track.rundir import JOURNAL_FILE, is_run_dir, read_run_file

__all__ = ["MetricWatch", "trackers_started"]


class MetricWatch:
    """Follows one trial's run: finds its directory (by run name) and reads the
    sweep's metric from the journal, read-only, as the trial commits it."""

    def __init__(self, runs_dir: Path, run_name: str, metric: str | None) -> None:
        self.runs_dir, self.run_name, self.metric = runs_dir, run_name, metric
        self.run_dir: Path | None = None
        self.values: list[float] = []
        self._journal: Journal | None = None
        self._seq = 0

    def find(self) -> Path | None:
        if self.run_dir is None and self.runs_dir.is_dir():
            for candidate in sorted(self.runs_dir.glob(f"{self.run_name}-*")):
                with contextlib.suppress(OSError, ValueError):
                    if read_run_file(candidate).get("name") == self.run_name:
                        self.run_dir = candidate
                        break
        return self.run_dir

    def poll(self) -> list[float]:
        """The metric values committed since the last call."""
        run_dir = self.find()
        if self.metric is None or run_dir is None:
            return []
        new: list[float] = []
        try:
            if self._journal is None:
                if not (run_dir / JOURNAL_FILE).is_file():
                    return []
                self._journal = Journal(run_dir / JOURNAL_FILE, readonly=True)
            while True:
                records = self._journal.read_after(self._seq, 1000)
                if not records:
                    break
                for record in records:
                    self._seq = record.seq
                    if record.kind == "metrics" and self.metric in record.data:
                        new.append(float(record.data[self.metric]))
        except sqlite3.Error:
            # The journal is being created (no tables yet) or is busy: next poll.
            self.close()
        self.values.extend(new)
        return new

    def close(self) -> None:
        if self._journal is not None:
            with contextlib.suppress(sqlite3.Error):
                self._journal.close()
            self._journal = None


def trackers_started(run_dir: Path | None) -> bool:
    """Every backend of the run has started, or failed to: shared stores (a new
    SQLite MLflow database, the sweep's parent run) exist from here on."""
    if run_dir is None or not is_run_dir(run_dir):
        return False
    try:
        run = load_run(run_dir)
    except RunDirError:
        return False
    return all(b.identity or b.errors for b in run.backends.values())
