"""``foundry-track import``: runs of TensorBoard, W&B and MLflow as foundry-track
runs, delivered to the backends of a tracking config."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

import foundry_track.cli._common as ui

if TYPE_CHECKING:
    from foundry_track.importers import Progress, SourceRun

__all__ = ["add_parser", "run"]

_DESCRIPTION = (
    "Read runs another tracker wrote, with that tracker's own reader, and make each one a foundry-track run "
    "directory: scalars with their steps and original wall times, params (secrets redacted), tags, name, "
    "status, and where the source has them images, histograms, text and artifacts. Then deliver it to the "
    "backends of --config, as `foundry-track sync` delivers a live run. Importing the same run again makes "
    "no second run and no duplicate rows (its run id is derived from the source's id); an interrupted "
    "import resumes; a config with another backend adds that backend to the imported run. "
    "Exit 1 if events are still undelivered (run `foundry-track sync RUN_DIR`).\n\n"
    "  tensorboard LOGDIR          every folder under LOGDIR with event files is a run\n"
    "  wandb PATH                  an offline-run-* folder, or a folder holding several\n"
    "  mlflow --tracking-uri URI [--experiment NAME] [--run ID]\n\n"
    "Each takes --config TRACKING_YAML (the backends that receive the runs; none: only the run directories "
    "are written), --dir RUNS_DIR (default: the config's dir, else ./runs), --timeout SECONDS (delivery, per "
    "run) and --json; each source's --help lists them."
)
_EXAMPLES = (
    "examples:\n"
    "  foundry-track import tensorboard tb_logs/ --config tracking.yaml\n"
    "  foundry-track import wandb wandb/ --config tracking.yaml --dir runs\n"
    "  foundry-track import mlflow --tracking-uri http://127.0.0.1:5000 --experiment baseline --config wandb.yaml"
)


def add_parser(sub: Any) -> None:
    p = ui.add_command(sub, "import", "import runs from TensorBoard, W&B or MLflow and deliver them",
                       _DESCRIPTION, _EXAMPLES, run)
    sources = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    tb = sources.add_parser("tensorboard", help="a TensorBoard log folder: each folder with event files is a run")
    tb.add_argument("path", metavar="LOGDIR", help="the folder passed to `tensorboard --logdir`")
    wb = sources.add_parser("wandb", help="W&B offline runs (offline-run-* folders, one or many)")
    wb.add_argument("path", metavar="PATH", help="an offline-run-* folder, or a folder holding several (wandb/)")
    ml = sources.add_parser("mlflow", help="MLflow runs, read through MlflowClient")
    ml.add_argument("--tracking-uri", required=True, metavar="URI",
                    help="http://host:5000 for a server, sqlite:///path.db for a database")
    ml.add_argument("--experiment", metavar="NAME", help="only this experiment's runs (default: every experiment)")
    ml.add_argument("--run", metavar="ID", help="only this run")
    for q in (tb, wb, ml):
        q.add_argument("--config", metavar="TRACKING_YAML",
                       help="the tracking config whose backends receive the runs, as for a live run "
                            "(default: none: only the run directories are written)")
        q.add_argument("--dir", metavar="RUNS_DIR",
                       help="where the run directories go (default: the config's dir, else ./runs)")
        q.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                       help="how long delivery may take per run; what is left stays for `foundry-track sync`")
        q.add_argument("--json", action="store_true", help="print one JSON object per run")


def _sources(args: argparse.Namespace) -> list[SourceRun]:
    if args.source == "tensorboard":
        from foundry_track.importers import tensorboard

        return tensorboard.runs(args.path)
    if args.source == "wandb":
        from foundry_track.importers import wandb

        return wandb.runs(args.path)
    from foundry_track.importers import mlflow

    return mlflow.runs(args.tracking_uri, args.experiment, args.run)


def run(args: argparse.Namespace) -> int:
    from foundry_track.importers import import_run

    config: Any = args.config if args.config is not None else {"backends": {}}
    left_any = False
    for source in _sources(args):
        with _ProgressBar(source, quiet=args.json) as progress:
            result = import_run(source, config, args.dir, progress=progress, timeout=args.timeout)
        left_any = left_any or bool(result.remaining)
        if args.json:
            print(json.dumps({"source": source.where, "run_dir": str(result.run_dir), "events": result.events,
                              "delivered": result.delivered, "undelivered": result.remaining}))
            continue
        what = f"{result.events:,} events journaled" if result.events else "imported before"
        print(f"{source.name}: {ui.short(result.run_dir)} ({what})")
        for name in dict.fromkeys([*result.delivered, *result.remaining]):
            left = result.remaining.get(name, 0)
            print(f"  {name}: {result.delivered.get(name, 0):,} events delivered, {left:,} remaining"
                  + (f" (run foundry-track sync {ui.short(result.run_dir)})" if left else ""))
    return 1 if left_any else 0


class _ProgressBar:
    """A rich progress bar on a terminal while a run's events are journaled; nothing otherwise."""

    def __init__(self, source: SourceRun, *, quiet: bool) -> None:
        self.source = source
        self.bar: Any = None
        self.enabled = not quiet and sys.stderr.isatty()

    def __enter__(self) -> Progress | None:
        if not self.enabled:
            return None
        try:
            from rich.progress import Progress as Bar
        except ImportError:
            return None
        from rich.console import Console

        bar: Any = Bar(console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task(f"importing {self.source.name}", total=self.source.total)
        self.bar = bar

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        return update

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

