"""The MLflow backend against a real ``mlflow server``, read back with ``MlflowClient``.

Most tests share the session server (``mlflow_server``). The two tests that
stop a server (outage, down from the start) share one server of their own
(``own_server``), so the session server is never disturbed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import mlflow
import pytest
from foundry_track_mlflow import (
    MAX_PARAM_VAL_LENGTH,
    MlflowBackend,
    MlflowOptions,
    clean_name,
    is_transient,
    log_batch_json,
    rest_log_batch,
)
from mlflow.exceptions import MlflowException, RestException

import foundry_track as ft
from foundry_track.config import ConfigError
from foundry_track.events import (
    AlertEvent,
    ArtifactEvent,
    HistogramEvent,
    ImageEvent,
    MetricRow,
    RunInfo,
    TableEvent,
    TextEvent,
)
from foundry_track.journal import JOURNAL_FILE, Journal
from tests.helpers.mlflow_server import MlflowServer, free_port
from tests.helpers.tb import scalars

KEYS = [f"train/m{i}" for i in range(5)]


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def _project() -> str:
    return f"ft-mlflow-{uuid.uuid4().hex[:8]}"


def _cfg(tmp_path: Path, uri: str, **extra: Any) -> dict[str, Any]:
    return {"project": _project(), "dir": str(tmp_path / "runs"), "flush_timeout": 30,
            "backends": {"mlflow": {"tracking_uri": uri}}, **extra}


def _history(client: mlflow.MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _runs_tagged(client: mlflow.MlflowClient, project: str, run_id: str) -> list[Any]:
    exp = client.get_experiment_by_name(project)
    assert exp is not None, f"experiment {project} was not created"
    return client.search_runs([exp.experiment_id], f"tags.`foundry_track.run_id` = '{run_id}'")


def _png(width: int = 3, height: int = 2) -> bytes:
    """A real (tiny) RGB PNG, built by hand so the test needs no imaging library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"".join(bytes((x * 80, y * 120, 200)) for x in range(width)) for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _backend(tmp_path: Path, uri: str, project: str | None = None) -> tuple[MlflowBackend, RunInfo, dict[str, str]]:
    """A backend instance driven directly, as the dispatcher's worker does."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    info = RunInfo(id=uuid.uuid4().hex[:8], name="direct", project=project or _project(), entity=None, tags=(),
                   notes=None, group=None, config={}, dir=run_dir, resumed=False)
    backend = MlflowBackend()
    identity = backend.tracker_start(run=info, options=MlflowOptions(tracking_uri=uri), resume_state={})
    return backend, info, identity


@pytest.fixture
def client(mlflow_server: MlflowServer) -> mlflow.MlflowClient:
    if not mlflow_server.is_running():  # a broken test elsewhere must not cascade
        mlflow_server.start()
    return mlflow.MlflowClient(tracking_uri=mlflow_server.uri)


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A server the destructive tests may stop and start; created stopped."""
    root = tmp_path_factory.mktemp("mlflow-own")
    server = MlflowServer(port=free_port(), db_path=root / "mlflow.db", artifacts_dir=root / "artifacts")
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- #
# options and availability (no server)
# --------------------------------------------------------------------------- #


def test_options_are_documented_and_strict(tmp_path: Path) -> None:
    assert MlflowBackend().tracker_unavailable() is None
    for name, field in MlflowOptions.model_fields.items():
        assert field.description, f"MlflowOptions.{name} has no description"
    with pytest.raises(ConfigError, match="tracking.backends.mlflow.trackinguri.*tracking_uri"):
        ft.init({"dir": str(tmp_path), "backends": {"mlflow": {"trackinguri": "http://x"}}})


@pytest.mark.parametrize("key", ["train/loss", "a b", "é/ü", "/a", "a//b", "a/./b", "..x", "acc@top1", "", "x" * 300])
def test_clean_name_is_accepted_by_mlflow(key: str) -> None:
    from mlflow.utils.validation import _validate_metric_name

    name = clean_name(key)
    _validate_metric_name(name)  # raises if MLflow would refuse it
    assert len(name) <= 250
    if key in ("train/loss", "a b", "é/ü"):
        assert name == key  # valid names are kept as they are


