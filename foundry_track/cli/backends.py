"""``foundry-track backends``: every backend found in the ``foundry_track``
entry-point group, and whether it can run here."""

from __future__ import annotations

import argparse
import json
from typing import Any

from foundry_track.cli._common import add_command

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = add_command(sub, "backends", "list the backends found in the 'foundry_track' entry-point group",
                    "List every backend found (name, distribution, version) and whether it can run here. "
                    "Exit 1 if one is unavailable.",
                    "example: foundry-track backends --json", run)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from foundry_track.plugins import discover

    found = discover()
    rows: list[dict[str, Any]] = [
        {
            "name": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "entry_point": info.value,
            "available": info.available,
            "problem": info.problem,
        }
        for info in found.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        if not rows:
            print("no backends found in the 'foundry_track' entry-point group")
        width = max((len(r["name"]) for r in rows), default=4)
        for r in rows:
            state = "available" if r["available"] else "unavailable"
            print(f"{r['name']:<{width}}  {r['distribution']} {r['version']}  {state}")
            if r["problem"]:
                for line in str(r["problem"]).splitlines():
                    print(f"{'':<{width}}    {line}")
    return 0 if all(r["available"] for r in rows) else 1
