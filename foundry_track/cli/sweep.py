"""``foundry-track sweep``: the command's arguments and its summary. The sweep
itself runs in :mod:`foundry_track.sweep` (:func:`~foundry_track.sweep.run_sweep`);
the plot of its trials, ``sweep.png``, is drawn here, with ``foundry-track plot``'s
own code, so the sweep package imports nothing of the command line."""

from __future__ import annotations

import argparse
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
        "trial failed; 2: bad sweep file or options; 130: interrupted.",
        "examples:\n"
        "  foundry-track sweep configs/sweep_config.yaml --config configs/quickstart.yaml --count 20 --workers 2\n"
        "  foundry-track sweep --resume runs/sweep-ab12cd34\n"
        "  foundry-track sweep grid.yaml --json > summary.json",
        run)
    p.add_argument("sweep", nargs="?", metavar="SWEEP.yaml", help="the sweep file (W&B's format)")
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
    rows = [[str(t.number), t.state, ui.value(t.metric), ui.value(t.best), ui.duration(t.duration),
             *(ui.value(t.params.get(k)) for k in names)] for t in result.trials]
    print()
    ui.print_table(["trial", "state", metric, "best", "time", *names], rows,
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


def run(args: argparse.Namespace) -> int:
    from foundry_track.sweep import run_sweep

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
