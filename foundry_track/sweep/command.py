"""A trial's command line, as ``wandb agent`` builds it.

The sweep file names the program (``program:``, a script path or a module
name) and, optionally, the whole command line (``command:``, with W&B's
macros ``${env} ${interpreter} ${program} ${args}`` ... and ``${config}``).
Nothing here knows any particular program: a program that wants its config
in a form of its own says so in its sweep file's ``command:``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from foundry_track.sweep.errors import SweepError
from foundry_track.sweep.spec import DEFAULT_COMMAND, SweepSpec

__all__ = ["build_command", "resolve_program"]


def resolve_program(program: str, spec_dir: Path) -> list[str]:
    """``train.py`` -> [path]; ``my_package.train`` -> ["-m", "my_package.train"]."""
    for base in (Path.cwd(), spec_dir):
        candidate = base / program
        if candidate.is_file():
            return [str(candidate.resolve())]
    if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", program):
        with contextlib.suppress(ImportError, ValueError):
            if importlib.util.find_spec(program) is not None:
                return ["-m", program]
    raise SweepError(f"program {program!r}: no such file (looked in {Path.cwd()} and {spec_dir}) and no "
                     f"importable module of that name")


def _format_arg(value: Any) -> str:
    return str(value)  # what `wandb agent` passes: --lr=0.001, --flag=True, --layers=[1, 2]


def build_command(spec: SweepSpec, program: list[str], params: Mapping[str, Any], *, config: str | None,
                  args_file: Path) -> list[str]:
    """The trial's argv from the sweep's ``command`` (default ``${env} ${interpreter}
    ${program} ${args}``) and W&B's macros. With a base ``config``, the default
    command passes it as the program's first argument; a ``command:`` places
    ``${config}`` where its program wants it (``${program} train ${config} ${args}``)."""
    args = [f"--{k}={_format_arg(v)}" for k, v in params.items()]
    program_argv = list(program)
    if config is not None and spec.command is None:
        program_argv.append(config)
    lists: dict[str, list[str]] = {
        "env": [],  # `/usr/bin/env` in W&B; not needed without a shell
        "interpreter": [sys.executable],
        "program": program_argv,
        "args": args,
        "args_no_hyphens": [f"{k}={_format_arg(v)}" for k, v in params.items()],
        "args_no_boolean_flags": [f"--{k}" if v is True else f"--{k}={_format_arg(v)}"
                                  for k, v in params.items() if v is not False],
    }
    scalars = {"args_json": json.dumps(dict(params)), "config": config or ""}
    if any("${args_json_file}" in part for part in spec.command or ()):
        args_file.write_text(json.dumps(dict(params)))
        scalars["args_json_file"] = str(args_file)
    argv: list[str] = []
    for part in spec.command or DEFAULT_COMMAND:
        whole = re.fullmatch(r"\$\{(\w+)\}", part)
        if whole and whole.group(1) in lists:
            argv += lists[whole.group(1)]
            continue
        text = part
        for name, items in lists.items():
            text = text.replace("${" + name + "}", " ".join(items))
        for name, value in scalars.items():
            text = text.replace("${" + name + "}", value)
        argv.append(text)
    return argv
