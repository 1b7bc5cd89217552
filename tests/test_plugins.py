"""Discovery through the `foundry_track` entry-point group: loud when loading."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import foundry_track as ft
from foundry_track.plugins import discover


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foundry_track.cli", *args], capture_output=True, text=True,
                          timeout=60)


def test_builtin_tensorboard_is_registered_like_a_third_party_plugin() -> None:
    info = discover()["tensorboard"]
    assert info.distribution == "foundry-track" and info.value == "foundry_track_tensorboard:TensorBoardBackend"
    assert info.available


def test_broken_entry_point_is_reported_and_others_still_load(fault_plugins: Path) -> None:
    found = discover()
    assert not found["broken"].available
    assert "cannot be imported (on purpose)" in (found["broken"].problem or "")
    assert "Traceback" in (found["broken"].problem or "")
    assert found["recorder"].available and found["tensorboard"].available


def test_misspelled_hook_is_an_error_naming_the_plugin(fault_plugins: Path) -> None:
    problem = discover()["misspelled"].problem or ""
    assert "backend 'misspelled'" in problem and "tracker_log_metric" in problem
    with pytest.raises(ft.ConfigError, match="misspelled"):
        ft.init({"backends": {"misspelled": {}}})


def test_hook_without_marker_is_an_error(fault_plugins: Path) -> None:
    assert "without @foundry_track.hookimpl" in (discover()["unmarked"].problem or "")


def test_unavailable_backend_shows_the_install_command(fault_plugins: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    info = discover(refresh=True)["tensorboard"]
    assert not info.available
    assert "pip install 'foundry-track[tensorboard]'" in (info.problem or "")
    with pytest.raises(ft.ConfigError, match=r"pip install 'foundry-track\[tensorboard\]'"):
        ft.init({"backends": {"tensorboard": {}}})


def test_cli_backends_lists_name_distribution_version_and_state(fault_plugins: Path) -> None:
    result = _cli("backends", "--json")
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["recorder"]["distribution"] == "foundry-track-faults" and rows["recorder"]["version"] == "0.1"
    assert rows["recorder"]["available"] is True and rows["broken"]["available"] is False
    assert result.returncode == 1  # something is unavailable
    table = _cli("backends").stdout
    assert "recorder" in table and "unavailable" in table


def test_disable_plugins_kill_switch(fault_plugins: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_TRACK_DISABLE_PLUGINS", "broken, recorder")
    found = discover(refresh=True)
    assert "broken" not in found and "recorder" not in found and "raising" in found


def test_trace_logs_each_hook_call(tmp_path: Path, fault_plugins: Path, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("FOUNDRY_TRACK_TRACE", "1")
    caplog.set_level(logging.INFO, logger="foundry_track.trace")
    with ft.init({"dir": str(tmp_path), "fallback": None,
                  "backends": {"recorder": {"out": str(tmp_path / "o.jsonl")}}}) as run:
        run.log({"a": 1.0}, step=0)
        run.log({"a": 2.0}, step=1)
    assert "recorder.tracker_start" in caplog.text
    assert "recorder.tracker_log_metrics batch=2" in caplog.text or "recorder.tracker_log_metrics batch=1" in caplog.text
    assert "recorder.tracker_finish" in caplog.text


def test_sync_cli_errors_are_clear(tmp_path: Path) -> None:
    result = _cli("sync", str(tmp_path))
    assert result.returncode == 2 and "is not a foundry-track run directory" in result.stderr


def test_sdks_are_imported_one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Backends start on threads of their own; two SDK imports at once raced in
    # numpy's lazy submodule import (a RecursionError, and MLflow never started).
    from foundry_track.plugins import import_sdk

    for name in ("slow_sdk_a", "slow_sdk_b"):
        (tmp_path / f"{name}.py").write_text("import time\nSPAN = (time.monotonic(), time.sleep(0.3), time.monotonic())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    modules: list[Any] = []
    threads = [threading.Thread(target=lambda n=n: modules.append(import_sdk(n))) for n in ("slow_sdk_a", "slow_sdk_b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (a_start, _, a_end), (b_start, _, b_end) = sorted(m.SPAN for m in modules)
    assert a_end <= b_start, "the two imports overlapped"
    assert import_sdk("slow_sdk_a") is sys.modules["slow_sdk_a"]
    for name in ("slow_sdk_a", "slow_sdk_b"):
        monkeypatch.delitem(sys.modules, name)


def test_a_failed_sdk_import_is_retried_from_a_clean_slate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A failed import keeps the submodules it finished; a plain retry then met a
    # package without them ("partially initialized module 'wandb' has no
    # attribute 'errors'"), every time, and the W&B backend never started.
    from foundry_track.plugins import import_sdk

    pkg = tmp_path / "flaky_sdk"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from flaky_sdk import errors\nimport flaky_sdk.boom\nimport flaky_sdk.user\n")
    (pkg / "errors.py").write_text("class Error(Exception):\n    pass\n")
    # Fails the first time only, like an import that met another thread's half-done one.
    (pkg / "boom.py").write_text(
        "import os\nif not os.path.exists(os.environ['FLAKY_MARK']):\n"
        "    open(os.environ['FLAKY_MARK'], 'w').close()\n    raise ImportError('met a half-imported module')\n")
    (pkg / "user.py").write_text("import flaky_sdk\nclass Retry(flaky_sdk.errors.Error):\n    pass\n")
    monkeypatch.setenv("FLAKY_MARK", str(tmp_path / "mark"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = import_sdk("flaky_sdk")
        assert module.user.Retry.__mro__[1] is module.errors.Error
        assert (tmp_path / "mark").exists(), "the first import did not fail: the test proves nothing"
        # And a package that fails every time still raises, leaving nothing behind.
        (pkg / "boom.py").write_text("raise ImportError('broken install')\n")
        for name in [m for m in sys.modules if m.partition(".")[0] == "flaky_sdk"]:
            monkeypatch.delitem(sys.modules, name)
        with pytest.raises(ImportError, match="broken install"):
            import_sdk("flaky_sdk")
        assert not [m for m in sys.modules if m.partition(".")[0] == "flaky_sdk"]
    finally:
        for name in [m for m in sys.modules if m.partition(".")[0] == "flaky_sdk"]:
            sys.modules.pop(name, None)


def test_an_sdk_left_half_imported_by_an_import_outside_import_sdk_still_imports() -> None:
    # CI: the W&B backend's own `from wandb.sdk.lib import urls` (in a
    # try/except, outside import_sdk) failed while another backend imported its
    # SDK; it left wandb.errors without wandb, and import_sdk("wandb") then
    # failed twice with "partially initialized module 'wandb' has no attribute
    # 'errors'". Run in a fresh interpreter: it takes W&B apart.
    code = (
        "import importlib, sys\n"
        "import wandb\n"
        "for m in [m for m in sys.modules if m == 'wandb' or m.startswith('wandb.sdk')]:\n"
        "    del sys.modules[m]\n"
        "try:\n"
        "    importlib.import_module('wandb')\n"
        "except AttributeError as e:\n"
        "    print('plain import:', e)\n"
        "from foundry_track.plugins import import_sdk\n"
        "w = import_sdk('wandb')\n"
        "print('import_sdk:', w.sdk.lib.retry.RetryCancelledError.__mro__[1] is w.errors.Error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # The state the test builds is the one CI met (else it proves nothing) ...
    assert "plain import: partially initialized module 'wandb' has no attribute 'errors'" in done.stdout
    # ... and import_sdk gets a whole W&B out of it.
    assert "import_sdk: True" in done.stdout


def test_built_in_backends_import_tracker_sdks_only_through_import_sdk() -> None:
    # Hooks run on each backend's own thread; an SDK import outside import_sdk's
    # lock met another backend's import and broke W&B's start in CI. Module-level
    # imports are fine in modules that import_sdk itself loads (e.g. TensorBoard's
    # _protos); `foundry-track doctor` (the _doctor modules) runs on one thread.
    import ast

    sdks = {"wandb", "mlflow", "tensorboard"}
    root = Path(__file__).resolve().parents[1] / "backends"
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "_doctor.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(node):
                names = ([a.name for a in inner.names] if isinstance(inner, ast.Import)
                         else [inner.module or ""] if isinstance(inner, ast.ImportFrom) and not inner.level else [])
                found += [f"{path.relative_to(root)}:{inner.lineno} {n}" for n in names if n.split(".")[0] in sdks]
    assert root.is_dir() and list(root.rglob("*.py")), "no backends found: the test checks nothing"
    assert not found, f"import these through foundry_track.import_sdk: {found}"
