"""foundry-track side by side with what people use today, in one process.

    python benchmarks/peers.py [--steps 300] [--step-ms 10] [--step-kind train|sleep|compute]
                               [--also 1:train,10:sleep] [--hot-steps 5000]
                               [--backends wandb,tensorboard,mlflow] [--write-docs]

One case after another, on the same machine, each logging 10 scalars per step
for ``--steps`` steps to W&B (offline), TensorBoard and a throwaway ``mlflow
server`` on 127.0.0.1 that this script starts:

  control             ``dict(metrics)``: no tracker; the floor of any Python call in these conditions
  direct SDKs         wandb ``run.log`` + ``SummaryWriter.add_scalar`` x10 + ``mlflow.log_metrics``
  Lightning loggers   WandbLogger, TensorBoardLogger, MLFlowLogger: ``log_metrics(metrics, step)``
                      then ``save()``, as Lightning's trainer calls them each time it logs
  Accelerate          ``Accelerator(log_with=[...])``, ``init_trackers``, ``accelerator.log(values, step=)``
  MLflow async        ``mlflow.log_metrics(..., synchronous=False)`` (MLflow only)
  foundry-track       ``run.log(metrics, step=)`` with the wandb, tensorboard and mlflow backends
  foundry-track, delivery: process   the same, the backends in the delivery process

Between two log calls the loop runs a training step of ``--step-ms``: by
default real training steps of a small MLP (torch, CPU, one thread); or a
sleep (the interpreter free, as while a loop waits on the GPU), or CPU matrix
products (``--step-kind``). Per case it reports the cost of the log call(s) as
the training loop sees it (p50, p99, mean), the loop's wall time per step,
the blocking set-up time, the time to finish (flush and close), and whether
every backend received every step, read back with each tracker's own reader.
A case that loses data says so. Then the control and foundry-track again with
the other training steps of ``--also`` (the cost of a call depends on how
cold the CPU caches are when it runs), and for ``--hot-steps`` steps back to
back (no training step: hot caches, and the backends draining 1,000s of steps
behind).

Peers come from the ``bench`` extra: ``pip install 'foundry-track[bench]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import logging
import os
import secrets
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from _common import (
    IMG_DIR,
    Stats,
    expected_values,
    fmt_s,
    fmt_us,
    local_tracker_env,
    machine,
    markdown_table,
    provenance,
    step_metrics,
    text_table,
    update_doc,
)
from _readback import Received, compare, mlflow_values, tensorboard_values, wandb_values

BACKENDS = ("wandb", "tensorboard", "mlflow")
LABEL = {"wandb": "W&B", "tensorboard": "TB", "mlflow": "MLflow"}
FT = "foundry-track"
FT_PROCESS = "foundry-track, delivery: process"


@dataclass
class Harness:
    """One case once set up: the call the training loop makes, and how to close it."""

    log: Callable[[dict[str, float], int], None]
    finish: Callable[[], None]
    backends: tuple[str, ...]
    #: where to read each backend back: a directory (W&B, TensorBoard) or an MLflow experiment name
    places: dict[str, Any] = field(default_factory=dict)
    #: per-SDK samples, for the case that can time its calls one by one
    parts: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Result:
    name: str
    backends: tuple[str, ...]
    stats: Stats
    setup_s: float
    loop_s: float
    finish_s: float
    received: dict[str, Received]
    steps: int
    step_ms: float
    step_kind: str
    parts: dict[str, Stats] = field(default_factory=dict)

    @property
    def setting(self) -> tuple[float, str]:
        return (self.step_ms, self.step_kind if self.step_ms > 0 else "")

    @property
    def wall_per_step_s(self) -> float:
        return self.loop_s / self.steps

    @property
    def complete(self) -> bool:
        return all(r.complete for r in self.received.values())


@dataclass
class Env:
    tmp: Path
    uri: str | None
    backends: tuple[str, ...]
    tag: str  # makes MLflow experiment names unique on a server that is reused (--mlflow-uri)

    def experiment(self, name: str) -> str:
        return f"{name}-{self.tag}"


# --------------------------------------------------------------------------- #
# The cases
# --------------------------------------------------------------------------- #


def direct_sdks(env: Env, case_dir: Path) -> Harness:
    """What a training loop without a wrapper calls: each SDK, synchronously."""
    calls: list[tuple[str, Callable[[dict[str, float], int], Any]]] = []
    closers: list[Callable[[], None]] = []
    places: dict[str, Any] = {}
    if "wandb" in env.backends:
        import wandb

        run = wandb.init(project="bench-direct", dir=str(case_dir), mode="offline", reinit="create_new")
        calls.append(("wandb", lambda m, s: run.log(m, step=s)))
        closers.append(run.finish)
        places["wandb"] = case_dir
    if "tensorboard" in env.backends:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(case_dir / "tb"))

        def add_scalars(metrics: dict[str, float], step: int) -> None:
            for key, value in metrics.items():
                writer.add_scalar(key, value, step)

        calls.append(("tensorboard", add_scalars))
        closers.append(writer.close)
        places["tensorboard"] = case_dir / "tb"
    if "mlflow" in env.backends:
        import mlflow

        mlflow.start_run(experiment_id=mlflow.create_experiment(env.experiment("direct")))
        calls.append(("mlflow", lambda m, s: mlflow.log_metrics(m, step=s)))
        closers.append(mlflow.end_run)
        places["mlflow"] = env.experiment("direct")
    parts: dict[str, list[int]] = {name: [] for name, _ in calls}
    clock = time.perf_counter_ns

    def log(metrics: dict[str, float], step: int) -> None:
        for name, call in calls:
            t0 = clock()
            call(metrics, step)
            parts[name].append(clock() - t0)

    def finish() -> None:
        for close in closers:
            close()

    return Harness(log, finish, env.backends, places, parts)


def lightning_loggers(env: Env, case_dir: Path) -> Harness:
    """Lightning's loggers, called the way its trainer calls them when it logs."""
    from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)  # "Experiment ... not found. Creating it."
    loggers: list[Any] = []
    places: dict[str, Any] = {}
    wandb_logger = None
    if "wandb" in env.backends:
        wandb_logger = WandbLogger(project="bench-lightning", save_dir=str(case_dir), offline=True)
        loggers.append(wandb_logger)
        places["wandb"] = case_dir
    if "tensorboard" in env.backends:
        loggers.append(TensorBoardLogger(save_dir=str(case_dir / "tb"), name="lightning"))
        places["tensorboard"] = case_dir / "tb"
    if "mlflow" in env.backends:
        loggers.append(MLFlowLogger(experiment_name=env.experiment("lightning"), tracking_uri=env.uri))
        places["mlflow"] = env.experiment("lightning")
    for logger in loggers:
        logger.experiment  # the trainer creates each run at setup, not in the first step  # noqa: B018

    def log(metrics: dict[str, float], step: int) -> None:
        # pytorch_lightning/trainer/connectors/logger_connector/logger_connector.py, log_metrics()
        for logger in loggers:
            logger.log_metrics(metrics=metrics, step=step)
            logger.save()

    def finish() -> None:
        for logger in loggers:
            logger.finalize("success")  # what the trainer calls at the end of fit()
        if wandb_logger is not None:
            # finalize() leaves the W&B run open until the process exits: nothing
            # of it is in the .wandb file yet, and the next wandb.init would reuse
            # it. Users running several runs in one process call finish() here.
            wandb_logger.experiment.finish()

    return Harness(log, finish, env.backends, places)


