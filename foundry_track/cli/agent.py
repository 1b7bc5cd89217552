"""``foundry-track agent``: run the trials of a sweep in a shared storage, as
``wandb agent`` does (:func:`foundry_track.sweep.agent.run_agent`)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import foundry_track.cli._common as ui

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = ui.add_command(
        sub, "agent", "run the trials of a shared sweep on this machine (as `wandb agent`)",
        "Take the next trial of SWEEP_ID from the shared Optuna storage (made by `foundry-track sweep "
        "create`), run the sweep's program for it as `wandb agent` does, report the metric the trial logs "
        "back to the storage (hyperband prunes on every agent's results), and repeat until the sweep has "
        "no trial left or --count trials ran. Start as many agents as you like, on any machine that "
        "reaches the storage: no trial runs twice. An agent that dies mid-trial leaves the trial failed "
        "once its heartbeat is late (see `sweep create --heartbeat`), and a grid point is run again by "
        "the next agent. Ctrl-C stops after the current trial; a second Ctrl-C stops the trial too. The "
        "runs are under DIR/SWEEP_ID/runs. Exit 0: done; 1: every trial failed; 2: bad sweep id or "
        "storage; 130: interrupted.",
        "examples:\n"
        "  foundry-track agent sweep-ab12cd34 --storage postgresql://me@db.example.org/sweeps\n"
        "  FOUNDRY_TRACK_SWEEP_STORAGE=/shared/sweeps.journal foundry-track agent sweep-ab12cd34 --count 4",
        run)
    p.add_argument("sweep_id", metavar="SWEEP_ID", help="the id `foundry-track sweep create` printed")
    p.add_argument("--storage", metavar="URL", default=os.environ.get("FOUNDRY_TRACK_SWEEP_STORAGE"),
                   help="the shared Optuna storage: postgresql://..., mysql://..., sqlite:///... or a journal "
                   "file's path (default: $FOUNDRY_TRACK_SWEEP_STORAGE)")
    p.add_argument("--count", type=int, metavar="N", help="run at most N trials, then stop (default: until the "
                   "sweep has none left)")
    p.add_argument("--dir", metavar="DIR", help="folder the trials' runs go in, under SWEEP_ID/ "
                   "(default: $FOUNDRY_TRACK_DIR or ./runs)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from foundry_track.sweep import SweepError
    from foundry_track.sweep.agent import run_agent

    if not args.storage:
        raise SweepError("--storage URL is needed (or $FOUNDRY_TRACK_SWEEP_STORAGE): the storage the sweep was "
                         "created in")

    def progress(line: str) -> None:  # stderr: stdout stays the summary (or pure JSON)
        print(line, file=sys.stderr, flush=True)

    result = run_agent(args.sweep_id, args.storage, count=args.count, root=args.dir or ui.default_dir(),
                       out=progress)
    if args.json:
        ui.dump(result.to_json())
    else:
        metric = "metric"
        rows = [[str(t.number), t.state, ui.value(t.metric), ui.duration(t.duration_s),
                 " ".join(f"{k}={ui.value(v)}" for k, v in t.params.items())] for t in result.trials]
        print()
        ui.print_table(["trial", "state", metric, "time", "params"], rows,
                       title=f"agent {result.agent}: {len(result.trials)} trial(s) of sweep {result.sweep_id}")
        if result.finished_sweep:
            print("the sweep has no trial left")
    if result.interrupted and not result.finished_sweep:
        return 130
    return 1 if result.trials and all(t.state == "failed" for t in result.trials) else 0
