"""A tracker that is down when the run starts, or goes down mid-run, is retried
in the background while the fallback runs; when it answers it catches up from
the journal and goes on live, with no ``foundry-track sync``. A backend still
behind at ``finish``'s deadline is closed anyway (``complete=False``), so no
remote run stays RUNNING.

The MLflow tests run against one real ``mlflow server`` of this module (it
answers ``/health`` about 10 s after it is started), which they stop, kill
and start again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import mlflow
import pytest

import foundry_track as ft
from foundry_track.journal import JOURNAL_FILE, Journal
from foundry_track.worker import is_transient
from tests.helpers.mlflow_server import MlflowServer, free_port
from tests.helpers.recorder import metric_steps, records
from tests.helpers.tb import scalars

KEYS = [f"train/m{i}" for i in range(3)]


def _wait(what: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not what():
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


# --------------------------------------------------------------------------- #
# with a fault-injection backend: fast, no server
# --------------------------------------------------------------------------- #


def test_a_tracker_down_at_start_catches_up_and_goes_on_live(tmp_path: Path, fault_plugins: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="foundry_track")
    flag, out = tmp_path / "down.flag", tmp_path / "o.jsonl"
    flag.touch()  # tracker_start raises ConnectionRefusedError while it exists
    cfg = {"dir": str(tmp_path / "runs"), "fallback": "tensorboard", "flush_timeout": 20,
           "backends": {"unreachable": {"out": str(out), "fault_flag": str(flag)}}}
    run = ft.init(cfg)

    def start_failed() -> bool:
        return Journal(run.dir / JOURNAL_FILE, readonly=True).positions().get("unreachable", {}).get("errors", 0) > 0

    for step in range(100):
        run.log({"loss": float(step)}, step=step)
        if step == 40:
            assert _wait(start_failed, 20)
            flag.unlink()  # the tracker answers from now on
        time.sleep(0.02)
    # Live: every step arrives before finish is even called.
    assert _wait(lambda: len(metric_steps(out)) == 100, 15), metric_steps(out)
    t0 = time.perf_counter()
    undelivered = run.finish()
    finish_s = time.perf_counter() - t0
    print(f"\ntracker down at start: 100/100 steps live, finish {finish_s:.2f} s")
    assert undelivered == {}
    assert metric_steps(out) == {s: 1 for s in range(100)}
    # The fallback took over meanwhile and keeps its copy.
    assert [s for s, _ in scalars(run.backend_ids["tensorboard"]["log_dir"])["loss"]] == list(range(100))
    assert [(r["status"], r["complete"]) for r in records(out) if r["hook"] == "finish"] == [("success", True)]
    assert "could not start (ConnectionRefusedError" in caplog.text and "Retrying in the background" in caplog.text
    assert "started after all" in caplog.text
    assert caplog.text.count("could not start") == 1  # reported once, not per attempt
    assert Journal(run.dir / JOURNAL_FILE, readonly=True).positions()["unreachable"]["errors"] >= 1


def test_a_tracker_down_until_the_end_counts_everything_and_finish_keeps_its_bound(
        tmp_path: Path, fault_plugins: Path) -> None:
    flag, out = tmp_path / "down.flag", tmp_path / "o.jsonl"
    flag.touch()
    cfg = {"dir": str(tmp_path / "runs"), "flush_timeout": 2, "fallback": None,
           "backends": {"unreachable": {"out": str(out), "fault_flag": str(flag)}}}
    run = ft.init(cfg)
    for step in range(20):
        run.log({"loss": float(step)}, step=step)
    t0 = time.perf_counter()
    undelivered = run.finish()
    finish_s = time.perf_counter() - t0
    print(f"\ntracker down until the end: finish {finish_s:.2f} s (flush_timeout 2 s)")
    assert undelivered == {"unreachable": 20}
    assert 1.5 < finish_s < 2 + 1.5  # retried up to the deadline, not past it (+ a delivery process's exit)
    assert records(out) == []
    flag.unlink()
    assert ft.sync(run.dir) == {}
    assert metric_steps(out) == {s: 1 for s in range(20)}
    assert [r["complete"] for r in records(out) if r["hook"] == "finish"] == [True]


@pytest.mark.parametrize(("exc", "transient"), [
    (ft.TransientError("server busy"), True),
    (ConnectionRefusedError(111, "Connection refused"), True),
    (ConnectionAbortedError(103, "Connection aborted"), True),
    (TimeoutError("timed out"), True),
    (FileNotFoundError(2, "No such file or directory"), False),  # a missing folder does not heal by waiting
    (PermissionError(13, "Permission denied"), False),
    (ValueError("invalid option"), False),
])
def test_which_start_failures_are_retried(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_mlflow_connection_aborted_at_start_is_transient() -> None:
    """A server whose workers are still starting drops the first request
    ("Connection aborted"); MLflow wraps that in an MlflowException."""
    from http.client import RemoteDisconnected

    import requests
    import urllib3
    from foundry_track_mlflow import MlflowBackend
    from mlflow.exceptions import MlflowException

    def request() -> None:
        try:
            raise requests.exceptions.ConnectionError(urllib3.exceptions.ProtocolError(
                "Connection aborted.", RemoteDisconnected("Remote end closed connection without response")))
        except requests.exceptions.ConnectionError as exc:
            raise MlflowException(f"API request to http://127.0.0.1:1/api failed with exception {exc}")  # noqa: B904

    with pytest.raises(ft.TransientError) as caught, MlflowBackend()._errors("start"):
        request()
    assert is_transient(caught.value)


# --------------------------------------------------------------------------- #
# MLflow: a real server, stopped and killed
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One server for the module; created stopped."""
    root = tmp_path_factory.mktemp("mlflow-retry")
    srv = MlflowServer(port=free_port(), db_path=root / "mlflow.db", artifacts_dir=root / "artifacts")
    try:
        yield srv
    finally:
        srv.stop()