def accelerate_trackers(env: Env, case_dir: Path) -> Harness:
    """Hugging Face Accelerate's trackers: ``accelerator.log`` fans out to each SDK."""
    from accelerate import Accelerator

    accelerator = Accelerator(log_with=list(env.backends), project_dir=str(case_dir / "tb"))
    # The project name is also the MLflow experiment's and the TensorBoard run's.
    accelerator.init_trackers(env.experiment("accelerate"),
                              init_kwargs={"wandb": {"dir": str(case_dir), "mode": "offline"}})
    places = {"wandb": case_dir, "tensorboard": case_dir / "tb", "mlflow": env.experiment("accelerate")}
    return Harness(lambda m, s: accelerator.log(m, step=s), accelerator.end_training, env.backends,
                   {b: places[b] for b in env.backends})


def mlflow_async(env: Env, case_dir: Path) -> Harness:
    """MLflow's own answer to slow logging: queue the call, send it from a thread."""
    import mlflow

    mlflow.start_run(experiment_id=mlflow.create_experiment(env.experiment("mlflow-async")))

    def finish() -> None:
        mlflow.flush_async_logging()
        mlflow.end_run()

    return Harness(lambda m, s: mlflow.log_metrics(m, step=s, synchronous=False), finish, ("mlflow",),
                   {"mlflow": env.experiment("mlflow-async")})


