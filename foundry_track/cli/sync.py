"""``foundry-track sync``: deliver the events of a run that a backend never
acknowledged (after a crash, or once a server is reachable again)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from foundry_track.cli._common import add_command

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = add_command(sub, "sync", "deliver the events a backend has not acknowledged",
                    "Deliver every event of RUN_DIR that a backend never acknowledged "
                    "(after a crash, or once a server is reachable again). Running it twice delivers nothing "
                    "twice. Exit 1 if events are still undelivered.",
                    "example: foundry-track sync runs/exp0-baseline-a1b2c3d4 --backend mlflow", run)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (it holds run.json and journal.db)")
    p.add_argument("--backend", metavar="NAME", help="only this backend (default: every backend of the run)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", default=600.0,
                   help="give up after this long; what is left is reported and stays for the next sync "
                        "(default: 600)")
    p.add_argument("--config", metavar="CONFIG",
                   help="the run's tracking config (YAML): its backend options, with their credentials, replace "
                        "the redacted copies in run.json")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from foundry_track.start import sync_run

    report = sync_run(args.run_dir, backend=args.backend, timeout=args.timeout, config=args.config)
    left = report.remaining
    if args.json:
        print(json.dumps({"delivered": report.delivered, "undelivered": left}))
        return 1 if left else 0
    for name in dict.fromkeys([*report.delivered, *left]):
        remaining = left.get(name, 0)
        print(f"{name}: {report.delivered.get(name, 0)} events delivered, {remaining} remaining"
              + (" (run foundry-track sync again)" if remaining else ""))
    if not left:
        print(f"{args.run_dir}: every backend has every event")
    return 1 if left else 0
