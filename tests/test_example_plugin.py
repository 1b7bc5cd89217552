"""The example third-party distribution, docs/examples/foundry-track-jsonl,
installed with pip as a real distribution (into a throwaway folder, never the
virtualenv): listed by `foundry-track backends`, checked by `foundry-track
doctor`, selected from a YAML file, receives every event of a short run, passes
the conformance kit, and its own tests pass."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pytest

import foundry_track as ft
from foundry_track.journal import JOURNAL_FILE, Journal
from foundry_track.media import digest_path
from foundry_track.plugins import discover
from foundry_track.testing import check_backend
from foundry_track.testing.report import PARTS

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "foundry-track-jsonl"


@pytest.fixture(scope="module")
def jsonl_dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(site folder it was installed into, the copy of its source). The source is
    copied first so the build leaves nothing behind in docs/."""
    root = tmp_path_factory.mktemp("jsonl-dist")
    source, site = root / "src", root / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build",
                                                                   ".pytest_cache"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "foundry_track_jsonl-0.1.0.dist-info" / "entry_points.txt").is_file()
    return site, source


@pytest.fixture
def jsonl_installed(jsonl_dist: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site, _ = jsonl_dist
    monkeypatch.delitem(sys.modules, "foundry_track_jsonl", raising=False)  # never a copy imported elsewhere
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    discover(refresh=True)
    yield site


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_not_installed_means_not_found(tmp_path: Path) -> None:
    assert "jsonl" not in discover()
    with pytest.raises(ft.ConfigError, match="unknown backend 'jsonl'"):
        ft.init({"dir": str(tmp_path), "backends": {"jsonl": {}}})


def test_foundry_track_backends_lists_the_distribution(jsonl_installed: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "foundry_track.cli", "backends", "--json"],
                            capture_output=True, text=True, timeout=60)
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    expected = {"name": "jsonl", "distribution": "foundry-track-jsonl", "version": "0.1.0",
                "entry_point": "foundry_track_jsonl:JsonlBackend", "available": True, "problem": None}
    assert {key: rows["jsonl"].get(key) for key in expected} == expected
    table = subprocess.run([sys.executable, "-m", "foundry_track.cli", "backends"],
                           capture_output=True, text=True, timeout=60).stdout
    assert any(line.split()[:3] == ["jsonl", "foundry-track-jsonl", "0.1.0"] for line in table.splitlines())