def _history(client: mlflow.MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _runs_tagged(client: mlflow.MlflowClient, project: str, run_id: str) -> list[Any]:
    exp = client.get_experiment_by_name(project)
    assert exp is not None, f"experiment {project} was not created"
    return client.search_runs([exp.experiment_id], f"tags.`foundry_track.run_id` = '{run_id}'")


def _in_background(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_mlflow_down_at_start_and_killed_mid_run_gets_every_step_once_without_sync(
        server: MlflowServer, tmp_path: Path) -> None:
    server.stop()
    project = f"ft-retry-{uuid.uuid4().hex[:8]}"
    cfg = {"project": project, "dir": str(tmp_path / "runs"), "flush_timeout": 90, "fallback": "tensorboard",
           "backends": {"mlflow": {"tracking_uri": server.uri}}}
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    run = ft.init(cfg)
    step = 0
    slowest = 0.0

    def log_while(keep_on: Callable[[], bool]) -> None:
        nonlocal step, slowest
        while keep_on():
            t0 = time.perf_counter()
            run.log({k: step * 10 + i for i, k in enumerate(KEYS)}, step=step)
            slowest = max(slowest, time.perf_counter() - t0)
            step += 1
            time.sleep(0.02)

    def for_seconds(seconds: float) -> Callable[[], bool]:
        end = time.monotonic() + seconds
        return lambda: time.monotonic() < end

    def delivered() -> int:
        run_id = run.backend_ids.get("mlflow", {}).get("run_id")
        return len(client.get_metric_history(run_id, KEYS[0])) if run_id else 0

    try:
        # Down at start; the server process starts 5 s later (it answers ~10 s after that).
        log_while(for_seconds(5))
        booting = _in_background(server.start)
        log_while(booting.is_alive)
        down_at_start = step
        # It started by itself and caught up: live, before any finish or sync.
        log_while(for_seconds(1))
        assert _wait(lambda: delivered() >= down_at_start, 40), (delivered(), down_at_start)
        # Killed mid-run (SIGKILL), restarted 10 s later.
        server.kill()
        log_while(for_seconds(10))
        booting = _in_background(server.start)
        log_while(booting.is_alive)
        log_while(for_seconds(1))
    finally:
        t0 = time.perf_counter()
        undelivered = run.finish()
        finish_s = time.perf_counter() - t0
    run_id = run.backend_ids["mlflow"]["run_id"]
    histories = {k: _history(client, run_id, k) for k in KEYS}
    received = len(histories[KEYS[0]])
    duplicated = received - len({s for s, _ in histories[KEYS[0]]})
    print(f"\nMLflow down at start + killed mid-run: {step} steps expected, {received} received, "
          f"{duplicated} duplicated; finish {finish_s:.2f} s; run.log worst {slowest * 1e3:.2f} ms")
    assert undelivered == {}
    for i, key in enumerate(KEYS):
        assert histories[key] == [(s, float(s * 10 + i)) for s in range(step)], key  # every step exactly once
    [mrun] = _runs_tagged(client, project, run.id)  # one run
    assert mrun.info.run_id == run_id and client.get_run(run_id).info.status == "FINISHED"
    assert [s for s, _ in scalars(run.backend_ids["tensorboard"]["log_dir"])[KEYS[0]]] == list(range(step))
    assert slowest < 0.05, f"run.log took {slowest * 1e3:.1f} ms during the outages"


def test_an_mlflow_run_still_behind_at_the_deadline_is_closed_not_left_running(
        server: MlflowServer, tmp_path: Path, fault_plugins: Path) -> None:
    if not server.is_running():
        server.start()
    flag = tmp_path / "slow.flag"
    flag.touch()  # each metrics call waits 0.2 s while it exists
    project = f"ft-behind-{uuid.uuid4().hex[:8]}"
    cfg = {"project": project, "dir": str(tmp_path / "runs"), "flush_timeout": 8,
           "backends": {"slow_mlflow": {"tracking_uri": server.uri, "delay_per_call": 0.2, "fault_flag": str(flag)}}}
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    steps = 100
    run = ft.init(cfg)
    for step in range(steps):
        run.log({"loss": float(step)}, step=step)
        run.log_params({"phase": "train"})  # unchanged: no request, but one metrics call per step
    t0 = time.perf_counter()
    undelivered = run.finish()
    finish_s = time.perf_counter() - t0
    run_id = run.backend_ids["slow_mlflow"]["run_id"]
    status = client.get_run(run_id).info.status
    got = len(client.get_metric_history(run_id, "loss"))
    print(f"\nMLflow behind at finish (flush_timeout 8 s): {got}/{steps} steps, finish {finish_s:.2f} s, "
          f"run {status}")
    assert 0 < undelivered["slow_mlflow"] <= 2 * steps
    assert finish_s < 8 + 1.5  # flush_timeout (+ a delivery process's exit)
    assert status == "KILLED"  # closed as incomplete, not RUNNING, not FINISHED

    flag.unlink()
    assert ft.sync(run.dir) == {}
    assert client.get_run(run_id).info.status == "FINISHED"
    assert _history(client, run_id, "loss") == [(s, float(s)) for s in range(steps)]
    assert len(_runs_tagged(client, project, run.id)) == 1
