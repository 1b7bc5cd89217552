"""Running a sweep: one process per trial, watched, pruned, stopped and resumed.

Each trial runs the sweep's program the way ``wandb agent`` does (see
:mod:`foundry_track.sweep.command`) as a separate process, and is a
foundry-track run of its own (so it reaches every configured backend), placed
and grouped through the launcher variables::

    FOUNDRY_TRACK_DIR=<sweep dir>/runs      FOUNDRY_TRACK_GROUP=<sweep id>
    FOUNDRY_TRACK_RUN_NAME=<sweep id>-trial-<n>   FOUNDRY_TRACK_TAGS=...,sweep
    FOUNDRY_TRACK_SWEEP=<sweep id>           (tracking.sweep: MLflow nests the group under a parent run)

The result of a trial is its metric's **last** logged value, read back from
the trial's journal (as W&B's controller uses the run summary, which is the
last value); the best value along the way is shown too.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from foundry_track.rundir import is_run_dir
from foundry_track.sweep.command import build_command, resolve_program
from foundry_track.sweep.errors import SweepError
from foundry_track.sweep.process import exit_text, last_line, new_process_group, send, show, trial_env
from foundry_track.sweep.sampling import grid_points, sample_params, slot_rng
from foundry_track.sweep.spec import SweepSpec, load_spec, parse_spec
from foundry_track.sweep.storage import (
    DONE,
    LOGS_DIR,
    PLOT_FILE,
    RUNS_DIR,
    STATE_FILE,
    PlotRequest,
    SweepResult,
    Trial,
    new_sweep_dir,
    read_state,
    trials_log_dir,
    write_state,
)
from foundry_track.sweep.study import Study, needs_optuna, require_optuna
from foundry_track.sweep.watch import MetricWatch, trackers_started

__all__ = ["Sweep", "run_sweep"]

STOP_GRACE: Final = 30.0  # seconds a stopped trial gets to checkpoint and close its run before SIGKILL
START_WAIT: Final = 120.0  # the most the first trial runs alone while its trackers start


@dataclass
class _Running:
    trial: Trial
    proc: subprocess.Popen[bytes]
    watch: MetricWatch
    otrial: Any = None  # Optuna's trial (bayes, hyperband)
    stop_reason: str | None = None  # "pruned" or "interrupted" once we signalled it
    signalled: float | None = None


class Sweep:
    """One sweep directory and the loop that runs its trials."""

    def __init__(self, directory: Path, state: dict[str, Any], spec: SweepSpec,
                 out: Callable[[str], None]) -> None:
        self.dir = directory
        self.state = state
        self.spec = spec
        self.params = spec.params
        self.trials = [Trial.from_json(t) for t in state.get("trials", [])]
        self.out = out
        self.runs_dir = directory / RUNS_DIR
        self.logs_dir = directory / LOGS_DIR
        self._running: list[_Running] = []
        self._optuna: Study | None = None
        self._grid: list[dict[str, Any]] | None = None
        self._stop = False
        self._force = False
        # The first trial of a sweep starts alone until its trackers have
        # started, so shared stores (a new SQLite MLflow database, the MLflow
        # parent run) are created by one process, not raced by K.
        self._warm = any(t.run_dir for t in self.trials)
        self._warm_deadline: float | None = None

    # -- creating and resuming --------------------------------------------- #

    @classmethod
    def create(cls, sweep_file: str | os.PathLike[str], *, root: str | os.PathLike[str], count: int | None,
               config: str | None, seed: int | None, out: Callable[[str], None]) -> Sweep:
        spec, raw = load_spec(sweep_file)
        spec_dir = Path(sweep_file).resolve().parent
        program = resolve_program(spec.program, spec_dir) if spec.program else []
        if config is not None:
            if not Path(config).is_file():
                raise SweepError(f"--config {config}: no such file")
            config = str(Path(config).resolve())
            if spec.command is not None and "config" not in spec.macros:
                raise SweepError("--config is given but the sweep's `command:` has no ${config}; put ${config} "
                                 "where the program expects its config")
        elif spec.command is not None and "config" in spec.macros:
            raise SweepError("the sweep's `command:` uses ${config}: give --config CONFIG")
        total = cls._total(spec, count)
        require_optuna(spec)
        sweep_id, directory = new_sweep_dir(root)
        state = {
            "version": 1, "id": sweep_id, "created": time.time(), "spec_file": str(Path(sweep_file).resolve()),
            "spec": raw, "count": total, "seed": seed if seed is not None else random.SystemRandom().randrange(2**31),
            "cwd": str(Path.cwd()), "program": program, "config": config, "trials": [],
        }
        write_state(directory, state)
        return cls(directory, state, spec, out)

    @staticmethod
    def _total(spec: SweepSpec, count: int | None) -> int:
        if count is not None and count < 1:
            raise SweepError(f"--count {count}: give a number of trials >= 1")
        if spec.method == "grid":
            size = len(grid_points(spec.params))
            return min(size, count or spec.run_cap or size)
        total = count or spec.run_cap
        if total is None:
            raise SweepError(f"method {spec.method} never runs out of parameters: give --count N (the number of "
                             f"trials), or run_cap in the sweep file")
        return total

    @classmethod
    def resume(cls, directory: str | os.PathLike[str], *, count: int | None, out: Callable[[str], None]) -> Sweep:
        path = Path(directory).resolve()
        state = read_state(directory)
        spec = parse_spec(state["spec"], f"{path / STATE_FILE}: spec")
        if count is not None:
            state["count"] = cls._total(spec, count)
        return cls(path, state, spec, out)

    # -- the loop ------------------------------------------------------------ #

    def run(self, workers: int, poll_interval: float = 0.25) -> SweepResult:
        if workers < 1:
            raise SweepError(f"--workers {workers}: give a number of parallel trials >= 1")
        started = time.monotonic()
        self.runs_dir.mkdir(exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        with self._lock(), self._signals():
            if needs_optuna(self.spec):
                self._optuna = Study(self.dir, self.state["id"], self.spec, self.state["seed"], workers)
                self._optuna.fail_leftovers()
            self._recover()
            self._announce(workers)
            if self.spec.early_terminate is not None and self.spec.early_terminate.strict:
                self.out("early_terminate.strict is not implemented; pruning as without it")
            try:
                while True:
                    self._reap()
                    if self._stop:
                        self._stop_all()
                        break
                    self._poll()
                    self._launch(workers)
                    if not self._running:
                        break
                    time.sleep(poll_interval)
            except BaseException:
                self._abort()  # trials run in their own sessions: never leave them orphaned
                raise
        result = self._result(time.monotonic() - started)
        if not result.interrupted:
            result.plot_request, result.plot_note = self._plot_request(result)
        return result

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One controller per sweep directory (a second would run every trial twice)."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here; the state file still guards most
            yield
            return
        with open(self.dir / ".lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise SweepError(f"{self.dir} is being run by another `foundry-track sweep`; wait for it or "
                                 f"stop it (Ctrl-C) first") from None
            yield

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """First Ctrl-C / SIGTERM: stop the trials cleanly, keep what finished. Second: kill them."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            # Only flags here: the loop reports it (printing inside a handler can
            # re-enter a print the loop was in the middle of).
            if self._stop:
                self._force = True
            self._stop = True

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _announce(self, workers: int) -> None:
        spec, done = self.spec, sum(1 for t in self.trials if t.state in DONE)
        names = ", ".join(p.name for p in self.params)
        metric = f"; metric {spec.metric.name} ({spec.metric.goal})" if spec.metric else ""
        again = f", {done} done before" if done else ""
        self.out(f"sweep {self.state['id']}: {spec.method} over {names}; {self.state['count']} trials{again}, "
                 f"{workers} at a time{metric}")
        self.out(f"sweep dir: {self.dir}")

    def _recover(self) -> None:
        """Trials a killed controller left ``running`` are interrupted: their slots run again."""
        for trial in self.trials:
            if trial.state == "running":
                trial.state, trial.reason = "interrupted", "the sweep process ended while it ran"
                trial.ended = trial.ended or time.time()
        self._save()

    # -- launching ----------------------------------------------------------- #

    def _target_reached(self) -> bool:
        metric = self.spec.metric
        if metric is None or metric.target is None:
            return False
        target = metric.target
        results = [t.metric for t in self.trials if t.state == "finished" and t.metric is not None]
        return any(v <= target if metric.goal == "minimize" else v >= target for v in results)

    def _next_slot(self) -> int | None:
        done = {t.slot for t in self.trials if t.state in DONE}
        busy = {r.trial.slot for r in self._running}
        return next((s for s in range(self.state["count"]) if s not in done and s not in busy), None)

    def _launch(self, workers: int) -> None:
        while len(self._running) < workers and not self._stop and not self._target_reached():
            if self._running and not self._warm:
                first = self._running[0]
                if self._warm_deadline is None:
                    self._warm_deadline = time.monotonic() + START_WAIT
                if not (trackers_started(first.watch.find()) or time.monotonic() > self._warm_deadline):
                    return
                self._warm = True
            slot = self._next_slot()
            if slot is None:
                return
            self._start(slot)

    def _choose(self, slot: int) -> tuple[dict[str, Any], dict[str, Any] | None, Any]:
        """(parameters, Optuna's internal values, Optuna trial) for a slot."""
        method = self.spec.method
        if method == "grid":
            if self._grid is None:
                self._grid = grid_points(self.params)
            params, internal = dict(self._grid[slot]), None
        elif method == "random":
            params, internal = sample_params(self.params, slot_rng(self.state["seed"], slot)), None
        else:
            assert self._optuna is not None
            again = next((t.internal for t in reversed(self.trials) if t.slot == slot and t.internal), None)
            otrial = self._optuna.ask(self.params, again)
            internal = dict(otrial.params)
            params = {p.name: p.value_of(internal.get(p.name)) for p in self.params}
            otrial.set_user_attr("params", params)
            return params, internal, otrial
        otrial = self._optuna.ask(None, None) if self._optuna is not None else None
        if otrial is not None:
            otrial.set_user_attr("params", params)
        return params, internal, otrial

    def _start(self, slot: int) -> None:
        number = len(self.trials)
        params, internal, otrial = self._choose(slot)
        name = f"{self.state['id']}-trial-{number}"
        log_file = self.logs_dir / f"trial-{number}.log"
        argv = build_command(self.spec, self.state["program"], params, config=self.state.get("config"),
                             args_file=self.logs_dir / f"trial-{number}.args.json")
        trial = Trial(number=number, slot=slot, params=params, run_name=name, log_file=str(log_file), command=argv,
                      started=time.time(), internal=internal,
                      optuna_number=otrial.number if otrial is not None else None)
        if otrial is not None:
            otrial.set_user_attr("foundry_track.trial", number)
        cwd = self.state.get("cwd") if Path(self.state.get("cwd") or ".").is_dir() else None
        try:
            with open(log_file, "ab") as log:
                proc = subprocess.Popen(argv, cwd=cwd, env=self._env(name), stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, **new_process_group())
        except OSError as exc:  # the program cannot even start: this trial fails, the sweep goes on
            trial.state, trial.ended, trial.reason = "failed", time.time(), f"cannot start {argv[0]}: {exc.strerror}"
            self.trials.append(trial)
            if otrial is not None:
                self._optuna.tell(otrial, "failed", None)  # type: ignore[union-attr]
            self.out(f"trial {number} failed: {trial.reason}")
            self._save()
            return
        trial.pid = proc.pid
        self.trials.append(trial)
        metric = self.spec.metric.name if self.spec.metric else None
        self._running.append(_Running(trial, proc, MetricWatch(self.runs_dir, name, metric), otrial))
        self._save()
        shown = " ".join(f"{k}={show(v)}" for k, v in params.items())
        self.out(f"trial {number} started: {shown}")

    def _env(self, run_name: str) -> dict[str, str]:
        return trial_env(os.environ, runs_dir=self.runs_dir, sweep_id=self.state["id"], run_name=run_name,
                         spec=self.spec)

    # -- watching ------------------------------------------------------------ #

    def _poll(self) -> None:
        """Read new metric values; feed them to the pruner; stop a trial it prunes."""
        pruning = self.spec.early_terminate is not None
        for r in self._running:
            new = r.watch.poll()
            if not pruning or r.stop_reason is not None or r.otrial is None:
                continue
            metric, eta = self.spec.metric.name, self.spec.early_terminate.eta  # type: ignore[union-attr]
            first = len(r.watch.values) - len(new)
            for i, value in enumerate(new, start=first):
                r.otrial.report(value, i)  # the iteration is the value's index, as W&B counts bands
                if r.otrial.should_prune():
                    r.trial.reason = (f"pruned at iteration {i + 1} ({metric}={show(value)}): "
                                      f"not in the best 1/{eta} there")
                    self._signal(r, "pruned")
                    self.out(f"trial {r.trial.number} {r.trial.reason}")
                    break

    def _signal(self, r: _Running, reason: str) -> None:
        """Ask the trial to stop (SIGINT to its process group: the trainer checkpoints
        and closes its run as killed; a Python script gets KeyboardInterrupt)."""
        r.stop_reason, r.signalled = reason, time.monotonic()
        send(r.proc, signal.SIGINT)

    def _reap(self) -> None:
        for r in list(self._running):
            if r.proc.poll() is None:
                if r.signalled is not None and (self._force or time.monotonic() - r.signalled > STOP_GRACE):
                    send(r.proc, signal.SIGKILL)
                continue
            self._running.remove(r)
            self._finish(r)

    def _finish(self, r: _Running) -> None:
        trial, code = r.trial, r.proc.returncode
        r.watch.poll()  # what it logged last
        r.watch.close()
        trial.ended, trial.exit_code = time.time(), code
        trial.run_dir = str(r.watch.run_dir) if r.watch.run_dir else None
        values = r.watch.values
        trial.iterations = len(values)
        if values:
            trial.metric = values[-1]
            finite = [v for v in values if math.isfinite(v)]
            if finite:
                maximize = self.spec.metric is not None and self.spec.metric.goal == "maximize"
                trial.best = max(finite) if maximize else min(finite)
        trial.state, reason = self._outcome(r)
        trial.reason = reason or trial.reason
        if r.otrial is not None:
            self._optuna.tell(r.otrial, trial.state, trial.metric)  # type: ignore[union-attr]
        self._save()
        took = f" in {trial.duration:.1f}s" if trial.duration is not None else ""
        if trial.state == "finished":
            self._warm = True
            metric = self.spec.metric.name if self.spec.metric else None
            result = f": {metric}={show(trial.metric)}" if metric else ""
            self.out(f"trial {trial.number} finished{took}{result}")
        elif trial.state != "pruned":
            self.out(f"trial {trial.number} {trial.state}{took}: {trial.reason}")

    def _outcome(self, r: _Running) -> tuple[str, str | None]:
        """The state of a trial whose process ended, and why (None: keep the reason it has)."""
        trial, code = r.trial, r.proc.returncode
        metric = self.spec.metric.name if self.spec.metric else None
        if r.stop_reason == "pruned":
            return "pruned", None
        if r.stop_reason == "interrupted":
            return "interrupted", "stopped by Ctrl-C; run again by --resume"
        if code != 0:
            return "failed", f"{exit_text(code)}; see {trial.log_file}{last_line(trial.log_file)}"
        if trial.run_dir is None:
            return "failed", (f"exited 0 but no foundry-track run named {trial.run_name} appeared under "
                              f"{self.runs_dir} (does the program call foundry_track.init?)")
        if metric is not None and not r.watch.values:
            return "failed", f"exited 0 but logged no {metric!r}"
        return "finished", None

    def _stop_all(self) -> None:
        """Ctrl-C: stop every running trial, wait for them (killing after the grace), record them."""
        self.out(f"\nstopping the running trials (Ctrl-C again to kill them at once); "
                 f"finish later with: foundry-track sweep --resume {self.dir}")
        for r in self._running:
            if r.stop_reason is None:
                self._signal(r, "interrupted")
        while self._running:
            self._reap()
            time.sleep(0.05)

    def _abort(self) -> None:
        """The loop itself failed: kill the trials and record them as interrupted (--resume reruns them)."""
        for r in self._running:
            send(r.proc, signal.SIGKILL)
            with contextlib.suppress(Exception):
                r.proc.wait(10)
            r.watch.close()
            r.trial.state, r.trial.ended = "interrupted", time.time()
            r.trial.reason = "the sweep process failed while it ran"
        self._running.clear()
        with contextlib.suppress(Exception):
            self._save()

    # -- results --------------------------------------------------------------- #

    def _save(self) -> None:
        self.state["trials"] = [asdict(t) for t in self.trials]
        write_state(self.dir, self.state)

    def _result(self, wall_s: float) -> SweepResult:
        metric = self.spec.metric
        return SweepResult(
            id=self.state["id"], dir=self.dir, name=self.spec.name, method=self.spec.method,
            metric=metric.name if metric else None, goal=metric.goal if metric else "minimize",
            count=self.state["count"], trials=list(self.trials), interrupted=self._stop,
            target_reached=self._target_reached(), wall_s=wall_s, log_dir=trials_log_dir(self.dir, self.trials),
        )

    def _plot_request(self, result: SweepResult) -> tuple[PlotRequest | None, str | None]:
        """What ``foundry-track plot`` should draw of the sweep (the metric of every trial), or why nothing."""
        if result.metric is None:
            return None, None
        runs = tuple(Path(t.run_dir) for t in result.trials if t.run_dir and is_run_dir(Path(t.run_dir)))
        if not runs:
            return None, "no trial has a run to plot"
        best = result.best
        title = f"{result.id} ({result.method}): {result.metric}" + (f", best trial {best.number}" if best else "")
        return PlotRequest(runs=runs, metric=result.metric, title=title, path=self.dir / PLOT_FILE), None


