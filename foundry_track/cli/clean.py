"""``foundry-track clean``: remove local run directories every backend has
acknowledged; never a live run, and never undelivered events unless --force.

The planning (:func:`plan_clean`) is pure: it decides from run summaries and
removes nothing, so it is tested without touching a disk.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import foundry_track.cli._common as ui
from foundry_track.errors import RunDirError

if TYPE_CHECKING:
    from foundry_track.history import RunSummary

__all__ = ["CleanDecision", "add_parser", "parse_age", "plan_clean", "run"]


def add_parser(sub: Any) -> None:
    p = ui.add_command(
        sub, "clean", "remove local run directories every backend has acknowledged",
        "Remove run directories under DIR whose every event every backend has acknowledged. Never removes "
        "a live run, and never undelivered events unless --force.\n\n"
        "  (default)      remove runs where every backend has every event, even if\n"
        "                 a backend's final copy is inside the run directory\n"
        "                 (TensorBoard event files): it goes too, and the table says so\n"
        "  --synced-only  remove only runs whose every event is delivered AND kept\n"
        "                 outside the run directory (a server, or a log folder\n"
        "                 elsewhere): removing loses nothing\n"
        "  --force        also remove runs with undelivered events, offline copies not\n"
        "                 uploaded yet (W&B offline) and crashed runs never synced\n"
        "                 (that data is lost); not with --synced-only\n\n"
        "Exit 1 only if a removal failed; runs kept for a reason are listed, not errors.",
        "examples:\n  foundry-track clean --synced-only --older-than 7d --dry-run\n"
        "  foundry-track clean /scratch/me/runs --older-than 12h --json",
        run)
    p.add_argument("dir", nargs="?", metavar="DIR",
                   help="folder of run directories (default: $FOUNDRY_TRACK_DIR or ./runs)")
    p.add_argument("--synced-only", action="store_true", help="only runs whose data is safe elsewhere (see above)")
    p.add_argument("--older-than", metavar="AGE", help="only runs idle for longer than AGE: 30m, 12h, 7d, 2w")
    p.add_argument("--force", action="store_true", help="also remove runs with undelivered events (lost)")
    p.add_argument("--dry-run", action="store_true", help="show what would be removed; remove nothing")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import shutil

    from foundry_track.history import load_runs

    if args.synced_only and args.force:
        raise ui.CliError("--synced-only and --force contradict each other: --synced-only never removes "
                          "undelivered events; drop one of them")
    older = parse_age(args.older_than) if args.older_than else None
    root = ui.runs_root(args.dir)
    runs, broken = load_runs(root)
    for path, why in broken:
        print(f"foundry-track clean: skipped {path} (never removed): {why}", file=sys.stderr)
    decisions = plan_clean(runs, synced_only=args.synced_only, force=args.force, older_than=older)
    failed = 0
    results: list[dict[str, Any]] = []
    for d in decisions:
        action = "kept"
        if d.remove:
            action = "would remove" if args.dry_run else "removed"
            if not args.dry_run:
                try:
                    shutil.rmtree(d.run.dir)
                except OSError as exc:
                    action, failed = f"failed: {exc.strerror or exc}", failed + 1
        results.append({"dir": str(d.run.dir), "name": d.run.name, "id": d.run.id, "state": d.run.state,
                        "action": action, "reason": d.reason, "pending": d.run.pending})
    if args.json:
        ui.dump(results)
    elif not results:
        print(f"no runs under {root}")
    else:
        ui.print_table(["run", "id", "action", "why"],
                       [[r["name"], r["id"], r["action"], r["reason"]] for r in results])
        removed = sum(1 for r in results if r["action"] in ("removed", "would remove"))
        verb = "would be removed (dry run)" if args.dry_run else "removed"
        print(f"\n{removed} of {len(results)} run(s) {verb}")
    return 1 if failed else 0


@dataclass(frozen=True, slots=True)
class CleanDecision:
    run: RunSummary
    remove: bool
    reason: str


def parse_age(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``45s``, ``2w`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    value = text.strip().lower()
    try:
        if not value or value[-1] not in units:
            raise ValueError
        number = float(value[:-1])
        if number < 0 or not math.isfinite(number):
            raise ValueError
    except ValueError:
        raise RunDirError(f"--older-than {text!r}: expected a number and a unit, "
                          "e.g. 7d, 12h, 30m, 45s or 2w") from None
    return number * units[value[-1]]


def plan_clean(runs: Sequence[RunSummary], *, synced_only: bool, force: bool, older_than: float | None,
               now: float | None = None) -> list[CleanDecision]:
    """Decide, per run, whether ``foundry-track clean`` removes its directory.

    * A run a process may still be writing is never removed (on another host
      we cannot tell: only ``--force`` removes it).
    * A run with events some backend never acknowledged, an offline copy not
      uploaded yet (W&B offline), or a crashed run never synced, is kept unless
      ``--force`` (and always with ``--synced-only``).
    * ``--synced-only`` also keeps runs where a backend's only copy is inside the
      run directory (TensorBoard event files, W&B offline files): removing the
      directory would remove that data.
    """
    now = time.time() if now is None else now
    decisions: list[CleanDecision] = []
    for run in runs:
        decisions.append(_decide(run, synced_only=synced_only, force=force, older_than=older_than, now=now))
    return decisions


def _decide(run: RunSummary, *, synced_only: bool, force: bool, older_than: float | None, now: float) -> CleanDecision:
    from foundry_track.history import local_copies

    if run.state == "running":
        return CleanDecision(run, False, f"live: process {run.pid} is writing it")
    if run.state == "running?" and not force:
        return CleanDecision(run, False, f"marked running by host {run.host}, which cannot be checked from here "
                                         "(--force removes it)")
    if older_than is not None:
        activity = run.activity
        if activity is None or now - activity < older_than:
            return CleanDecision(run, False, f"newer than {_age(older_than)}")
    offline = {name: b.awaiting_upload for name, b in run.backends.items() if b.awaiting_upload}
    if run.pending or offline or run.state in ("crashed", "running?"):
        problems = [f"{name}: {count:,} pending" for name, count in run.pending.items()]
        problems += [f"{name}: offline files not uploaded yet ({folder})" for name, folder in offline.items()]
        what = "; ".join(problems) or "crashed before finishing"
        if force and not synced_only:
            lost = sum(run.pending.values())
            return CleanDecision(run, True, f"{what} (--force: {lost:,} undelivered events are lost)"
                                 if lost else f"{what} (--force)")
        first = [f"`foundry-track sync {run.dir}`"] if run.pending or run.state == "crashed" else []
        first += [f"upload the offline files (W&B: `wandb sync {next(iter(offline.values()))}`)"] if offline else []
        hint = " and ".join(first) + " first" + ("" if synced_only else ", or --force to drop them")
        return CleanDecision(run, False, f"{what}; {hint}")
    if synced_only:
        local = local_copies(run)
        if local:
            names = ", ".join(sorted(local))
            verb = "keeps its only copy" if len(local) == 1 else "keep their only copies"
            return CleanDecision(run, False, f"{names} {verb} inside the run directory "
                                             "(clean without --synced-only removes it)")
        return CleanDecision(run, True, "every backend has every event, kept outside the run directory")
    local = local_copies(run)
    extra = f" (with it: {', '.join(sorted(local))} files inside the run directory)" if local else ""
    return CleanDecision(run, True, "every backend has every event" + extra)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
