"""How fast each backend absorbs what foundry-track's journal holds.

    python benchmarks/drain.py [--steps N] [--backends tensorboard,mlflow,wandb] [--write-docs]

For each backend alone: start a run, wait until the backend delivered a first
step (so its start-up is not counted), log ``N`` steps of 10 scalars as fast
as the loop can, and time until the journal records the backend's delivered
position at the last step (``Journal.position``, the number ``foundry-track
show`` reports). Drain = scalars / that time. Then ``finish``, and read every
scalar back from the tracker's own storage.

MLflow goes over HTTP to a throwaway ``mlflow server`` on 127.0.0.1 that this
script starts. The server's own ``log_batch`` rate (``MlflowClient.log_batch``
of 1000 metrics in a loop: the batch shape the backend sends) is measured just
before and just after, and the drain is reported as a fraction of their mean
(target >= 0.8). Also the journal's write rate (SQLite commits of queued
events). Targets (issue 8): TensorBoard >= 100,000 scalars/s; nothing lost.

Default steps: TensorBoard 100,000, MLflow 20,000, W&B 10,000.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    KEYS,
    expected_values,
    fmt_rate,
    fmt_s,
    local_tracker_env,
    machine,
    markdown_table,
    provenance,
    step_metrics,
    text_table,
    update_doc,
    wait_until,
)
from _mlflow import mlflow_target
from _readback import Received, compare, mlflow_values, tensorboard_values, wandb_values

BACKENDS = ("tensorboard", "mlflow", "wandb")
DEFAULT_STEPS = {"tensorboard": 100_000, "mlflow": 20_000, "wandb": 10_000}
LABEL = {"wandb": "W&B (offline)", "tensorboard": "TensorBoard", "mlflow": "MLflow (HTTP, log_batch)"}


@dataclass
class Drain:
    backend: str
    steps: int
    produce_s: float  # logging the steps (the training loop's side)
    drain_s: float  # first log call -> backend's position at the last step
    busy_s: float  # time spent inside the backend's hooks (from the journal's positions table)
    batches: int
    finish_s: float
    received: Received

    @property
    def rate(self) -> float:
        return self.steps * len(KEYS) / self.drain_s


def drain_one(backend: str, steps: int, tmp: Path, uri: str | None, experiment: str) -> Drain:
    import foundry_track as ft
    from foundry_track.journal import JOURNAL_FILE, Journal

    case = tmp / f"drain-{backend}"
    options: dict[str, Any] = {
        "tensorboard": {"log_dir": str(case / "tb")},
        "mlflow": {"tracking_uri": uri, "experiment": experiment},
        "wandb": {"mode": "offline", "dir": str(case)},
    }[backend]
    run = ft.init({"dir": str(case / "runs"), "project": "bench-drain", "flush_timeout": 900,
                   "backends": {backend: options}})
    journal = Journal(Path(run.dir) / JOURNAL_FILE, readonly=True)
    # Step 0 first: the clock starts once the backend is up and delivering.
    run.log(step_metrics(0), step=0)
    wait_until(lambda: journal.position(backend) >= 1, 300, f"{backend} to start")
    base = journal.positions()[backend]
    metrics = [step_metrics(s) for s in range(1, steps + 1)]  # built before the clock starts
    log = run.log
    first = time.perf_counter()
    for step, values in enumerate(metrics, start=1):
        log(values, step=step)
    produced = time.perf_counter()
    done = wait_until(lambda: journal.position(backend) >= steps + 1, 900, f"{backend} to drain", poll=0.001)
    health = journal.positions()[backend]
    t0 = time.perf_counter()
    undelivered = run.finish()
    finish_s = time.perf_counter() - t0
    journal.close()
    if any(undelivered.values()):
        print(f"  {backend}: undelivered after finish: {undelivered}", file=sys.stderr)
    if backend == "tensorboard":
        got = tensorboard_values(case / "tb")
    elif backend == "mlflow":
        assert uri is not None
        got = mlflow_values(uri, experiment)
    else:
        got = wandb_values(case)
    return Drain(backend, steps, produced - first, done - first, health["busy_s"] - base["busy_s"],
                 health["batches"] - base["batches"], finish_s, compare(expected_values(steps + 1), got))


def server_log_batch_rate(uri: str, batches: int) -> float:
    """Metrics/s the MLflow server takes from ``MlflowClient.log_batch`` of 1000
    metrics (100 steps x 10 keys, the backend's batch shape), one call after another."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("bench-server-alone")
    exp_id = experiment.experiment_id if experiment else client.create_experiment("bench-server-alone")
    run_id = client.create_run(exp_id).info.run_id
    now = int(time.time() * 1000)
    payloads = [[Metric(key, float(s * 10 + i), now + s, s) for s in range(b * 100, (b + 1) * 100)
                 for i, key in enumerate(KEYS)] for b in range(batches)]
    client.log_batch(run_id, metrics=payloads[0][:10])  # connection and run warm
    t0 = time.perf_counter()
    for payload in payloads:
        client.log_batch(run_id, metrics=payload)
    elapsed = time.perf_counter() - t0
    client.set_terminated(run_id)
    return batches * 1000 / elapsed


def journal_write_rate(tmp: Path, events: int) -> float:
    """Events/s the journal's writer commits (queued first, then one flush, as overhead.py)."""
    from foundry_track.journal import Journal

    journal = Journal(tmp / "journal-rate.db")
    for step in range(events):
        journal.append("metrics", step, 0.0, step_metrics(step))
    t0 = time.perf_counter()
    journal.flush()
    rate = events / (time.perf_counter() - t0)
    journal.close()
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="steps per backend (default: per backend, above)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of "
                        + ",".join(BACKENDS))
    parser.add_argument("--server-batches", type=int, default=100,
                        help="log_batch calls of 1000 metrics to time the MLflow server alone (each time)")
    parser.add_argument("--mlflow-uri", default=None,
                        help="use this running MLflow server instead of starting one (the smoke test does)")
    parser.add_argument("--write-docs", action="store_true", help="write the table to docs/performance.md")
    args = parser.parse_args()
    backends = [b for b in BACKENDS if b in args.backends.split(",")]
    if not backends or set(args.backends.split(",")) - set(BACKENDS):
        parser.error(f"--backends: expected a subset of {','.join(BACKENDS)}, got {args.backends!r}")
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    print(machine())
    cwd = Path.cwd()
    results: list[Drain] = []
    server_rates: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ft-drain-") as tmp_name:
        tmp = Path(tmp_name)
        local_tracker_env(tmp)
        server = None
        try:
            uri, server = mlflow_target(backends, args.mlflow_uri, tmp)
            for backend in backends:
                steps = args.steps or DEFAULT_STEPS[backend]
                if backend == "mlflow":
                    assert uri is not None
                    server_rates.append(server_log_batch_rate(uri, args.server_batches))
                    print(f"mlflow server alone: {fmt_rate(server_rates[-1])} metrics/s", flush=True)
                print(f"draining {steps:,} steps into {backend} ...", flush=True)
                results.append(drain_one(backend, steps, tmp, uri, f"bench-drain-{secrets.token_hex(3)}"))
                r = results[-1]
                print(f"  {fmt_rate(r.rate)} scalars/s, received {r.received}", flush=True)
                if backend == "mlflow":
                    assert uri is not None
                    server_rates.append(server_log_batch_rate(uri, args.server_batches))
                    print(f"mlflow server alone: {fmt_rate(server_rates[-1])} metrics/s", flush=True)
            journal_rate = journal_write_rate(tmp, max(r.steps for r in results))
        finally:
            if server is not None:
                server.stop()
            os.chdir(cwd)

    header = ["backend", "steps", "scalars", "drain, scalars/s", "in the backend's hooks", "batches", "finish",
              "received"]
    rows = [[LABEL[r.backend], f"{r.steps:,}", f"{r.steps * 10:,}", fmt_rate(r.rate),
             f"{r.busy_s / r.drain_s:.0%} of the time", f"{r.batches:,}", fmt_s(r.finish_s), str(r.received)]
            for r in results]
    lines = []
    ml = next((r for r in results if r.backend == "mlflow"), None)
    if ml is not None:
        alone = sum(server_rates) / len(server_rates)
        ratio = ml.rate / alone
        lines.append(f"MLflow server's own log_batch rate (1000 metrics per call, measured before and after): "
                     f"{' and '.join(fmt_rate(x) for x in server_rates)} metrics/s; foundry-track's MLflow drain "
                     f"is {ratio:.2f} of their mean (target >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'})")
    tb = next((r for r in results if r.backend == "tensorboard"), None)
    if tb is not None:
        lines.append(f"TensorBoard drain {fmt_rate(tb.rate)} scalars/s (target >= 100,000: "
                     f"{'met' if tb.rate >= 100_000 else 'NOT met'})")
    lines.append(f"journal write rate: {fmt_rate(journal_rate)} events/s = {fmt_rate(journal_rate * 10)} scalars/s "
                 "(10 scalars per event)")
    lost = [r.backend for r in results if not r.received.complete]
    lines.append("nothing lost" if not lost else f"DATA LOST by: {', '.join(lost)}")
    print()
    print(text_table(header, rows))
    print("\n".join(lines))
    if args.write_docs:
        body = [markdown_table(header, rows, align="lrrrrrrl"), "",
                "drain: scalars delivered per second, from the first log call to the backend's acknowledged "
                "position at the last step (the loop logs as fast as it can, so the backend runs behind all "
                "along); in the backend's hooks: share of that time the worker spent inside the backend's own "
                "code (the rest is reading the journal and recording positions).", "",
                *[f"- {line}" for line in lines], "", provenance()]
        update_doc("drain", "\n".join(body))
        print("wrote docs/performance.md")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
