"""``foundry-track plot``: overlay runs' metric curves in a PNG, read from their
journals: the W&B guide's "compare experiments" without a server. The
``sweep`` command draws its ``sweep.png`` with the same :func:`plot_runs`.

matplotlib is optional (``pip install 'foundry-track[plot]'``) and imported only
here, only when plotting. The figure is built with ``matplotlib.figure.Figure``
and saved through the Agg canvas, never through ``pyplot``: no GUI backend, no
global figure state, works on a headless node.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Sequence

import foundry_track.cli._common as ui
from foundry_track.errors import FoundryTrackError, MissingDependency, RunDirError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PlotError", "MissingDependency", "ema", "moving_average", "plot_runs", "save_figure", "INSTALL",
           "add_parser", "run"]

INSTALL: Final = "pip install 'foundry-track[plot]'"
Smoothing = Literal["ema", "mean"]
XAxis = Literal["step", "time"]


class PlotError(FoundryTrackError, ValueError):
    """Bad input for a plot (unknown metric, no data); the message says what exists."""

    exit_code = 2


def _matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependency(f"plotting needs matplotlib, which is not installed: {INSTALL}") from None


# --------------------------------------------------------------------------- #
# Smoothing: pure functions over lists (NaN and inf are gaps, not poison)
# --------------------------------------------------------------------------- #


def ema(values: Sequence[float], span: int) -> list[float]:
    """Exponential moving average with ``alpha = 2 / (span + 1)``, debiased at the
    start (as TensorBoard's smoothing is), so the curve does not begin at 0.

    A non-finite value is kept as a gap in the output and left out of the average.
    """
    if span <= 1:
        return [float(v) for v in values]
    alpha = 2.0 / (span + 1)
    out: list[float] = []
    avg, weight = 0.0, 0.0
    for v in values:
        v = float(v)
        if not math.isfinite(v):
            out.append(math.nan)
            continue
        avg = (1 - alpha) * avg + alpha * v
        weight = (1 - alpha) * weight + alpha
        out.append(avg / weight)
    return out


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean of the last ``window`` finite values (fewer at the start)."""
    if window <= 1:
        return [float(v) for v in values]
    out: list[float] = []
    recent: deque[float] = deque()
    total = 0.0
    for v in values:
        v = float(v)
        if not math.isfinite(v):
            out.append(math.nan)
            continue
        recent.append(v)
        total += v
        if len(recent) > window:
            total -= recent.popleft()
        out.append(total / len(recent))
    return out


# --------------------------------------------------------------------------- #
# The figure
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class _Curve:
    label: str
    x: list[float]
    y: list[float]


def _labels(runs: Sequence[Path]) -> list[str]:
    """Run names, with the id added where two runs share a name."""
    from foundry_track.history import load_run

    summaries = [load_run(r) for r in runs]
    names = [s.name for s in summaries]
    return [s.name if names.count(s.name) == 1 else f"{s.name} ({s.id})" for s in summaries]


def plot_runs(
    runs: Sequence[str | os.PathLike[str]],
    metrics: Sequence[str],
    *,
    smooth: int = 0,
    smoothing: Smoothing = "ema",
    x: XAxis = "step",
    overlay: bool = False,
    size: tuple[int, int] | None = None,
    log_y: bool = False,
    title: str | None = None,
) -> tuple[Figure, list[str]]:
    """Build the comparison figure; return it and warnings (a run without a metric).

    One axes per metric (or one for all with ``overlay``), one line per run per
    metric labelled with the run name. With ``smooth`` the raw curve is drawn
    faint behind the smoothed one; raw lines carry a ``_``-prefixed label, so
    matplotlib leaves them out of the legend and ``[l for l in ax.lines if not
    l.get_label().startswith('_')]`` are the curves.
    """
    _matplotlib()
    from matplotlib.figure import Figure

    from foundry_track.history import metric_series

    if not runs:
        raise PlotError("give at least one run to plot")
    if not metrics:
        raise PlotError("give at least one --metric (e.g. --metric train/loss)")
    if smooth < 0:
        raise PlotError(f"--smooth {smooth}: give a number of points >= 0 (0 = no smoothing)")
    metrics = list(dict.fromkeys(metrics))  # the same metric twice is one panel
    paths = list(dict.fromkeys(Path(r).resolve() for r in runs))
    labels = _labels(paths)
    warnings: list[str] = []
    per_metric: dict[str, list[_Curve]] = {m: [] for m in metrics}
    for path, label in zip(paths, labels):
        series = metric_series(path, metrics)
        for metric in metrics:
            s = series.get(metric)
            if s is None:
                warnings.append(f"run {label} has no metric {metric!r}")
                continue
            if x == "time":
                t0 = s.times[0]
                xs = [(t - t0) / 3600.0 for t in s.times]
            else:
                xs = [float(step) for step in s.steps]
            per_metric[metric].append(_Curve(label, xs, [float(v) for v in s.values]))
    missing = [m for m, curves in per_metric.items() if not curves]
    if missing:
        raise PlotError(_unknown_metrics(missing, paths))

    panels = [list(metrics)] if overlay else [[m] for m in metrics]
    width_px, height_px = size or (1000, 160 + 320 * len(panels))
    dpi = 100
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    # A run keeps its colour in every panel; in an overlay the metrics differ by line style.
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    styles = ["-", "--", ":", "-."]
    for ax, panel in zip(axes, panels):
        for m_index, metric in enumerate(panel):
            for curve in per_metric[metric]:
                label = f"{curve.label} · {metric}" if len(panel) > 1 else curve.label
                _draw(ax, curve, label, colors[curve.label], styles[m_index % len(styles)], smooth, smoothing)
        ax.set_title(", ".join(panel), fontsize="medium")
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("step" if x == "step" else "hours since the first value")
    note = f" (smoothed: {smoothing} over {smooth} points)" if smooth > 1 else ""
    fig.suptitle((title or f"{len(paths)} run{'s' if len(paths) != 1 else ''}") + note, fontsize="medium")
    return fig, warnings


def _draw(ax: Any, curve: _Curve, label: str, color: str, style: str, smooth: int, smoothing: Smoothing) -> None:
    """One run's curve of one metric (with ``smooth``, the raw one faint behind it)."""
    ys = [v if math.isfinite(v) else math.nan for v in curve.y]
    # A line needs two points: a series of one (a run shorter than the logging
    # interval, a single evaluation) is drawn as a dot, or it would be invisible.
    marker = "o" if sum(1 for v in ys if not math.isnan(v)) == 1 else None
    if smooth > 1:
        ax.plot(curve.x, ys, color=color, linestyle=style, alpha=0.25, linewidth=0.8, label=f"_raw {label}")
        ys = ema(ys, smooth) if smoothing == "ema" else moving_average(ys, smooth)
    ax.plot(curve.x, ys, color=color, linestyle=style, linewidth=1.4, marker=marker, label=label)


def _unknown_metrics(missing: Sequence[str], runs: Sequence[Path]) -> str:
    from foundry_track.history import scan

    known: set[str] = set()
    for run in runs:
        try:
            known.update(scan(run).metrics)
        except RunDirError:
            continue
    hints = []
    for metric in missing:
        close = difflib.get_close_matches(metric, sorted(known), n=3, cutoff=0.5)
        hints.append(f"{metric!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
    listed = ", ".join(sorted(known)[:30]) or "none"
    return f"no run has the metric {', '.join(hints)}; the runs have: {listed}"


def save_figure(fig: Figure, out: str | os.PathLike[str]) -> Path:
    """Write the figure (format from the suffix: png, svg, pdf), atomically."""
    path = Path(out)
    suffix = path.suffix.lower().lstrip(".") or "png"
    if path.parent != Path("") and not path.parent.exists():
        raise PlotError(f"-o {out}: the folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format=suffix)
        os.replace(tmp, path)
    except ValueError as exc:  # unknown format
        raise PlotError(f"-o {out}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- #
# The command
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


def add_parser(sub: Any) -> None:
    p = ui.add_command(
        sub, "plot", "overlay runs' metric curves in a PNG (headless)",
        "Draw the given metrics of one or more runs, one line per run per metric, one panel per metric "
        "(or all in one with --overlay), legend with the run names. Needs matplotlib: "
        "pip install 'foundry-track[plot]'.",
        "examples:\n  foundry-track plot runs/exp0-* runs/exp1-* --metric train/loss -o loss.png\n"
        "  foundry-track plot exp0 exp1 --metric train/loss --metric val/loss --smooth 50 -o cmp.png",
        run)
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
    ui.dir_option(p)


def run(args: argparse.Namespace) -> int:
    paths = [ui.resolve(ref, args.dir) for ref in args.runs]
    fig, warnings = plot_runs(paths, args.metric, smooth=args.smooth, smoothing=args.smoothing, x=args.x,
                              overlay=args.overlay, size=args.size, log_y=args.log_y, title=args.title)
    for warning in warnings:
        print(f"foundry-track plot: {warning}", file=sys.stderr)
    out = save_figure(fig, args.output)
    width, height = (int(v) for v in fig.get_size_inches() * fig.dpi)
    print(f"wrote {out} ({width}x{height} px; {len(paths)} run(s), {len(args.metric)} metric(s))")
    return 0
