"""A job for `torchrun --nproc_per_node=2` (gloo, CPU), driven by the tests.

    torchrun --nproc_per_node=2 tests/helpers/dist_job.py MODE ROOT [OUT]

Each rank writes what it saw to ROOT/rank<N>.json so the test can check both.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

import foundry_track as ft
from foundry_track.distributed import KeyMismatchError

mode, root = sys.argv[1], Path(sys.argv[2])
dist.init_process_group("gloo")
rank = dist.get_rank()
report: dict = {"rank": rank}
backends: dict = {"tensorboard": {}}
if mode == "hang":
    backends = {"hanging": {"out": str(root / "hang.jsonl"), "fault_flag": str(root / "flag")}}
cfg = {"dir": str(root / "runs"), "run_name": "job", "flush_timeout": 2, "fallback": None, "backends": backends,
       "per_rank": mode == "per_rank"}

run = ft.init(cfg)
report.update(id=run.id, dir=str(run.dir), enabled=run.enabled)
if mode in ("mean", "per_rank", "hang"):
    for step in range(20):
        local = torch.tensor(float(step * (rank + 1)))  # rank 0: step, rank 1: 2*step
        run.log({"train/loss": local, "train/other": float(rank)}, step=step, reduce="mean")
    run.log_system_metrics(step=19, gather=True)
elif mode == "mismatch":
    keys = {"train/loss": 1.0} if rank == 0 else {"train/loss": 1.0, "train/extra": 2.0}
    t0 = time.monotonic()
    try:
        run.log(keys, step=0, reduce="mean")
        report["raised"] = None
    except KeyMismatchError as exc:
        report["raised"] = str(exc)
    report["seconds"] = time.monotonic() - t0
t0 = time.monotonic()
run.finish()
report["finish_seconds"] = time.monotonic() - t0
(root / f"rank{rank}.json").write_text(json.dumps(report))
dist.destroy_process_group()
os._exit(0) if mode == "hang" else None
