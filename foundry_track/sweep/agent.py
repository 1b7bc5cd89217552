"""``foundry-track agent``: run a shared sweep's trials on this machine, as ``wandb agent`` does.

An agent asks the storage for the next trial (a waiting grid point, a
placeholder of a capped sweep, or a new trial that TPE fills in), runs the
sweep's program (:mod:`~foundry_track.sweep.command`) with the launcher
variables that group its run under the sweep (:mod:`~foundry_track.sweep.process`),
reports the metric the trial logs (:mod:`~foundry_track.sweep.watch`) to the
study as intermediate values, so hyperband prunes on every agent's results,
and tells the study the result. It repeats until the sweep has nothing left
or ``count`` trials ran. The trial records the agent (host, pid) as user attributes.

Ctrl-C stops after the current trial; a second Ctrl-C (or SIGTERM, as a
scheduler preempting the job sends) stops the trial too, and its point goes
back to the storage for the next agent.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from foundry_track.sweep.command import build_command, resolve_program
from foundry_track.sweep.errors import SweepError
from foundry_track.sweep.process import exit_text, last_line, new_process_group, send, show, trial_env
from foundry_track.sweep.sampling import grid_points, sample_params, slot_rng
from foundry_track.sweep.shared import ATTR, SharedSweep, open_sweep
from foundry_track.sweep.storage import LOGS_DIR, RUNS_DIR
from foundry_track.sweep.watch import MetricWatch, trackers_started

__all__ = ["AgentResult", "AgentTrial", "run_agent"]

STOP_GRACE: Final = 30.0  # seconds a stopped trial gets to close its run before SIGKILL
START_WAIT: Final = 120.0  # the most a trial waits for the sweep's first trial to start its trackers


@dataclass
class AgentTrial:
    """A trial this agent ran (``number`` is the study's trial number)."""

    number: int
    params: dict[str, Any]
    run_name: str
    state: str = "running"  # -> finished | failed | pruned | interrupted
    metric: float | None = None
    run_dir: str | None = None
    log_file: str | None = None
    reason: str | None = None
    duration_s: float | None = None


@dataclass
class AgentResult:
    """What ``foundry-track agent`` prints at the end."""

    sweep_id: str
    agent: str
    trials: list[AgentTrial]
    interrupted: bool
    finished_sweep: bool  # the sweep has no trial left (not only this agent's --count)

    def to_json(self) -> dict[str, Any]:
        return {"sweep_id": self.sweep_id, "agent": self.agent, "interrupted": self.interrupted,
                "finished_sweep": self.finished_sweep, "trials": [asdict(t) for t in self.trials]}


class Agent:
    """One agent: the loop that takes trials from the shared storage and runs them here."""

    def __init__(self, sweep: SharedSweep, *, root: Path, count: int | None, out: Callable[[str], None],
                 poll_interval: float) -> None:
        if count is not None and count < 1:
            raise SweepError(f"--count {count}: give a number of trials >= 1")
        self.sweep, self.spec, self.count, self.out = sweep, sweep.spec, count, out
        self.poll_interval = poll_interval
        self.dir = root.resolve() / sweep.id
        self.runs_dir, self.logs_dir = self.dir / RUNS_DIR, self.dir / LOGS_DIR
        spec_dir = Path(str(sweep.attrs.get("spec_file") or ".")).parent
        self.program = resolve_program(self.spec.program, spec_dir) if self.spec.program else []
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.trials: list[AgentTrial] = []
        self._stop = False
        self._force = False
        self._finished_sweep = False
        self._warm = False  # some trial of the sweep has started its trackers
        self._grid = grid_points(self.spec.params) if self.spec.method == "grid" else None

    # -- the loop ------------------------------------------------------------ #

    def run(self) -> AgentResult:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.out(f"agent {self.host}:{self.pid} on sweep {self.sweep.id} ({self.spec.method}); "
                 f"runs in {self.runs_dir}")
        with self._signals():
            while not self._stop and (self.count is None or len(self.trials) < self.count):
                otrial = self._next()
                if otrial is None:
                    break
                self.trials.append(self._run_trial(otrial))
        if self._stop and not self._finished_sweep:
            self.out("agent stopped (Ctrl-C)")
        return AgentResult(self.sweep.id, f"{self.host}:{self.pid}", self.trials,
                           interrupted=self._stop, finished_sweep=self._finished_sweep)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """First Ctrl-C: stop after the current trial. Second Ctrl-C, or SIGTERM: stop that trial too."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            # SIGTERM (a scheduler preempting the job) stops the trial at once: its point goes back.
            if self._stop or signum == signal.SIGTERM:
                self._force = True
            self._stop = True

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _target_reached(self) -> bool:
        metric = self.spec.metric
        if metric is None or metric.target is None:
            return False
        values = [t.value for t in self.sweep.trials("COMPLETE") if t.value is not None]
        return any(v <= metric.target if metric.goal == "minimize" else v >= metric.target for v in values)

    def _next(self) -> Any | None:
        """The next trial, ``RUNNING`` and ours; None when the sweep has nothing left (or Ctrl-C)."""
        wait = max(1.0, min(self.sweep.heartbeat / 2, 10.0))
        while not self._stop:
            self.sweep.fail_stale()
            if self._target_reached():
                self.out("the metric's target was reached: no more trials")
                self._finished_sweep = True
                return None
            if not self.sweep.capped:
                return self.sweep.study.ask()
            otrial = self.sweep.pop_waiting()
            if otrial is not None:
                return otrial
            if not self.sweep.trials("RUNNING", "WAITING"):
                self._finished_sweep = True
                return None
            # Other agents' trials still run: one whose agent died comes back as waiting.
            time.sleep(wait)
        return None

    def _params(self, otrial: Any) -> dict[str, Any]:
        """The program's parameters: a retried trial's again, the grid point, a random draw, or TPE's."""
        attrs = otrial.user_attrs
        if ATTR + "params" in attrs:
            return dict(attrs[ATTR + "params"])
        if self._grid is not None:
            return dict(self._grid[int(attrs[ATTR + "point"])])
        if self.spec.method == "random":
            return sample_params(self.spec.params, slot_rng(int(self.sweep.attrs["seed"]), otrial.number))
        dists = self.sweep.optuna.distributions
        params: dict[str, Any] = {}
        for p in self.spec.params:
            d = p.optuna_distribution(self.sweep.optuna)
            if d is None:
                internal = None
            elif isinstance(d, dists.CategoricalDistribution):
                internal = otrial.suggest_categorical(p.name, d.choices)
            elif isinstance(d, dists.IntDistribution):
                internal = otrial.suggest_int(p.name, d.low, d.high)
            else:
                internal = otrial.suggest_float(p.name, d.low, d.high, log=d.log)
            params[p.name] = p.value_of(internal)
        return params

    # -- one trial -------------------------------------------------------------- #

    def _run_trial(self, otrial: Any) -> AgentTrial:
        number = otrial.number
        name = f"{self.sweep.id}-trial-{number}"
        params = self._params(otrial)
        trial = AgentTrial(number, params, name, log_file=str(self.logs_dir / f"trial-{number}.log"))
        start_attrs = {"params": params, "host": self.host, "pid": self.pid, "run_name": name, "state": "running",
                       "reason": None, "run_dir": None}
        for key, value in start_attrs.items():
            otrial.set_user_attr(ATTR + key, value)
        self.sweep.beat(otrial)
        argv = build_command(self.spec, self.program, params, config=self.sweep.attrs.get("config"),
                             args_file=self.logs_dir / f"trial-{number}.args.json")
        env = trial_env(os.environ, runs_dir=self.runs_dir, sweep_id=self.sweep.id, run_name=name, spec=self.spec)
        self._wait_for_first(number)
        started = time.monotonic()
        try:
            with open(str(trial.log_file), "ab") as log:
                proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        **new_process_group(die_with_parent=True))
        except OSError as exc:
            trial.state, trial.reason = "failed", f"cannot start {argv[0]}: {exc.strerror}"
            self._tell(otrial, trial)
            return trial
        self.out(f"trial {number} started: " + " ".join(f"{k}={show(v)}" for k, v in params.items()))
        metric = self.spec.metric.name if self.spec.metric else None
        watch = MetricWatch(self.runs_dir, name, metric)
        stop_reason = self._follow(otrial, proc, watch, trial)
        watch.poll()
        watch.close()
        trial.duration_s = time.monotonic() - started
        trial.run_dir = str(watch.run_dir) if watch.run_dir else None
        if watch.values:
            trial.metric = watch.values[-1]
        trial.state, reason = self._outcome(proc.returncode, stop_reason, watch, trial)
        trial.reason = reason or trial.reason
        self._tell(otrial, trial)
        return trial

    def _wait_for_first(self, number: int) -> None:
        """The sweep's first trial starts its trackers alone, on whichever agent: shared stores
        (a new MLflow database, the sweep's MLflow parent run) are made by one process, not raced."""
        deadline = time.monotonic() + START_WAIT
        while not self._warm and not self._stop and time.monotonic() < deadline:
            trials = self.sweep.trials()
            finished = any(t.state.is_finished() for t in trials)
            self._warm = finished or any(t.user_attrs.get(ATTR + "warm") for t in trials) or not any(
                t.number < number and t.state.name == "RUNNING" for t in trials)
            if not self._warm:
                time.sleep(self.poll_interval)
        self._warm = True

    def _follow(self, otrial: Any, proc: subprocess.Popen[bytes], watch: MetricWatch, trial: AgentTrial) -> str | None:
        """Wait for the trial: report its metric, prune it, beat, stop it on a second Ctrl-C."""
        stop_reason: str | None = None
        signalled = 0.0
        last_beat = time.monotonic()
        warm = False
        while proc.poll() is None:
            if not warm and trackers_started(watch.find()):
                otrial.set_user_attr(ATTR + "warm", warm := True)
            if self._report(otrial, watch, trial, prune=stop_reason is None):
                stop_reason, signalled = "pruned", time.monotonic()
                send(proc, signal.SIGINT)
                self.out(f"trial {trial.number} {trial.reason}")
            if self._force and stop_reason is None:
                stop_reason, signalled = "interrupted", time.monotonic()
                send(proc, signal.SIGINT)
            if stop_reason is not None and (time.monotonic() - signalled > STOP_GRACE):
                send(proc, signal.SIGKILL)
            if time.monotonic() - last_beat >= self.sweep.heartbeat:
                self.sweep.beat(otrial)
                last_beat = time.monotonic()
            time.sleep(self.poll_interval)
        if stop_reason is None:
            self._report(otrial, watch, trial, prune=False)  # what it logged last, for the record
        return stop_reason

    def _report(self, otrial: Any, watch: MetricWatch, trial: AgentTrial, *, prune: bool) -> bool:
        """Report the metric's new values to the study (every agent's values: the pruner compares
        across them); True when the pruner stops the trial at one of them."""
        new = watch.poll()
        first = len(watch.values) - len(new)
        for i, value in enumerate(new, start=first):
            if not math.isfinite(value):
                continue
            otrial.report(value, i)  # the iteration is the value's index, as W&B counts bands
            et = self.spec.early_terminate
            if prune and et is not None and otrial.should_prune():
                trial.reason = f"pruned at iteration {i + 1} ({watch.metric}={show(value)}): not in the best " \
                               f"1/{et.eta} there"
                return True
        return False

    def _outcome(self, code: int, stop_reason: str | None, watch: MetricWatch,
                 trial: AgentTrial) -> tuple[str, str | None]:
        metric = self.spec.metric.name if self.spec.metric else None
        if stop_reason == "pruned":
            return "pruned", None
        if stop_reason == "interrupted":
            return "interrupted", "stopped by Ctrl-C; its point goes back to the sweep"
        if code != 0:
            return "failed", f"{exit_text(code)}; see {trial.log_file}{last_line(trial.log_file)}"
        if watch.run_dir is None:
            return "failed", (f"exited 0 but no foundry-track run named {trial.run_name} appeared under "
                              f"{self.runs_dir} (does the program call foundry_track.init?)")
        if metric is not None and not watch.values:
            return "failed", f"exited 0 but logged no {metric!r}"
        return "finished", None

    def _tell(self, otrial: Any, trial: AgentTrial) -> None:
        """The result, to the study (and the console)."""
        optuna, states = self.sweep.optuna, self.sweep.optuna.trial.TrialState
        try:
            for key, attr in {"state": trial.state, "reason": trial.reason, "run_dir": trial.run_dir}.items():
                otrial.set_user_attr(ATTR + key, attr)
            if trial.state == "finished":
                value = trial.metric if trial.metric is not None and math.isfinite(trial.metric) else None
                if value is None and self.spec.metric is not None:
                    self.sweep.study.tell(otrial, state=states.FAIL)
                else:  # without a metric, Optuna still needs a value to complete the trial
                    self.sweep.study.tell(otrial, value if value is not None else 0.0)
            elif trial.state == "pruned":
                self.sweep.study.tell(otrial, state=states.PRUNED)
            else:
                self.sweep.study.tell(otrial, state=states.FAIL)
                if trial.state == "interrupted" and self.sweep.capped:
                    self.sweep.retry(self.sweep.storage.get_trial(otrial._trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            trial.reason = "another agent marked it failed (its heartbeat was late); its point runs again"
            trial.state = "failed"
        took = f" in {trial.duration_s:.1f}s" if trial.duration_s is not None else ""
        if trial.state == "finished":
            result = f": {self.spec.metric.name}={show(trial.metric)}" if self.spec.metric else ""
            self.out(f"trial {trial.number} finished{took}{result}")
        elif trial.state != "pruned":
            self.out(f"trial {trial.number} {trial.state}{took}: {trial.reason}")


def run_agent(sweep_id: str, storage: str, *, count: int | None = None, root: str | os.PathLike[str] = "runs",
              out: Callable[[str], None] = print, poll_interval: float = 0.25) -> AgentResult:
    """Run the trials of sweep ``sweep_id`` in ``storage`` here, until the sweep is done or ``count`` ran.

    The trials' runs go to ``<root>/<sweep id>/runs``, their console output to
    ``<root>/<sweep id>/trials``."""
    sweep = open_sweep(sweep_id, storage)
    return Agent(sweep, root=Path(root), count=count, out=out, poll_interval=poll_interval).run()
