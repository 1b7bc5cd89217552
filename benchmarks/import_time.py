"""What importing foundry-track and starting a run cost, each in a fresh interpreter.

    python benchmarks/import_time.py [--repeat 20] [--init-repeat 3] [--backends tensorboard,wandb,mlflow]
                                     [--write-docs]

1. Import: ``python -c "import foundry_track"`` against ``python -c "pass"``,
   ``--repeat`` times each, interleaved; the median difference is what the
   import adds to a script's start (target <= 50 ms). The same for
   ``from foundry_track import init`` (what the first ``ft.init`` imports:
   the config model, pydantic, the journal) and, for scale, each tracker SDK
   (at most 5 times: they take seconds).
2. Start, per backend, ``--init-repeat`` fresh processes: how long ``ft.init``
   blocks the caller, the first ``run.log``, when the backend's start finished
   on its own thread (its identity is in run.json), when it delivered the first
   step, and ``finish``; next to it, how long the SDK's own start blocks a
   script that calls it directly (import included, as in the script).

MLflow runs against a throwaway ``mlflow server`` on 127.0.0.1 that this script
starts; W&B is offline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, fmt_s, local_tracker_env, machine, markdown_table, provenance, text_table, update_doc
from _mlflow import mlflow_target

BACKENDS = ("tensorboard", "wandb", "mlflow")
LABEL = {"tensorboard": "TensorBoard", "wandb": "W&B (offline)", "mlflow": "MLflow (HTTP)"}
SDK_IMPORT = {
    "tensorboard": "from torch.utils.tensorboard import SummaryWriter",
    "wandb": "import wandb",
    "mlflow": "import mlflow",
}

# Run in a fresh interpreter per measurement; prints one JSON line.
_FT_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import foundry_track as ft
ft.init  # the run module: config model, journal, dispatcher
t1 = time.perf_counter()
from pathlib import Path
from foundry_track.journal import JOURNAL_FILE, Journal
name, options = sys.argv[1], json.loads(sys.argv[2])
run = ft.init({"dir": sys.argv[3], "flush_timeout": 120, "backends": {name: options}})
t2 = time.perf_counter()
run.log({f"train/metric_{i}": float(i) for i in range(10)}, step=0)
t3 = time.perf_counter()
journal = Journal(Path(run.dir) / JOURNAL_FILE, readonly=True)
ready = delivered = None
while delivered is None:
    now = time.perf_counter()
    if ready is None and name in run.backend_ids:
        ready = now
    if journal.position(name) >= 1:
        delivered = now
        ready = ready or now
    if now - t1 > 120:
        raise SystemExit(f"{name} did not deliver within 120 s")
    time.sleep(0.002)
t4 = time.perf_counter()
left = run.finish()
t5 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "init": t2 - t1, "first_log": t3 - t2, "ready": ready - t1,
                  "delivered": delivered - t1, "finish": t5 - t4, "left": sum(left.values())}))
"""

_SDK_CHILD = {
    "tensorboard": r"""
import sys, time
t0 = time.perf_counter()
from torch.utils.tensorboard import SummaryWriter
writer = SummaryWriter(sys.argv[2])
print(time.perf_counter() - t0)
writer.close()
""",
    "wandb": r"""
import sys, time
t0 = time.perf_counter()
import wandb
run = wandb.init(project="bench-import", dir=sys.argv[2], mode="offline")
print(time.perf_counter() - t0)
run.finish()
""",
    "mlflow": r"""
import sys, time
t0 = time.perf_counter()
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("bench-import")
mlflow.start_run()
print(time.perf_counter() - t0)
mlflow.end_run()
""",
}


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def import_costs(repeat: int, statements: dict[str, str]) -> dict[str, float]:
    """Median extra wall time of ``python -c STATEMENT`` over ``python -c pass``, interleaved."""
    samples: dict[str, list[float]] = {"pass": [], **{k: [] for k in statements}}
    for _ in range(repeat):
        samples["pass"].append(wall([sys.executable, "-c", "pass"]))
        for key, statement in statements.items():
            samples[key].append(wall([sys.executable, "-c", statement]))
    base = statistics.median(samples["pass"])
    return {"pass": base, **{k: statistics.median(v) - base for k, v in samples.items() if k != "pass"}}


