"""torchrun with 2 CPU ranks (gloo): one run per job, reductions that check keys,
no hang at exit, per-rank runs when asked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.tb import scalars

JOB = Path(__file__).parent / "helpers" / "dist_job.py"
pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                                reason="torchrun not installed")


def _torchrun(mode: str, root: Path, timeout: float = 120) -> tuple[list[dict], float]:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    result = subprocess.run(
        [torchrun, "--nproc_per_node=2", "--master_port=0" if False else "--rdzv-backend=c10d",
         "--rdzv-endpoint=127.0.0.1:0", str(JOB), mode, str(root)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    elapsed = time.monotonic() - t0
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)], elapsed


def test_one_run_per_job_and_mean_across_ranks(tmp_path: Path) -> None:
    reports, _ = _torchrun("mean", tmp_path)
    assert reports[0]["id"] == reports[1]["id"] and reports[0]["dir"] == reports[1]["dir"]
    assert reports[0]["enabled"] and not reports[1]["enabled"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [Path(reports[0]["dir"]).name]
    tb_dirs = list((tmp_path / "runs").rglob("events.out.tfevents.*"))
    assert len({p.parent for p in tb_dirs}) == 1
    got = scalars(tb_dirs[0].parent)
    # rank 0 logs `step`, rank 1 logs `2 * step`: the mean is 1.5 * step.
    assert got["train/loss"] == [(s, pytest.approx(1.5 * s)) for s in range(20)]
    assert got["train/other"] == [(s, pytest.approx(0.5)) for s in range(20)]
    assert "system/rank1/process_rss_gb" in got and "system/rank0/process_rss_gb" in got


def test_different_keys_raise_on_every_rank_without_hanging(tmp_path: Path) -> None:
    reports, elapsed = _torchrun("mismatch", tmp_path, timeout=90)
    for report in reports:
        assert report["raised"] and "rank 1 vs rank 0: missing [], extra ['train/extra']" in report["raised"]
        assert report["seconds"] < 5
    assert reports[0]["raised"] == reports[1]["raised"]


def test_hanging_backend_on_rank0_does_not_hang_the_job(tmp_path: Path, fault_plugins: Path) -> None:
    (tmp_path / "flag").touch()
    reports, _ = _torchrun("hang", tmp_path)
    assert reports[0]["finish_seconds"] < 2 + 1.5  # flush_timeout 2 s
    assert reports[1]["finish_seconds"] < 0.5  # other ranks never wait on a tracker


def test_per_rank_runs_are_grouped(tmp_path: Path) -> None:
    reports, _ = _torchrun("per_rank", tmp_path)
    assert reports[0]["id"] != reports[1]["id"] and reports[0]["enabled"] and reports[1]["enabled"]
    run_files = sorted((tmp_path / "runs").rglob("run.json"))
    assert len(run_files) == 2
    data = [json.loads(p.read_text()) for p in run_files]
    assert {d["name"] for d in data} == {"job-rank0", "job-rank1"}
    assert {d["group"] for d in data} == {"job"}
    assert {p.parent.name for p in run_files} == {"rank0", "rank1"}
    assert len({p.parent.parent for p in run_files}) == 1  # subdirectories of one job directory
