"""``foundry-track show``: everything about one run: config (secrets redacted),
tags, each backend's run link, a summary of every metric, and the logging
layer's health per backend."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Callable

import foundry_track.cli._common as ui
from foundry_track.cli.runs import state

if TYPE_CHECKING:
    from foundry_track.history import RunContents, RunSummary

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = ui.add_command(
        sub, "show", "one run: config, tags, backend links, metric summary, delivery health",
        "Everything about one run: its config (secrets redacted) and tags, each backend's run id and link "
        "(W&B URL, MLflow run URL), the latest value and min/max of every metric, and the logging layer's "
        "health per backend (delivered, pending, set aside, batches, mean ms per batch, retries, errors, "
        "last error).",
        "examples:\n  foundry-track show runs/exp0-baseline-a1b2c3d4\n  foundry-track show a1b2c3d4 --json",
        run)
    p.add_argument("run", metavar="RUN", help="a run directory, or a run id / name / directory name under --dir")
    ui.dir_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def _masked(value: Any, mask: Callable[[str], str]) -> Any:
    return mask(value) if isinstance(value, str) and "://" in value else value


def run(args: argparse.Namespace) -> int:
    from foundry_track.checks import mask_url
    from foundry_track.history import load_run, local_copies, scan
    from foundry_track.params import flatten

    path = ui.resolve(args.run, args.dir)
    summary = load_run(path)
    contents = scan(path)
    # The run's config (init(params=...)) as run.json keeps it, then what
    # log_params added or changed later; secrets were redacted before writing.
    # Keys read as log_params writes them (`a/b`), in the order they were logged.
    params = {**flatten(summary.raw.get("config") or {}), **contents.params}
    config = {f"tracking/backends/{n}/{k}": _masked(v, mask_url) for n, b in summary.backends.items()
              for k, v in b.options.items()}
    if args.json:
        ui.dump({
            "run": summary.to_json(),
            "config": summary.raw.get("config") or {},
            "params": {k: _masked(v, mask_url) for k, v in params.items()},
            "backend_options": config,
            "metrics": {k: s.to_json() for k, s in sorted(contents.metrics.items())},
            "events_by_kind": contents.kinds,
            "local_copies": local_copies(summary),
        })
        return 0
    _print_facts(summary, contents)
    if params or config:
        print("\nconfig (secrets redacted)")
        for key, value in [*params.items(), *config.items()]:
            print(f"  {key} = {_masked(value, mask_url)}")
    print()
    _print_backends(summary, mask_url)
    print()
    if contents.metrics:
        rows = [[key, ui.num(s.count), ui.num(s.last_step), ui.value(s.last), ui.value(s.min), ui.value(s.max)]
                for key, s in sorted(contents.metrics.items())]
        ui.print_table(["metric", "values", "last step", "last", "min", "max"], rows, title="metrics")
    else:
        print("no metrics logged")
    return 0


def _print_facts(run: RunSummary, contents: RunContents) -> None:
    print(f"{run.name}  ({run.id})  {state(run)}")
    facts = [
        ("dir", ui.short(run.dir)), ("project", run.project), ("entity", run.entity), ("group", run.group),
        ("tags", ", ".join(run.tags) or None), ("notes", run.notes), ("host", f"{run.host} (pid {run.pid})"),
        ("started", ui.when(run.started)), ("finished", ui.when(run.finished)),
        ("duration", ui.duration(run.duration)), ("last step", ui.num(run.last_step)),
        ("events", ", ".join(f"{k} {v:,}" for k, v in sorted(contents.kinds.items())) or "none"),
    ]
    for key, value in facts:
        if value not in (None, "-"):
            print(f"  {key:<9} {value}")


def _print_backends(run: RunSummary, mask_url: Callable[[str], str]) -> None:
    rows = [[name, f"{b.delivered:,}/{run.events:,}", ui.num(b.pending), ui.num(b.set_aside), ui.num(b.batches),
             "-" if b.mean_batch_ms is None else f"{b.mean_batch_ms:.2f}", ui.num(b.retries), ui.num(b.errors),
             "-" if b.undelivered_at_finish is None else ui.num(b.undelivered_at_finish),
             (b.last_error or "-")[:120]] for name, b in run.backends.items()]
    ui.print_table(["backend", "delivered", "pending", "set aside", "batches", "ms/batch", "retries", "errors",
                    "undelivered at finish", "last error"], rows, title="backends (the logging layer's health)")
    for name, b in run.backends.items():
        ids = ", ".join(f"{k}={_masked(v, mask_url)}" for k, v in b.identity.items() if k != "url")
        line = f"  {name}{' (the fallback backend)' if b.is_fallback else ''}: {ids or 'never started'}"
        if b.link:
            line += f"\n    {mask_url(b.link)}"
        print(line)
        if b.pending and not run.live:
            print(f"    {b.pending:,} pending - run `foundry-track sync {ui.short(run.dir)} --backend {name}`")
