"""Verify tests/helpers/wandb_offline.py against files written by the real wandb SDK.

No mocks: every ``.wandb`` file checked here (except the synthetic framing
tests at the bottom) is produced by ``wandb.init`` in offline mode. The W&B
environment is isolated per test via ``monkeypatch`` so nothing leaks into
other tests or into ``~/.local/share/wandb`` / ``~/.cache/wandb``.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import wandb
from wandb.proto import wandb_internal_pb2

from tests.helpers.wandb_offline import (
    OfflineRun,
    find_run_files,
    iter_record_payloads,
    read_all_offline_runs,
    read_offline_run,
    read_records,
)

N_ROWS = 20

pb: Any = wandb_internal_pb2  # generated protobuf module; wandb ships no stubs


def _wandb_env(root: Path) -> dict[str, str]:
    """Env that keeps wandb offline, quiet, fast and inside ``root``."""
    return {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_X_DISABLE_STATS": "true",  # no system-metrics sampler
        "WANDB_X_DISABLE_MACHINE_INFO": "true",
        "WANDB_X_DISABLE_META": "true",
        "WANDB_DIR": str(root),
        "WANDB_CACHE_DIR": str(root / "cache"),
        "WANDB_DATA_DIR": str(root / "data"),  # artifact staging lives here
        "WANDB_CONFIG_DIR": str(root / "config"),
        "WANDB_ARTIFACT_DIR": str(root / "artifacts"),
    }


def _isolate(mp: pytest.MonkeyPatch, root: Path) -> None:
    # Drop any WANDB_* the developer/CI has set (WANDB_SERVICE would even make
    # wandb attach to an existing wandb-core process), then set ours.
    for key in list(os.environ):
        if key.startswith(("WANDB_", "_WANDB")):
            mp.delenv(key)
    for key, value in _wandb_env(root).items():
        mp.setenv(key, value)


@dataclass
class FullRun:
    root: Path
    run: OfflineRun
    init_seconds: float


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FullRun]:
    """One real offline run exercising every field the reader decodes."""
    root = tmp_path_factory.mktemp("wandb_full")
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, root)
        t0 = time.monotonic()
        run = wandb.init(
            project="p",
            name="n",
            tags=["a", "b"],
            group="grp",
            config={"lr": 0.1, "nested": {"x": 1}},
            id="abc12345",
            resume="allow",
            dir=str(root),
        )
        init_seconds = time.monotonic() - t0
        try:
            run.define_metric("trainer/step")
            run.define_metric("*", step_metric="trainer/step")
            for i in range(N_ROWS):
                run.log({"loss": 1.0 / (i + 1), "trainer/step": i * 10})
            run.log({"acc": 0.5})  # no step metric: step_sync fills it in
            run.alert(title="T", text="hello", level="WARN")
            payload = root / "weights.txt"
            payload.write_text("hi")
            art = wandb.Artifact("myart", type="model")
            art.add_file(str(payload))
            run.log_artifact(art)
            run.config.update({"extra": 5})  # type: ignore[no-untyped-call]
            run.summary["best"] = 0.25
        finally:
            run.finish(exit_code=1)
            wandb.teardown()
        yield FullRun(root, read_offline_run(root), init_seconds)


def test_full_run_fields(full_run: FullRun) -> None:
    run = full_run.run
    assert run.run_id == "abc12345"
    assert run.project == "p"
    assert run.entity == ""  # offline runs have no entity unless passed
    assert run.name == "n"
    assert run.tags == ["a", "b"]
    assert run.group == "grp"
    assert run.config == {"lr": 0.1, "nested": {"x": 1}, "extra": 5}
    assert run.exit_code == 1
    assert run.alerts == [
        {"title": "T", "text": "hello", "level": "WARN", "wait_duration": 60_000}
    ]
    assert len(run.artifacts) == 1
    art = run.artifacts[0]
    assert (art["name"], art["type"], art["entries"]) == (
        "myart",
        "model",
        ["weights.txt"],
    )
    assert "latest" in art["aliases"]
    assert "requirements.txt" in run.files
    assert len(run.run_files) == 1
    assert run.run_files[0].name == "run-abc12345.wandb"
    assert run.run_files[0].parent.name.startswith("offline-run-")


def test_history_and_step_metric(full_run: FullRun) -> None:
    history = full_run.run.history
    assert len(history) == N_ROWS + 1
    assert [row["_step"] for row in history] == list(range(N_ROWS + 1))
    for i, row in enumerate(history[:N_ROWS]):
        assert row["loss"] == pytest.approx(1.0 / (i + 1))
        assert row["trainer/step"] == i * 10
        assert {"_runtime", "_timestamp"} <= set(row)
    # define_metric("*", step_metric=...) sets step_sync: a row logged without
    # the step metric gets its last value copied in by wandb itself.
    assert history[-1]["acc"] == 0.5
    assert history[-1]["trainer/step"] == (N_ROWS - 1) * 10
    assert "loss" not in history[-1]


def test_metric_definitions(full_run: FullRun) -> None:
    defs = full_run.run.metric_definitions
    assert {"name": "trainer/step", "glob_name": "", "step_metric": ""}.items() <= defs[
        0
    ].items()
    assert defs[1]["glob_name"] == "*"
    assert defs[1]["step_metric"] == "trainer/step"
    assert defs[1]["step_sync"] is True


def test_summary(full_run: FullRun) -> None:
    summary = full_run.run.summary
    assert summary["loss"] == pytest.approx(1.0 / N_ROWS)
    assert summary["acc"] == 0.5
    assert summary["best"] == 0.25
    assert summary["_step"] == N_ROWS
    assert "_wandb" not in summary


def test_records_by_type(full_run: FullRun) -> None:
    counts = full_run.run.records_by_type
    assert counts["header"] == 1
    assert counts["run"] == 1
    assert counts["history"] == N_ROWS + 1
    assert counts["metric"] == 2
    assert counts["alert"] == 1
    assert counts["artifact"] == 1
    assert counts["exit"] == 1
    assert counts["config"] >= 1
    assert sum(counts.values()) == len(read_records(full_run.run.run_files[0]))


def test_read_while_writer_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live run's file is readable at any moment and always a clean prefix.

    wandb-core (0.31) writes the log in whole 32 KiB blocks while the run is
    open (nothing but the 7-byte header until the first block fills; the
    partial last block only at finish), so poll until a block has landed.
    """
    _isolate(monkeypatch, tmp_path)
    run = wandb.init(project="p", id="live0001", dir=str(tmp_path))
    try:
        (run_file,) = find_run_files(tmp_path)
        seen = read_offline_run(run_file)
        for i in range(3000):
            run.log({"i": i, "pad": "x" * 100})
            if i % 50 == 0:
                seen = read_offline_run(run_file)
                assert [row["i"] for row in seen.history] == list(
                    range(len(seen.history))
                )
                if seen.history:
                    break
        assert seen.history, "wandb never flushed a block while the run was open"
        assert seen.run_id == "live0001"
        assert seen.exit_code is None
    finally:
        run.finish()
        wandb.teardown()
    final = read_offline_run(run_file)
    assert final.exit_code == 0
    assert final.history[: len(seen.history)] == seen.history
    assert len(final.history) > len(seen.history)


