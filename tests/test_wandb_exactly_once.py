"""W&B holds every step exactly once after a crash.

A trainer logging 10 scalars every 2 ms to W&B (offline) is SIGKILLed while
W&B is still starting, and 2, 4 and 6 s into the run, with the backends on
threads of the training process: the trainer alone (W&B's service notices and
quits, writing or not what it had) or with every process it started, as a
job's cgroup is killed (W&B's service too). And once with the default delivery
process, killed with the trainer and W&B's service. Then ``foundry-track sync
RUN_DIR`` runs.
The ``.wandb`` files, read back with W&B's own record format
(tests/helpers/wandb_offline.py), hold each step of the journal once, and the
W&B run ends as killed.

Two things make it hold (backends/foundry_track_wandb/_ledger.py): the
backend's position moves only after ``tracker_flush`` has made sure every row is
either in a complete block of the ``.wandb`` file or in the backend's own
unsaved-events file (W&B's service loses its last, partial block with a killed
process); and ``sync`` reads back what the files hold past the checkpoint and
sends only what they lack. The hook-level tests below check the read-back
against batch boundaries that differ between the crashed run and the replay.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from foundry_track_wandb import STEP_METRIC, WandbBackend, WandbOptions

from foundry_track.events import AlertEvent, ArtifactEvent, ImageEvent, MetricRow, RunInfo, TextEvent
from foundry_track.journal import JOURNAL_FILE, Journal
from tests.helpers.wandb_offline import OfflineRun, find_run_files, read_all_offline_runs

CHILD = textwrap.dedent("""
    import sys, time
    import foundry_track as ft
    run = ft.init({"dir": sys.argv[1], "delivery": sys.argv[2], "fallback": None, "backends": {"wandb": {}}})
    print(run.dir, flush=True)
    step = 0
    while True:
        run.log({f"m{i}": step + i / 10 for i in range(10)}, step=step)
        step += 1
        time.sleep(0.002)
