"""What tracking costs a training step: foundry-track side by side with what
people use today, in one process.

    python benchmarks/peers.py [--step-ms 1,10] [--step-kind train|sleep|compute]
                               [--pairs 3] [--pairs-ours 30] [--block-s 1] [--repeat 1]
                               [--also 10:sleep] [--hot-steps 2000]
                               [--backends wandb,tensorboard,mlflow] [--cases ...] [--write-docs]

The headline is **wall time per training step, tracked over untracked**. Each
case logs 10 scalars per step to W&B (offline), TensorBoard and a throwaway
``mlflow server`` on 127.0.0.1 that this script starts:

  control             ``dict(metrics)``: no tracker; its ratio is the method's noise floor
  direct SDKs         wandb ``run.log`` + ``SummaryWriter.add_scalar`` x10 + ``mlflow.log_metrics``
  Lightning loggers   WandbLogger, TensorBoardLogger, MLFlowLogger: ``log_metrics(metrics, step)``
                      then ``save()``, as Lightning's trainer calls them each time it logs
  Accelerate          ``Accelerator(log_with=[...])``, ``init_trackers``, ``accelerator.log(values, step=)``
  MLflow async        ``mlflow.log_metrics(..., synchronous=False)`` (MLflow only)
  foundry-track       ``run.log(metrics, step=)`` with the wandb, tensorboard and mlflow backends,
                      the default config; then with ``delivery: thread`` and ``delivery: process``

The training step between two log calls is real training steps of a small
MLP (torch, CPU, one thread): a fixed number of them, as many as take
``--step-ms`` here (1 ms and 10 ms by default), counted once at the start, so
whatever a tracker takes from the training thread makes the step longer, as
in a real loop (``--step-kind sleep`` leaves the interpreter free instead, as
while a loop waits on a GPU). Per case, in one process and one tracker
session, the loop alternates blocks of untracked steps (the same step and
metrics dict, no log call) and blocks of tracked steps, each about
``--block-s`` seconds of untracked steps, ``--pairs`` pairs of them
(``--pairs-ours`` for the control and foundry-track's default config, whose
ratios are near 1 where this machine's noise needs many pairs), untracked
first, then tracked first, and so on, so whatever the machine does meanwhile
weighs on both alike. The ratio is the median over the pairs of the tracked
block's wall time per step over the untracked one's. Before the first block
the case logs tracked warm-up steps and waits until every backend has
delivered them (foundry-track starts its trackers in the background). A case
that delivers in the background logs an untimed lead-in block before each
tracked block, so that the tracked block pays for delivering the steps
before it while it logs its own, as in a loop that tracks all along; after
the tracked block it waits, untimed, until its trackers hold every step
logged so far, so that no untracked block pays for a tracker still
delivering.

Secondary columns: the cost of the log call(s) as the loop sees it (p50,
p99), the blocking set-up, the finish (flush and close), and whether every
backend received every logged step, read back with each tracker's own reader.
``--repeat K`` runs everything K times (the order of the cases reversed every
other time) and reports per case the median of the K ratios, with a 90 %
bootstrap interval of the median over every run's pairs pooled. ``--also`` runs
the control and foundry-track with other training steps, ``--hot-steps`` with
none at all (one block each: the backends thousands of steps behind, the
call as cheap as it gets). Garbage collection stays on, as in a training
loop: a collection that a tracker's allocations trigger is its cost.

Peers come from the ``bench`` extra: ``pip install 'foundry-track[bench]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import logging
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from _common import (
    IMG_DIR,
    Stats,
    command_line,
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
#: The longest a case's warm-up waits for its trackers to start, and a settle for them to catch up.
START_TIMEOUT_S = 180.0
SETTLE_TIMEOUT_S = 120.0
#: Tracked steps logged before the trackers are waited for and the blocks begin.
WARMUP_STEPS = 100

Log = Callable[[dict[str, float], int], Any]


def _untracked(metrics: dict[str, float], step: int) -> None:
    """The untracked blocks' stand-in for the log call: nothing."""


@dataclass
class Harness:
    """One case once set up: the call the training loop makes, and how to close it."""

    log: Log
    finish: Callable[[], None]
    backends: tuple[str, ...]
    #: where to read each backend back: a directory (W&B, TensorBoard) or an MLflow experiment name
    places: dict[str, Any] = field(default_factory=dict)
    #: per-SDK samples, for the case that can time its calls one by one
    parts: dict[str, list[int]] = field(default_factory=dict)
    #: the trackers have started (the warm-up goes on until then); the synchronous peers start in set-up
    ready: Callable[[], bool] = lambda: True
    #: the trackers hold the first n logged steps; None: nothing is delivered after the call returns
    caught_up: Callable[[int], bool] | None = None
    #: the row's name when the set-up decides it (foundry-track's default config names its delivery)
    label: str | None = None


@dataclass(frozen=True)
class Setting:
    """The training step between two log calls; 0 ms: none (back to back)."""

    ms: float
    kind: str

    def __str__(self) -> str:
        return f"{self.ms:g} ms {self.kind}" if self.ms > 0 else "none"


