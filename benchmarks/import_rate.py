"""How fast ``foundry-track import`` turns another tracker's files into a journal.

    python benchmarks/import_rate.py [--steps N] [--repeat R]

Writes ``N`` steps of 10 scalars (the same metrics as the other benchmarks)
once as a TensorBoard event file (tensorboard's own ``EventFileWriter``, one
``simple_value`` per event and each its own wall time, as
``SummaryWriter.add_scalar`` writes them: one journal row per scalar) and
once as a W&B offline run file (``run-<id>.wandb``: wandb's own protobuf
``Record`` s in W&B's LevelDB-log framing, one history row per step), then
times the import of each into a fresh run directory with no backend: reading
the source plus writing the journal, not delivery. Target (issue): >= 50,000
scalars/s each. Prints scalars per second, best of ``R`` repeats.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable

from _common import KEYS, step_metrics

TARGET = 50_000


def write_tensorboard(folder: Path, steps: int) -> None:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(folder))
    start = time.time()
    for step in range(steps):
        for i, (key, value) in enumerate(step_metrics(step).items()):
            # Each scalar its own wall time, as add_scalar stamps them: one journal row per scalar.
            summary = Summary(value=[Summary.Value(tag=key, simple_value=value)])
            writer.add_event(Event(step=step, wall_time=start + step * 0.01 + i * 1e-4, summary=summary))
    writer.close()


def _frame(payloads: list[bytes]) -> bytes:
    """W&B's LevelDB-log framing: 32 KiB blocks, chunks of crc32(type-seeded), length, type."""
    block, out = 32 * 1024, bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for payload in payloads:
        first, rest = True, payload
        while True:
            left = block - len(out) % block
            if left < 7:
                out += b"\0" * left
                left = block
            piece, rest = rest[:left - 7], rest[left - 7:]
            kind = (1 if first else 4) if not rest else (2 if first else 3)
            out += struct.pack("<IHB", zlib.crc32(piece, zlib.crc32(bytes([kind]))), len(piece), kind) + piece
            first = False
            if not rest:
                break
    return bytes(out)


def write_wandb(folder: Path, steps: int) -> None:
    from wandb.proto import wandb_internal_pb2 as pb

    run_id = "bench01"
    records = [pb.Record(run=pb.RunRecord(run_id=run_id, project="bench", display_name="bench"))]
    start = time.time()
    for step in range(steps):
        items = [pb.HistoryItem(key=k, value_json=json.dumps(v)) for k, v in step_metrics(step).items()]
        items += [pb.HistoryItem(key="_step", value_json=str(step)),
                  pb.HistoryItem(key="_timestamp", value_json=repr(start + step * 0.01))]
        records.append(pb.Record(history=pb.HistoryRecord(item=items, step=pb.HistoryStep(num=step))))
    records.append(pb.Record(exit=pb.RunExitRecord(exit_code=0)))
    target = folder / f"offline-run-20260101_000000-{run_id}"
    target.mkdir(parents=True)
    (target / f"run-{run_id}.wandb").write_bytes(_frame([r.SerializeToString() for r in records]))


def rate(read: Callable[[Path], list[Any]], source: Path, scalars: int, repeat: int) -> float:
    from foundry_track.importers import import_run

    best = float("inf")
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as runs:
            started = time.perf_counter()
            (run,) = read(source)
            result = import_run(run, {"backends": {}}, runs)
            best = min(best, time.perf_counter() - started)
            assert result.events >= scalars // len(KEYS), result
    return scalars / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000, help="steps of 10 scalars (default: 20,000)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats; the best is reported (default: 3)")
    args = parser.parse_args(argv)
    from foundry_track.importers import tensorboard, wandb

    scalars = args.steps * len(KEYS)
    with tempfile.TemporaryDirectory() as tmp:
        write_tensorboard(Path(tmp) / "tb", args.steps)
        write_wandb(Path(tmp) / "wandb", args.steps)
        figures = {"TensorBoard event file": rate(tensorboard.runs, Path(tmp) / "tb", scalars, args.repeat),
                   "W&B offline run file": rate(wandb.runs, Path(tmp) / "wandb", scalars, args.repeat)}
    print(f"import rate: {scalars:,} scalars ({args.steps:,} steps x {len(KEYS)}), reading + journal, no delivery")
    ok = True
    for name, value in figures.items():
        ok = ok and value >= TARGET
        print(f"  {name:<24} {value:>12,.0f} scalars/s  (target >= {TARGET:,}: {'met' if value >= TARGET else 'MISSED'})")
    print("to reproduce: python benchmarks/import_rate.py")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
