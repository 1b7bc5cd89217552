"""``foundry-track``: the command line.

Exit codes scripts can rely on: 0 success, 1 something left undone (events
still undelivered, a backend unavailable), 2 bad usage or bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

__all__ = ["main"]


def _cmd_backends(args: argparse.Namespace) -> int:
    from foundry_track.plugins import discover

    found = discover()
    rows = [
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


def _cmd_sync(args: argparse.Namespace) -> int:
    from foundry_track.run import sync

    left = sync(args.run_dir, backend=args.backend)
    if args.json:
        print(json.dumps({"undelivered": left}))
    elif left:
        for name, count in left.items():
            print(f"{name}: {count} events still undelivered")
    else:
        print(f"{args.run_dir}: every backend has every event")
    return 1 if left else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foundry-track",
        description="Inspect backends and deliver journaled events of foundry-track runs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "backends",
        help="list the backends found in the 'foundry_track' entry-point group",
        description="List every backend found (name, distribution, version) and whether it can run here.",
        epilog="example: foundry-track backends --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_backends)

    p = sub.add_parser(
        "sync",
        help="deliver the events a backend has not acknowledged",
        description="Deliver every event of RUN_DIR that a backend never acknowledged "
        "(after a crash, or once a server is reachable again). Running it twice delivers nothing twice.",
        epilog="example: foundry-track sync runs/exp0-baseline-a1b2c3d4 --backend mlflow",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (it holds run.json and journal.db)")
    p.add_argument("--backend", metavar="NAME", help="only this backend (default: every backend of the run)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_sync)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from foundry_track.config import ConfigError
    from foundry_track.plugins import PluginError

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ConfigError, PluginError) as exc:
        print(f"foundry-track {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