@dataclass
class Result:
    """One case in one setting, once."""

    case: str
    name: str
    backends: tuple[str, ...]
    setting: Setting
    untracked: list[float]  # wall seconds per step, one per untracked block
    tracked: list[float]  # wall seconds per step, one per tracked block, in the same order
    samples: list[int]  # ns per log call, every measured tracked step
    setup_s: float
    warmup_steps: int
    warmup_s: float
    finish_s: float
    received: dict[str, Received]
    parts: dict[str, list[int]] = field(default_factory=dict)
    #: times the training thread was preempted per 1,000 steps, untracked and tracked blocks
    preempted: tuple[float, float] = (0.0, 0.0)

    @property
    def pairs(self) -> list[float]:
        """Each pair's own ratio: a tracked block over the untracked block next to it in time."""
        return [t / u for u, t in zip(self.untracked, self.tracked)]

    @property
    def ratio(self) -> float:
        # The median of the pairs' ratios, not a ratio of medians: the two
        # blocks of a pair run within seconds of each other, so a slow spell
        # of the machine (on this VM, +-15 % for seconds at a time) weighs on
        # both and cancels out of their ratio.
        return statistics.median(self.pairs)

    @property
    def complete(self) -> bool:
        return all(r.complete for r in self.received.values())


@dataclass
class Row:
    """One case in one setting, over the ``--repeat`` runs."""

    runs: list[Result]

    @property
    def first(self) -> Result:
        return self.runs[0]

    @property
    def ratio(self) -> float:
        return statistics.median(r.ratio for r in self.runs)

    @property
    def untracked_ms(self) -> float:
        return statistics.median(statistics.median(r.untracked) for r in self.runs) * 1e3

    @property
    def tracked_ms(self) -> float:
        return statistics.median(statistics.median(r.tracked) for r in self.runs) * 1e3

    @property
    def pair_ratios(self) -> list[float]:
        """Each pair of blocks' own ratio, every run: how much the ratio moves from block to block."""
        return sorted(p for r in self.runs for p in r.pairs)

    @property
    def interval(self) -> tuple[float, float]:
        """A 90 % confidence interval of the median pair ratio, every run's pairs pooled (bootstrap):
        how precisely the method tells this row's ratio; the control's is the noise floor."""
        pairs = self.pair_ratios
        rng = random.Random(0)
        medians = sorted(statistics.median(rng.choices(pairs, k=len(pairs))) for _ in range(2000))
        return medians[100], medians[1899]

    @property
    def call(self) -> Stats:
        return Stats.of([s for r in self.runs for s in r.samples])

    @property
    def parts(self) -> dict[str, Stats]:
        return {k: Stats.of([s for r in self.runs for s in r.parts.get(k, ())]) for k in self.first.parts}

    @property
    def setup_s(self) -> float:
        return statistics.median(r.setup_s for r in self.runs)

    @property
    def finish_s(self) -> float:
        return statistics.median(r.finish_s for r in self.runs)

    @property
    def complete(self) -> bool:
        return all(r.complete for r in self.runs)

    def delivered(self) -> str:
        """``yes``, ``-`` (no tracker), or what was lost, per backend, in the worst run."""
        if not self.first.backends:
            return "-"
        if self.complete:
            dup = [f"{LABEL[b]} +{v.points - v.expected} dup" for r in self.runs for b, v in r.received.items()
                   if v.points > v.expected]
            return "yes" + (f" ({', '.join(dup)})" if dup else "")
        lost = {f"{LABEL[b]} {v}" for r in self.runs for b, v in r.received.items() if not v.complete}
        return "NO: " + ", ".join(sorted(lost))


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
    calls: list[tuple[str, Log]] = []
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

        experiment = env.experiment(case_dir.name)
        mlflow.start_run(experiment_id=mlflow.create_experiment(experiment))
        calls.append(("mlflow", lambda m, s: mlflow.log_metrics(m, step=s)))
        closers.append(mlflow.end_run)
        places["mlflow"] = experiment
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
        loggers.append(MLFlowLogger(experiment_name=env.experiment(case_dir.name), tracking_uri=env.uri))
        places["mlflow"] = env.experiment(case_dir.name)
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
    accelerator.init_trackers(env.experiment(case_dir.name),
                              init_kwargs={"wandb": {"dir": str(case_dir), "mode": "offline"}})
    places = {"wandb": case_dir, "tensorboard": case_dir / "tb", "mlflow": env.experiment(case_dir.name)}
    return Harness(lambda m, s: accelerator.log(m, step=s), accelerator.end_training, env.backends,
                   {b: places[b] for b in env.backends})


def mlflow_async(env: Env, case_dir: Path) -> Harness:
    """MLflow's own answer to slow logging: queue the call, send it from a thread."""
    import mlflow

    experiment = env.experiment(case_dir.name)
    mlflow.start_run(experiment_id=mlflow.create_experiment(experiment))

    def finish() -> None:
        mlflow.flush_async_logging()
        mlflow.end_run()

    def caught_up(_logged: int) -> bool:
        mlflow.flush_async_logging()
        return True

    return Harness(lambda m, s: mlflow.log_metrics(m, step=s, synchronous=False), finish, ("mlflow",),
                   {"mlflow": experiment}, caught_up=caught_up)