def foundry_track(env: Env, case_dir: Path, delivery: str = "thread") -> Harness:
    import foundry_track as ft

    options: dict[str, dict[str, Any]] = {
        "wandb": {"mode": "offline", "dir": str(case_dir)},
        "tensorboard": {"log_dir": str(case_dir / "tb")},
        "mlflow": {"tracking_uri": env.uri, "experiment": env.experiment(case_dir.name)},
    }
    run = ft.init({"dir": str(case_dir / "runs"), "project": "bench-foundry-track", "flush_timeout": 600,
                   "delivery": delivery, "backends": {b: options[b] for b in env.backends}})

    def finish() -> None:
        undelivered = run.finish()
        if any(undelivered.values()):
            print(f"  foundry-track: undelivered after finish: {undelivered}", file=sys.stderr)

    places = {"wandb": case_dir, "tensorboard": case_dir / "tb", "mlflow": env.experiment(case_dir.name)}
    return Harness(run.log, finish, env.backends, {b: places[b] for b in env.backends})


def control(env: Env, case_dir: Path) -> Harness:
    """No tracker: copy the metrics, the least any logging call does."""
    return Harness(lambda m, s: dict(m), lambda: None, ())


CASES: dict[str, tuple[str, Callable[[Env, Path], Harness], str | None]] = {
    # name: (label, setup, package it needs beyond the trackers)
    "control": ("control: dict(metrics)", control, None),
    "direct": ("direct SDK calls", direct_sdks, None),
    "lightning": ("Lightning loggers", lightning_loggers, "pytorch_lightning"),
    "accelerate": ("Accelerate trackers", accelerate_trackers, "accelerate"),
    "mlflow-async": ("MLflow synchronous=False", mlflow_async, None),
    "foundry-track": (FT, foundry_track, None),
    "foundry-track-process": (FT_PROCESS, lambda env, case_dir: foundry_track(env, case_dir, "process"), None),
}


