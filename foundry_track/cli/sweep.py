"""``foundry-track sweep``: the command's arguments and its summary. The sweep
itself runs in :mod:`foundry_track.sweep` (:func:`~foundry_track.sweep.run_sweep`);
the plot of its trials, ``sweep.png``, is drawn here, with ``foundry-track plot``'s
own code, so the sweep package imports nothing of the command line.

``sweep create`` and ``sweep status`` are the shared-storage forms (a sweep
run by ``foundry-track agent`` on several machines; :mod:`foundry_track.sweep.shared`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import foundry_track.cli._common as ui

if TYPE_CHECKING:
    from foundry_track.sweep import SweepResult

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = ui.add_command(
        sub, "sweep", "run a W&B sweep file (grid, random, bayes) without a W&B server",
        "Run the program of a W&B sweep file once per trial, as `wandb agent` does (python PROGRAM "
        "--name=value ...; a module name runs with python -m), each trial a tracked run of its own: "
        "FOUNDRY_TRACK_GROUP is the sweep id (W&B group, MLflow parent run, TensorBoard subfolder), "
        "the runs are under SWEEP_DIR/runs. grid and random need nothing more; bayes (TPE) and "
        "early_terminate: hyperband need Optuna: pip install 'foundry-track[sweep]'. A trial's result is "
        "the last value of the sweep's metric it logged. A trial that fails is recorded and the sweep "
        "goes on. Ctrl-C stops the running trials; --resume SWEEP_DIR runs only the trials left. At the "
        "end: the best trial, a table of all trials, and SWEEP_DIR/sweep.png. Exit 0: done; 1: every "
        "trial failed; 2: bad sweep file or options; 130: interrupted. On several machines: `sweep create "
        "SWEEP.yaml --storage URL` puts the sweep in a shared Optuna storage (postgresql://, mysql://, "
        "sqlite:/// or a journal file's path on a shared file system) and prints its id on the last line; "
        "`foundry-track agent ID --storage URL` runs its trials anywhere; `sweep status ID --storage URL` "
        "shows them (states, best so far, trials per agent). --storage defaults to "
        "$FOUNDRY_TRACK_SWEEP_STORAGE, which keeps a password off the command line.",
        "examples:\n"
        "  foundry-track sweep configs/sweep_config.yaml --config configs/quickstart.yaml --count 20 --workers 2\n"
        "  foundry-track sweep --resume runs/sweep-ab12cd34\n"
        "  foundry-track sweep grid.yaml --json > summary.json\n"
        "  ID=$(foundry-track sweep create grid.yaml --storage postgresql://me@db/sweeps)\n"
        "  foundry-track agent $ID --storage postgresql://me@db/sweeps --count 10\n"
        "  foundry-track sweep status $ID --storage postgresql://me@db/sweeps",
        run)
    p.add_argument("sweep", nargs="?", metavar="SWEEP.yaml",
                   help="the sweep file (W&B's format); or `create` or `status` (shared storage)")
    p.add_argument("target", nargs="?", metavar="ARG", help="after create: the sweep file; after status: the sweep id")
    p.add_argument("--count", type=int, metavar="N",
                   help="trials in all (default: every grid point, or run_cap; required for random and bayes; "
                   "with --resume: a new total)")
    p.add_argument("--workers", type=int, default=1, metavar="K", help="trials run at a time (default 1)")
    p.add_argument("--config", metavar="CONFIG", help="experiment config each trial starts from: "
                   "the program gets CONFIG as its first argument (or where the sweep's `command:` puts "
                   "${config})")
    p.add_argument("--dir", metavar="DIR", help="folder the sweep directory is made in "
                   "(default: $FOUNDRY_TRACK_DIR or ./runs)")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="finish an interrupted sweep: run only the trials left")
    p.add_argument("--seed", type=int, metavar="N", help="seed of random and bayes (default: a random one, kept)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--storage", metavar="URL", default=os.environ.get("FOUNDRY_TRACK_SWEEP_STORAGE"),
                   help="create/status: the shared Optuna storage, a database URL or a journal file's path "
                   "(default: $FOUNDRY_TRACK_SWEEP_STORAGE)")
    p.add_argument("--name", metavar="NAME", help="create: the sweep id (default: sweep-XXXXXXXX)")
    p.add_argument("--heartbeat", type=int, metavar="SECONDS", default=60,
                   help="create: seconds between an agent's heartbeats; a trial whose agent is silent for twice "
                   "that is failed and its point run again (default 60)")


def _draw(result: SweepResult) -> None:
    """``foundry-track plot`` of the sweep's metric over its trials, as the sweep asks."""
    from foundry_track.cli.plot import PlotError, plot_runs, save_figure
    from foundry_track.errors import MissingDependency, RunDirError

    request = result.plot_request
    if request is None:
        return
    try:
        fig, _ = plot_runs(list(request.runs), [request.metric], title=request.title)
        result.plot = save_figure(fig, request.path)
    except (PlotError, MissingDependency, RunDirError) as exc:
        result.plot_note = f"no plot: {exc}"


