"""What the commands share: the error they raise, tables and number formats,
the runs folder, and the small parser helpers every command uses.

Only the standard library at import time: every command module imports this
one while the parser is built, before any command runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from foundry_track.errors import FoundryTrackError

__all__ = [
    "CliError",
    "add_command",
    "default_dir",
    "dir_option",
    "dump",
    "duration",
    "num",
    "print_table",
    "render_table",
    "resolve",
    "runs_root",
    "short",
    "use_rich",
    "value",
    "when",
]


class CliError(FoundryTrackError):
    """A command failed in a way the user can fix (bad arguments or input)."""

    exit_code = 2


# --------------------------------------------------------------------------- #
# Output: tables, numbers, times
# --------------------------------------------------------------------------- #


def use_rich() -> bool:
    """Tables with rich: when it is installed and stdout is a terminal."""
    if not sys.stdout.isatty():
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


_STYLES = {"WARN": "bold yellow", "ERROR": "bold red", "crashed (killed?)": "red", "kept": "yellow", "removed": "green"}


def _rich_table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", header_style="bold")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        # Text, not markup: "loss[0]" stays as written. Problem levels stand out.
        table.add_row(*(Text(cell, style=_STYLES.get(cell, "")) for cell in row))
    return table


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None,
                 use_rich: bool = False, width: int = 120) -> str:
    """A table as text: rich's box drawing, or aligned plain columns (one line per row)."""
    if use_rich:
        import io

        from rich.console import Console

        buffer = io.StringIO()
        Console(file=buffer, width=width, no_color=True).print(_rich_table(headers, rows, title))
        return buffer.getvalue()
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = [title] if title else []
    lines.append("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip())
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
    return "\n".join(lines) + "\n"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> None:
    if use_rich():
        from rich.console import Console

        Console().print(_rich_table(headers, rows, title))
    else:
        sys.stdout.write(render_table(headers, rows, title=title))


def num(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return f"{v:,}" if isinstance(v, int) else str(v)


def when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    text = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text


def short(path: Path) -> str:
    """A path relative to the working directory when it is below it (what the user typed)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _finite(data: Any) -> Any:
    """NaN and infinities as strings: --json output must be strict JSON (jq, JavaScript)."""
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def dump(data: Any) -> None:
    print(json.dumps(_finite(data), indent=2, default=str, allow_nan=False))


# --------------------------------------------------------------------------- #
# The runs folder
# --------------------------------------------------------------------------- #


def default_dir() -> str:
    return os.environ.get("FOUNDRY_TRACK_DIR") or "runs"


def runs_root(value: str | None) -> Path:
    root = Path(value or default_dir())
    if not root.is_dir():
        raise CliError(f"runs folder {root} does not exist (give DIR, or set FOUNDRY_TRACK_DIR)")
    return root


def resolve(ref: str, root: str | None) -> Path:
    """A run given as a directory, or as an id / name / directory name under ``root``."""
    from foundry_track.history import resolve_run

    return resolve_run(ref, root or default_dir())


# --------------------------------------------------------------------------- #
# Parser helpers
# --------------------------------------------------------------------------- #


def _wrap(text: str) -> str:
    """Fill prose paragraphs to 79 columns; keep indented (tabular) paragraphs as written."""
    import textwrap

    return "\n\n".join(part if part.startswith(" ") else textwrap.fill(part, 79) for part in text.split("\n\n"))


def add_command(sub: Any, name: str, help_: str, description: str, examples: str,
                func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """One subcommand: ``func(args)`` runs it and returns the exit code."""
    # Raw formatting keeps the examples' line breaks; prose is wrapped by _wrap.
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=_wrap(description), epilog=examples,
                                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", metavar="DIR", help="where to look up a run given by id or name "
                   "(default: $FOUNDRY_TRACK_DIR or ./runs)")
