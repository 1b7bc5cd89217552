"""A process killed with SIGKILL mid-run loses at most one journal flush interval
of events; `sync` delivers the rest and closes the run as killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from foundry_track.journal import JOURNAL_FILE, Journal
from foundry_track.rundir import RUN_FILE
from tests.helpers.recorder import metric_steps, records

CHILD = textwrap.dedent(
    """
    import sys, time, foundry_track as ft
    out, flag, root = sys.argv[1:4]
    run = ft.init({"dir": root, "journal_flush_interval": 0.1, "fallback": None,
                   "backends": {"hanging": {"out": out, "fault_flag": flag}}})
    print(run.dir, flush=True)
    step = 0
    while True:
        run.log({"loss": 1.0 / (step + 1)}, step=step)
        print(step, flush=True)
        step += 1
        time.sleep(0.001)
    """
)


def test_sigkill_loses_at_most_one_flush_interval(tmp_path: Path, fault_plugins: Path) -> None:
    out, flag = tmp_path / "out.jsonl", tmp_path / "flag"
    flag.touch()  # the backend hangs: everything it should get must come from the journal
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(out), str(flag), str(tmp_path / "runs")],
        stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None
    run_dir = Path(child.stdout.readline().strip())
    last_printed = -1
    deadline = time.monotonic() + 20
    while last_printed < 600 and time.monotonic() < deadline:
        last_printed = int(child.stdout.readline())
    kill_time = time.time()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    printed = [last_printed, *(int(line) for line in child.stdout.read().split())]
    logged = max(printed)  # steps whose run.log returned before the kill

    journal = Journal(run_dir / JOURNAL_FILE)
    steps = [r.step for r in journal.iter_records("metrics")]
    assert steps == list(range(len(steps)))  # a clean prefix: no gaps, no duplicates
    # Lost = what was logged but not yet committed: at most one interval (0.1 s)
    # of logging, plus the time of a commit. Check it by the events' own clocks.
    lost_window = kill_time - journal.read_after(len(steps) - 1, 1)[0].time if steps else None
    assert lost_window is not None and lost_window < 0.1 + 0.25, (lost_window, len(steps), logged)
    assert json.loads((run_dir / RUN_FILE).read_text())["status"] == "running"

    flag.unlink()
    result = subprocess.run([sys.executable, "-m", "foundry_track.cli", "sync", str(run_dir)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert metric_steps(out) == {s: 1 for s in range(len(steps))}
    assert [r["status"] for r in records(out) if r["hook"] == "finish"] == ["killed"]
    assert json.loads((run_dir / RUN_FILE).read_text())["status"] == "killed"
