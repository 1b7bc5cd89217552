"""``foundry-track runs``: one row per local run directory, with each backend's
delivered/pending counts and the command that delivers what is left."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import foundry_track.cli._common as ui

if TYPE_CHECKING:
    from foundry_track.history import RunSummary

__all__ = ["add_parser", "run", "state"]


def add_parser(sub: Any) -> None:
    p = ui.add_command(
        sub, "runs", "list local runs with each backend's delivered/pending counts",
        "One row per run directory under DIR: name, id, status, start, duration, last step, events, and per "
        "backend how many events it acknowledged (delivered), has not yet (pending) and how many hook calls "
        "failed. A run left `running` by a process that is gone shows as crashed. Runs may be live: the "
        "journal is read read-only.",
        "examples:\n  foundry-track runs\n  foundry-track runs /scratch/me/runs --json | jq '.[].backends'",
        run)
    p.add_argument("dir", nargs="?", metavar="DIR",
                   help="folder of run directories (default: $FOUNDRY_TRACK_DIR or ./runs)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def state(run: RunSummary) -> str:
    """The status column: a crashed run says it was probably killed."""
    return {"crashed": "crashed (killed?)"}.get(run.state, run.state)


def _backend_cell(run: RunSummary) -> str:
    parts = []
    for name, b in run.backends.items():
        text = f"{name}: {b.delivered:,} delivered"
        if b.pending:
            text += f", {b.pending:,} pending"
        if b.errors:
            text += f", {b.errors:,} failed"
        if b.awaiting_upload:
            text += " (offline, not uploaded)"
        parts.append(text)
    return "; ".join(parts) or "-"


def _hints(runs: list[RunSummary]) -> list[str]:
    """What to do about runs that are not live: pending events, offline copies, crashes."""
    hints: list[str] = []
    for r in runs:
        if r.live:
            continue
        for name, count in r.pending.items():
            hints.append(f"{r.name}: {name}: {count:,} pending - run `foundry-track sync {ui.short(r.dir)} "
                         f"--backend {name}`")
        for name, b in r.backends.items():
            if b.awaiting_upload:
                hints.append(f"{r.name}: {name}: offline copy not uploaded yet: {b.awaiting_upload}")
        if r.state == "crashed" and not r.pending:
            hints.append(f"{r.name}: crashed before finishing - `foundry-track sync {ui.short(r.dir)}` closes it as "
                         "killed")
    return hints


def run(args: argparse.Namespace) -> int:
    from foundry_track.history import load_runs

    root = ui.runs_root(args.dir)
    runs, broken = load_runs(root)
    for path, why in broken:
        print(f"foundry-track runs: skipped {path}: {why}", file=sys.stderr)
    if args.json:
        ui.dump([r.to_json() for r in runs])
        return 0
    if not runs:
        print(f"no runs under {root}")
        return 0
    rows = [[r.name, r.id, state(r), ui.when(r.started), ui.duration(r.duration), ui.num(r.last_step),
             ui.num(r.events), _backend_cell(r)] for r in runs]
    ui.print_table(["name", "id", "status", "started", "duration", "last step", "events", "backends"], rows)
    hints = _hints(runs)
    if hints:
        print()
        print("\n".join(hints))
    return 0