""")


def _closed_run(root: Path, timeout: float = 15.0) -> OfflineRun:
    """The one W&B run under ``root`` once its last segment holds its exit record
    (W&B writes the file's last block a moment after ``finish`` returns)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = read_all_offline_runs(root)
        if (len(runs) == 1 and runs[0].exit_code is not None) or time.monotonic() > deadline:
            assert len(runs) == 1, [r.run_id for r in runs]
            return runs[0]
        time.sleep(0.1)


def _report(expected: list[int], steps: list[int]) -> dict[str, int]:
    return {"expected": len(expected), "received": len(steps), "missing": len(set(expected) - set(steps)),
            "duplicated": sum(n - 1 for n in collections.Counter(steps).values())}


def _kill(pid: int, what: str) -> None:
    """SIGKILL the trainer, or ("all") the trainer and every process it started,
    as a job's cgroup is killed (W&B's service runs in a session of its own, so
    a process group kill does not reach it)."""
    import psutil

    procs = [psutil.Process(pid), *(psutil.Process(pid).children(recursive=True) if what == "all" else [])]
    for proc in procs:
        proc.kill()


CASES = [  # (seconds after init returned, tracking.delivery, what is killed)
    (0.3, "thread", "trainer"),  # W&B still starting
    (2.0, "thread", "all"),
    (4.0, "thread", "trainer"),
    (6.0, "thread", "all"),
    (5.0, "process", "all"),  # the delivery process and W&B's service with the trainer
]


@pytest.mark.parametrize(("moment", "delivery", "kill"), CASES,
                         ids=["wandb-starting", "2s-all", "4s-trainer", "6s-all", "5s-process-all"])
def test_sigkill_then_sync_holds_every_step_once(moment: float, delivery: str, kill: str, tmp_path: Path) -> None:
    # conftest: WANDB_MODE=offline and WANDB_DIR=tmp_path, inherited by the child
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "runs"), delivery],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    run_dir = Path(child.stdout.readline().strip())
    time.sleep(moment)
    _kill(child.pid, kill)
    child.wait(timeout=30)

    result = subprocess.run([sys.executable, "-m", "foundry_track.cli", "sync", str(run_dir)],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = sorted(r.step for r in Journal(run_dir / JOURNAL_FILE, readonly=True).iter_records("metrics"))
    wb = _closed_run(tmp_path)
    steps = [int(row[STEP_METRIC]) for row in wb.history if "m0" in row]
    report = _report(expected, steps)
    print(f"\nW&B after SIGKILL of {kill} at {moment:g} s ({delivery} delivery) and sync: {report}")
    assert expected, "the child logged nothing before the kill"
    assert sorted(steps) == expected, report
    assert wb.exit_code == 255  # killed


# --------------------------------------------------------------------------- #
# The read-back, hook by hook (one process: the crash is simulated on the files)
# --------------------------------------------------------------------------- #


def _info(tmp_path: Path, run_id: str) -> RunInfo:
    return RunInfo(id=run_id, name=run_id, project="p", entity=None, tags=(), notes=None, group=None,
                   config={}, dir=tmp_path / "run", resumed=False)


def _rows(steps: list[int], t0: float) -> list[MetricRow]:
    return [MetricRow(step, t0 + k * 1e-3, {"loss": float(step), "n": k}) for k, step in enumerate(steps)]


def _crashed(tmp_path: Path, run_id: str, sent: list[MetricRow], at: int,
             truncate: bool) -> tuple[dict[str, str], dict[str, str]]:
    """A backend that got ``sent[:at]`` before its last checkpoint and the rest
    after it, in other batches than a replay uses; then its W&B run closed.
    ``truncate``: the crash also lost everything W&B wrote after the checkpoint."""
    backend = WandbBackend()
    identity = backend.tracker_start(run=_info(tmp_path, run_id), options=WandbOptions(), resume_state={})
    backend.tracker_flush()
    backend.tracker_log_params({"lr": 0.1})
    for i in range(0, at, 3):
        backend.tracker_log_metrics(sent[i:min(i + 3, at)])
    backend.tracker_log_text(TextEvent("notes", 4, sent[0].time, "hello"))
    checkpoint = backend.tracker_flush()
    assert checkpoint is not None and checkpoint["wandb_unsaved"]  # W&B has not written its last block yet
    for i in range(at, len(sent), 2):
        backend.tracker_log_metrics(sent[i:i + 2])
    for event in _media_after(tmp_path, sent[-1].time):
        getattr(backend, event[0])(event[1])
    assert backend._run is not None
    backend._run.finish(exit_code=255)
    (path,) = find_run_files(tmp_path)
    _wait_for_exit_record(path)
    if truncate:
        with open(path, "r+b") as fh:
            fh.truncate(int(checkpoint["wandb_offset"]))
    return identity, dict(checkpoint)


def _media_after(tmp_path: Path, wall: float) -> list[tuple[str, Any]]:
    """An alert, an image and an artifact logged after the rows (hook name, event)."""
    png, model = tmp_path / "img.png", tmp_path / "model.bin"
    if not png.exists():
        from PIL import Image

        Image.new("RGB", (2, 2), (0, 255, 0)).save(png)
        model.write_bytes(b"weights")
    return [("tracker_alert", AlertEvent("spike", "loss 12", "warn", 9, wall)),
            ("tracker_log_image", ImageEvent("samples", 9, wall, png, caption="c", width=2, height=2)),
            ("tracker_log_artifact", ArtifactEvent(model, "model", "ckpt", 9, wall, "sha256:00", None, {}))]


def _wait_for_exit_record(path: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and read_all_offline_runs(path)[0].exit_code is None:
        time.sleep(0.05)


@pytest.mark.parametrize("truncate", [False, True], ids=["file-holds-all", "file-lost-past-checkpoint"])
def test_replay_sends_only_what_the_file_lacks(tmp_path: Path, truncate: bool) -> None:
    t0 = time.time()
    # Steps 301 and 350 are logged twice in a row: W&B rows that merge two journal
    # rows, or one each when a batch boundary falls between them.
    steps = [s for s in range(400) for _ in range(2 if s in (301, 350) else 1)]
    sent = _rows(steps, t0)
    identity, checkpoint = _crashed(tmp_path, "replay01", sent, at=300, truncate=truncate)
    assert int(checkpoint["wandb_offset"]) > 32 * 1024  # 300 rows fill a few of W&B's blocks

    # sync: the dispatcher offers everything after the checkpoint again, in one batch.
    backend = WandbBackend()
    backend.tracker_start(run=_info(tmp_path, "replay01"), options=WandbOptions(),
                          resume_state={**identity, **checkpoint})
    backend.tracker_flush()
    backend.tracker_log_metrics(sent[300:])
    for event in _media_after(tmp_path, sent[-1].time):
        getattr(backend, event[0])(event[1])
    backend.tracker_log_metrics(_rows([400, 401], t0 + 1))  # new rows
    backend.tracker_flush()
    backend.tracker_finish("killed", True)

    wb = _closed_run(tmp_path)
    held: collections.Counter[int] = collections.Counter()
    for row in wb.history:
        if "loss" in row:
            held[int(row[STEP_METRIC])] += row.get("_foundry_track/rows", 1)
    assert held == collections.Counter([*steps, 400, 401]), _report(steps, list(held.elements()))
    assert [a["title"] for a in wb.alerts] == ["spike"]
    assert [row[STEP_METRIC] for row in wb.history if "notes._type" in row] == [4]
    assert [row[STEP_METRIC] for row in wb.history if "samples._type" in row] == [9]
    assert [a["name"] for a in wb.artifacts if a["type"] == "model"] == ["ckpt"]
    assert wb.config["lr"] == 0.1
    assert wb.exit_code == 255


def test_flush_never_overwrites_the_file_the_last_checkpoint_names(tmp_path: Path) -> None:
    backend = WandbBackend()
    backend.tracker_start(run=_info(tmp_path, "ledger01"), options=WandbOptions(), resume_state={})
    first = backend.tracker_flush()
    assert first is not None and first["wandb_unsaved"] == ""  # nothing sent yet
    previous: Any = None
    for k in range(4):
        backend.tracker_log_metrics(_rows([k], time.time()))
        before = Path(previous["wandb_unsaved"]).read_text() if previous else None
        checkpoint: Any = backend.tracker_flush()
        assert checkpoint["wandb_unsaved"] != (previous or {}).get("wandb_unsaved")
        if previous:  # the journal may still hold the previous checkpoint: its file is intact
            assert Path(previous["wandb_unsaved"]).read_text() == before
        previous = checkpoint
    backend.tracker_finish("success", False)  # a gap: not finished successfully
    wb = _closed_run(tmp_path)
    assert [row[STEP_METRIC] for row in wb.history] == [0, 1, 2, 3]
    assert wb.exit_code == 1


def test_online_server_count_and_alike_events() -> None:
    """Online, the server holds a prefix of what W&B wrote (it uploads in order),
    known by its number of rows; two events alike are two records."""
    from foundry_track_wandb._ledger import Skipper, server_holds
    from foundry_track_wandb._readback import Held

    rows = [Held("history", (s, float(s), None)) for s in range(4)]
    alert = Held("alert", ("spike", "loss 12", "WARN"))
    held = [rows[0], alert, rows[1], alert, rows[2], rows[3]]
    assert server_holds(held, 2) == [rows[0], alert, rows[1], alert]
    assert server_holds(held, 0) == []  # nothing past the checkpoint on the server: everything is resent
    skipper = Skipper(server_holds(held, 1))
    assert skipper.take(("alert", alert.key)) == 1
    assert skipper.take(("alert", alert.key)) is None  # the second alike alert is not on the server
    assert skipper.take(("history", (0, 0.0, None)), None) == 1 and not skipper