def _summary(result: SweepResult) -> None:
    names = list(dict.fromkeys(k for t in result.trials for k in t.params))
    metric = result.metric or "metric"
    # "best so far": the sweep's running best up to each trial (a trial's own best
    # value along the way is in --json, as `best`).
    rows = [[str(t.number), t.state, ui.value(t.metric), ui.value(so_far), ui.duration(t.duration),
             *(ui.value(t.params.get(k)) for k in names)] for t, so_far in zip(result.trials, result.best_so_far())]
    print()
    ui.print_table(["trial", "state", metric, "best so far", "time", *names], rows,
                   title=f"sweep {result.id}: {result.method}, {len(result.trials)} trial(s) in "
                         f"{ui.duration(result.wall_s)}")
    best = result.best
    if best is not None:
        shown = " ".join(f"{k}={ui.value(v)}" for k, v in best.params.items())
        print(f"\nbest: trial {best.number}, {metric}={ui.value(best.metric)}: {shown}")
        if best.run_dir:
            print(f"      run: {ui.short(Path(best.run_dir))}")
    elif result.metric:
        print(f"\nno trial finished with a value of {metric}")
    if result.plot is not None:
        print(f"plot: {ui.short(result.plot)}")
    elif result.plot_note:
        print(result.plot_note)
    if result.log_dir is not None:
        print(f"TensorBoard: tensorboard --logdir {ui.short(result.log_dir)}")
    if result.target_reached:
        print("the metric's target was reached: no more trials started")
    if result.remaining:
        print(f"{result.remaining} trial(s) left: foundry-track sweep --resume {ui.short(result.dir)}")


def _create(args: argparse.Namespace) -> int:
    from foundry_track.sweep import SweepError
    from foundry_track.sweep.shared import create_sweep, display_url

    if args.target is None or not args.storage:
        raise SweepError("usage: foundry-track sweep create SWEEP.yaml --storage URL [--name NAME] [--count N]")
    sweep_id = create_sweep(args.target, args.storage, name=args.name, count=args.count, config=args.config,
                            seed=args.seed, heartbeat=args.heartbeat)
    shown = display_url(args.storage)
    print(f"sweep {sweep_id} created in {shown}; run its trials on any machine with:\n"
          f"  foundry-track agent {sweep_id} --storage {shown}", file=sys.stderr)
    print(sweep_id)  # the last line of stdout: ID=$(foundry-track sweep create ...)
    return 0


def _status(args: argparse.Namespace) -> int:
    from foundry_track.sweep import SweepError
    from foundry_track.sweep.shared import sweep_status

    if args.target is None or not args.storage:
        raise SweepError("usage: foundry-track sweep status SWEEP_ID --storage URL")
    status = sweep_status(args.target, args.storage)
    if args.json:
        ui.dump(status)
        return 0
    names = list(dict.fromkeys(k for t in status["trials"] for k in t["params"]))
    metric = status["metric"] or "metric"
    rows = [[str(t["number"]), t["state"], ui.value(t["value"]), t["agent"] or "", ui.duration(t["duration_s"]),
             *(ui.value(t["params"].get(k)) for k in names)] for t in status["trials"]]
    states = ", ".join(f"{n} {s}" for s, n in status["states"].items())
    ui.print_table(["trial", "state", metric, "agent", "time", *names], rows,
                   title=f"sweep {status['id']}: {status['method']} in {status['storage']}: {states}")
    agents = [[agent, *(str(per.get(s, 0)) for s in ("running", "complete", "pruned", "fail"))]
              for agent, per in status["agents"].items()]
    if agents:
        print()
        ui.print_table(["agent", "running", "complete", "pruned", "failed"], agents)
    best = status["best"]
    if best is not None:
        shown = " ".join(f"{k}={ui.value(v)}" for k, v in best["params"].items())
        print(f"\nbest so far: trial {best['number']}, {metric}={ui.value(best['value'])}: {shown}")
    return 0


def run(args: argparse.Namespace) -> int:
    from foundry_track.sweep import SweepError, run_sweep

    if args.sweep == "create":
        return _create(args)
    if args.sweep == "status":
        return _status(args)
    if args.target is not None:
        raise SweepError(f"unexpected argument {args.target!r}: give one sweep file (or `create`/`status`)")

    def progress(line: str) -> None:  # stderr: stdout stays the summary (or pure JSON)
        print(line, file=sys.stderr, flush=True)

    result = run_sweep(args.sweep, resume=args.resume, count=args.count, workers=args.workers,
                       root=args.dir or ui.default_dir(), config=args.config, seed=args.seed, out=progress)
    _draw(result)
    if args.json:
        ui.dump(result.to_json())
    else:
        _summary(result)
    if result.interrupted:
        return 130
    return 1 if result.trials and all(t.state == "failed" for t in result.trials) else 0
