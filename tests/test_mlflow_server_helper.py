"""Verification of tests/helpers/mlflow_server.py against a real ``mlflow server``.

One server for the whole module (starting one costs ~8-11 s on 2 cores); the
function-scoped ``server`` fixture restarts it if a previous test left it
stopped, so the tests do not depend on their order.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from tests.helpers.mlflow_server import (
    MlflowServer,
    _port_is_bindable,
    free_port,
    start_mlflow_server,
)

N_METRICS = 1000  # == MAX_METRICS_PER_BATCH in MLflow 3.x: one log_batch call


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> MlflowServer:
    # Bounded client retries so a broken server fails the test in seconds, not
    # after the default ~4 minutes of retries (7 retries, backoff factor 2).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    if not mlflow_server.is_running():
        mlflow_server.start()
    return mlflow_server


def _metric_history(client: mlflow.MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    assert _port_is_bindable("127.0.0.1", port)


def test_roundtrip_survives_restart(server: MlflowServer, tmp_path: Path) -> None:
    assert server.uri == f"http://127.0.0.1:{server.port}"
    assert server.is_up() and server.is_running()
    client = mlflow.MlflowClient(tracking_uri=server.uri)

    exp_id = client.create_experiment(f"helper-{uuid.uuid4().hex[:8]}")
    # Artifacts must go through the server's HTTP proxy, not the local FS.
    assert client.get_experiment(exp_id).artifact_location.startswith("mlflow-artifacts:")
    run_id = client.create_run(exp_id).info.run_id

    now_ms = int(time.time() * 1000)
    metrics = [Metric("loss", 1.0 / (i + 1), now_ms + i, i) for i in range(N_METRICS)]
    client.log_batch(run_id, metrics=metrics)
    expected = {i: 1.0 / (i + 1) for i in range(N_METRICS)}
    assert _metric_history(client, run_id, "loss") == expected

    payload = os.urandom(4096) + b"\nhello from foundry-track\n"
    src = tmp_path / "hello.bin"
    src.write_bytes(payload)
    client.log_artifact(run_id, str(src), artifact_path="sub")
    # Landed in the server's --artifacts-destination ...
    stored = list(server.artifacts_dir.rglob("hello.bin"))
    assert len(stored) == 1 and stored[0].read_bytes() == payload
    # ... and can be downloaded back over HTTP.
    dl = client.download_artifacts(run_id, "sub/hello.bin", dst_path=str(tmp_path / "dl1"))
    assert Path(dl).read_bytes() == payload

    client.set_terminated(run_id, "FINISHED")
    assert client.get_run(run_id).info.status == "FINISHED"

    old_port = server.port
    server.restart()
    assert server.port == old_port and server.is_up()

    # Same client object (same URI) keeps working; data survived.
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert _metric_history(client, run_id, "loss") == expected
    dl = client.download_artifacts(run_id, "sub/hello.bin", dst_path=str(tmp_path / "dl2"))
    assert Path(dl).read_bytes() == payload

    # New writes work after the restart.
    client.log_metric(run_id, "after_restart", 42.0, step=7)
    assert _metric_history(client, run_id, "after_restart") == {7: 42.0}
    run2 = client.create_run(exp_id).info.run_id
    client.log_batch(run2, metrics=[Metric("loss", 0.5, now_ms, 0)])
    assert _metric_history(client, run2, "loss") == {0: 0.5}


def test_kill_then_start_on_same_port(server: MlflowServer) -> None:
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    exp_id = client.create_experiment(f"kill-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(exp_id).info.run_id
    client.log_metric(run_id, "m", 1.0, step=0)

    server.kill()  # SIGKILL the whole tree: no graceful shutdown, like a crash
    assert not server.is_running() and not server.is_up()
    # uvicorn binds with SO_REUSEADDR, so TIME_WAIT sockets do not block it.
    assert _port_is_bindable("127.0.0.1", server.port)

    server.start()
    client.log_metric(run_id, "m", 2.0, step=1)
    assert _metric_history(client, run_id, "m") == {0: 1.0, 1: 2.0}


def test_client_fails_fast_after_stop(
    server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    client.search_experiments(max_results=1)  # works while up

    server.stop()
    server.stop()  # idempotent
    assert not server.is_running() and not server.is_up()

    # Defaults (7 retries, backoff factor 2) would take ~4 minutes to fail.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    t0 = time.monotonic()
    with pytest.raises(MlflowException, match="Max retries exceeded|Connection refused"):
        client.search_experiments(max_results=1)
    assert time.monotonic() - t0 < 2.0
