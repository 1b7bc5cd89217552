"""Log a synthetic training curve through foundry-track (no model, no GPU).

    python examples/synthetic_curve.py [configs/synthetic.yaml]
"""

from __future__ import annotations

import math
import random
import sys

import foundry_track as ft

config = sys.argv[1] if len(sys.argv) > 1 else {
    "project": "foundry-track-demo",
    "run_name": "synthetic",
    "backends": {"tensorboard": {}},
}

with ft.init(config) as run:
    run.log_params({"lr": 3e-4, "batch_size": 32, "model": {"layers": 4, "hidden": 256}})
    for step in range(2000):
        loss = 4.0 * math.exp(-step / 400) + 0.3 + random.gauss(0, 0.02)
        run.log({"train/loss": loss, "train/lr": 3e-4 * min(1.0, step / 100)}, step=step)
print(f"logged 2000 steps to {run.dir}; look at them with: tensorboard --logdir {run.dir}")