# --------------------------------------------------------------------------- #
# through foundry_track.init, on the shared server
# --------------------------------------------------------------------------- #


def test_params_tags_and_every_step_exactly_once(client: mlflow.MlflowClient, mlflow_server: MlflowServer,
                                                 tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(tmp_path, mlflow_server.uri, run_name="exp0-baseline", tags=["baseline", "lr=3e-4"],
               notes="first try", group="sweep-1")
    many = {f"p{i:03d}": i for i in range(250)}  # > 100: several log_batch calls
    steps = 2000
    with caplog.at_level(logging.WARNING, logger="foundry_track"):
        with ft.init(cfg, strict=True) as run:
            run.log_params({"api_key": "sk-live-123", "hf_token": "hf_abc", "lr": 3e-4,
                            "model": {"n_layer": 12, "name": "gpt2"}, "prompt": "x" * 7000, **many})
            for step in range(steps):
                run.log({k: step + i / 10 for i, k in enumerate(KEYS)}, step=step)
    assert run.undelivered == {}

    ids = run.backend_ids["mlflow"]
    mrun = client.get_run(ids["run_id"])
    assert ids["url"] == f"{mlflow_server.uri}/#/experiments/{ids['experiment_id']}/runs/{ids['run_id']}"
    assert ids["tracking_uri"] == mlflow_server.uri
    assert mrun.info.status == "FINISHED" and mrun.info.run_name == f"exp0-baseline-{run.id}"
    assert client.get_experiment(mrun.info.experiment_id).name == cfg["project"]

    params = mrun.data.params
    assert params["api_key"] == "***" and params["hf_token"] == "***"
    assert not any("sk-live" in v or "hf_abc" in v for v in params.values())
    assert params["lr"] == "0.0003" and params["model/n_layer"] == "12" and params["model/name"] == "gpt2"
    assert params["prompt"] == "x" * MAX_PARAM_VAL_LENGTH
    assert all(params[k] == str(v) for k, v in many.items())
    truncation = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(truncation) == 1 and "prompt" in truncation[0].getMessage()

    tags = mrun.data.tags
    assert tags["foundry_track.run_id"] == run.id
    assert tags["baseline"] == "" and tags["lr_3e-4"] == ""
    assert tags["foundry_track.tags"] == "baseline, lr=3e-4"
    assert tags["mlflow.note.content"] == "first try" and tags["foundry_track.group"] == "sweep-1"

    for i, key in enumerate(KEYS):
        got = _history(client, ids["run_id"], key)
        assert [s for s, _ in got] == list(range(steps)), key  # every step, once
        assert all(v == pytest.approx(s + i / 10) for s, v in got)


def test_changed_params_bad_names_and_non_finite_values(client: mlflow.MlflowClient, mlflow_server: MlflowServer,
                                                        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="foundry_track"):
        with ft.init(_cfg(tmp_path, mlflow_server.uri), strict=True) as run:
            run.log_params({"lr": 0.1, "seed": 1})
            run.log_params({"lr": 0.2, "seed": 1, "epochs": 3})  # lr changed: MLflow refuses to change a param
            for step in range(3):
                run.log({"acc@top1": 0.5 + step, "nan": math.nan, "inf": math.inf, "ninf": -math.inf}, step=step)
    run_id = run.backend_ids["mlflow"]["run_id"]
    data = client.get_run(run_id).data
    assert data.params == {"lr": "0.1", "seed": "1", "epochs": "3"}
    assert data.tags["foundry_track.params/lr"] == "0.2"
    changed = [r.getMessage() for r in caplog.records if "cannot change a param" in r.getMessage()]
    assert len(changed) == 1 and "lr" in changed[0] and "seed" not in changed[0]

    assert [s for s, _ in _history(client, run_id, "acc_top1")] == [0, 1, 2]
    renamed = [r.getMessage() for r in caplog.records if "does not accept the name" in r.getMessage()]
    assert len(renamed) == 1 and "acc@top1" in renamed[0]  # once per key, not once per step
    assert all(math.isnan(v) for _, v in _history(client, run_id, "nan"))
    assert [v for _, v in _history(client, run_id, "inf")] == [sys.float_info.max] * 3  # MLflow's stand-in for inf
    assert [v for _, v in _history(client, run_id, "ninf")] == [-sys.float_info.max] * 3


def test_exception_in_the_block_ends_failed(client: mlflow.MlflowClient, mlflow_server: MlflowServer,
                                            tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="diverged"):
        with ft.init(_cfg(tmp_path, mlflow_server.uri)) as run:
            run.log({"loss": 1.0}, step=0)
            raise RuntimeError("diverged")
    mrun = client.get_run(run.backend_ids["mlflow"]["run_id"])
    assert mrun.info.status == "FAILED"
    assert _history(client, mrun.info.run_id, "loss") == [(0, 1.0)]


def test_resume_continues_the_same_run(client: mlflow.MlflowClient, mlflow_server: MlflowServer,
                                       tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, mlflow_server.uri)
    with ft.init(cfg, strict=True) as run:
        run.log_params({"lr": 0.1})
        for step in range(100):
            run.log({"loss": float(step)}, step=step)
    first = run.backend_ids["mlflow"]
    with ft.init(cfg, resume=run.dir, strict=True) as again:
        again.log_params({"lr": 0.1})  # same value again: fine, nothing to report
        for step in range(100, 200):
            again.log({"loss": float(step)})
    assert again.backend_ids["mlflow"]["run_id"] == first["run_id"]
    assert len(_runs_tagged(client, cfg["project"], run.id)) == 1
    assert [s for s, _ in _history(client, first["run_id"], "loss")] == list(range(200))
    assert client.get_run(first["run_id"]).info.status == "FINISHED"


@pytest.mark.thread_delivery  # the delivery process would close it before sync
def test_crashed_process_is_marked_killed_by_sync(client: mlflow.MlflowClient, mlflow_server: MlflowServer,
                                                  tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, mlflow_server.uri)
    script = textwrap.dedent(f"""
        import os, sys, time
        import foundry_track as ft
        run = ft.init({cfg!r})
        deadline = time.monotonic() + 60
        while "mlflow" not in run.backend_ids and time.monotonic() < deadline:
            time.sleep(0.05)  # the MLflow run exists once its identity is saved
        for step in range(50):
            run.log({{"loss": 1.0 / (step + 1)}}, step=step)
        time.sleep(0.5)  # let the journal commit (every 0.1 s)
        print(run.dir, flush=True)
        os._exit(3)  # a crash: no finish, no atexit
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "running"
    run_id = state["backend_ids"]["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "RUNNING"  # the problem: left RUNNING forever

    assert ft.sync(run_dir) == {}
    assert client.get_run(run_id).info.status == "KILLED"
    assert [s for s, _ in _history(client, run_id, "loss")] == list(range(50))
    assert json.loads((run_dir / "run.json").read_text())["status"] == "killed"


def test_two_runs_in_one_process_stay_apart(client: mlflow.MlflowClient, mlflow_server: MlflowServer,
                                            tmp_path: Path) -> None:
    runs = [ft.init(_cfg(tmp_path / str(i), mlflow_server.uri), strict=True) for i in range(2)]

    def train(run: ft.Run, offset: float) -> None:
        for step in range(200):
            run.log({"loss": step + offset}, step=step)

    threads = [threading.Thread(target=train, args=(run, 1000.0 * i)) for i, run in enumerate(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for run in runs:
        assert run.finish() == {}
    ids = [run.backend_ids["mlflow"]["run_id"] for run in runs]
    assert ids[0] != ids[1]
    for i, run_id in enumerate(ids):
        assert _history(client, run_id, "loss") == [(s, s + 1000.0 * i) for s in range(200)]


def test_experiment_created_concurrently_is_reused(client: mlflow.MlflowClient, mlflow_server: MlflowServer,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = _project()
    existing = client.create_experiment(project)
    real = mlflow.MlflowClient.get_experiment_by_name
    calls: list[str] = []

    def lookup_races(self: mlflow.MlflowClient, name: str) -> Any:
        # Fault injection: the first lookup answers "missing", as if another
        # process created the experiment between our lookup and our create.
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(mlflow.MlflowClient, "get_experiment_by_name", lookup_races)
    _, _, ids = _backend(tmp_path, mlflow_server.uri, project=project)
    assert ids["experiment_id"] == existing and len(calls) == 2


def test_experiments_are_marked_as_model_training(client: mlflow.MlflowClient, mlflow_server: MlflowServer,
                                                  tmp_path: Path) -> None:
    """MLflow 3's UI opens an experiment without a type on its GenAI overview; the
    experiments the backend creates or logs to say they hold model training (a
    type set already, by hand or for GenAI, is left alone)."""
    created = _project()
    _backend(tmp_path, mlflow_server.uri, project=created)[0].tracker_finish("success", True)
    experiment = client.get_experiment_by_name(created)
    assert experiment is not None and experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    untyped = client.create_experiment(_project())  # made elsewhere, before
    _backend(tmp_path, mlflow_server.uri, project=client.get_experiment(untyped).name)[0] \
        .tracker_finish("success", True)
    assert client.get_experiment(untyped).tags["mlflow.experimentKind"] == "custom_model_development"

    genai = client.create_experiment(_project(), tags={"mlflow.experimentKind": "genai_development"})
    _backend(tmp_path, mlflow_server.uri, project=client.get_experiment(genai).name)[0] \
        .tracker_finish("success", True)
    assert client.get_experiment(genai).tags["mlflow.experimentKind"] == "genai_development"

    # A resumed run finds its MLflow run by id, and marks the experiment all the same.
    cfg = _cfg(tmp_path / "d", mlflow_server.uri)
    with ft.init(cfg, strict=True) as run:
        run.log({"loss": 1.0}, step=0)
    experiment_id = run.backend_ids["mlflow"]["experiment_id"]
    client.delete_experiment_tag(experiment_id, "mlflow.experimentKind")
    with ft.init(cfg, resume=run.dir, strict=True) as resumed:
        resumed.log({"loss": 0.5}, step=1)
    assert resumed.backend_ids["mlflow"]["run_id"] == run.backend_ids["mlflow"]["run_id"]
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_runs_of_one_config_have_distinct_names(client: mlflow.MlflowClient, mlflow_server: MlflowServer,
                                                tmp_path: Path) -> None:
    """Two runs of the same config (the trainer names both after the experiment):
    each MLflow run is named with its run id, as its TensorBoard folder is."""
    cfg = _cfg(tmp_path, mlflow_server.uri, run_name="quickstart",
               backends={"mlflow": {"tracking_uri": mlflow_server.uri}, "tensorboard": {}})
    runs = []
    for _ in range(2):
        with ft.init(cfg, strict=True) as run:
            run.log({"loss": 1.0}, step=0)
        runs.append(run)
    experiment = client.get_experiment_by_name(cfg["project"])
    assert experiment is not None
    names = {r.info.run_id: r.info.run_name for r in client.search_runs([experiment.experiment_id])}
    assert sorted(names.values()) == sorted(f"quickstart-{run.id}" for run in runs)
    for run in runs:
        assert names[run.backend_ids["mlflow"]["run_id"]] == f"quickstart-{run.id}"
        assert Path(run.backend_ids["tensorboard"]["log_dir"]).parent.name == f"quickstart-{run.id}"
    # The run's own name, without an id, is only the run id.
    with ft.init(_cfg(tmp_path / "unnamed", mlflow_server.uri), strict=True) as unnamed:
        unnamed.log({"loss": 1.0}, step=0)
    assert client.get_run(unnamed.backend_ids["mlflow"]["run_id"]).info.run_name == unnamed.id


SWEEP_PROGRAM = """
import sys
import foundry_track as ft

args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
cfg = {"run_name": "quickstart", "flush_timeout": 30, "backends": {"mlflow": {"tracking_uri": %r}}}
with ft.init(cfg, params=args) as run:
    run.log({"loss": float(args["lr"])}, step=0)
"""


def test_sweep_trials_have_distinct_names_under_the_sweep(client: mlflow.MlflowClient, mlflow_server: MlflowServer,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sweep's trials run one program (whose config names every run `quickstart`);
    each trial's MLflow run is named with its trial number and run id, under the
    sweep's parent run."""
    from foundry_track.cli import main

    project = _project()
    (tmp_path / "prog.py").write_text(SWEEP_PROGRAM % mlflow_server.uri)
    (tmp_path / "sweep.yaml").write_text(json.dumps({"program": "prog.py", "method": "grid", "project": project,
                                                     "metric": {"name": "loss", "goal": "minimize"},
                                                     "parameters": {"lr": {"values": [0.1, 0.2]}}}))
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--workers", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [t["state"] for t in summary["trials"]] == ["finished", "finished"]
    experiment = client.get_experiment_by_name(project)
    assert experiment is not None and experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == summary["id"]
    names = sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    ids = {t["number"]: json.loads((Path(t["run_dir"]) / "run.json").read_text())["id"] for t in summary["trials"]}
    assert names == sorted(f"{summary['id']}-trial-{n}-{run_id}" for n, run_id in ids.items())
    assert len(set(names)) == 2


def test_default_uri_is_sqlite_in_the_working_directory(tmp_path: Path) -> None:
    assert Path.cwd() == tmp_path and "MLFLOW_TRACKING_URI" not in os.environ  # set by conftest
    with ft.init({"project": "local", "dir": str(tmp_path / "runs"), "backends": {"mlflow": {}}}, strict=True) as run:
        for step in range(20):
            run.log({"loss": float(step)}, step=step)
    db = tmp_path / "mlflow.db"
    assert db.is_file()
    ids = run.backend_ids["mlflow"]
    assert ids["tracking_uri"] == f"sqlite:///{db}" and "url" not in ids
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    assert client.get_run(ids["run_id"]).info.status == "FINISHED"
    assert [s for s, _ in _history(client, ids["run_id"], "loss")] == list(range(20))


# --------------------------------------------------------------------------- #
# hooks driven directly: media, artifacts, alerts, errors
# --------------------------------------------------------------------------- #


def test_media_artifacts_and_alerts_read_back(client: mlflow.MlflowClient, mlflow_server: MlflowServer,
                                              tmp_path: Path) -> None:
    backend, info, ids = _backend(tmp_path, mlflow_server.uri)
    run_id, now = ids["run_id"], time.time()
    png = _png()
    (tmp_path / "img.png").write_bytes(png)
    backend.tracker_log_image(image=ImageEvent("samples/gen", 3, now, tmp_path / "img.png", "a cat", 3, 2))
    table_event = TableEvent("eval", 5, now, ("text", "score"), (("hola", 0.5), ("adiós", math.nan)))
    backend.tracker_log_table(table=table_event)
    backend.tracker_log_table(table=table_event)  # a retry
    backend.tracker_log_text(text=TextEvent("notes", 7, now, "# ¿Qué tal?\nbien"))
    hist_event = HistogramEvent("w", 2, now, (0.0, 1.0, 2.0), (3.0, 4.0), 0.1, 1.9, 7, 6.5, 8.25)
    backend.tracker_log_histogram(histogram=hist_event)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "weights.bin").write_bytes(os.urandom(2048))
    (ckpt / "config.json").write_text("{}")
    backend.tracker_log_artifact(artifact=ArtifactEvent(ckpt, "model", "ckpt-1", 9, now, "sha256:abc"))
    backend.tracker_alert(alert=AlertEvent("loss diverged", "loss is nan at step 9", "error", 9, now))

    dl = tmp_path / "dl"
    assert Path(client.download_artifacts(run_id, "images/samples/gen/step_3.png", str(dl))).read_bytes() == png
    table = json.loads(Path(client.download_artifacts(run_id, "tables/eval_5.json", str(dl))).read_text())
    # Logged twice: overwritten, not appended; NaN written as null.
    assert table == {"columns": ["text", "score"], "data": [["hola", 0.5], ["adiós", None]]}
    text = Path(client.download_artifacts(run_id, "text/notes/step_7.txt", str(dl))).read_text(encoding="utf-8")
    assert text == "# ¿Qué tal?\nbien"
    hist = json.loads(Path(client.download_artifacts(run_id, "histograms/w/step_2.json", str(dl))).read_text())
    assert hist["edges"] == [0.0, 1.0, 2.0] and hist["counts"] == [3.0, 4.0] and hist["num"] == 7
    assert sorted(f.path for f in client.list_artifacts(run_id, "model/ckpt-1")) == [
        "model/ckpt-1/config.json", "model/ckpt-1/weights.bin"]
    got = Path(client.download_artifacts(run_id, "model/ckpt-1/weights.bin", str(dl))).read_bytes()
    assert got == (ckpt / "weights.bin").read_bytes()
    [alert_file] = client.list_artifacts(run_id, "alerts")
    assert alert_file.path.endswith("_error.txt")
    tags = client.get_run(run_id).data.tags
    assert tags["foundry_track.last_alert"] == "[error] loss diverged: loss is nan at step 9"
    assert json.loads(tags["mlflow.loggedArtifacts"]) == [{"path": "tables/eval_5.json", "type": "table"}]

    # A replay (sync) of an artifact already uploaded with the same digest is skipped:
    # it does not even need the files any more.
    (ckpt / "weights.bin").unlink()
    backend.tracker_log_artifact(artifact=ArtifactEvent(ckpt, "model", "ckpt-1", 9, now, "sha256:abc"))
    assert len(client.list_artifacts(run_id, "model/ckpt-1")) == 2

    backend.tracker_finish(status="success", complete=True)
    backend.tracker_finish(status="success", complete=True)  # harmless twice
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_retried_batch_adds_no_duplicate_points(client: mlflow.MlflowClient, mlflow_server: MlflowServer,
                                                  tmp_path: Path) -> None:
    backend, _, ids = _backend(tmp_path, mlflow_server.uri)
    t0 = time.time()
    rows = [MetricRow(step, t0 + step / 1000, {k: step + i for i, k in enumerate(KEYS)}) for step in range(1200)]
    # The first attempt got part of the way (2 of 6 log_batch requests), then
    # the dispatcher offers the whole batch again: MLflow ignores the points it
    # already holds because they are identical (same timestamp, from the journal).
    backend.tracker_log_metrics(rows=rows[:300])
    backend.tracker_log_metrics(rows=rows)
    for key in KEYS:
        assert [s for s, _ in _history(client, ids["run_id"], key)] == list(range(1200)), key


@pytest.mark.parametrize("value", [0.1 + 0.2, -0.0, 1e-300, 123456789.0, math.nan, math.inf, -math.inf])
def test_the_log_batch_body_is_what_mlflow_client_sends(value: float) -> None:
    # The backend writes log-batch's JSON itself (MLflow's encoder takes 17 us
    # a point); the server must get exactly what MlflowClient.log_batch sends.
    from mlflow.entities import Metric
    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.utils.proto_json_utils import message_to_json

    points = [("train/loss", value, 1_765_000_000_123, 7), ("é:ключ", 2.5, 1_765_000_000_124, 2**40)]
    theirs = json.loads(message_to_json(LogBatch(run_id="abc123", metrics=[Metric(*p).to_proto() for p in points])))
    ours = json.loads(log_batch_json("abc123", points))
    # NaN and the infinities as protobuf's strings on both sides; dumped to
    # tell -0.0 from 0.0.
    assert json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True)