def foundry_track(env: Env, case_dir: Path, delivery: str | None = None) -> Harness:
    """``run.log``; ``delivery`` None keeps the config's default."""
    import foundry_track as ft
    from foundry_track.journal import JOURNAL_FILE, Journal

    options: dict[str, dict[str, Any]] = {
        "wandb": {"mode": "offline", "dir": str(case_dir)},
        "tensorboard": {"log_dir": str(case_dir / "tb")},
        "mlflow": {"tracking_uri": env.uri, "experiment": env.experiment(case_dir.name)},
    }
    # flush_timeout: finish waits for every step however far behind a backend is (the read-back checks them).
    config: dict[str, Any] = {"dir": str(case_dir / "runs"), "project": "bench-foundry-track", "flush_timeout": 600,
                              "backends": {b: options[b] for b in env.backends}}
    if delivery is not None:
        config["delivery"] = delivery
    run = ft.init(config)
    assert run.dir is not None
    # Read-only: the positions each backend has made durable (what `foundry-track show` reports).
    journal = Journal(Path(run.dir) / JOURNAL_FILE, readonly=True)
    backends = env.backends

    def ready() -> bool:
        return all(journal.position(b) >= 1 for b in backends)

    def caught_up(logged: int) -> bool:
        last_step = journal.max_step()
        if last_step is None or last_step < logged - 1:
            return False  # the journal's writer has not committed the last step yet
        last = journal.refresh()
        return all(journal.position(b) >= last for b in backends)

    def finish() -> None:
        undelivered = run.finish()
        journal.close()
        if any(undelivered.values()):
            print(f"  foundry-track: undelivered after finish: {undelivered}", file=sys.stderr)

    places = {"wandb": case_dir, "tensorboard": case_dir / "tb", "mlflow": env.experiment(case_dir.name)}
    label = f"{FT}, delivery: {delivery}" if delivery else f"{FT}, default config (delivery: {run.config.delivery})"
    return Harness(run.log, finish, backends, {b: places[b] for b in backends}, ready=ready, caught_up=caught_up,
                   label=label)


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
    "foundry-track": (f"{FT}, default config", foundry_track, None),
    "foundry-track-thread": (f"{FT}, delivery: thread", lambda env, d: foundry_track(env, d, "thread"), None),
    "foundry-track-process": (f"{FT}, delivery: process", lambda env, d: foundry_track(env, d, "process"), None),
}
#: The cases that also run in the --also and --hot-steps settings.
OURS = ("control", "foundry-track", "foundry-track-thread", "foundry-track-process")


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


def training_step(setting: Setting) -> tuple[Callable[[], None] | None, str, float]:
    """The work between two log calls, about ``setting.ms`` long, and what it is.

    ``train`` (the default): real training steps of a small MLP (forward,
    backward, SGD update; torch on one thread): what a training loop on the
    CPU does between two log calls. ``compute``: 1-thread 128x128 torch
    matrix products, a CPU step that releases the GIL inside each product but
    takes it back between them. Both are a fixed amount of work, the number
    of MLP iterations (products) that takes ``ms`` here, counted once before
    the cases run; so whatever a tracker takes from the training thread (the
    interpreter, a core, the caches) makes the step longer, as in a real
    loop. ``sleep``: the interpreter is free, as while a loop waits on the
    GPU (``loss.item()``, a synchronising kernel): the GPU's time is fixed,
    the trackers' threads run meanwhile, and the step is longer only when
    the loop cannot get the interpreter back when the wait ends.
    """
    if setting.ms <= 0:
        return None, "none", 0.0
    seconds = setting.ms / 1e3
    if setting.kind == "sleep":
        return (lambda: time.sleep(seconds)), f"time.sleep({seconds:g})", seconds
    import torch

    torch.set_num_threads(1)  # one core for the step; the trackers' processes get the other(s)
    a = torch.randn(128, 128)
    mm = torch.mm

    def product() -> None:
        mm(a, a)

    if setting.kind == "compute":
        one: Callable[[], None] = product
        unit, detail = "128x128 matrix product", "torch.mm, one thread"
    else:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = torch.randn(64, 128), torch.randint(0, 10, (64,))
        loss_fn = torch.nn.functional.cross_entropy

        def one() -> None:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        unit, detail = "MLP training iteration", "128-512-10, batch 64, SGD, one thread"
    unit_s = _time_of(one)
    if setting.kind == "compute":
        n, fill, fill_s = max(1, round(seconds / unit_s)), 0, 0.0
    else:
        # Whole iterations, then matrix products for the rest: an iteration is
        # 0.55-0.7 ms here, and rounding alone made the "1 ms" step 0.66 ms in
        # one run and 1.13 ms in the next, a different step from the label.
        n = max(1, int(seconds / unit_s))
        fill_s = _time_of(product)
        fill = max(0, round((seconds - n * unit_s) / fill_s))

    def step() -> None:
        for _ in range(n):
            one()
        for _ in range(fill):
            product()

    total_s = n * unit_s + fill * fill_s
    text = f"{n} {unit}{'s' if n != 1 else ''} ({detail})"
    if fill:
        text += f" and {fill} 128x128 matrix products"
    return step, f"{text}, {total_s * 1e3:.2f} ms", total_s