def run_sweep(
    sweep_file: str | os.PathLike[str] | None = None,
    *,
    resume: str | os.PathLike[str] | None = None,
    count: int | None = None,
    workers: int = 1,
    root: str | os.PathLike[str] = "runs",
    config: str | None = None,
    seed: int | None = None,
    out: Callable[[str], None] = print,
    poll_interval: float = 0.25,
) -> SweepResult:
    """Run a sweep file (a new sweep under ``root``), or finish the sweep in ``resume``.

    ``count``: trials in all (default: the grid's size, or ``run_cap``);
    ``workers``: trials at a time; ``config``: the experiment config each trial
    starts from. Progress lines go to ``out``. Ctrl-C stops the running trials
    and returns with ``interrupted`` set; ``resume`` runs only what is left.

    Nothing is drawn here: the result's ``plot_request`` says what
    ``foundry-track plot`` should draw (the caller sets ``plot`` or ``plot_note``).
    """
    if (sweep_file is None) == (resume is None):
        raise SweepError("give a sweep file, or --resume SWEEP_DIR to finish an earlier sweep (not both)")
    if resume is not None:
        if config is not None or seed is not None:
            raise SweepError("--config and --seed are fixed when a sweep starts; --resume keeps them")
        sweep = Sweep.resume(resume, count=count, out=out)
    else:
        assert sweep_file is not None
        sweep = Sweep.create(sweep_file, root=root, count=count, config=config, seed=seed, out=out)
    return sweep.run(workers, poll_interval=poll_interval)
