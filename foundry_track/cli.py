"""``foundry-track``: the command line.

Exit codes scripts can rely on: 0 success, 1 something left undone or
unavailable (events still undelivered, a backend or an optional package
missing, doctor found problems), 2 bad usage or bad input.

Everything heavy is imported inside the command that needs it: listing runs
must not pay for pydantic, and only ``plot`` ever imports matplotlib.
Tables use ``rich`` when it is installed and stdout is a terminal; piped
output is plain, aligned text (no wrapping, greppable), and ``--json`` is
there for scripts.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from foundry_track.history import RunSummary

__all__ = ["main"]


class CliError(Exception):
    """A command failed in a way the user can fix; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- #
# Output: tables, numbers, times
# --------------------------------------------------------------------------- #


def _use_rich() -> bool:
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


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> None:
    if _use_rich():
        from rich.console import Console

        Console().print(_rich_table(headers, rows, title))
    else:
        sys.stdout.write(render_table(headers, rows, title=title))


def _num(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return f"{v:,}" if isinstance(v, int) else str(v)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    text = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text


def _short(path: Path) -> str:
    """A path relative to the working directory when it is below it (what the user typed)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _default_dir() -> str:
    return os.environ.get("FOUNDRY_TRACK_DIR") or "runs"


def _state(run: RunSummary) -> str:
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


def _finite(data: Any) -> Any:
    """NaN and infinities as strings: --json output must be strict JSON (jq, JavaScript)."""
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def _dump(data: Any) -> None:
    print(json.dumps(_finite(data), indent=2, default=str, allow_nan=False))


# --------------------------------------------------------------------------- #
# backends, sync
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# runs, show
# --------------------------------------------------------------------------- #


def _runs_root(value: str | None) -> Path:
    root = Path(value or _default_dir())
    if not root.is_dir():
        raise CliError(f"runs folder {root} does not exist (give DIR, or set FOUNDRY_TRACK_DIR)")
    return root


def _cmd_runs(args: argparse.Namespace) -> int:
    from foundry_track.history import load_runs

    root = _runs_root(args.dir)
    runs, broken = load_runs(root)
    for path, why in broken:
        print(f"foundry-track runs: skipped {path}: {why}", file=sys.stderr)
    if args.json:
        _dump([r.to_json() for r in runs])
        return 0
    if not runs:
        print(f"no runs under {root}")
        return 0
    rows = [[r.name, r.id, _state(r), _when(r.started), _duration(r.duration), _num(r.last_step),
             _num(r.events), _backend_cell(r)] for r in runs]
    _print_table(["name", "id", "status", "started", "duration", "last step", "events", "backends"], rows)
    hints: list[str] = []
    for r in runs:
        if r.live:
            continue
        for name, count in r.pending.items():
            hints.append(f"{r.name}: {name}: {count:,} pending - run `foundry-track sync {_short(r.dir)} --backend {name}`")
        for name, b in r.backends.items():
            if b.awaiting_upload:
                hints.append(f"{r.name}: {name}: offline copy not uploaded yet: {b.awaiting_upload}")
        if r.state == "crashed" and not r.pending:
            hints.append(f"{r.name}: crashed before finishing - `foundry-track sync {_short(r.dir)}` closes it as killed")
    if hints:
        print()
        print("\n".join(hints))
    return 0


def _resolve(ref: str, root: str | None) -> Path:
    from foundry_track.history import resolve_run

    return resolve_run(ref, root or _default_dir())


def _cmd_show(args: argparse.Namespace) -> int:
    from foundry_track.history import load_run, local_copies, mask_url, scan
    from foundry_track.params import flatten

    path = _resolve(args.run, args.dir)
    run = load_run(path)
    contents = scan(path)
    # The run's config (init(params=...)) as run.json keeps it, then what
    # log_params added or changed later; secrets were redacted before writing.
    params = {**flatten(run.raw.get("config") or {}), **contents.params}
    config = {f"tracking.backends.{n}.{k}": _masked(v, mask_url) for n, b in run.backends.items()
              for k, v in b.options.items()}
    if args.json:
        _dump({
            "run": run.to_json(),
            "config": run.raw.get("config") or {},
            "params": {k: _masked(v, mask_url) for k, v in params.items()},
            "backend_options": config,
            "metrics": {k: s.to_json() for k, s in sorted(contents.metrics.items())},
            "events_by_kind": contents.kinds,
            "local_copies": local_copies(run),
        })
        return 0
    print(f"{run.name}  ({run.id})  {_state(run)}")
    facts = [
        ("dir", _short(run.dir)), ("project", run.project), ("entity", run.entity), ("group", run.group),
        ("tags", ", ".join(run.tags) or None), ("notes", run.notes), ("host", f"{run.host} (pid {run.pid})"),
        ("started", _when(run.started)), ("finished", _when(run.finished)), ("duration", _duration(run.duration)),
        ("last step", _num(run.last_step)),
        ("events", ", ".join(f"{k} {v:,}" for k, v in sorted(contents.kinds.items())) or "none"),
    ]
    for key, value in facts:
        if value not in (None, "-"):
            print(f"  {key:<9} {value}")
    if params or config:
        print("\nconfig (secrets redacted)")
        for key, value in [*sorted(params.items()), *config.items()]:
            print(f"  {key} = {_masked(value, mask_url)}")
    print()
    rows = [[name, f"{b.delivered:,}/{run.events:,}", _num(b.pending), _num(b.batches),
             "-" if b.mean_batch_ms is None else f"{b.mean_batch_ms:.2f}", _num(b.retries), _num(b.errors),
             "-" if b.undelivered_at_finish is None else _num(b.undelivered_at_finish),
             (b.last_error or "-")[:120]] for name, b in run.backends.items()]
    _print_table(["backend", "delivered", "pending", "batches", "ms/batch", "retries", "errors",
                  "undelivered at finish", "last error"], rows, title="backends (the logging layer's health)")
    for name, b in run.backends.items():
        ids = ", ".join(f"{k}={_masked(v, mask_url)}" for k, v in b.identity.items() if k != "url")
        line = f"  {name}{' (the fallback backend)' if b.is_fallback else ''}: {ids or 'never started'}"
        if b.link:
            line += f"\n    {mask_url(b.link)}"
        print(line)
        if b.pending and not run.live:
            print(f"    {b.pending:,} pending - run `foundry-track sync {_short(run.dir)} --backend {name}`")
    print()
    if contents.metrics:
        rows = [[key, _num(s.count), _num(s.last_step), _value(s.last), _value(s.min), _value(s.max)]
                for key, s in sorted(contents.metrics.items())]
        _print_table(["metric", "values", "last step", "last", "min", "max"], rows, title="metrics")
    else:
        print("no metrics logged")
    return 0


def _masked(value: Any, mask: Callable[[str], str]) -> Any:
    return mask(value) if isinstance(value, str) and "://" in value else value


# --------------------------------------------------------------------------- #
# plot, export
# --------------------------------------------------------------------------- #


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
        if width < 100 or height < 100 or width > 10000 or height > 10000:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected WIDTHxHEIGHT in pixels, each 100..10000, "
                                         "e.g. 1200x600") from None
    return width, height


def _cmd_plot(args: argparse.Namespace) -> int:
    from foundry_track.plot import plot_runs, save_figure

    paths = [_resolve(ref, args.dir) for ref in args.runs]
    fig, warnings = plot_runs(paths, args.metric, smooth=args.smooth, smoothing=args.smoothing, x=args.x,
                              overlay=args.overlay, size=args.size, log_y=args.log_y, title=args.title)
    for warning in warnings:
        print(f"foundry-track plot: {warning}", file=sys.stderr)
    out = save_figure(fig, args.output)
    width, height = (int(v) for v in fig.get_size_inches() * fig.dpi)
    print(f"wrote {out} ({width}x{height} px; {len(paths)} run(s), {len(args.metric)} metric(s))")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from foundry_track.export import FORMATS, export_run

    fmt = args.format
    if fmt is None:
        suffix = Path(args.output).suffix.lower().lstrip(".") if args.output and args.output != "-" else ""
        fmt = suffix if suffix in FORMATS else "csv"
    path = _resolve(args.run, args.dir)
    count = export_run(path, fmt, args.output, layout=args.layout, keys=args.metric)
    where = "stdout" if args.output in (None, "-") else args.output
    print(f"foundry-track export: {count:,} rows ({args.layout} layout, {fmt}) to {where}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- #
# doctor, clean
# --------------------------------------------------------------------------- #

_MARK = {"ok": "ok", "info": "info", "warn": "WARN", "error": "ERROR"}


def _cmd_doctor(args: argparse.Namespace) -> int:
    from foundry_track.doctor import GUIDE_ISSUES, run_doctor

    if args.config is not None and not Path(args.config).is_file():
        raise CliError(f"config file {args.config} does not exist")
    if not args.timeout > 0:
        raise CliError(f"--timeout {args.timeout}: give a positive number of seconds, e.g. 3")
    report = run_doctor(args.config, timeout=args.timeout, min_free_gb=args.min_free)
    if args.json:
        _dump(report.to_json())
        return 1 if report.problems else 0
    print(f"foundry-track doctor: {report.source}")
    rows = []
    for f in report.findings:
        fix = f"\n  fix: {f.fix}" if f.fix and f.level != "ok" else ""
        rows.append([f.scope, f.check, _MARK[f.level], f.message + fix])
    if _use_rich():
        _print_table(["scope", "check", "level", "finding"], rows)
    else:
        for scope, check, level, text in rows:
            lines = text.splitlines()
            print(f"{level:<5}  {scope:<11} {check:<12} {lines[0]}")
            for line in lines[1:]:
                print(f"{'':<32}{line}")
    print("\nthe W&B guide's troubleshooting list")
    guide = report.guide()
    for issue in GUIDE_ISSUES:
        found = guide[issue]
        if found:
            worst = found[0]
            print(f"  {_MARK[worst.level]:<5}  {issue!r}: {worst.scope}: {worst.message.splitlines()[0]}")
        else:
            print(f"  {'-':<5}  {issue!r}: not applicable: W&B is not in this config's backends")
    problems = report.problems
    errors = sum(1 for f in problems if f.level == "error")
    print(f"\n{len(problems)} problem(s): {errors} error(s), {len(problems) - errors} warning(s)" if problems
          else "\nno problems found")
    return 1 if problems else 0


def _cmd_clean(args: argparse.Namespace) -> int:
    import shutil

    from foundry_track.history import load_runs, parse_age, plan_clean

    if args.synced_only and args.force:
        raise CliError("--synced-only and --force contradict each other: --synced-only never removes "
                       "undelivered events; drop one of them")
    older = parse_age(args.older_than) if args.older_than else None
    root = _runs_root(args.dir)
    runs, broken = load_runs(root)
    for path, why in broken:
        print(f"foundry-track clean: skipped {path} (never removed): {why}", file=sys.stderr)
    decisions = plan_clean(runs, synced_only=args.synced_only, force=args.force, older_than=older)
    failed = 0
    results = []
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
        _dump(results)
    elif not results:
        print(f"no runs under {root}")
    else:
        _print_table(["run", "id", "action", "why"], [[r["name"], r["id"], r["action"], r["reason"]] for r in results])
        removed = sum(1 for r in results if r["action"] in ("removed", "would remove"))
        verb = "would be removed (dry run)" if args.dry_run else "removed"
        print(f"\n{removed} of {len(results)} run(s) {verb}")
    return 1 if failed else 0


# --------------------------------------------------------------------------- #
# sweep
# --------------------------------------------------------------------------- #


def _cmd_sweep(args: argparse.Namespace) -> int:
    from foundry_track.sweep import run_sweep

    def progress(line: str) -> None:  # stderr: stdout stays the summary (or pure JSON)
        print(line, file=sys.stderr, flush=True)

    result = run_sweep(args.sweep, resume=args.resume, count=args.count, workers=args.workers,
                       root=args.dir or _default_dir(), config=args.config, seed=args.seed, out=progress)
    if args.json:
        _dump(result.to_json())
    else:
        names = list(dict.fromkeys(k for t in result.trials for k in t.params))
        metric = result.metric or "metric"
        rows = [[str(t.number), t.state, _value(t.metric), _value(t.best), _duration(t.duration),
                 *(_value(t.params.get(k)) for k in names)] for t in result.trials]
        print()
        _print_table(["trial", "state", metric, "best", "time", *names], rows,
                     title=f"sweep {result.id}: {result.method}, {len(result.trials)} trial(s) in "
                           f"{_duration(result.wall_s)}")
        best = result.best
        if best is not None:
            shown = " ".join(f"{k}={_value(v)}" for k, v in best.params.items())
            print(f"\nbest: trial {best.number}, {metric}={_value(best.metric)}: {shown}")
            if best.run_dir:
                print(f"      run: {_short(Path(best.run_dir))}")
        elif result.metric:
            print(f"\nno trial finished with a value of {metric}")
        if result.plot is not None:
            print(f"plot: {_short(result.plot)}")
        elif result.plot_note:
            print(result.plot_note)
        if result.log_dir is not None:
            print(f"TensorBoard: tensorboard --logdir {_short(result.log_dir)}")
        if result.target_reached:
            print("the metric's target was reached: no more trials started")
        if result.remaining:
            print(f"{result.remaining} trial(s) left: foundry-track sweep --resume {_short(result.dir)}")
    if result.interrupted:
        return 130
    return 1 if result.trials and all(t.state == "failed" for t in result.trials) else 0


# --------------------------------------------------------------------------- #
# The parser
# --------------------------------------------------------------------------- #


def _wrap(text: str) -> str:
    """Fill prose paragraphs to 79 columns; keep indented (tabular) paragraphs as written."""
    import textwrap

    return "\n\n".join(part if part.startswith(" ") else textwrap.fill(part, 79) for part in text.split("\n\n"))


def _sub(sub: Any, name: str, help_: str, description: str, examples: str, func: Callable[..., int]) -> Any:
    # Raw formatting keeps the examples' line breaks; prose is wrapped by _wrap.
    p = sub.add_parser(name, help=help_, description=_wrap(description), epilog=examples,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def _dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", metavar="DIR", help="where to look up a run given by id or name "
                   "(default: $FOUNDRY_TRACK_DIR or ./runs)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foundry-track",
        description="Look at local runs, check the tracking setup, and deliver journaled events. "
        "Exit codes: 0 success, 1 something left undone or unavailable, 2 bad input.",
        epilog="example: foundry-track runs; foundry-track COMMAND --help shows each command's examples",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "backends", "list the backends found in the 'foundry_track' entry-point group",
             "List every backend found (name, distribution, version) and whether it can run here. "
             "Exit 1 if one is unavailable.",
             "example: foundry-track backends --json", _cmd_backends)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = _sub(sub, "sync", "deliver the events a backend has not acknowledged",
             "Deliver every event of RUN_DIR that a backend never acknowledged "
             "(after a crash, or once a server is reachable again). Running it twice delivers nothing twice. "
             "Exit 1 if events are still undelivered.",
             "example: foundry-track sync runs/exp0-baseline-a1b2c3d4 --backend mlflow", _cmd_sync)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (it holds run.json and journal.db)")
    p.add_argument("--backend", metavar="NAME", help="only this backend (default: every backend of the run)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = _sub(sub, "runs", "list local runs with each backend's delivered/pending counts",
             "One row per run directory under DIR: name, id, status, start, duration, last step, events, and per "
             "backend how many events it acknowledged (delivered), has not yet (pending) and how many hook calls "
             "failed. A run left `running` by a process that is gone shows as crashed. Runs may be live: the "
             "journal is read read-only.",
             "examples:\n  foundry-track runs\n  foundry-track runs /scratch/me/runs --json | jq '.[].backends'",
             _cmd_runs)
    p.add_argument("dir", nargs="?", metavar="DIR", help="folder of run directories (default: $FOUNDRY_TRACK_DIR or ./runs)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = _sub(sub, "show", "one run: config, tags, backend links, metric summary, delivery health",
             "Everything about one run: its config (secrets redacted) and tags, each backend's run id and link "
             "(W&B URL, MLflow run URL), the latest value and min/max of every metric, and the logging layer's "
             "health per backend (delivered, pending, batches, mean ms per batch, retries, errors, last error).",
             "examples:\n  foundry-track show runs/exp0-baseline-a1b2c3d4\n  foundry-track show a1b2c3d4 --json",
             _cmd_show)
    p.add_argument("run", metavar="RUN", help="a run directory, or a run id / name / directory name under --dir")
    _dir_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = _sub(sub, "plot", "overlay runs' metric curves in a PNG (headless)",
             "Draw the given metrics of one or more runs, one line per run per metric, one panel per metric "
             "(or all in one with --overlay), legend with the run names. Needs matplotlib: "
             "pip install 'foundry-track[plot]'.",
             "examples:\n  foundry-track plot runs/exp0-* runs/exp1-* --metric train/loss -o loss.png\n"
             "  foundry-track plot exp0 exp1 --metric train/loss --metric val/loss --smooth 50 -o cmp.png",
             _cmd_plot)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories, ids or names")
    p.add_argument("--metric", "-m", action="append", required=True, metavar="KEY",
                   help="metric to draw (repeat for more), e.g. train/loss")
    p.add_argument("--smooth", type=int, default=0, metavar="N",
                   help="smooth over N points (the raw curve stays, faint); 0 = off")
    p.add_argument("--smoothing", choices=("ema", "mean"), default="ema",
                   help="ema: exponential, alpha 2/(N+1), debiased (default); mean: trailing moving average")
    p.add_argument("--x", choices=("step", "time"), default="step", help="x axis: step (default) or hours")
    p.add_argument("--overlay", action="store_true", help="all metrics in one panel")
    p.add_argument("--log-y", action="store_true", help="logarithmic y axis")
    p.add_argument("--size", type=_size, metavar="WxH", help="image size in pixels (default 1000 wide)")
    p.add_argument("--title", help="figure title")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="image file: .png, .svg or .pdf")
    _dir_option(p)

    p = _sub(sub, "export", "write every metric value of a run as CSV, JSON, JSON Lines or Parquet",
             "Every metric value of RUN from its journal. Layout long (default): one row per value, columns "
             "seq, step, time, key, value (seq = the run.log call; every step of every metric is kept, "
             "repeated steps included). Layout wide: one row per run.log call, one column per metric (empty "
             "where not logged). Parquet needs pyarrow.",
             "examples:\n  foundry-track export runs/exp0-baseline-a1b2c3d4 --format csv -o exp0.csv\n"
             "  foundry-track export a1b2c3d4 --format parquet --layout wide -o exp0.parquet\n"
             "  foundry-track export a1b2c3d4 --format jsonl --metric train/loss | head",
             _cmd_export)
    p.add_argument("run", metavar="RUN", help="a run directory, or a run id / name under --dir")
    p.add_argument("--format", "-f", choices=("csv", "json", "jsonl", "parquet"),
                   help="default: from the -o suffix, else csv")
    p.add_argument("-o", "--output", metavar="FILE", help="output file; '-' or omitted: stdout (not for parquet)")
    p.add_argument("--layout", choices=("long", "wide"), default="long", help="long (default) or wide, see above")
    p.add_argument("--metric", "-m", action="append", metavar="KEY", help="only this metric (repeatable)")
    _dir_option(p)

    p = _sub(sub, "doctor", "check backends, credentials, servers, proxies/TLS and disk before a run",
             "For every backend in CONFIG's tracking block: plugin and SDK installed (versions), options valid, "
             "credentials present (W&B: WANDB_API_KEY or a netrc entry; never printed), server reachable "
             "(MLflow tracking URI, W&B base URL in online mode), plus proxy and TLS settings in effect, writable "
             "folders, free disk, and rate-limit errors earlier runs recorded. Each problem comes with its fix, "
             "and the summary answers the W&B guide's troubleshooting list (Not logged in, API key not found, "
             "hangs at init, rate limit, disk space, firewall, SSL). Exit 0: all fine; 1: problems found; "
             "2: bad config.",
             "examples:\n  foundry-track doctor configs/exp0.yaml\n  foundry-track doctor --json --timeout 1",
             _cmd_doctor)
    p.add_argument("config", nargs="?", metavar="CONFIG", help="experiment YAML with a tracking: block "
                   "(default: the defaults plus FOUNDRY_TRACK_* env)")
    p.add_argument("--timeout", type=float, default=3.0, metavar="S", help="seconds per network check (default 3)")
    p.add_argument("--min-free", type=float, default=1.0, metavar="GB", help="warn under this free disk (default 1)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = _sub(sub, "clean", "remove local run directories every backend has acknowledged",
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
             _cmd_clean)
    p.add_argument("dir", nargs="?", metavar="DIR", help="folder of run directories (default: $FOUNDRY_TRACK_DIR or ./runs)")
    p.add_argument("--synced-only", action="store_true", help="only runs whose data is safe elsewhere (see above)")
    p.add_argument("--older-than", metavar="AGE", help="only runs idle for longer than AGE: 30m, 12h, 7d, 2w")
    p.add_argument("--force", action="store_true", help="also remove runs with undelivered events (lost)")
    p.add_argument("--dry-run", action="store_true", help="show what would be removed; remove nothing")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = _sub(sub, "sweep", "run a W&B sweep file (grid, random, bayes) without a W&B server",
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
             _cmd_sweep)
    p.add_argument("sweep", nargs="?", metavar="SWEEP.yaml", help="the sweep file (W&B's format)")
    p.add_argument("--count", type=int, metavar="N",
                   help="trials in all (default: every grid point, or run_cap; required for random and bayes; "
                   "with --resume: a new total)")
    p.add_argument("--workers", type=int, default=1, metavar="K", help="trials run at a time (default 1)")
    p.add_argument("--config", metavar="CONFIG", help="experiment config each trial starts from: "
                   "model_foundry.cli gets `train CONFIG`, another program CONFIG as its first argument "
                   "(or ${config} in the sweep's command)")
    p.add_argument("--dir", metavar="DIR", help="folder the sweep directory is made in "
                   "(default: $FOUNDRY_TRACK_DIR or ./runs)")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="finish an interrupted sweep: run only the trials left")
    p.add_argument("--seed", type=int, metavar="N", help="seed of random and bayes (default: a random one, kept)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CliError as exc:
        print(f"foundry-track {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # `foundry-track export ... | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 0
    except Exception as exc:
        code = _exit_code(exc)
        if code is None:
            raise
        print(f"foundry-track {args.command}: {exc}", file=sys.stderr)
        return code


def _exit_code(exc: BaseException) -> int | None:
    """2 for bad input, 1 for a missing optional package; None: a bug, let it raise.

    The exception classes are imported here, when one occurred, so a command
    that succeeds never pays for importing pydantic.
    """
    from foundry_track.config import ConfigError
    from foundry_track.export import ExportError
    from foundry_track.history import MissingDependency, RunDirError
    from foundry_track.plot import PlotError
    from foundry_track.plugins import PluginError

    if isinstance(exc, MissingDependency):
        return 1
    if isinstance(exc, (ConfigError, PluginError, RunDirError, PlotError, ExportError)):
        return 2
    return None


if __name__ == "__main__":
    sys.exit(main())