def _time_of(work: Callable[[], None]) -> float:
    """Seconds one call of ``work`` takes on this machine: the median of 40
    samples over about 2 s, as this VM's speed wanders by +-15 % over
    seconds, and a step sized in one slow (or fast) moment would be a
    different step from the one its label names."""
    for _ in range(20):  # warm caches and torch's first-call paths
        work()
    t0 = time.perf_counter()
    for _ in range(10):
        work()
    batch = max(1, round(0.05 / ((time.perf_counter() - t0) / 10)))
    per_call = []
    for _ in range(40):
        t0 = time.perf_counter()
        for _ in range(batch):
            work()
        per_call.append((time.perf_counter() - t0) / batch)
    return statistics.median(per_call)


def preempted() -> int:
    """How many times the scheduler has taken a core from this thread (Linux; 0 elsewhere)."""
    try:
        with open("/proc/thread-self/status") as fh:
            for line in fh:
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_block(work: Callable[[], None] | None, log: Log, first: int, n: int,
              samples: list[int]) -> tuple[float, int]:
    """``n`` steps: the training step, the metrics dict, the (timed) log call.
    Returns the wall seconds per step and how many times the training thread
    was preempted meanwhile. Tracked and untracked blocks run this same loop;
    an untracked block's ``log`` does nothing."""
    switches = preempted()
    clock = time.perf_counter_ns
    start = clock()
    for step in range(first, first + n):
        if work is not None:
            work()
        # Built after the step and before the clock, as a training loop builds
        # what it logs from what the step returned: the same in every block.
        metrics = step_metrics(step)
        t0 = clock()
        log(metrics, step)
        samples.append(clock() - t0)
    wall = (clock() - start) / 1e9 / n
    return wall, preempted() - switches


def run_case(name: str, env: Env, setting: Setting, work: Callable[[], None] | None, pairs: int, block: int,
             tag: str = "", lead_in: bool = True) -> Result:
    label, setup, _ = CASES[name]
    case_dir = env.tmp / (name + tag)
    case_dir.mkdir()
    gc.collect()  # what earlier cases left is not collected on this one's time
    t0 = time.perf_counter()
    harness = setup(env, case_dir)
    setup_s = time.perf_counter() - t0
    log = harness.log
    ignored: list[int] = []

    def settle() -> None:
        """Untimed: wait until the trackers hold every step logged so far."""
        if harness.caught_up is not None:
            try:
                deadline = time.monotonic() + SETTLE_TIMEOUT_S
                while not harness.caught_up(logged):
                    if time.monotonic() > deadline:
                        print(f"  {name}: the trackers are still behind after {SETTLE_TIMEOUT_S:.0f} s; going on",
                              file=sys.stderr)
                        break
                    time.sleep(0.002)
            except Exception as exc:  # noqa: BLE001 - a probe that fails must not end the measurement
                print(f"  {name}: could not tell whether the trackers caught up ({exc!r})", file=sys.stderr)

    # Warm-up, outside the ratio: tracked steps, then wait until every tracker runs and holds them
    # (foundry-track starts its backends in the background; the peers' set-up blocks until they run).
    t0 = time.perf_counter()
    warmup_steps = logged = min(block, WARMUP_STEPS)  # the steps logged so far are 0 .. logged-1
    run_block(work, log, 0, warmup_steps, ignored)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not harness.ready():
        if time.monotonic() > deadline:
            print(f"  {name}: a tracker has delivered nothing after {START_TIMEOUT_S:.0f} s; going on", file=sys.stderr)
            break
        time.sleep(0.01)
    settle()
    warmup_s = time.perf_counter() - t0
    untracked: list[float] = []
    tracked: list[float] = []
    samples: list[int] = []
    # A case that delivers in the background (foundry-track, MLflow async)
    # logs a lead-in block before each measured tracked block: the measured
    # block then pays for delivering the lead-in's steps while it logs its
    # own, as every block of a loop that tracks all along does, and the wait
    # after it (untimed) only keeps that work out of the untracked block.
    lead = block if lead_in and harness.caught_up is not None else 0
    switches = [0, 0]
    for i in range(pairs):
        for is_tracked in ((False, True) if i % 2 == 0 else (True, False)):
            if is_tracked:
                if lead:
                    run_block(work, log, logged, lead, ignored)
                    logged += lead
                wall, preemptions = run_block(work, log, logged, block, samples)
                tracked.append(wall)
                switches[1] += preemptions
                logged += block
                if i < pairs - 1 or i % 2 == 1:  # after the last block, what is behind is finish's
                    settle()
            else:
                wall, preemptions = run_block(work, _untracked, logged, block, ignored)
                untracked.append(wall)
                switches[0] += preemptions
        ignored.clear()
    if harness.parts:  # the warm-up's calls are not in the call statistics
        for part in harness.parts.values():
            del part[:warmup_steps]
    t0 = time.perf_counter()
    harness.finish()
    finish_s = time.perf_counter() - t0
    expected = expected_values(logged)
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
    per_1000 = 1000 / (pairs * block)
    return Result(name, harness.label or label, harness.backends, setting, untracked, tracked, samples, setup_s,
                  warmup_steps, warmup_s, finish_s, received, harness.parts,
                  (switches[0] * per_1000, switches[1] * per_1000))


