"""What tracking costs the Model Foundry trainer: steps/s with all three backends vs none.

    python benchmarks/trainer_overhead.py                 # 5 pairs of 100 steps
    python benchmarks/trainer_overhead.py --reps 7 --steps 150

The model, data and logging cadence are configs/quickstart.yaml's (train/*
every 10 steps, val/* and system/* every 50). "tracked" sends every event to
TensorBoard, MLflow (SQLite) and W&B (offline); "disabled" runs the same
trainer with FOUNDRY_TRACK_MODE=disabled (``run.log`` returns at once, no
threads, no files). Runs alternate (tracked, disabled, disabled, tracked, ...)
so drift in machine load hits both sides alike; each figure is the median of
the training loop's steps/s (start-up and the final flush are excluded and
reported separately). Everything is written under a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from _common import load_average, local_tracker_env, machine

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = {"tensorboard": {}, "mlflow": {"tracking_uri": "sqlite:///mlflow.db"}, "wandb": {"mode": "offline"}}


def quickstart(steps: int) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    data["training"].update(steps=steps, checkpoint_every_n_steps=0)
    data["logging"].update(console_level="WARNING")
    data["tracking"]["backends"] = BACKENDS
    return data


def tracker_thread_cpu() -> float:
    """CPU seconds used so far by this process's foundry-track threads (Linux; 0 elsewhere).

    A figure machine load cannot blur: the work tracking adds in-process
    (journal, backend workers). W&B's wandb-core is a separate process and is
    not included.
    """
    ids = {t.native_id for t in threading.enumerate() if t.name.startswith("foundry-track")}
    total, tick = 0.0, os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for tid in ids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def child_process_cpu() -> float:
    """CPU seconds used so far by child processes (W&B's wandb-core service); 0 without psutil."""
    try:
        import psutil
    except ImportError:
        return 0.0
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def one_run(config: dict[str, Any], tracked: bool, base: Path, settle: float = 0.0) -> dict[str, float]:
    """Loop steps/s and seconds, start-up and after-loop seconds, tracker threads' CPU during the loop."""
    from model_foundry.config import ExperimentConfig
    from model_foundry.trainer import Trainer

    os.environ["FOUNDRY_TRACK_MODE"] = "online" if tracked else "disabled"
    t0 = time.perf_counter()
    trainer = Trainer(ExperimentConfig(**config), base_dir=base, progress=False)
    time.sleep(settle)  # --settle: let the backends finish starting before the loop (both kinds wait)
    t1 = time.perf_counter()
    cpu = {"start": tracker_thread_cpu(), "child_start": child_process_cpu()}
    finish = trainer.run.finish

    def finish_after_reading_cpu(*args: Any, **kwargs: Any) -> Any:
        cpu["end"] = tracker_thread_cpu()  # before finish: its threads end there
        cpu["child_end"] = child_process_cpu()
        return finish(*args, **kwargs)

    trainer.run.finish = finish_after_reading_cpu  # type: ignore[method-assign]
    summary = trainer.train()
    total = time.perf_counter() - t1
    loop = summary["steps"] / summary["steps_per_sec"]
    return {"rate": summary["steps_per_sec"], "loop": loop, "start": t1 - t0, "after": total - loop,
            "thread_cpu": cpu.get("end", 0.0) - cpu["start"],
            "child_cpu": max(0.0, cpu.get("child_end", 0.0) - cpu["child_start"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per run (default 100)")
    parser.add_argument("--reps", type=int, default=5, help="runs of each kind (default 5)")
    parser.add_argument("--settle", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long between Trainer() and train(), so backend start-up (MLflow run "
                        "creation, wandb.init) is not inside the measured loop: the steady-state cost (default 0)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="trainer-overhead-"))
    local_tracker_env(tmp)
    config = quickstart(args.steps)
    print(f"machine: {machine()}")
    print(f"quickstart model, {args.steps} steps per run, {args.reps} runs each, backends: {', '.join(BACKENDS)}"
          + (f", {args.settle:g} s settle before each loop" if args.settle else ", backend start-up inside the loop"))

    # Warm-up (not counted): imports, the MLflow database, torch's thread pool.
    with contextlib.redirect_stdout(io.StringIO()):
        one_run(quickstart(20), True, tmp / "warmup")
        one_run(quickstart(20), False, tmp / "warmup")

    results: dict[bool, list[float]] = {True: [], False: []}
    tracked_runs: list[dict[str, float]] = []
    for rep in range(args.reps):
        order = (True, False) if rep % 2 == 0 else (False, True)
        for tracked in order:
            with contextlib.redirect_stdout(io.StringIO()):  # W&B's offline notices
                run = one_run(config, tracked, tmp / f"rep{rep}", args.settle)
            results[tracked].append(run["rate"])
            if tracked:
                tracked_runs.append(run)
            print(f"  rep {rep + 1}: {'tracked ' if tracked else 'disabled'} {run['rate']:7.3f} steps/s")

    tracked, disabled = statistics.median(results[True]), statistics.median(results[False])
    diff = 100 * (disabled - tracked) / disabled
    print()
    print(f"median steps/s, tracked (tensorboard + mlflow + wandb offline): {tracked:.3f}")
    print(f"median steps/s, tracking disabled:                              {disabled:.3f}")
    paired = statistics.median(1 - t / d for t, d in zip(results[True], results[False]))
    print(f"overhead: {diff:+.2f}% (difference of the medians; median of the {args.reps} paired runs: "
          f"{100 * paired:+.2f}%; target: within 1%)")
    spread = 100 * (max(results[False]) - min(results[False])) / disabled
    print(f"run-to-run spread of the disabled runs: {spread:.1f}% (noise floor of this measurement)")
    thread_cpu = statistics.median(r["thread_cpu"] / r["loop"] for r in tracked_runs)
    child_cpu = statistics.median(r["child_cpu"] / r["loop"] for r in tracked_runs)
    cores = os.cpu_count() or 1
    print(f"CPU used by tracking during a tracked loop (median, not blurred by machine load): "
          f"foundry-track threads {100 * thread_cpu:.2f}% of one core, W&B's wandb-core process "
          f"{100 * child_cpu:.2f}% of one core; on {cores} busy cores that is at most "
          f"{100 * (thread_cpu + child_cpu) / cores:.2f}% of the machine")
    print(f"tracked runs also spent {statistics.median(r['start'] for r in tracked_runs):.2f} s starting "
          f"(backends start in the background) and {statistics.median(r['after'] for r in tracked_runs):.2f} s "
          f"after the loop (final checkpoint, flush to all backends)")
    print(load_average())
    return 0


if __name__ == "__main__":
    sys.exit(main())