def warm_up_mlflow(uri: str) -> None:
    """A few requests before the first case, so it does not pay for the server's
    first queries (imports, SQLite caches) alone."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("warm-up")
    run_id = client.create_run(experiment.experiment_id if experiment else client.create_experiment("warm-up")
                               ).info.run_id
    for step in range(20):
        client.log_batch(run_id, metrics=[Metric(f"m{i}", 1.0, 0, step) for i in range(10)])
    client.get_metric_history(run_id, "m0")
    client.set_terminated(run_id)


# --------------------------------------------------------------------------- #
# Running one case
# --------------------------------------------------------------------------- #


def training_step(ms: float, kind: str) -> Callable[[], None] | None:
    """The work between two log calls, ``ms`` long.

    ``train`` (the default): real training steps of a small MLP (forward,
    backward, SGD update; torch on one thread), repeated to last ``ms``: what
    a training loop on the CPU does between two log calls. ``sleep``: the
    interpreter is free, as while a loop waits on the GPU (``loss.item()``, a
    synchronising kernel); the trackers' own threads run meanwhile, and the
    idle core's caches go cold. ``compute``: 1-thread 128x128 torch matrix
    products, a CPU step that releases the GIL inside each product but takes
    it back between them, so threads that hold the GIL delay the step (see
    "wall/step"). Whatever the step, the CPU caches the log call used are
    colder when it runs again than back to back: the control's
    ``dict(metrics)`` measures how much colder.
    """
    if ms <= 0:
        return None
    seconds = ms / 1e3
    if kind == "sleep":
        return lambda: time.sleep(seconds)
    import torch

    torch.set_num_threads(1)  # one core for the step; the trackers' processes get the other(s)
    now = time.perf_counter
    if kind == "compute":
        a = torch.randn(128, 128)
        mm = torch.mm

        def step() -> None:
            end = now() + seconds
            while now() < end:
                mm(a, a)

        return step

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 128), torch.randint(0, 10, (64,))
    loss_fn = torch.nn.functional.cross_entropy

    def train() -> None:
        end = now() + seconds
        while now() < end:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return train


def run_case(name: str, env: Env, steps: int, step_ms: float, step_kind: str, tag: str = "") -> Result:
    label, setup, _ = CASES[name]
    case_dir = env.tmp / (name + tag)
    case_dir.mkdir()
    work = training_step(step_ms, step_kind)
    gc.collect()
    t0 = time.perf_counter()
    harness = setup(env, case_dir)
    setup_s = time.perf_counter() - t0
    samples = [0] * steps
    clock = time.perf_counter_ns
    log = harness.log
    # No collection inside the loop: a gen-2 pass of a process holding three SDKs
    # costs milliseconds and would land on whichever case happened to trigger it.
    gc.disable()
    loop_start = time.perf_counter()
    for step in range(steps):
        if work is not None:
            work()
        # Built after the step and before the clock, as a training loop builds
        # what it logs from what the step returned: the same for every case.
        metrics = step_metrics(step)
        t0_ns = clock()
        log(metrics, step)
        samples[step] = clock() - t0_ns
    loop_s = time.perf_counter() - loop_start
    gc.enable()
    t0 = time.perf_counter()
    harness.finish()
    finish_s = time.perf_counter() - t0
    expected = expected_values(steps)
    received: dict[str, Received] = {}
    for backend in harness.backends:
        place = harness.places[backend]
        if backend == "wandb":
            got = wandb_values(place)
        elif backend == "tensorboard":
            got = tensorboard_values(place)
        else:
            assert env.uri is not None
            got = mlflow_values(env.uri, place)
        received[backend] = compare(expected, got)
    parts = {k: Stats.of(v) for k, v in harness.parts.items() if v}
    return Result(label, harness.backends, Stats.of(samples), setup_s, loop_s, finish_s, received, steps, step_ms,
                  step_kind,
                  parts)


# --------------------------------------------------------------------------- #
# Reporting
# --------------------------------------------------------------------------- #


def _ratio(value: float, reference: float) -> str:
    r = value / reference
    return f"{r:,.0f}x" if r >= 10 else f"{r:.1f}x"


def _step_label(r: Result) -> str:
    return f"{r.step_ms:g} ms {r.step_kind}" if r.step_ms > 0 else "none"


def _rows(results: list[Result], markdown: bool) -> tuple[list[str], list[list[str]]]:
    """One row per case; ratios against foundry-track measured with the same training step."""
    ref = {r.setting: r for r in results if r.name == FT}
    header = ["case", "backends", "step", "p50", "p99", "mean", "p50 vs ft", "p99 vs ft", "wall/step", "set-up",
              "finish", "received"]
    rows = []
    for r in results:
        ft = ref.get(r.setting)
        name = f"**{r.name}**" if markdown and r.name in (FT, FT_PROCESS) else r.name
        rows.append([
            name, "+".join(LABEL[b] for b in r.backends) or "-", _step_label(r),
            fmt_us(r.stats.p50), fmt_us(r.stats.p99), fmt_us(r.stats.mean),
            _ratio(r.stats.p50, ft.stats.p50) if ft and r.backends else "-",
            _ratio(r.stats.p99, ft.stats.p99) if ft and r.backends else "-",
            fmt_us(r.wall_per_step_s * 1e6), fmt_s(r.setup_s), fmt_s(r.finish_s),
            ", ".join(f"{LABEL[b]} {v}" for b, v in r.received.items()) or "-",
        ])
    return header, rows


_CALLS = {"wandb": "wandb `run.log(10 scalars, step=)`", "tensorboard": "`SummaryWriter.add_scalar` x10",
          "mlflow": "`mlflow.log_metrics(10 scalars, step=)`"}


def _parts_rows(results: list[Result]) -> list[list[str]]:
    return [[_CALLS[b], fmt_us(s.p50), fmt_us(s.p99), fmt_us(s.mean)] for r in results for b, s in r.parts.items()]


def plot(results: list[Result], path: Path) -> None:
    """Horizontal bars, log scale: p50 and p99 of each case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r.name}\n{'+'.join(LABEL[b] for b in r.backends) or 'no tracker'}, "
             + (f"{r.step_ms:g} ms step ({r.step_kind})" if r.step_ms > 0 else f"{r.steps:,} steps back to back")
             for r in results]
    fig, ax = plt.subplots(figsize=(8.5, 0.62 * len(results) + 1.5), dpi=110)
    ys = list(range(len(results)))
    h = 0.38
    p50 = [r.stats.p50 for r in results]
    p99 = [r.stats.p99 for r in results]
    light = ["#2a9d8f" if r.name in (FT, FT_PROCESS) else "#adb5bd" if not r.backends else "#8d99ae" for r in results]
    dark = ["#1d6f65" if r.name in (FT, FT_PROCESS) else "#6c757d" if not r.backends else "#4a5568" for r in results]
    ax.barh([y - h / 2 for y in ys], p50, height=h, color=light, label="p50")
    ax.barh([y + h / 2 for y in ys], p99, height=h, color=dark, label="p99")
    for y, a, b in zip(ys, p50, p99):
        ax.text(a * 1.12, y - h / 2, fmt_us(a), va="center", fontsize=7.5)
        ax.text(b * 1.12, y + h / 2, fmt_us(b), va="center", fontsize=7.5)
    for y in range(1, len(results)):
        if results[y].setting != results[y - 1].setting:  # a line between two settings
            ax.axhline(y - 0.5, color="#999999", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_yticks(ys, names, fontsize=7.5)
    ax.invert_yaxis()
    ax.set_xlabel("cost of one step's log call(s) seen by the training loop, microseconds (log scale)")
    ax.set_xlim(min(p50) / 2, max(p99) * 10)
    ax.set_title("10 scalars per step to W&B (offline), TensorBoard and a local MLflow server", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", which="major", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _verdicts(results: list[Result]) -> list[str]:
    """The issue's targets, checked for each foundry-track row; and lost data."""
    lines = []
    slow = {p.setting: p.stats.p50 for p in results if p.name in (CASES["lightning"][0], CASES["accelerate"][0])}
    floor = {c.setting: c.stats.p50 for c in results if c.name == CASES["control"][0]}
    for r in results:
        if r.name not in (FT, FT_PROCESS):
            continue
        setting = ("" if r.name == FT else "(delivery: process) ") + (
            f"after a {r.step_ms:g} ms step ({r.step_kind})" if r.step_ms > 0 else "back to back")
        checks = [f"p50 {fmt_us(r.stats.p50)} <= 5 us: {'met' if r.stats.p50 <= 5 else 'NOT met'}",
                  f"p99 {fmt_us(r.stats.p99)} <= 50 us: {'met' if r.stats.p99 <= 50 else 'NOT met'}"]
        peers = [v for k, v in slow.items() if k == r.setting] or list(slow.values())
        if peers:
            least = min(peers) / r.stats.p50
            checks.append(f"p50 at least 1,000x below Lightning's and Accelerate's ({least:,.0f}x): "
                          f"{'met' if least >= 1000 else 'NOT met'}")
        if r.setting in floor:
            checks.append(f"the control's dict(metrics) alone: {fmt_us(floor[r.setting])}")
        if r.setting in floor:
            wall = {c.setting: c.wall_per_step_s for c in results if c.name == CASES["control"][0]}[r.setting]
            checks.append(f"wall/step {(r.wall_per_step_s - wall) * 1e3:+.2f} ms against the control's")
        lines.append(f"foundry-track {setting}: " + "; ".join(checks))
    lost = [f"{r.name} ({_step_label(r)})" for r in results if not r.complete]
    lines.append("every backend received every step in every case" if not lost
                 else f"DATA LOST by: {', '.join(lost)}")
    return lines


def write_docs(results: list[Result], args: argparse.Namespace, server_start_s: float | None,
               verdicts: list[str]) -> None:
    header, rows = _rows(results, markdown=True)
    img = IMG_DIR / "peers.png"
    plot(results, img)
    parts = _parts_rows(results)
    body = [
        f"![Cost of one step's log call(s) per case, log scale](img/{img.name})",
        "",
        markdown_table(header, rows, align="lll" + "r" * 8 + "l"),
        "",
        f"{args.steps} steps of 10 scalars per case with a {args.step_ms:g} ms training step ({args.step_kind}) "
        "between log calls"
        + (f"; then the control and foundry-track with a {' and a '.join(x.replace(':', ' ms ') for x in args.also.split(',') if x)} step"
           if args.also else "")
        + (f"; then {args.hot_steps:,} steps back to back (step: none)" if args.hot_steps else "") + ". "
        "p50/p99/mean: cost of the log call(s) of one step as the training loop sees it; "
        "vs ft: that cost divided by foundry-track's, with the same training step; "
        "wall/step: the loop's wall time per step, training step included; "
        "set-up: blocking time to create the runs; finish: flush and close after the last step; "
        "received: read back from each tracker's own storage (TensorBoard event files with EventAccumulator, "
        "the MLflow server with `get_metric_history`, the W&B offline `.wandb` file)."
        + (f" The MLflow server took {server_start_s:.1f} s to start (not counted)." if server_start_s else ""),
    ]
    body += ["", *(f"- {line}" for line in verdicts)]
    if parts:
        body += ["", "Where the direct case's time goes (each SDK call timed on its own):", "",
                 markdown_table(["SDK call", "p50", "p99", "mean"], parts)]
    body += ["", provenance()]
    update_doc("peers", "\n".join(body))


# --------------------------------------------------------------------------- #


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="steps per case (10 scalars each)")
    parser.add_argument("--step-ms", type=float, default=10.0, help="training step between two log calls")
    parser.add_argument("--step-kind", choices=("train", "sleep", "compute"), default="train",
                        help="the training step: MLP training steps (torch, CPU), the interpreter free "
                        "(waiting on a GPU) or CPU matrix products")
    parser.add_argument("--also", default="1:train,10:sleep",
                        help="then the control and foundry-track again with these other training steps, "
                        "comma-separated MS:KIND ('' for none)")
    parser.add_argument("--hot-steps", type=int, default=5000,
                        help="then the control and foundry-track with this many steps back to back (0: skip)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated subset of wandb,tensorboard,mlflow (no mlflow: no server is started)")
    parser.add_argument("--mlflow-uri", default=None,
                        help="use this running MLflow server instead of starting one (the smoke test does)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--keep", action="store_true", help="keep the runs' files (the temporary folder is printed)")
    parser.add_argument("--write-docs", action="store_true", help="write the table to docs/performance.md "
                        "and the plot to docs/img/peers.png")
    args = parser.parse_args()
    backends = tuple(b for b in BACKENDS if b in args.backends.split(","))
    for extra in (x for x in args.also.split(",") if x):
        ms, _, kind = extra.partition(":")
        try:
            float(ms)
        except ValueError:
            kind = ""
        if kind not in ("train", "sleep", "compute"):
            parser.error(f"--also: {extra!r} is not MS:KIND with KIND train, sleep or compute (e.g. 1:train)")
    unknown = (set(args.backends.split(",")) - set(BACKENDS)) | (set(args.cases.split(",")) - set(CASES))
    if unknown or not backends:
        parser.error(f"unknown or no backends/cases: {sorted(unknown) or args.backends}")

    cases: list[str] = []
    for name in args.cases.split(","):
        needs = CASES[name][2]
        if needs and importlib.util.find_spec(needs) is None:
            print(f"skipping {name}: {needs} is not installed (pip install 'foundry-track[bench]')")
        elif name == "mlflow-async" and "mlflow" not in backends:
            print("skipping mlflow-async: mlflow is not among --backends")
        else:
            cases.append(name)

    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    print(machine())
    cwd = Path.cwd()
    results: list[Result] = []
    folder = (contextlib.nullcontext(tempfile.mkdtemp(prefix="ft-peers-")) if args.keep
              else tempfile.TemporaryDirectory(prefix="ft-peers-"))
    with folder as tmp_name:
        if args.keep:
            print(f"files kept in {tmp_name}")
        tmp = Path(tmp_name)
        local_tracker_env(tmp)
        server = None
        server_start_s = None
        uri = None
        try:
            if "mlflow" in backends:
                if args.mlflow_uri:
                    uri = args.mlflow_uri
                else:
                    from _mlflow import MlflowServer

                    server = MlflowServer(tmp / "mlflow-server")
                    server_start_s = server.start()
                    uri = server.uri
                    print(f"mlflow server on {uri} (started in {server_start_s:.1f} s)")
                warm_up_mlflow(uri)
                import mlflow

                mlflow.set_tracking_uri(uri)  # the fluent API of the direct, Accelerate and async cases
            if "wandb" in backends:
                import wandb

                wandb.setup()  # W&B's service process: started once, not charged to the first case
            env = Env(tmp, uri, backends, tag=secrets.token_hex(3))
            plan = [(name, args.steps, args.step_ms, args.step_kind, "") for name in cases]
            ours = [name for name in ("control", "foundry-track", "foundry-track-process") if name in cases]
            for i, extra in enumerate(x for x in args.also.split(",") if x):
                ms, kind = extra.split(":")
                if (float(ms), kind) != (args.step_ms, args.step_kind):
                    plan += [(name, args.steps, float(ms), kind, f"-also{i}") for name in ours]
            if args.hot_steps:
                plan += [(name, args.hot_steps, 0.0, "", "-hot") for name in ours]
            for name, steps, step_ms, step_kind, tag in plan:
                print(f"running {name}{tag} ({steps} steps) ...", flush=True)
                result = run_case(name, env, steps, step_ms, step_kind, tag)
                results.append(result)
                print(f"  p50 {fmt_us(result.stats.p50)}, p99 {fmt_us(result.stats.p99)}, "
                      f"finish {fmt_s(result.finish_s)}, received: "
                      + (", ".join(f"{LABEL[b]} {v}" for b, v in result.received.items()) or "-"), flush=True)
        finally:
            if server is not None:
                server.stop()
            os.chdir(cwd)

    header, rows = _rows(results, markdown=False)
    print()
    print("10 scalars per step; cost of the log call(s) of one step:")
    print(text_table(header, rows))
    parts = _parts_rows(results)
    if parts:
        print()
        print(text_table(["direct SDK call", "p50", "p99", "mean"], [[c.replace("`", ""), *x] for c, *x in parts]))
    verdicts = _verdicts(results)
    print("\n".join(verdicts))
    if args.write_docs:
        write_docs(results, args, server_start_s, verdicts)
        print("wrote docs/performance.md and docs/img/peers.png")
    # A peer that loses data is a finding; foundry-track losing data is a bug.
    return 1 if any(r.name in (FT, FT_PROCESS) and not r.complete for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