# --------------------------------------------------------------------------- #
# Reporting
# --------------------------------------------------------------------------- #


def group(results: Sequence[Result]) -> list[Row]:
    """The runs of each (case, setting), in the order of the first run."""
    rows: dict[tuple[str, Setting], Row] = {}
    for r in results:
        rows.setdefault((r.case, r.setting), Row([])).runs.append(r)
    settings = list(dict.fromkeys(r.setting for r in results))
    order = {name: i for i, name in enumerate(CASES)}
    return sorted(rows.values(), key=lambda row: (settings.index(row.first.setting), order[row.first.case]))


def _is_ours(row: Row) -> bool:
    return row.first.case.startswith(FT)


def _x(ratio: float) -> str:
    return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.2f}x" if ratio >= 10 else f"{ratio:.3f}x"


def _ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:.2f}"


def _rows(rows: list[Row], markdown: bool) -> tuple[list[str], list[list[str]]]:
    repeat = len(rows[0].runs) if rows else 1
    header = ["case", "backends", "step", "untracked ms/step", "tracked ms/step", "tracked/untracked"]
    if repeat > 1:
        header.append(f"each of the {repeat} runs")
    header += ["90% CI", "block pairs p10-p90", "preempted per 1k steps", "call p50", "call p99", "set-up", "finish",
               "every event delivered"]
    out = []
    for row in rows:
        name, ratio = row.first.name, _x(row.ratio)
        if markdown and _is_ours(row):
            name, ratio = f"**{name}**", f"**{ratio}**"
        pairs = row.pair_ratios
        line = [name, "+".join(LABEL[b] for b in row.first.backends) or "-", str(row.first.setting),
                _ms(row.untracked_ms), _ms(row.tracked_ms), ratio]
        if repeat > 1:
            line.append(", ".join(_x(r.ratio) for r in row.runs))
        lo, hi = pairs[round(0.1 * (len(pairs) - 1))], pairs[round(0.9 * (len(pairs) - 1))]
        ci_lo, ci_hi = row.interval
        untracked_cs = statistics.median(r.preempted[0] for r in row.runs)
        tracked_cs = statistics.median(r.preempted[1] for r in row.runs)
        line += [f"{_x(ci_lo)} - {_x(ci_hi)}", f"{_x(lo)} - {_x(hi)}", f"{untracked_cs:.0f} -> {tracked_cs:.0f}",
                 fmt_us(row.call.p50), fmt_us(row.call.p99), fmt_s(row.setup_s), fmt_s(row.finish_s),
                 row.delivered()]
        out.append(line)
    return header, out


_CALLS = {"wandb": "wandb `run.log(10 scalars, step=)`", "tensorboard": "`SummaryWriter.add_scalar` x10",
          "mlflow": "`mlflow.log_metrics(10 scalars, step=)`"}


def _parts_rows(rows: list[Row]) -> list[list[str]]:
    return [[_CALLS[b], str(row.first.setting), fmt_us(s.p50), fmt_us(s.p99), fmt_us(s.mean)]
            for row in rows for b, s in row.parts.items()]


_TITLE = {"wandb": "W&B (offline)", "tensorboard": "TensorBoard", "mlflow": "a local MLflow server"}


