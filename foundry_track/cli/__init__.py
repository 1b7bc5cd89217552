"""``foundry-track``: the command line, one module per command.

Exit codes scripts can rely on: 0 success, 1 something left undone or
unavailable (events still undelivered, a backend or an optional package
missing, doctor found problems), 2 bad usage or bad input. An error
foundry-track raises on purpose (:class:`foundry_track.FoundryTrackError`)
carries its exit code; anything else is a bug and raises.

Everything heavy is imported inside the command that needs it: listing runs
must not pay for pydantic, and only ``plot`` ever imports matplotlib. Tables
use ``rich`` when it is installed and stdout is a terminal; piped output is
plain, aligned text (no wrapping, greppable), and ``--json`` is there for
scripts.

Nothing outside this package imports it: the core, the sweep runner and the
backends know nothing of the command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from foundry_track.cli import agent, backends, clean, doctor, export, import_, plot, runs, show, sweep, sync
from foundry_track.cli._common import render_table
from foundry_track.errors import FoundryTrackError

__all__ = ["main", "render_table"]

# The order of `foundry-track --help`.
_COMMANDS = (backends, sync, import_, runs, show, plot, export, doctor, clean, sweep, agent)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foundry-track",
        description="Look at local runs, check the tracking setup, and deliver journaled events. "
        "Exit codes: 0 success, 1 something left undone or unavailable, 2 bad input.",
        epilog="example: foundry-track runs; foundry-track COMMAND --help shows each command's examples",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except FoundryTrackError as exc:
        print(f"foundry-track {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `foundry-track export ... | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 0
