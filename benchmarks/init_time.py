"""How long ``foundry_track.init`` blocks the training script, three backends on.

    python benchmarks/init_time.py [--repeat 5]

Each measurement is a fresh interpreter that has imported what a training
script has by then (foundry_track, pydantic, PyYAML) and calls ``ft.init``
with TensorBoard, W&B (offline) and MLflow (a local SQLite store): the first
call of the process (it finds the backends through their entry points and
validates their options) and a second one (another run in the same process).
The trackers start in the delivery process, so none of their SDKs is imported
here; the script checks that too. Prints the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, tempfile, time
import pydantic, yaml
import foundry_track as ft
import foundry_track.start
def config():
    d = tempfile.mkdtemp()
    return {"dir": d, "backends": {"tensorboard": {}, "wandb": {"dir": d},
                                   "mlflow": {"tracking_uri": f"sqlite:///{d}/mlflow.db"}}}
times = []
runs = []
for _ in range(2):
    cfg = config()
    started = time.perf_counter()
    runs.append(ft.init(cfg))
    times.append((time.perf_counter() - started) * 1e3)
sdks = sorted(m for m in ("wandb", "mlflow", "tensorboard", "torch") if m in sys.modules)
for run in runs:
    run.finish(timeout=30)
print(json.dumps({"first_ms": times[0], "second_ms": times[1], "sdks_imported": sdks}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="fresh interpreters to measure")
    args = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    results = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as cwd:
            out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, cwd=cwd,
                                 check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first = statistics.median(r["first_ms"] for r in results)
    second = statistics.median(r["second_ms"] for r in results)
    print(f"ft.init with tensorboard + wandb + mlflow, median of {args.repeat} fresh interpreters:")
    print(f"  first init of the process   {first:7.1f} ms  (entry points, options, run dir, journal, delivery process)")
    print(f"  a later init                {second:7.1f} ms")
    print(f"  tracker SDKs imported in the training process: {results[0]['sdks_imported'] or 'none'}")


if __name__ == "__main__":
    main()