def plot(rows: list[Row], path: Path) -> None:
    """Horizontal bars, log scale: each case's tracked/untracked wall time per step, per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    names = [f"{row.first.name}\n{'+'.join(LABEL[b] for b in row.first.backends) or 'no tracker'}, "
             + (f"{row.first.setting} step" if row.first.setting.ms > 0 else "no step (back to back)")
             for row in rows]
    fig, ax = plt.subplots(figsize=(8.5, 0.5 * len(rows) + 1.6), dpi=110)
    ys = list(range(len(rows)))
    ratios = [row.ratio for row in rows]
    colors = ["#2a9d8f" if _is_ours(row) else "#adb5bd" if not row.first.backends else "#8d99ae" for row in rows]
    # Bars start at 1x, the untracked step: what sticks out is what tracking adds.
    ax.barh(ys, [r - 1 for r in ratios], left=1, height=0.6, color=colors)
    for y, row in zip(ys, rows):
        if len(row.runs) > 1:
            ax.plot([r.ratio for r in row.runs], [y] * len(row.runs), "|", color="#333333", markersize=9)
        ax.text(max([row.ratio, 1.0] + [r.ratio for r in row.runs]) * 1.04, y, _x(row.ratio), va="center",
                fontsize=7.5)
    for y in range(1, len(rows)):
        if rows[y].first.setting != rows[y - 1].first.setting:  # a line between two settings
            ax.axhline(y - 0.5, color="#999999", linewidth=0.8, linestyle="--")
    ax.axvline(1, color="#333333", linewidth=0.8)
    ax.set_xscale("log")
    top = max(ratios + [1.1]) * 2
    ticks = [t for t in (1, 1.5, 2, 3, 5, 10, 20, 50, 100, 1000) if t <= top]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks], fontsize=7.5)
    ax.set_xlim(min(ratios + [1.0]) * 0.95, top)
    ax.set_yticks(ys, names, fontsize=7.5)
    ax.invert_yaxis()
    ax.set_xlabel("wall time per training step, tracked / untracked (log scale; 1x: tracking costs nothing)")
    used = {b for row in rows for b in row.first.backends}
    ax.set_title("10 scalars per step to " + ", ".join(_TITLE[b] for b in BACKENDS if b in used), fontsize=9)
    ax.grid(axis="x", which="major", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _verdicts(rows: list[Row]) -> list[str]:
    """For each foundry-track row: the ratio, the step time it adds, the call's cost; and lost data."""
    lines = []
    floor = {row.first.setting: row for row in rows if row.first.case == "control"}
    for row in rows:
        if not _is_ours(row):
            continue
        added = (row.ratio - 1) * row.untracked_ms  # what the ratio adds to the untracked step
        text = (f"{row.first.name}, {row.first.setting} step: tracked/untracked {_x(row.ratio)} "
                f"({added:+.3f} ms per step)")
        if row.first.setting in floor:
            text += f", the control's {_x(floor[row.first.setting].ratio)}"
        call = row.call
        text += (f"; call p50 {fmt_us(call.p50)} (<= 5 us: {'met' if call.p50 <= 5 else 'NOT met'}), "
                 f"p99 {fmt_us(call.p99)} (<= 50 us: {'met' if call.p99 <= 50 else 'NOT met'})")
        lines.append(text)
    lost = [f"{row.first.name} ({row.first.setting})" for row in rows if not row.complete]
    lines.append("every backend received every step in every case" if not lost
                 else f"DATA LOST by: {', '.join(lost)}")
    return lines


def _describe(args: argparse.Namespace, server_start_s: float | None, steps_text: dict[Setting, str]) -> str:
    steps = "; ".join(f"{s}, {steps_text[s]}" for s in steps_text if s.ms > 0)
    if args.steps:
        sizes = f"{args.steps} tracked steps per case in blocks of {args.block or f'{args.block_s:g} s'}"
    else:
        size = f"{args.block} steps" if args.block else f"{args.block_s:g} s of untracked steps"
        sizes = (f"{args.pairs_ours} pairs of blocks for the control and the default config, {args.pairs} for "
                 f"the other cases; a block is {size}")
    text = [f"Every case with a {' and a '.join(f'{ms:g} ms' for ms in args.step_ms)} {args.step_kind} step"]
    if _also(args):
        text.append(f"; the control and foundry-track also with a {' and a '.join(map(str, _also(args)))} step")
    if args.hot_steps:
        text.append(f"; then with none, {args.hot_steps:,} steps back to back (one block of each)")
    text.append(f". The steps, sized once at the start: {steps}. "
                f"Per case and step, in one process and one tracker session: {sizes}; the pairs alternate "
                "untracked first, then tracked first, after tracked warm-up steps and a wait until every "
                "backend has delivered them. A case that delivers in the background logs a lead-in block "
                "(not timed) before each tracked block, so the tracked block pays for delivering what was "
                "logged before it, as in a loop that tracks all along; the wait for delivery after a tracked "
                "block is not timed")
    if args.repeat > 1:
        text.append(f"; all of it {args.repeat} times, the order of the cases reversed every other time")
    text.append(". **tracked/untracked**: the median over the pairs of a tracked block's wall time per step "
                "over that of the untracked block next to it (the same step and metrics dict, no log call)"
                + (f", median of the {args.repeat} runs" if args.repeat > 1 else "")
                + "; 90% CI: bootstrap interval of that median, every run's pairs pooled (the control's "
                "is the method's noise floor); block pairs p10-p90: the spread of each pair's own ratio; "
                "preempted: how many times per 1,000 steps the scheduler took the training thread's core, in "
                "the untracked and in the tracked blocks (what the trackers' processes and threads cost it "
                "beyond CPU time); "
                "call p50/p99: the log call(s) "
                "of one step as the loop sees it; set-up: blocking time to create the runs; finish: flush and "
                "close after the last step; every event delivered: every logged step, warm-up included, read "
                "back from each tracker's own storage (TensorBoard event files with EventAccumulator, the "
                "MLflow server with `get_metric_history`, the W&B offline `.wandb` file).")
    if server_start_s:
        text.append(f" The MLflow server took {server_start_s:.1f} s to start (not counted).")
    return "".join(text)