def test_points_go_through_mlflow_rest_call_only_to_a_rest_server(mlflow_server: MlflowServer, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    backend, _, ids = _backend(tmp_path, mlflow_server.uri)
    if not hasattr(mlflow.tracking.fluent, "get_active_model_id"):
        pytest.skip("MLflow 2.x: MlflowClient.log_batch sends the points")
    assert backend._post_log_batch is not None
    monkeypatch.setattr(backend._client, "log_batch", None)  # the slow path would fail
    backend.tracker_log_metrics(rows=[MetricRow(s, time.time(), {"loss": -0.0 if s else 1.0}) for s in range(3)])
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.uri)
    got = _history(client, ids["run_id"], "loss")
    assert got == [(0, 1.0), (1, 0.0), (2, 0.0)]  # (the server's SQL store keeps no sign on zero)
    local, _, _ = _backend(tmp_path, f"sqlite:///{tmp_path}/m.db")
    assert local._post_log_batch is None  # MLflow's SQL store in this process: no JSON at all


def test_a_plugin_store_overriding_log_batch_keeps_it(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    from mlflow.store.tracking.rest_store import RestStore

    class TwoHostStore(RestStore):  # as a plugin store that mirrors writes would
        def log_batch(self, run_id: str, metrics: Any, params: Any, tags: Any) -> None:
            super().log_batch(run_id, metrics, params, tags)

    client = mlflow.MlflowClient(tracking_uri=mlflow_server.uri)
    assert rest_log_batch(client) is not None
    creds = client._tracking_client.store.get_host_creds
    for store, fast in ((RestStore(creds), True), (TwoHostStore(creds), False)):
        with_store = SimpleNamespace(_tracking_client=SimpleNamespace(store=store))
        assert (rest_log_batch(with_store) is not None) is fast, store


def test_dead_server_fails_fast_and_transient(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    backend = MlflowBackend()
    info = RunInfo(id="deadbeef", name="x", project="p", entity=None, tags=(), notes=None, group=None, config={},
                   dir=tmp_path, resumed=False)
    started = time.perf_counter()
    with pytest.raises(ft.TransientError, match=f"cannot reach the tracking server at {uri}"):
        backend.tracker_start(run=info, options=MlflowOptions(tracking_uri=uri), resume_state={})
    assert time.perf_counter() - started < 5  # MLflow's own retries would take minutes
    # The URI is remembered before any network call, for a later `foundry-track sync`.
    assert json.loads((tmp_path / "mlflow.json").read_text())["tracking_uri"] == uri


def _http_error(status: int) -> Exception:
    import requests

    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} error", response=response)


@pytest.mark.parametrize(("make", "transient"), [
    (lambda: RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}), True),  # 503
    (lambda: RestException({"error_code": "INTERNAL_ERROR", "message": "db"}), True),  # 500
    (lambda: RestException({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}), True),  # 429
    (lambda: RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}), False),  # 404
    (lambda: RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}), False),  # 400
    (lambda: _http_error(502), True),  # artifact upload through a proxy
    (lambda: _http_error(403), False),
])
def test_error_sorting(make: Any, transient: bool, tmp_path: Path) -> None:
    exc = make()
    assert is_transient(exc) is transient
    backend = MlflowBackend()
    with pytest.raises(Exception) as caught:
        with backend._errors("log_artifact"):
            raise exc
    # Transient: the core retries with backoff until finish's deadline. Permanent:
    # never an OSError (requests' HTTPError is one), which the core would retry forever.
    assert isinstance(caught.value, ft.TransientError) is transient
    assert isinstance(caught.value, OSError) is False


