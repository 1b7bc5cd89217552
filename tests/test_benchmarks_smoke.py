"""The benchmark scripts run end to end, with tiny sizes.

No timing is asserted (the figures belong in docs/performance.md, measured on
a quiet machine); what is asserted is what the scripts check themselves: every
backend got every step back from its own storage, the stalled backend's steps
arrive exactly once after ``sync``, and ``--write-docs`` writes its block and
plot (into a temporary docs folder, never the real page). MLflow parts use the
session's real ``mlflow server`` (``--mlflow-uri``) instead of starting one.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
# The scripts set their delivery themselves (peers.py runs both); memory.py's
# stalled plugin is on its sys.path only, which a delivery process cannot see.
pytestmark = pytest.mark.thread_delivery


def run_script(name: str, *args: str, docs: Path | None = None, timeout: float = 240) -> str:
    # Under pytest-timeout's 300 s per test; a shared, loaded machine can take minutes for what a quiet one does in
    # seconds, and no timing is asserted here.
    env = dict(os.environ)
    if docs is not None:
        env["FOUNDRY_TRACK_BENCH_DOCS"] = str(docs)
    done = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, f"{name} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_peers_runs_and_every_backend_gets_every_step(mlflow_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = [m for m in ("pytorch_lightning", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"peers not installed ({', '.join(missing)}): pip install 'foundry-track[bench]'")
    docs = tmp_path / "docs"
    out = run_script("peers.py", "--steps", "4", "--block", "2", "--step-ms", "1", "--hot-steps", "20",
                     "--mlflow-uri", mlflow_server.uri, "--write-docs", docs=docs)
    for case in ("direct SDK calls", "Lightning loggers", "Accelerate trackers", "MLflow synchronous=False",
                 "foundry-track, default config (delivery: ", "foundry-track, delivery: thread",
                 "foundry-track, delivery: process", "tracked/untracked", "to reproduce: python benchmarks/peers.py"):
        assert case in out, out
    assert "every backend received every step in every case" in out, out
    page = (docs / "performance.md").read_text()
    assert "<!-- BEGIN peers" in page and "<!-- END peers -->" in page
    for row in ("| **foundry-track, default config (delivery: ", "| **foundry-track, delivery: thread** | W&B+TB+MLflow |",
                "| **foundry-track, delivery: process** | W&B+TB+MLflow | 1 ms train |"):
        assert row in page, page
    assert (docs / "img" / "peers.png").read_bytes().startswith(b"\x89PNG")


def test_peers_repeat_reports_each_run() -> None:
    out = run_script("peers.py", "--steps", "2", "--block", "1", "--step-ms", "1", "--hot-steps", "0", "--repeat", "2",
                     "--backends", "tensorboard", "--cases", "control,foundry-track")
    assert "each of the 2 runs" in out and "run 2/2" in out, out
    assert "every backend received every step in every case" in out, out


def test_drain_runs_and_loses_nothing(mlflow_server) -> None:  # type: ignore[no-untyped-def]
    out = run_script("drain.py", "--steps", "300", "--server-batches", "2", "--mlflow-uri", mlflow_server.uri)
    for backend in ("TensorBoard", "MLflow (HTTP, log_batch)", "W&B (offline)"):
        assert backend in out
    assert "nothing lost" in out, out
    assert "journal write rate" in out


def test_memory_runs_and_sync_delivers_each_step_once(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    out = run_script("memory.py", "--steps", "3000", "--rates", "0", "--write-docs", docs=docs)
    assert "every step exactly once" in out and "nothing lost: yes" in out, out
    assert "3,001 in" in out  # steps delivered by sync: 3,000 logged + the warm-up step
    assert "<!-- BEGIN memory" in (docs / "performance.md").read_text()


def test_import_time_runs(mlflow_server) -> None:  # type: ignore[no-untyped-def]
    out = run_script("import_time.py", "--repeat", "1", "--init-repeat", "1", "--backends", "tensorboard,mlflow",
                     "--skip-sdk", "--mlflow-uri", mlflow_server.uri)
    assert "import foundry_track" in out
    for backend in ("TensorBoard", "MLflow (HTTP)"):
        assert backend in out


def test_overhead_runs_and_writes_its_block(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    out = run_script("overhead.py", "--steps", "2000", "--write-docs", docs=docs)
    for row in ("control: dict(metrics)", "run.log, loss a tensor", "run.log, loss a float", "journal write rate"):
        assert row in out, out
    page = (docs / "performance.md").read_text()
    assert "<!-- BEGIN loop" in page and "in the MLP loop" in page


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two CPUs")
def test_neighbor_runs_and_stops_its_busy_loops() -> None:
    out = run_script("neighbor.py", "--step-ms", "1", "--pairs", "2", "--block-s", "0.05")
    assert "busy loop on the other CPU at normal priority:" in out and "at SCHED_IDLE:" in out, out
    assert "x the step alone" in out
    # Its busy loops are killed after each block: none may outlive the script.
    left = [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline(pid).endswith("range(1000)])\n")]
    assert not left, f"busy loops left running: {left}"


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip(" ")
    except OSError:
        return ""