def write_docs(rows: list[Row], args: argparse.Namespace, server_start_s: float | None,
               verdicts: list[str], steps_text: dict[Setting, str]) -> None:
    header, table = _rows(rows, markdown=True)
    img = IMG_DIR / "peers.png"
    plot([row for row in rows if row.first.setting.ms > 0] or rows, img)  # back to back is no training step
    parts = _parts_rows(rows)
    body = [
        f"![Wall time per training step, tracked over untracked, per case (log scale)](img/{img.name})",
        "",
        markdown_table(header, table, align="lll" + "r" * (len(header) - 4) + "l"),
        "",
        _describe(args, server_start_s, steps_text),
    ]
    body += ["", *(f"- {line}" for line in verdicts)]
    if parts:
        body += ["", "Where the direct case's time goes (each SDK call timed on its own):", "",
                 markdown_table(["SDK call", "step", "p50", "p99", "mean"], parts)]
    body += ["", provenance()]
    update_doc("peers", "\n".join(body))


# --------------------------------------------------------------------------- #


#: The rows whose ratio is near 1: they get --pairs-ours pairs of blocks.
PRECISE = ("control", "foundry-track")


def _sizes(args: argparse.Namespace, name: str, setting: Setting, step_s: float) -> tuple[int, int]:
    """(pairs, block) for a case and a step measured at ``step_s``: blocks of about ``--block-s``
    seconds of untracked steps (or ``--block`` steps), ``--pairs`` of them (``--pairs-ours`` for the
    rows near 1), or ``--steps`` tracked steps in all; no step: one block of ``--hot-steps``."""
    if setting.ms <= 0:
        return 1, args.hot_steps
    block = args.block or max(1, round(args.block_s / max(step_s, 1e-6)))
    if args.steps:
        block = min(block, args.steps)
        return max(1, args.steps // block), block
    return (args.pairs_ours if name in PRECISE else args.pairs), block


def _also(args: argparse.Namespace) -> list[Setting]:
    main = {Setting(ms, args.step_kind) for ms in args.step_ms}
    extra = []
    for item in (x for x in args.also.split(",") if x):
        ms, _, kind = item.partition(":")
        setting = Setting(float(ms), kind)
        if setting not in main and setting not in extra:
            extra.append(setting)
    return extra


def _step_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of milliseconds") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more step lengths > 0 ms")
    return values