def test_init_is_fast_enough(full_run: FullRun) -> None:
    # Offline init spawns wandb-core; ~0.7 s cold on a dev box. Generous bound.
    assert full_run.init_seconds < 15


def test_find_run_files_entry_points(full_run: FullRun) -> None:
    (run_file,) = find_run_files(full_run.root)
    assert find_run_files(full_run.root / "wandb") == [run_file]
    assert find_run_files(run_file.parent) == [run_file]
    assert find_run_files(run_file) == [run_file]
    assert read_offline_run(run_file) == read_offline_run(run_file.parent)
    assert read_all_offline_runs(full_run.root) == [full_run.run]


def test_truncated_tail_is_a_clean_prefix(full_run: FullRun, tmp_path: Path) -> None:
    src = full_run.run.run_files[0]
    data = src.read_bytes()
    full = [r.SerializeToString() for r in read_records(src)]
    cut_file = tmp_path / "run-cut.wandb"
    cuts = {0, 3, 7, 8, 13, 14, 15, len(data) - 1, len(data) - 7}
    cuts |= set(range(20, len(data), max(1, len(data) // 200)))
    for cut in sorted(cuts):
        cut_file.write_bytes(data[:cut])
        got = [r.SerializeToString() for r in read_records(cut_file)]
        assert got == full[: len(got)], cut
    # A torn write / preallocated zeros after the last record: same records.
    cut_file.write_bytes(data + b"\x00" * 100)
    assert [r.SerializeToString() for r in read_records(cut_file)] == full
    cut_file.write_bytes(data + os.urandom(50))
    assert len(read_records(cut_file)) == len(full)


def test_resume_same_id_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two inits with the same id + resume="allow" offline = two run dirs."""
    _isolate(monkeypatch, tmp_path)
    try:
        for segment in range(2):
            run = wandb.init(
                project="p",
                id="res00001",
                resume="allow",
                dir=str(tmp_path),
                config={"segment": segment} if segment else {"lr": 0.1, "segment": 0},
                tags=["t"] if segment == 0 else None,
            )
            # Offline, wandb cannot know the previous segment: it is not
            # marked resumed and _step starts again at 0.
            assert not run.resumed
            assert run.starting_step == 0
            for i in range(3):
                run.log({"v": segment * 10 + i})
            run.finish(exit_code=segment)
    finally:
        wandb.teardown()

    files = find_run_files(tmp_path)
    assert len(files) == 2
    assert len({f.parent for f in files}) == 2  # one offline-run-* dir per init
    assert all(f.name == "run-res00001.wandb" for f in files)
    # Same second -> wandb suffixes the second dir with "-1"; otherwise the
    # timestamps differ. Either way both dir names end with the id (+suffix).
    assert all("-res00001" in f.parent.name for f in files)

    (merged,) = read_all_offline_runs(tmp_path)
    assert merged == read_offline_run(tmp_path)
    assert merged.run_id == "res00001"
    assert [row["v"] for row in merged.history] == [0, 1, 2, 10, 11, 12]
    assert [row["_step"] for row in merged.history] == [0, 1, 2, 0, 1, 2]
    assert merged.config == {"lr": 0.1, "segment": 1}
    assert merged.tags == ["t"]
    assert merged.exit_code == 1  # the last segment decides
    assert merged.records_by_type["run"] == 2
    assert merged.run_files == files


def test_killed_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process SIGKILLed mid-run leaves a readable file with no exit record."""
    _isolate(monkeypatch, tmp_path)
    script = textwrap.dedent(
        f"""
        import os, signal, time, wandb
        run = wandb.init(project="p", id="kill0001", dir={str(tmp_path)!r})
        for i in range(300):
            run.log({{"i": i, "pad": "x" * 200}})
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert proc.returncode == -9
    run = read_offline_run(tmp_path)
    assert run.run_id == "kill0001"
    assert run.exit_code is None
    assert [row["i"] for row in run.history] == list(range(len(run.history)))
    assert len(run.history) > 0


# --- Framing edge cases on synthetic files (W&B's writer does not let us pick
# --- record sizes precisely enough to hit every block-boundary case). -------


def _frame(payloads: list[bytes], crc: str = "ieee") -> bytes:
    """Minimal writer of W&B's LevelDB-log framing, mirroring wandb-core."""

    def checksum(kind: int, body: bytes) -> int:
        if crc == "ieee":
            return zlib.crc32(body, zlib.crc32(bytes([kind])))
        poly, c = 0x82F63B78, 0xFFFFFFFF
        for byte in bytes([kind]) + body:
            c ^= byte
            for _ in range(8):
                c = (c >> 1) ^ poly if c & 1 else c >> 1
        c ^= 0xFFFFFFFF
        return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # LevelDB mask

    out = bytearray(struct.pack("<4sHB", b":W&B", 0xBEE1, 0))
    for payload in payloads:
        rest, first = payload, True
        while True:
            left = 32768 - len(out) % 32768
            if left < 7:
                out += b"\x00" * left
                continue
            n = min(len(rest), left - 7)
            last = n == len(rest)
            kind = (1 if last else 2) if first else (4 if last else 3)
            body, rest = rest[:n], rest[n:]
            out += struct.pack("<IHB", checksum(kind, body), n, kind) + body
            first = False
            if last:
                break
    return bytes(out)


@pytest.mark.parametrize("crc", ["ieee", "crc32c"])
def test_framing_block_boundaries(tmp_path: Path, crc: str) -> None:
    # Block 0: header(7) + FULL(7+32747) leaves exactly 7 bytes, so the next
    # record starts with a zero-length FIRST chunk; the third leaves 3 bytes
    # of zero padding; 70 000 bytes need MIDDLE chunks; plus an empty record.
    sizes = [32747, 5, 32746, 70_000, 0, 10]
    payloads = [bytes([i + 1]) * size for i, size in enumerate(sizes)]
    framed = _frame(payloads, crc)
    assert framed[32761 + 4 : 32761 + 7] == b"\x00\x00\x02"  # empty FIRST chunk
    assert framed[2 * 32768 - 3 : 2 * 32768] == b"\x00\x00\x00"  # padding
    path = tmp_path / "run-x.wandb"
    path.write_bytes(framed)
    assert list(iter_record_payloads(path)) == payloads


def test_config_updates_removes_and_value_wrapping(tmp_path: Path) -> None:
    records = []
    r = pb.Record()
    r.run.run_id, r.run.project = "syn", "p"
    for key, value in [
        ("_wandb", "{}"),
        ("a", "1"),
        ("b", '{"value": 2, "desc": "d"}'),
        ("c", '{"value": 3, "other": 4}'),
        ("gone", "5"),
    ]:
        item = r.run.config.update.add()
        item.key, item.value_json = key, value
    records.append(r)
    c = pb.Record()
    c.config.remove.add().key = "gone"
    nested = c.config.update.add()
    nested.nested_key.extend(["n", "deep"])
    nested.value_json = "[1, 2]"
    records.append(c)
    path = tmp_path / "run-syn.wandb"
    path.write_bytes(_frame([rec.SerializeToString() for rec in records]))

    run = read_offline_run(path)
    assert run.config == {
        "a": 1,
        "b": 2,
        "c": {"value": 3, "other": 4},
        "n": {"deep": [1, 2]},
    }
    assert run.exit_code is None
    assert run.records_by_type == {"run": 1, "config": 1}


def test_not_a_wandb_file(tmp_path: Path) -> None:
    bad = tmp_path / "run-bad.wandb"
    bad.write_bytes(b"definitely not a W&B log")
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        read_records(bad)
    short = tmp_path / "run-short.wandb"
    short.write_bytes(b":W&")  # writer has not flushed the header yet
    assert read_records(short) == []
    with pytest.raises(FileNotFoundError):
        read_offline_run(tmp_path / "nothing-here")


def test_several_runs_need_read_all(tmp_path: Path) -> None:
    for run_id in ("r1", "r2"):
        rec = pb.Record()
        rec.run.run_id = run_id
        d = tmp_path / f"offline-run-20250101_000000-{run_id}"
        d.mkdir()
        (d / f"run-{run_id}.wandb").write_bytes(_frame([rec.SerializeToString()]))
    with pytest.raises(ValueError, match="several runs"):
        read_offline_run(tmp_path)
    assert sorted(r.run_id for r in read_all_offline_runs(tmp_path)) == ["r1", "r2"]


def test_a_file_a_killed_process_left_empty_is_not_a_run(full_run: FullRun, tmp_path: Path) -> None:
    """W&B writes whole 32 KiB blocks: a process killed before the first one
    leaves a file with no run record, next to the run's real segments."""
    (segment,) = full_run.run.run_files
    real = tmp_path / "wandb" / segment.parent.name / segment.name
    ghost = tmp_path / "wandb" / (segment.parent.name + "-1") / segment.name
    for path, data in ((real, segment.read_bytes()), (ghost, segment.read_bytes()[:7])):
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
    (run,) = read_all_offline_runs(tmp_path)
    assert run.run_id == "abc12345" and run.run_files == [real]
    assert read_offline_run(ghost).run_id == ""  # read on its own, it is still readable


def test_the_backend_reads_back_what_this_reader_reads(full_run: FullRun) -> None:
    """The W&B backend has its own reader (it may not import tests/); both agree."""
    from foundry_track_wandb._readback import scan

    (segment,) = full_run.run.run_files
    held, end = scan(segment, 0)
    assert end == segment.stat().st_size  # a finished run: every record is complete
    steps = [row["trainer/step"] for row in full_run.run.history if "loss" in row]
    assert [h.key[0] for h in held if h.kind == "history"][:len(steps)] == steps
    assert [h.key for h in held if h.kind == "alert"] == [("T", "hello", "WARN")]
    assert [h.key[0] for h in held if h.kind == "artifact"] == ["myart"]