def test_client_errors_stay_permanent(client: mlflow.MlflowClient, mlflow_server: MlflowServer,
                                      tmp_path: Path) -> None:
    backend, _, ids = _backend(tmp_path, mlflow_server.uri)
    client.delete_run(ids["run_id"])  # a 4xx from now on: retrying cannot help
    with pytest.raises(MlflowException) as caught:
        backend.tracker_log_params(params={"a": 1})
    assert not isinstance(caught.value, ft.TransientError) and not is_transient(caught.value)


# --------------------------------------------------------------------------- #
# outages, on a server of their own
# --------------------------------------------------------------------------- #


def test_server_down_from_the_start_then_sync(own_server: MlflowServer, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    own_server.stop()
    # The URI comes from the environment, which `foundry-track sync` (another
    # shell, later) may not have: the run remembers where it belongs.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", own_server.uri)
    cfg = {**_cfg(tmp_path, own_server.uri, flush_timeout=5), "backends": {"mlflow": {}}}
    steps = 300
    slowest = 0.0
    with caplog.at_level(logging.WARNING, logger="foundry_track"):
        with ft.init(cfg) as run:
            for step in range(steps):
                t0 = time.perf_counter()
                run.log({k: step + i for i, k in enumerate(KEYS)}, step=step)
                slowest = max(slowest, time.perf_counter() - t0)
    assert slowest < 0.05, f"run.log took {slowest * 1e3:.1f} ms with the server down"
    assert run.undelivered.get("mlflow") == steps
    warning = next(r.getMessage() for r in caplog.records if "could not start" in r.getMessage())
    assert own_server.uri in warning and f"foundry-track sync {run.dir} --backend mlflow" in warning
    fallback = scalars(run.backend_ids["tensorboard"]["log_dir"])  # the fallback holds every step
    assert [s for s, _ in fallback[KEYS[0]]] == list(range(steps))

    own_server.start()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert ft.sync(run.dir) == {}
    client = mlflow.MlflowClient(tracking_uri=own_server.uri)
    [mrun] = _runs_tagged(client, cfg["project"], run.id)
    assert mrun.info.status == "FINISHED"
    for key in KEYS:
        assert [s for s, _ in _history(client, mrun.info.run_id, key)] == list(range(steps)), key

    assert ft.sync(run.dir) == {}  # a second sync adds nothing
    assert len(_runs_tagged(client, cfg["project"], run.id)) == 1
    assert len(client.get_metric_history(mrun.info.run_id, KEYS[0])) == steps


def test_server_outage_mid_run_every_step_once(own_server: MlflowServer, tmp_path: Path) -> None:
    own_server.start()
    client = mlflow.MlflowClient(tracking_uri=own_server.uri)
    cfg = _cfg(tmp_path, own_server.uri)
    slowest = 0.0

    def log_range(run: ft.Run, start: int, stop: int) -> None:
        nonlocal slowest
        for step in range(start, stop):
            t0 = time.perf_counter()
            run.log({k: step * 2 + i for i, k in enumerate(KEYS)}, step=step)
            slowest = max(slowest, time.perf_counter() - t0)
            time.sleep(0.002)

    run = ft.init(cfg)
    try:
        log_range(run, 0, 100)
        deadline = time.monotonic() + 30
        while "mlflow" not in run.backend_ids and time.monotonic() < deadline:
            time.sleep(0.05)
        run_id = run.backend_ids["mlflow"]["run_id"]
        while len(client.get_metric_history(run_id, KEYS[0])) < 100 and time.monotonic() < deadline:
            time.sleep(0.1)  # the first part arrived before the outage
        own_server.stop()
        log_range(run, 100, 300)  # the worker fails and backs off; run.log does not notice
        own_server.start()
        log_range(run, 300, 400)
    finally:
        undelivered = run.finish(timeout=60)
    assert undelivered == {}
    assert slowest < 0.05, f"run.log took {slowest * 1e3:.1f} ms during the outage"
    for i, key in enumerate(KEYS):
        got = _history(client, run_id, key)
        assert [s for s, _ in got] == list(range(400)), key  # every step exactly once
        assert all(v == s * 2 + i for s, v in got)
    assert client.get_run(run_id).info.status == "FINISHED"
    # The outage really happened, and was retried as transient (not given up on).
    errors = Journal(run.dir / JOURNAL_FILE, readonly=True).positions()["mlflow"]
    assert errors["errors"] >= 1 and errors["last_error"].startswith("TransientError: MLflow log_metrics")
