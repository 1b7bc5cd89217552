"""Shared fixtures: environment isolation, the fault-injection plugin
distribution, and one real MLflow server for the session."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

from foundry_track.plugins import discover

PLUGIN_DATA = Path(__file__).parent / "plugins" / "data"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[None]:
    """No test reads the developer's trackers, credentials or run folders.

    ``FOUNDRY_TRACK_TEST_DELIVERY=thread`` runs every test with the backends in
    threads of the training process instead of the delivery process (the
    default); a test marked ``thread_delivery`` always runs with threads.
    """
    delivery = os.environ.get("FOUNDRY_TRACK_TEST_DELIVERY")
    for var in list(os.environ):
        if var.startswith(("FOUNDRY_TRACK_", "WANDB_", "_WANDB", "MLFLOW_")):
            monkeypatch.delenv(var)
    if request.node.get_closest_marker("thread_delivery") is not None:
        monkeypatch.setenv("FOUNDRY_TRACK_DELIVERY", "thread")
    elif delivery:
        monkeypatch.setenv("FOUNDRY_TRACK_DELIVERY", delivery)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    for flag in ("WANDB_X_DISABLE_STATS", "WANDB_X_DISABLE_MACHINE_INFO", "WANDB_X_DISABLE_META"):
        monkeypatch.setenv(flag, "true")
    # Keep wandb's caches and staging out of the home directory.
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    for var, sub in (("WANDB_CACHE_DIR", ".wandb-cache"), ("WANDB_DATA_DIR", ".wandb-data"),
                     ("WANDB_ARTIFACT_DIR", ".wandb-artifacts")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / ".wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc-none"))
    monkeypatch.chdir(tmp_path)
    discover(refresh=True)
    yield
    discover(refresh=True)


@pytest.fixture
def fault_plugins(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the fault-injection distribution (a real *.dist-info with entry
    points) on sys.path and PYTHONPATH, so its backends are discovered the
    normal way, here and in subprocesses."""
    monkeypatch.syspath_prepend(str(PLUGIN_DATA))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PLUGIN_DATA), *sys.path]))
    discover(refresh=True)
    return PLUGIN_DATA


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real `mlflow server` (SQLite store) on a free 127.0.0.1 port."""
    from tests.helpers.mlflow_server import start_mlflow_server

    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        server.stop()
