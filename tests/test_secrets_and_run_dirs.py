"""No secret is written anywhere a run writes; one live writer per run
directory; run ids that are safe folder names; `sync` bounded and counted.

The secrets test greps every file the run wrote (run directory, journal,
run.json, TensorBoard events, W&B offline files, the MLflow server's database
and artifacts) and every log line for each secret it passed in.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

import foundry_track as ft
from foundry_track.errors import RunDirError
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.recorder import metric_steps

URI_PASSWORD = "uri-pw-7f3k2q"
ENTITY_TOKEN = "entity-tok-9x8y7z"
PARAM_KEY = "param-key-4d5e6f"


def _with_password(uri: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=f"alice:{URI_PASSWORD}@{parts.netloc}"))


def _files_holding(root: Path, secrets: list[str]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {s}" for s in secrets if s.encode() in data]
    return found


def test_no_secret_reaches_any_file_or_log(tmp_path: Path, mlflow_server: MlflowServer,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret_uri = _with_password(mlflow_server.uri)
    config = {
        "dir": str(tmp_path / "runs"), "entity": f"alice:{ENTITY_TOKEN}@team",
        "backends": {"tensorboard": {"log_dir": str(tmp_path / "tb")}, "mlflow": {"tracking_uri": secret_uri},
                     "wandb": {"dir": str(tmp_path / "wandb")}},
    }
    with ft.init(config, params={"optimizer": {"lr": 0.1}, "api_key": PARAM_KEY, "db": secret_uri}) as run:
        for step in range(20):
            run.log({"loss": 1.0 / (step + 1)}, step=step)
    assert run.undelivered == {}
    mlflow_id = run.backend_ids["mlflow"]["run_id"]
    secrets = [URI_PASSWORD, ENTITY_TOKEN, PARAM_KEY]
    # The secrets did reach their use: the MLflow run got every step through the URI with the password.
    from mlflow import MlflowClient

    assert len(MlflowClient(mlflow_server.uri).get_metric_history(mlflow_id, "loss")) == 20
    leaks = _files_holding(tmp_path, secrets) + _files_holding(mlflow_server.db_path.parent, secrets)
    leaks += [f"log: {s}" for s in secrets if s in caplog.text]
    assert not leaks, "secrets written in clear:\n" + "\n".join(leaks)
    assert "***" in json.loads((run.dir / "run.json").read_text())["backends"]["mlflow"]["tracking_uri"]

    # sync never uses the redacted copy: without the config it says what to pass...
    (run.dir / "run.json").write_text(json.dumps({**json.loads((run.dir / "run.json").read_text()),
                                                 "status": "killed"}))
    from foundry_track.journal import JOURNAL_FILE, Journal

    journal = Journal(run.dir / JOURNAL_FILE)
    journal.set_position("mlflow", 0)
    journal.close()
    left = ft.sync(run.dir, backend="mlflow", timeout=30)
    assert left == {"mlflow": journal.last_seq}
    assert "does not store" in caplog.text and "--config" in caplog.text
    # ...and with the run's config it delivers (MLflow keeps a replayed point once).
    assert ft.sync(run.dir, backend="mlflow", timeout=60, config=config) == {}
    assert len(MlflowClient(mlflow_server.uri).get_metric_history(mlflow_id, "loss")) == 20
    assert not _files_holding(tmp_path, secrets)


@pytest.mark.parametrize("run_id", ["A B/../x", "../up", "a/b", "", "x" * 65, "-lead", "a.b"])
def test_unsafe_run_ids_are_refused_with_the_rule(tmp_path: Path, run_id: str) -> None:
    with pytest.raises(ft.ConfigError, match="run_id: .*letters, digits"):
        ft.init({"dir": str(tmp_path), "run_id": run_id})
    assert not any(tmp_path.iterdir()), "nothing may be created for a refused run id"


def test_a_second_live_run_with_the_same_id_in_this_process_is_refused(tmp_path: Path) -> None:
    config = {"dir": str(tmp_path), "run_id": "shared01"}
    with ft.init(config) as first:
        first.log({"a": 1.0}, step=0)
        with pytest.raises(RunDirError, match=r"being written by process \d+"):
            ft.init(config)
        first.log({"a": 2.0}, step=1)
    assert first.undelivered == {}
    with ft.init(config) as again:  # once the first is finished, the id continues the same run
        again.log({"a": 3.0})
    assert again.dir == first.dir


CHILD = textwrap.dedent("""
    import sys, time, foundry_track as ft
    run = ft.init({"dir": sys.argv[1], "run_id": "shared02", "backends": {"tensorboard": {}}})
    print("started", flush=True)
    time.sleep(60)
""")


def test_a_second_live_process_on_the_same_run_dir_gets_an_error_naming_the_first(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "started"
        with pytest.raises(RunDirError, match=rf"being written by process {child.pid} "):
            ft.init({"dir": str(tmp_path), "run_id": "shared02"})
        with pytest.raises(ft.ConfigError, match="still being written"):
            ft.sync(tmp_path / "shared02")
    finally:
        child.kill()
        child.wait()
    # The OS releases the hold with the process: a resume or a sync may go on.
    assert ft.sync(tmp_path / "shared02", timeout=30) == {}


def test_sync_is_bounded_and_counts_what_it_delivered(tmp_path: Path, fault_plugins: Path) -> None:
    out, flag = tmp_path / "out.jsonl", tmp_path / "flag"
    flag.touch()  # the `hanging` fault backend blocks in every hook while this file exists
    config = {"dir": str(tmp_path / "runs"), "fallback": None, "flush_timeout": 0.5,
              "backends": {"hanging": {"out": str(out), "fault_flag": str(flag)}}}
    with ft.init(config) as run:
        for step in range(14):
            run.log({"loss": float(step)}, step=step)
    assert run.undelivered.get("hanging", 0) > 0
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "foundry_track.cli", "sync", str(run.dir), "--timeout", "2",
                             "--json"], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 2 + 15, "sync must give up at its --timeout"
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["undelivered"]["hanging"] > 0
    flag.unlink()
    result = subprocess.run([sys.executable, "-m", "foundry_track.cli", "sync", str(run.dir)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    delivered = int(result.stdout.split("hanging: ")[1].split(" events delivered")[0])
    assert delivered > 0 and "0 remaining" in result.stdout
    assert metric_steps(out) == {s: 1 for s in range(14)}
    again = subprocess.run([sys.executable, "-m", "foundry_track.cli", "sync", str(run.dir)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "every backend has every event" in again.stdout