def child_json(cmd: list[str]) -> Any:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20, help="interpreter starts per import measurement")
    parser.add_argument("--init-repeat", type=int, default=3, help="fresh processes per backend start measurement")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of "
                        + ",".join(BACKENDS))
    parser.add_argument("--skip-sdk", action="store_true", help="do not time the tracker SDKs themselves")
    parser.add_argument("--mlflow-uri", default=None,
                        help="use this running MLflow server instead of starting one (the smoke test does)")
    parser.add_argument("--write-docs", action="store_true", help="write the tables to docs/performance.md")
    args = parser.parse_args()
    backends = [b for b in BACKENDS if b in args.backends.split(",")]
    if not backends or set(args.backends.split(",")) - set(BACKENDS):
        parser.error(f"--backends: expected a subset of {','.join(BACKENDS)}, got {args.backends!r}")
    print(machine())
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="ft-import-") as tmp_name:
        tmp = Path(tmp_name)
        local_tracker_env(tmp)
        # The children import foundry_track from wherever this interpreter does.
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path[1:] if p)
        server = None
        try:
            print(f"timing imports ({args.repeat} interpreter starts each) ...", flush=True)
            imports = import_costs(args.repeat, {"import foundry_track": "import foundry_track",
                                                 "from foundry_track import init": "from foundry_track import init"})
            if not args.skip_sdk:  # for scale only: seconds each, so fewer repeats
                sdk_imports = import_costs(min(args.repeat, 5), {SDK_IMPORT[b]: SDK_IMPORT[b] for b in backends})
                imports.update((k, v) for k, v in sdk_imports.items() if k != "pass")
            uri, server = mlflow_target(backends, args.mlflow_uri, tmp)
            starts: dict[str, list[dict[str, float]]] = {}
            sdk: dict[str, list[float]] = {}
            for backend in backends:
                print(f"starting runs with {backend} ({args.init_repeat} processes each) ...", flush=True)
                options = {"tensorboard": {}, "wandb": {"mode": "offline"},
                           "mlflow": {"tracking_uri": uri, "experiment": "bench-import"}}[backend]
                for i in range(args.init_repeat):
                    starts.setdefault(backend, []).append(child_json(
                        [sys.executable, "-c", _FT_CHILD, backend, json.dumps(options), str(tmp / f"ft-{backend}-{i}")]))
                    if not args.skip_sdk:
                        sdk.setdefault(backend, []).append(float(child_json(
                            [sys.executable, "-c", _SDK_CHILD[backend], uri, str(tmp / f"sdk-{backend}-{i}")])))
        finally:
            if server is not None:
                server.stop()
            os.chdir(cwd)

    ms = lambda s: f"{s * 1e3:.0f} ms"  # noqa: E731
    import_rows = [[f"`{k}`", ms(v)] for k, v in imports.items() if k != "pass"]
    import_rows.insert(0, ["`python -c pass` (the interpreter alone)", ms(imports["pass"])])
    med = lambda b, key: statistics.median(s[key] for s in starts[b])  # noqa: E731
    start_header = ["backend", "ft.init blocks", "first run.log", "backend started", "first step delivered",
                    "finish", "the SDK's own start blocks"]
    start_rows = [[LABEL[b], ms(med(b, "init")), f"{med(b, 'first_log') * 1e6:.0f} us", fmt_s(med(b, "ready")),
                   fmt_s(med(b, "delivered")), fmt_s(med(b, "finish")),
                   fmt_s(statistics.median(sdk[b])) if b in sdk else "-"]
                  for b in backends]
    lost = sum(s["left"] for runs in starts.values() for s in runs)
    ok = imports["import foundry_track"] <= 0.050
    verdict = (f"`import foundry_track` adds {ms(imports['import foundry_track'])} to the interpreter's start "
               f"(median of {args.repeat}; target <= 50 ms: {'met' if ok else 'NOT met'})")
    print()
    print(text_table(["import (median extra wall time of python -c ...)", ""],
                     [[a.replace("`", ""), b] for a, b in import_rows]))
    print()
    print(text_table(start_header, start_rows))
    print(verdict + ("" if not lost else f"; {lost} events left undelivered!"))
    if args.write_docs:
        update_doc("import", "\n".join([
            markdown_table(["import, in a fresh interpreter", "median extra wall time"], import_rows, align="lr"),
            "", f"- {verdict}.", "",
            markdown_table(start_header, start_rows),
            "",
            f"Median of {args.init_repeat} fresh processes per backend; times from the end of the import. "
            "ft.init blocks: until `init` returns (the backend starts on its own thread); backend started: "
            "its start hook returned (identity in run.json); first step delivered: the journal records the "
            "backend's position at step 0; the SDK's own start: a script calling the SDK directly "
            "(`SummaryWriter(dir)`, `wandb.init(mode=\"offline\")`, `mlflow.start_run()` against the same "
            "server), import included.", "", provenance()]))
        print(f"wrote {(ROOT / 'docs' / 'performance.md').relative_to(ROOT)}")
    return 0 if not lost else 1


if __name__ == "__main__":
    sys.exit(main())