def _clean_env() -> None:
    """The default-config row must be the default, the explicit rows what they say: no override from the
    environment (FOUNDRY_TRACK_DELIVERY would turn every row into one delivery)."""
    keep = ("FOUNDRY_TRACK_BENCH_DOCS",)
    for var in [v for v in os.environ if v.startswith("FOUNDRY_TRACK_") and v not in keep]:
        print(f"ignoring {var}={os.environ.pop(var)!r} (each row sets its own configuration)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-ms", type=_step_list, default=[1.0, 10.0],
                        help="training step between two log calls, comma-separated milliseconds: every case runs "
                        "with each (default 1,10). A step runs for this long, so work a tracker takes from the "
                        "training thread shows in the wall time per step")
    parser.add_argument("--step-kind", choices=("train", "sleep", "compute"), default="train",
                        help="the training step: MLP training steps (torch, CPU), the interpreter free "
                        "(waiting on a GPU) or CPU matrix products")
    parser.add_argument("--pairs", type=int, default=3,
                        help="pairs of blocks (one untracked, one tracked) per peer case and step (default 3: "
                        "the peers' ratios are far from 1)")
    parser.add_argument("--pairs-ours", type=int, default=30,
                        help="pairs of blocks for the control and foundry-track's default config (default 30: "
                        "their ratios are near 1, where the machine's noise needs many pairs)")
    parser.add_argument("--block-s", type=float, default=1.0,
                        help="seconds of untracked steps per block (default 1; at least the delivery interval)")
    parser.add_argument("--block", type=int, default=None, help="steps per block instead of --block-s")
    parser.add_argument("--steps", type=int, default=None,
                        help="measured tracked steps per case and step instead of --pairs/--pairs-ours: "
                        "STEPS / block pairs for every case")
    parser.add_argument("--repeat", type=int, default=1, help="run the whole measurement this many times and "
                        "report the median ratio per case (the figures in the docs: 3)")
    parser.add_argument("--also", default="",
                        help="then the control and foundry-track again with these other training steps, "
                        "comma-separated MS:KIND (e.g. 10:sleep)")
    parser.add_argument("--hot-steps", type=int, default=2000,
                        help="then the control and foundry-track with this many steps back to back, one block "
                        "of each (0: skip)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated subset of wandb,tensorboard,mlflow (no mlflow: no server is started)")
    parser.add_argument("--mlflow-uri", default=None,
                        help="use this running MLflow server instead of starting one (the smoke test does)")
    parser.add_argument("--mlflow-server-priority", choices=("normal", "idle"), default="normal",
                        help="CPU priority of the MLflow server this script starts: normal (as `mlflow server` "
                        "starts; the docs' table) or idle (SCHED_IDLE, as `chrt --idle 0 mlflow server ...`: "
                        "what the loop pays with a server that yields the CPU, like one on another machine)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--keep", action="store_true", help="keep the runs' files (the temporary folder is printed)")
    parser.add_argument("--write-docs", action="store_true", help="write the table to docs/performance.md "
                        "and the plot to docs/img/peers.png")
    args = parser.parse_args()
    backends = tuple(b for b in BACKENDS if b in args.backends.split(","))
    for extra in (x for x in args.also.split(",") if x):
        ms, _, kind = extra.partition(":")
        try:
            ok = float(ms) > 0
        except ValueError:
            ok = False
        if not ok or kind not in ("train", "sleep", "compute"):
            parser.error(f"--also: {extra!r} is not MS:KIND with MS > 0 and KIND train, sleep or compute (e.g. 10:sleep)")
    if (min(args.pairs, args.pairs_ours, args.repeat, args.block or 1, args.steps or 1) < 1 or args.hot_steps < 0
            or args.block_s <= 0):
        parser.error("--pairs, --pairs-ours, --steps, --block and --repeat must be >= 1, --block-s > 0, "
                     "--hot-steps >= 0")
    if args.write_docs and args.mlflow_server_priority != "normal":
        parser.error("--write-docs measures the server as it starts by default: drop --mlflow-server-priority")
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
    _clean_env()
    print(machine())
    began = time.perf_counter()
    cwd = Path.cwd()
    results: list[Result] = []
    steps_text: dict[Setting, str] = {}
    plan: list[tuple[str, Setting]] = [(name, Setting(ms, args.step_kind)) for ms in args.step_ms for name in cases]
    ours = [name for name in OURS if name in cases]
    plan += [(name, setting) for setting in _also(args) for name in ours]
    if args.hot_steps:
        plan += [(name, Setting(0.0, "")) for name in ours]
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
            # The steps are sized first, on a quiet machine (the MLflow server's
            # start keeps a core busy for seconds), once, the same for every case.
            work, step_s = {}, {}
            for setting in dict.fromkeys(setting for _, setting in plan):
                work[setting], steps_text[setting], step_s[setting] = training_step(setting)
                print(f"{setting} step: {steps_text[setting]}")
            if "mlflow" in backends:
                if args.mlflow_uri:
                    uri = args.mlflow_uri
                else:
                    from _mlflow import MlflowServer

                    server = MlflowServer(tmp / "mlflow-server", priority=args.mlflow_server_priority)
                    server_start_s = server.start()
                    uri = server.uri
                    print(f"mlflow server on {uri} (started in {server_start_s:.1f} s, "
                          f"{args.mlflow_server_priority} CPU priority)")
                warm_up_mlflow(uri)
                import mlflow

                mlflow.set_tracking_uri(uri)  # the fluent API of the direct, Accelerate and async cases
            if "wandb" in backends:
                import wandb

                wandb.setup()  # W&B's service process: started once, not charged to the first case
            env = Env(tmp, uri, backends, tag=secrets.token_hex(3))
            for run in range(args.repeat):
                # Every other run in reverse: no case always follows the same one.
                for name, setting in (plan if run % 2 == 0 else plan[::-1]):
                    n_pairs, n = _sizes(args, name, setting, step_s[setting])
                    tag = f"-{setting.ms:g}ms{setting.kind}" + (f"-run{run}" if args.repeat > 1 else "")
                    print(f"run {run + 1}/{args.repeat}: {name}, {setting} step, {n_pairs} x ({n} untracked + {n} "
                          "tracked) ...", flush=True)
                    r = run_case(name, env, setting, work[setting], n_pairs, n, tag, lead_in=setting.ms > 0)
                    results.append(r)
                    print(f"  {_x(r.ratio)}: {statistics.median(r.untracked) * 1e3:.3f} -> "
                          f"{statistics.median(r.tracked) * 1e3:.3f} ms/step; set-up {fmt_s(r.setup_s)}, "
                          f"{r.warmup_steps} warm-up steps and trackers ready in {fmt_s(r.warmup_s)}, "
                          f"finish {fmt_s(r.finish_s)}; training thread preempted {r.preempted[0]:.1f} -> "
                          f"{r.preempted[1]:.1f} times per 1,000 steps; received: "
                          + (", ".join(f"{LABEL[b]} {v}" for b, v in r.received.items()) or "-"), flush=True)
        finally:
            if server is not None:
                server.stop()
            os.chdir(cwd)

    rows = group(results)
    header, table = _rows(rows, markdown=False)
    print()
    print("10 scalars per step; wall time per training step, tracked / untracked (interleaved blocks):")
    print(text_table(header, table))
    parts = _parts_rows(rows)
    if parts:
        print()
        print(text_table(["direct SDK call", "step", "p50", "p99", "mean"], [[c.replace("`", ""), *x]
                                                                           for c, *x in parts]))
    verdicts = _verdicts(rows)
    print()
    print("\n".join(verdicts))
    if args.write_docs:
        write_docs(rows, args, server_start_s, verdicts, steps_text)
        print("wrote docs/performance.md and docs/img/peers.png")
    print(f"\ntook {fmt_s(time.perf_counter() - began)}; to reproduce: {command_line()}")
    # A peer that loses data is a finding; foundry-track losing data is a bug.
    return 1 if any(_is_ours(row) and not row.complete for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