def test_foundry_track_doctor_prints_the_plugins_tracker_doctor_check(jsonl_installed: Path, tmp_path: Path) -> None:
    """A third-party backend's own check (its events folder is writable) is part of
    `foundry-track doctor`, in the JSON and in the table, and can fail it."""

    def doctor(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
        config = tmp_path / "exp.yaml"
        config.write_text(f"tracking:\n  dir: {tmp_path / 'runs'}\n  backends:\n    jsonl: {{path: {path}}}\n")
        return subprocess.run([sys.executable, "-m", "foundry_track.cli", "doctor", str(config), *args],
                              capture_output=True, text=True, timeout=120)

    result = doctor(tmp_path / "logs" / "events.jsonl", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    findings = [f for f in json.loads(result.stdout)["findings"] if f["scope"] == "jsonl"]
    assert [(f["check"], f["level"]) for f in findings] == [("sdk", "ok"), ("folder", "ok")]
    assert findings[0]["message"] == "plugin foundry-track-jsonl 0.1.0 loads"
    assert findings[1]["message"].startswith(f"events file folder {tmp_path / 'logs'} will be created")
    table = doctor(tmp_path / "logs" / "events.jsonl").stdout
    assert any(line.split()[:3] == ["ok", "jsonl", "folder"] and "events file folder" in line
               for line in table.splitlines()), table

    (tmp_path / "a-file").write_text("")
    result = doctor(tmp_path / "a-file" / "events.jsonl", "--json")
    assert result.returncode == 1
    [folder] = [f for f in json.loads(result.stdout)["findings"] if f["scope"] == "jsonl" and f["check"] == "folder"]
    assert folder["level"] == "error" and "is a file, not a folder" in folder["message"]
    assert folder["fix"] == "choose another path for the events file folder"


def test_selected_from_yaml_it_receives_every_event(jsonl_installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "logs" / "events.jsonl"
    config = tmp_path / "exp.yaml"
    config.write_text(f"""
experiment_name: demo          # the rest of an experiment config is ignored
tracking:
  project: jsonl-demo
  run_name: every-kind
  tags: [example, ünïcode]
  dir: {tmp_path / "runs"}
  strict: true
  fallback: null
  backends:
    jsonl:
      path: {out}
""")
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "weights.bin").write_bytes(b"\x00\x01" * 64)
    pixels = (np.arange(4 * 6 * 3) % 256).astype(np.uint8).reshape(4, 6, 3)
    with ft.init(config, params={"lr": 0.001, "wandb_api_key": "secret"}) as run:
        run.log_params({"model": {"layers": 2}})
        for step in range(5):
            run.log({"train/loss": 1.0 / (step + 1), "pérdida": float(step)}, step=step)
        run.log({"train/loss": math.nan}, step=5)
        run.log_image("samples/img", pixels, step=5, caption="pixels")
        run.log_histogram("weights/w", np.arange(100.0), step=5)
        run.log_table("eval/preds", ["id", "text"], [[1, "hola"], [2, "日本語"]], step=5)
        run.log_text("notes", "# done", step=5)
        run.log_artifact(checkpoint, type="model", name="checkpoint", description="step 5")
        run.alert("Finished", "all steps done", level="info")
    assert run.backend_ids == {"jsonl": {"path": str(out.resolve())}}

    lines = _read(out)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_kind.setdefault(line["event"], []).append(line)
    assert set(by_kind) == {"start", "metrics", "params", "image", "histogram", "table", "text", "artifact",
                            "alert", "finish"}
    start = by_kind["start"][0]
    assert (start["name"], start["project"], start["tags"]) == ("every-kind", "jsonl-demo", ["example", "ünïcode"])
    assert start["config"] == {"lr": 0.001, "wandb_api_key": "***"}
    assert [p["params"] for p in by_kind["params"]] == [{"lr": 0.001, "wandb_api_key": "***"},
                                                         {"model/layers": 2}]
    assert [m["step"] for m in by_kind["metrics"]] == [0, 1, 2, 3, 4, 5]
    assert by_kind["metrics"][1]["values"] == {"train/loss": 0.5, "pérdida": 1.0}
    assert by_kind["metrics"][5]["values"] == {"train/loss": "NaN"}
    (image,) = by_kind["image"]
    assert (image["key"], image["width"], image["height"], image["caption"]) == ("samples/img", 6, 4, "pixels")
    assert Path(image["path"]).read_bytes().startswith(b"\x89PNG")
    (histogram,) = by_kind["histogram"]
    assert (histogram["num"], histogram["min"], histogram["max"]) == (100, 0.0, 99.0)
    assert by_kind["table"][0]["rows"] == [[1, "hola"], [2, "日本語"]]
    assert by_kind["text"][0]["text"] == "# done"
    (artifact,) = by_kind["artifact"]
    assert (artifact["name"], artifact["type"], artifact["digest"]) == ("checkpoint", "model", digest_path(checkpoint))
    assert by_kind["alert"][0]["level"] == "info"
    assert by_kind["finish"] == [{"event": "finish", "status": "success", "complete": True}]
    assert "secret" not in out.read_text()


CHILD = textwrap.dedent(
    """
    import sys, foundry_track as ft
    root, out = sys.argv[1:3]
    run = ft.init({"dir": root, "delivery": "thread", "fallback": None, "backends": {"jsonl": {"path": out}}})
    print(run.dir, flush=True)
    run.log_params({"lr": 0.001})
    step = 0
    while True:
        run.log({"loss": 1.0 / (step + 1), **{f"layer_{i}/grad_norm": step * 1e-3 for i in range(16)}}, step=step)
        step += 1
    """
)


@pytest.mark.thread_delivery  # the backend must die with the training process
def test_tracker_flush_checkpoint_makes_sync_after_sigkill_deliver_each_event_once(
        jsonl_installed: Path, tmp_path: Path) -> None:
    """A process killed while its lines past the last checkpoint are in the file:
    `foundry-track sync` cuts them off (tracker_start with the checkpoint) and
    offers their events again, so every journal event is in the file once."""
    out = tmp_path / "events.jsonl"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "runs"), str(out)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        run_dir = Path(child.stdout.readline().strip())
        journal = Journal(run_dir / JOURNAL_FILE, readonly=True)
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "the file never had lines past the checkpoint"
            time.sleep(0.01)
            os.kill(child.pid, signal.SIGSTOP)  # frozen: the file and the journal hold still while we look
            checkpoint = journal.checkpoint("jsonl")
            if journal.position("jsonl") > 1000 and out.stat().st_size > int(checkpoint["offset"]):
                break  # events written but not flushed: a crash now leaves them past the checkpoint
            os.kill(child.pid, signal.SIGCONT)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)

    result = subprocess.run([sys.executable, "-m", "foundry_track.cli", "sync", str(run_dir)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = _read(out)  # every line whole: a line the kill cut in half is gone too
    journal = Journal(run_dir / JOURNAL_FILE, readonly=True)
    logged = [(r.step, r.time) for r in journal.iter_records("metrics")]
    assert len(logged) > 1000
    assert [(line["step"], line["time"]) for line in lines if line["event"] == "metrics"] == logged
    assert [line["params"] for line in lines if line["event"] == "params"] == [{"lr": 0.001}]
    assert [line["event"] for line in lines if line["event"] in ("start", "finish")] == ["start", "start", "finish"]
    assert lines[-1] == {"event": "finish", "status": "killed", "complete": True}


def _example_readback() -> Callable[[Mapping[str, str]], Any]:
    """The read-back the example's own tests give the kit (its events file, parsed)."""
    spec = importlib.util.spec_from_file_location("foundry_track_jsonl_tests", EXAMPLE / "tests" / "test_jsonl.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.stored  # type: ignore[no-any-return]


def test_it_passes_the_conformance_kit(jsonl_installed: Path, tmp_path: Path) -> None:
    report = check_backend("jsonl", {}, tmp_path, readback=_example_readback()).assert_ok()
    assert report.implemented >= {"tracker_start", "tracker_log_metrics", "tracker_finish", "tracker_alert"}
    assert "foundry_track.sync" in {r.hook for r in report.results}
    # Every part ran, the read-back after each: every event the kit sent is in the file, once.
    assert [(p.name, p.ran) for p in report.parts] == [(name, True) for name in PARTS], report.format()
    assert report.part("read-back").note == (  # type: ignore[union-attr]
        "checked after the hook cases, the new run, its resume, the sync, the process-delivery run")


def test_its_own_tests_pass(jsonl_dist: tuple[Path, Path], jsonl_installed: Path) -> None:
    site, source = jsonl_dist
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                            cwd=source, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 passed" in result.stdout
