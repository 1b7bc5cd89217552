"""What a busy second core costs the training step, with no tracker at all.

    python benchmarks/neighbor.py [--step-ms 1,10] [--pairs 15] [--block-s 1]

Any tracker whose work runs on the training machine (a delivery process, a
tracker's own service, a local ``mlflow server``) keeps another core busy
while the loop trains. Its scheduling priority decides whether it may take
the training thread's core; it does not decide what sharing the machine
costs: caches, memory bandwidth and, on a VM, whatever the host shares
between the two virtual CPUs. This script measures that floor.

The training step is ``peers.py``'s (MLP iterations on one torch thread,
sized to ``--step-ms``), pinned to the first CPU. It alternates blocks of
steps with the other CPUs idle and with one Python busy loop (building dicts and JSON-encoding them, as a
tracker's process does) pinned to
the second CPU, at normal priority and under SCHED_IDLE, in rotating order
(``--pairs`` rounds). Per round, a busy block's wall time per step over that
of the idle block next to it; the figure is the median over the rounds.
Nothing is logged anywhere.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

from peers import Setting, training_step

# What a tracker's Python process does all day: build objects, encode them.
_SPIN = "import json\nwhile True:\n    json.dumps([{'key': str(i), 'value': i * 0.5, 'step': i} for i in range(1000)])\n"


def _spinner(cpu: int, idle: bool) -> subprocess.Popen[bytes]:
    def pin() -> None:
        os.sched_setaffinity(0, {cpu})
        if idle:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    proc = subprocess.Popen([sys.executable, "-c", _SPIN], preexec_fn=pin)
    time.sleep(0.2)  # running before the block starts
    return proc


def _block(step: Callable[[], None], n: int) -> float:
    """Seconds per step over ``n`` steps."""
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def measure(setting: Setting, pairs: int, block_s: float, cpus: list[int]) -> dict[str, list[float]]:
    step, text, step_s = training_step(setting)
    assert step is not None
    print(f"{setting} step: {text}")
    n = max(10, round(block_s / step_s))
    ratios: dict[str, list[float]] = {"normal": [], "idle": []}
    kinds = ["alone", "normal", "idle"]
    for i in range(pairs):
        times: dict[str, float] = {}
        for kind in kinds[i % 3:] + kinds[:i % 3]:  # rotate the order: no kind always first
            proc = None if kind == "alone" else _spinner(cpus[1], idle=kind == "idle")
            try:
                times[kind] = _block(step, n)
            finally:
                if proc is not None:
                    proc.kill()
                    proc.wait()
        for kind in ("normal", "idle"):
            ratios[kind].append(times[kind] / times["alone"])
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-ms", default="1,10", help="comma-separated training step sizes in ms")
    parser.add_argument("--pairs", type=int, default=15, help="rounds of (alone, busy normal, busy idle) blocks")
    parser.add_argument("--block-s", type=float, default=1.0, help="seconds of steps per block")
    args = parser.parse_args()
    try:
        steps = [float(x) for x in args.step_ms.split(",") if x]
    except ValueError:
        parser.error(f"--step-ms: {args.step_ms!r} is not a comma-separated list of numbers (e.g. 1,10)")
    if not steps or min(steps) <= 0 or args.pairs < 1 or args.block_s <= 0:
        parser.error("--step-ms values and --block-s must be > 0, --pairs >= 1")
    if not hasattr(os, "sched_setaffinity"):
        print("needs Linux (CPU affinity and SCHED_IDLE)")
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("needs two CPUs")
        return 2
    os.sched_setaffinity(0, {cpus[0]})
    print(f"training thread on CPU {cpus[0]}, the busy loop on CPU {cpus[1]}; {len(cpus)} CPUs")
    for ms in steps:
        ratios = measure(Setting(ms, "train"), args.pairs, args.block_s, cpus)
        for kind, label in (("normal", "normal priority"), ("idle", "SCHED_IDLE")):
            values = sorted(ratios[kind])
            p10, p90 = values[len(values) // 10], values[-1 - len(values) // 10]
            print(f"  {ms:g} ms step, a busy loop on the other CPU at {label}: "
                  f"{statistics.median(values):.3f}x the step alone (rounds p10-p90 {p10:.3f}x-{p90:.3f}x, "
                  f"{len(values)} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
