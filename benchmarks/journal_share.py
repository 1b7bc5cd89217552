"""What the journal's writer thread costs the training loop.

    python benchmarks/journal_share.py [--blocks 30] [--block-s 1] [--step-ms 1,10]

With the default delivery the trackers' SDKs run in the delivery process; what
stays in the training process is ``run.log`` and the journal's writer thread
(JSON encoding and SQLite commits every ``journal_flush_interval``), which
competes with the training step for the interpreter. This measures exactly
that: a run with no backend at all (nothing but the journal) against no
tracking, in interleaved blocks of real MLP training steps on the CPU (about
``--block-s`` seconds each, untracked first, then tracked first, and so on),
and prints per step size the wall time per step of each, the median of the
pairs' ratios, and the figure that does not drown in this machine's noise:
the writer thread's own CPU time per tracked step (its clock, read with
``time.pthread_getcpuclockid``), which is all it can take from the loop.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

import torch

import foundry_track as ft

KEYS = [f"train/metric_{i}" for i in range(10)]


def mlp_step(width: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))
    return model, torch.optim.SGD(model.parameters(), lr=1e-3), torch.randn(64, width), torch.randn(64, 1)


def calibrate(step_ms: float) -> int:
    """The MLP width whose training step takes about ``step_ms``."""
    width = 64
    while True:
        model, opt, x, y = mlp_step(width)
        for _ in range(5):  # torch's first calls are slow: a width timed on them would be far too small
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        started = time.perf_counter()
        for _ in range(20):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        took = (time.perf_counter() - started) / 20 * 1e3
        if took >= step_ms or width > 8192:
            return width
        width = int(width * max(1.1, (step_ms / max(took, 1e-3)) ** 0.5))


def _writer_cpu_s() -> float:
    """CPU seconds the journal's writer thread has used so far."""
    (writer,) = [t for t in threading.enumerate() if t.name == "foundry-track-journal"]
    assert writer.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(writer.ident))


def measure(step_ms: float, blocks: int, block_s: float) -> tuple[float, float, float, float]:
    """(untracked ms/step, tracked ms/step, median pair ratio, writer CPU us per tracked step)."""
    model, opt, x, y = mlp_step(calibrate(step_ms))
    block_steps = max(1, round(block_s * 1e3 / step_ms))
    run = ft.init({"dir": tempfile.mkdtemp(), "backends": {}, "fallback": None})
    walls: dict[bool, list[float]] = {True: [], False: []}
    step = 0
    writer_s = 0.0
    for block in range(2 * blocks):
        tracked = (block % 2 == 1) == (block // 2 % 2 == 0)  # untracked first, then tracked first, ...
        cpu0 = _writer_cpu_s()
        started = time.perf_counter()
        for _ in range(block_steps):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            if tracked:
                run.log({"train/loss": loss.detach(), **{k: float(step) for k in KEYS[1:]}}, step=step)
                step += 1
        walls[tracked].append((time.perf_counter() - started) / block_steps * 1e3)
        if tracked:
            writer_s += _writer_cpu_s() - cpu0
    run.finish()
    pairs = [t / u for u, t in zip(walls[False], walls[True])]
    return (statistics.median(walls[False]), statistics.median(walls[True]), statistics.median(pairs),
            writer_s / (blocks * block_steps) * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=30, help="tracked (and untracked) blocks per step size")
    parser.add_argument("--block-s", type=float, default=1.0, help="seconds of training steps per block")
    parser.add_argument("--step-ms", default="1,10", help="training step sizes to measure, in ms")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("journal only (no backend) against no tracking; 10 scalars per step, the loss as a CPU tensor")
    print(f"{'step':>8} {'untracked ms/step':>18} {'journal ms/step':>16} {'pair ratio':>11} "
          f"{'writer CPU/step':>16} {'share of the step':>18}")
    for step_ms in (float(s) for s in args.step_ms.split(",")):
        untracked, tracked, ratio, writer_us = measure(step_ms, args.blocks, args.block_s)
        print(f"{step_ms:>6g}ms {untracked:>18.3f} {tracked:>16.3f} {ratio:>10.3f}x {writer_us:>13.1f} us "
              f"{writer_us / 1e3 / untracked:>17.2%}")


if __name__ == "__main__":
    main()
