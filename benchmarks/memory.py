"""Memory while a backend is stuck, and nothing lost once it is back.

    python benchmarks/memory.py [--steps 100000] [--rates 0,10000] [--write-docs]

A run with two backends: TensorBoard (healthy) and ``bench_stalled``, a
backend whose first delivery never returns (a tracker whose network call
hangs; ``benchmarks/_plugins``, registered through a real dist-info). The loop
logs ``--steps`` steps of 10 scalars (1,000,000 scalars by default), once as
fast as it can and once paced (``--rates``, steps/s), each in a fresh process.
The process's resident memory is sampled every 5 ms from the first
log call until the journal has committed everything and TensorBoard has
received everything; growth = peak - RSS before the first call. Target: <= 64
MB. ``finish`` then gives up on the stuck backend (everything stays in the
journal), and ``foundry_track.sync(run_dir)`` with a healthy instance of the
same backend delivers it: each step must arrive exactly once.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
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

PLUGINS = Path(__file__).resolve().parent / "_plugins"
FLUSH_TIMEOUT = 2.0
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


class PeakSampler(threading.Thread):
    """Highest RSS seen, read from /proc every ``interval`` seconds on a thread."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.interval = interval
        self.peak = rss_bytes()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, rss_bytes())
        return self.peak


def measure(steps: int, rate: float) -> dict[str, Any]:
    """One run, in this process: log, settle, finish, sync; the figures as a dict."""
    sys.path.insert(0, str(PLUGINS))
    import foundry_track as ft
    from foundry_track.journal import JOURNAL_FILE, Journal
    from foundry_track.plugins import discover

    if "bench_stalled" not in discover(refresh=True):
        raise SystemExit(f"the bench_stalled backend was not discovered from {PLUGINS}")
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="ft-memory-") as tmp_name:
        tmp = Path(tmp_name)
        local_tracker_env(tmp)
        try:
            flag, out = tmp / "stall", tmp / "delivered.txt"
            flag.touch()
            run = ft.init({"dir": str(tmp / "runs"), "flush_timeout": FLUSH_TIMEOUT, "backends": {
                "tensorboard": {"log_dir": str(tmp / "tb")},
                "bench_stalled": {"out": str(out), "stall_flag": str(flag)},
            }})
            journal = Journal(Path(run.dir) / JOURNAL_FILE, readonly=True)
            run.log(step_metrics(0), step=0)  # TensorBoard imports its protos; the stalled backend hangs
            wait_until(lambda: journal.position("tensorboard") >= 1, 120, "TensorBoard to start")
            gc.collect()
            before = rss_bytes()
            sampler = PeakSampler()
            sampler.start()
            t0 = time.perf_counter()
            for step in range(1, steps + 1):
                run.log(step_metrics(step), step=step)
                if rate and step % 100 == 0:  # paced in bursts of 100 steps
                    ahead = t0 + step / rate - time.perf_counter()
                    if ahead > 0:
                        time.sleep(ahead)
            logged_s = time.perf_counter() - t0
            last = steps + 1  # events in the journal: one per step
            wait_until(lambda: journal.refresh() >= last and journal.position("tensorboard") >= last, 600,
                       "the journal and TensorBoard")
            settled_s = time.perf_counter() - t0
            peak = sampler.stop()
            after = rss_bytes()
            stalled_pos = journal.position("bench_stalled")
            journal.close()
            t1 = time.perf_counter()
            undelivered = run.finish()  # gives up on the stuck backend after flush_timeout
            finish_s = time.perf_counter() - t1
            flag.unlink()
            t1 = time.perf_counter()
            left = ft.sync(run.dir)
            sync_s = time.perf_counter() - t1
            delivered = [int(s) for line in out.read_text().split("\n") if line for s in line.split()]
        finally:
            os.chdir(cwd)
    return {
        "rate": rate, "steps": last, "logged_s": logged_s, "settled_s": settled_s, "before": before, "peak": peak,
        "after": after, "stalled_pos": stalled_pos, "undelivered": undelivered.get("bench_stalled", 0),
        "finish_s": finish_s, "sync_s": sync_s, "left": sum(left.values()), "delivered": len(delivered),
        "exact": len(delivered) == last and set(delivered) == set(range(last)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000, help="steps of 10 scalars")
    parser.add_argument("--rates", default="0,10000",
                        help="logging rates to try, steps/s, comma-separated; 0 = as fast as the loop can")
    parser.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--write-docs", action="store_true", help="write the result to docs/performance.md")
    args = parser.parse_args()
    if sys.platform != "linux":
        parser.error("reads /proc/self/statm: Linux only")
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    if args.child is not None:
        print(json.dumps(measure(args.steps, args.child)))
        return 0
    print(machine())
    results = []
    for rate in (float(r) for r in args.rates.split(",")):
        # Each rate in a fresh process: RSS is the whole process's, and memory
        # Python freed is not always handed back to the OS.
        print(f"logging {args.steps:,} steps {'as fast as possible' if not rate else f'at {rate:,.0f} steps/s'} "
              "...", flush=True)
        child = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", str(rate)],
                               capture_output=True, text=True)
        if child.returncode != 0:
            print(child.stdout, child.stderr, file=sys.stderr)
            return 1
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))

    def pace(r: dict[str, Any]) -> str:
        return "as fast as possible" if not r["rate"] else f"{r['rate']:,.0f} steps/s"

    def col(r: dict[str, Any]) -> list[str]:
        mb = 2**20
        return [
            f"{r['steps'] * 10:,} ({r['steps']:,} steps x 10)",
            fmt_s(r["logged_s"]), fmt_s(r["settled_s"]), f"{r['before'] / mb:.0f} MB",
            f"**{(r['peak'] - r['before']) / mb:.1f} MB**", f"{(r['after'] - r['before']) / mb:.1f} MB",
            f"{r['stalled_pos']:,}", f"{r['undelivered']:,}", fmt_s(r["finish_s"]),
            f"{r['delivered']:,} in {fmt_s(r['sync_s'])}" + (f", {r['left']:,} left" if r["left"] else ""),
            "yes" if r["exact"] else "NO",
        ]

    labels = ["scalars logged", "time to log them (training loop)",
              "journal committed and TensorBoard caught up after", "RSS before the first log call",
              "RSS growth, peak", "RSS growth, once caught up", "stalled backend's position while stuck",
              f"steps left undelivered by finish() (flush_timeout {FLUSH_TIMEOUT:g} s)", "finish()",
              "steps delivered by foundry_track.sync(run_dir)", "every step exactly once"]
    columns = [col(r) for r in results]
    rows = [[label, *(c[i] for c in columns)] for i, label in enumerate(labels)]
    header = ["logging", *(pace(r) for r in results)]
    print()
    print(text_table(header, [[c.replace("**", "") for c in row] for row in rows]))
    verdicts = []
    for r in results:
        growth = (r["peak"] - r["before"]) / 2**20
        verdicts.append(f"{pace(r)}: RSS growth {growth:.1f} MB, target <= 64 MB "
                        f"{'met' if growth <= 64 else 'NOT met'}; nothing lost: {'yes' if r['exact'] else 'NO'}")
    print("\n".join(verdicts))
    if args.write_docs:
        update_doc("memory", "\n".join([
            markdown_table(["TensorBoard + a backend stuck in its first call, logging", *header[1:]], rows,
                           align="l" + "r" * len(results)),
            "", *[f"- {v}" for v in verdicts], "", provenance()]))
        print(f"wrote {(ROOT / 'docs' / 'performance.md').relative_to(ROOT)}")
    return 0 if all(r["exact"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
