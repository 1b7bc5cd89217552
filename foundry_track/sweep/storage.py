"""The sweep directory: the state file, its trials, and the result of a sweep.

Everything a sweep knows lives in its directory, so ``--resume`` can finish it::

    <sweep dir>/sweep.json     the spec, options and every trial (number, state, params, metric)
    <sweep dir>/optuna.db      Optuna's study (bayes, hyperband)
    <sweep dir>/runs/          the trials' run directories
    <sweep dir>/trials/        each trial's console output
    <sweep dir>/sweep.png      the metric of every trial, drawn by the caller from :attr:`SweepResult.plot_request`
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from foundry_track.rundir import new_run_id, read_run_file
from foundry_track.sweep.errors import SweepError

__all__ = [
    "DONE",
    "LOGS_DIR",
    "PLOT_FILE",
    "RUNS_DIR",
    "STATE_FILE",
    "PlotRequest",
    "SweepResult",
    "Trial",
    "new_sweep_dir",
    "new_sweep_id",
    "read_state",
    "trials_log_dir",
    "write_state",
]

STATE_FILE: Final = "sweep.json"
PLOT_FILE: Final = "sweep.png"
RUNS_DIR: Final = "runs"
LOGS_DIR: Final = "trials"
DONE: Final = ("finished", "failed", "pruned")  # a trial in these states is not run again


@dataclass
class Trial:
    """One run of the program. ``slot`` is the trial's place among the
    ``count`` the sweep runs: a slot interrupted by Ctrl-C is run again (same
    parameters) as a new trial after ``--resume``."""

    number: int
    slot: int
    params: dict[str, Any]
    state: str = "running"  # running -> finished | failed | pruned | interrupted
    run_name: str = ""
    run_dir: str | None = None
    log_file: str | None = None
    command: list[str] = field(default_factory=list)
    pid: int | None = None
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    metric: float | None = None  # the last value logged: the trial's result
    best: float | None = None  # the best value along the way (per the goal)
    iterations: int = 0  # values of the metric logged (hyperband's iterations)
    reason: str | None = None  # why it failed, was pruned or interrupted
    internal: dict[str, Any] | None = None  # Optuna's values of the parameters (bayes)
    optuna_number: int | None = None

    @property
    def duration(self) -> float | None:
        return None if self.started is None or self.ended is None else self.ended - self.started

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "duration_s": self.duration}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Trial:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class PlotRequest:
    """What to draw at the end of a sweep: ``foundry-track plot`` of ``metric``
    over the trials' ``runs``, titled ``title``, saved as ``path``.

    The sweep package draws nothing itself (it imports no plotting): the caller,
    the ``sweep`` command, draws it and records ``SweepResult.plot`` or ``plot_note``.
    """

    runs: tuple[Path, ...]
    metric: str
    title: str
    path: Path


@dataclass
class SweepResult:
    """What ``foundry-track sweep`` prints at the end."""

    id: str
    dir: Path
    name: str | None
    method: str
    metric: str | None
    goal: str
    count: int
    trials: list[Trial]
    interrupted: bool
    target_reached: bool
    wall_s: float
    plot: Path | None = None  # set by whoever draws `plot_request`
    plot_note: str | None = None  # why there is no plot
    log_dir: Path | None = None  # where the trials' event files are: `tensorboard --logdir` this
    plot_request: PlotRequest | None = None  # what to draw, when there is something (not in to_json)

    @property
    def best(self) -> Trial | None:
        """The finished trial with the best result (pruned trials stopped early, so they never win)."""
        done = [t for t in self.trials if t.state == "finished" and _finite(t.metric)]
        if not done:
            return None
        pick = max if self.goal == "maximize" else min
        return pick(done, key=lambda t: t.metric)  # type: ignore[arg-type, return-value]

    def best_so_far(self) -> list[float | None]:
        """For each trial (in ``trials`` order), the best result of the trials up to and
        including it: the sweep's running best, as the summary table shows it. Only
        finished trials count (as for :attr:`best`); None until one has finished."""
        pick = max if self.goal == "maximize" else min
        running: float | None = None
        out: list[float | None] = []
        for t in self.trials:
            if t.state == "finished" and _finite(t.metric):
                value = float(t.metric)  # type: ignore[arg-type]
                running = value if running is None else pick(running, value)
            out.append(running)
        return out

    @property
    def remaining(self) -> int:
        done = {t.slot for t in self.trials if t.state in DONE}
        return 0 if self.target_reached else max(0, self.count - len(done))

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "id": self.id, "dir": str(self.dir), "name": self.name, "method": self.method, "metric": self.metric,
            "goal": self.goal, "count": self.count, "remaining": self.remaining, "states": self.counts,
            "interrupted": self.interrupted, "target_reached": self.target_reached, "wall_s": self.wall_s,
            "best": best.to_json() if best else None, "plot": str(self.plot) if self.plot else None,
            "plot_note": self.plot_note, "log_dir": str(self.log_dir) if self.log_dir else None,
            "trials": [{**t.to_json(), "best_so_far": b} for t, b in zip(self.trials, self.best_so_far())],
        }


def new_sweep_id() -> str:
    return "sweep-" + new_run_id()


def new_sweep_dir(root: str | os.PathLike[str]) -> tuple[str, Path]:
    """A new sweep's id and its directory, made under ``root``."""
    sweep_id = new_sweep_id()
    directory = Path(root).resolve() / sweep_id
    directory.mkdir(parents=True)
    return sweep_id, directory


def write_state(directory: Path, state: Mapping[str, Any]) -> None:
    path = directory / STATE_FILE
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    os.replace(tmp, path)  # atomic: a crash leaves the old or the new state, never half


def read_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The state file of an earlier sweep (for ``--resume``)."""
    path = Path(directory).resolve() / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"--resume {directory}: not a sweep directory (no {STATE_FILE}); give the folder "
                         f"`foundry-track sweep` printed, e.g. runs/sweep-ab12cd34") from None
    except (OSError, ValueError) as exc:
        raise SweepError(f"--resume {directory}: cannot read {STATE_FILE}: {exc}") from None
    return state


def trials_log_dir(directory: Path, trials: Sequence[Trial]) -> Path | None:
    """The folder holding every trial's ``log_dir`` (a backend identity key: TensorBoard's
    event files): the sweep directory by default, ``<log_dir>/<sweep id>`` when the config sets one."""
    found: list[str] = []
    for t in trials:
        if not t.run_dir:
            continue
        with contextlib.suppress(OSError, ValueError):
            ids = read_run_file(t.run_dir).get("backend_ids", {})
            found += [str(i["log_dir"]) for i in ids.values() if isinstance(i, dict) and i.get("log_dir")]
    if not found:
        return None
    common = Path(os.path.commonpath(found))
    return directory if common.is_relative_to(directory) else common
