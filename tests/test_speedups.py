"""The optional C ``run.log`` (foundry_track/_speedups.c) behaves exactly like
the Python one: the same journal, the same errors, the same warnings, for
every kind of call. The Python path is the reference."""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

import numpy as np
import pytest

import foundry_track as ft
import foundry_track.run as run_module
from foundry_track.inspect import metric_points

try:
    from foundry_track._speedups import FastLog
except ImportError:  # built only where a C compiler was there at install
    FastLog = None
BUILT = FastLog is not None


@pytest.fixture(params=["c", "python"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "c":
        if not BUILT:
            pytest.skip("foundry_track._speedups is not built (no C compiler at install)")
        monkeypatch.setattr(run_module, "_FastLog", FastLog)
    else:
        monkeypatch.setattr(run_module, "_FastLog", None)
    return str(request.param)


@pytest.fixture
def rec(tmp_path: Path, fault_plugins: Path) -> dict:
    return {"dir": str(tmp_path / "runs"), "fallback": None, "strict": True,
            "backends": {"recorder": {"out": str(tmp_path / "rec.jsonl")}}}


def _calls() -> list[Callable[[Any], Any]]:
    import torch

    dynamic = {"st" + "ep": 14}  # a keyword name that is not interned at a call site
    return [
        lambda run: run.log({"a": 1.0, "b": 2}, step=0),
        lambda run: run.log({"a": 1.5}),
        lambda run: run.log({"a": 2.0}, 5),
        lambda run: run.log(metrics={"a": 3.0}, step=6),
        lambda run: run.log(step=7, metrics={"a": 3.5}),
        lambda run: run.log({"a": True, "b": False}, step=8),
        lambda run: run.log({"a": np.float32(0.25), "b": np.int64(3)}, step=9),
        lambda run: run.log({"a": torch.tensor(0.5), "b": 1.0}, step=10),
        lambda run: run.log({"a": "x"}, step=11),
        lambda run: run.log({"a": None, "b": 1.0}, step=11),
        lambda run: run.log([1, 2]),
        lambda run: run.log(MappingProxyType({"a": 1.0}), step=12),
        lambda run: run.log({"a": 1.0}, step=-1),
        lambda run: run.log({"a": 1.0}, step=2**63),
        lambda run: run.log({"a": 1.0}, step=2**63 - 1),
        lambda run: run.log({"a": 1.0}),  # after the largest step: the Python path decides
        lambda run: run.log({"a": 1.0}, step=np.int64(13)),
        lambda run: run.log({"a": 1.0}, step=13.0),
        lambda run: run.log({"a": 1.0}, step=True),
        lambda run: run.log({1: 1.0, "b": 2.0}, step=13),
        lambda run: run.log({"a": 1.0}, step=3),  # lower than a step already logged
        lambda run: run.log({"a": 1.0}, **dynamic),
        lambda run: run.log({"a": 1.0}, 15, None),
        lambda run: run.log({"a": 1.0}, stp=16),
        lambda run: run.log({"a": 1.0}, 16, None, 3),
        lambda run: run.log(),
        lambda run: run.log({"a": 1.0}, step=16, reduce="mean"),
        lambda run: run.log({"a": 1.0}, step=17, reduce="median"),
        lambda run: run.log({}, step=18),
        lambda run: run.log({"a": float("nan"), "b": float("inf"), "c": -0.0}, step=19),
        lambda run: run.log({"a": 2**62, "b": -(2**62)}, step=20),
        lambda run: run.log({"a": torch.ones(3)}, step=21),
        lambda run: run.log({"a": 1.0, "b": 2.0}),
    ]


def _play(config: dict, caplog: pytest.LogCaptureFixture) -> tuple[list[Any], list[tuple], list[str]]:
    outcomes: list[Any] = []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="foundry_track"):
        run = ft.init(config)
        for call in _calls():
            try:
                outcomes.append(call(run))
            except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
                outcomes.append((type(exc).__name__, str(exc)))
        outcomes.append(run._last_step)
        run.finish()
        outcomes.append(run.log({"a": 1.0}, step=99))  # after finish: ignored, reported once
    points = [(p.step, p.key, p.value if p.value == p.value else "nan") for p in metric_points(run.dir)]
    messages = [r.getMessage().replace(str(run.id), "RUN") for r in caplog.records]
    return outcomes, points, messages


def test_c_and_python_log_the_same_journal_errors_and_warnings(
    rec: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if not BUILT:
        pytest.skip("foundry_track._speedups is not built (no C compiler at install)")
    monkeypatch.setattr(run_module, "_FastLog", None)
    python = _play({**rec, "dir": str(tmp_path / "py")}, caplog)
    monkeypatch.setattr(run_module, "_FastLog", FastLog)
    c = _play({**rec, "dir": str(tmp_path / "c")}, caplog)
    assert c[0] == python[0]
    assert c[1] == python[1]
    assert c[2] == python[2]
    # The scenario exercises what it claims to: errors, conversions, a warning.
    assert ("TypeError", "run.log expects a mapping of metric names to numbers, got list") in python[0]
    assert any(isinstance(o, tuple) and o[0] == "ValueError" for o in python[0])
    assert (8, "a", 1) in python[1] and (10, "a", 0.5) in python[1]
    assert any("lower than step" in m for m in python[2])


def test_the_run_uses_the_c_log_when_built(rec: dict, impl: str) -> None:
    with ft.init(rec) as run:
        assert (type(run.log).__name__ == "FastLog") == (impl == "c")
        # help() and signatures show the documented method either way.
        assert inspect.signature(run.log) == inspect.signature(ft.Run.log.__get__(run))
        assert run.log.__doc__ == ft.Run.log.__doc__


@pytest.mark.parametrize("values", ["floats", "bools", "mixed"])
def test_concurrent_callers_get_distinct_steps(rec: dict, impl: str, values: str) -> None:
    """floats take the short path, bools the Python path (converted); mixed:
    two threads on each."""
    with ft.init(rec) as run:
        def worker(value: Any) -> None:
            for _ in range(2000):
                run.log({"x": value})

        kinds = {"floats": [1.0] * 4, "bools": [True] * 4, "mixed": [1.0, True, 1.0, np.float32(1)]}[values]
        threads = [threading.Thread(target=worker, args=(v,)) for v in kinds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        directory = run.dir
    steps = [p.step for p in metric_points(directory)]
    assert sorted(steps) == list(range(8000))


def test_the_short_path_closes_when_the_run_finishes_or_thins(rec: dict, impl: str, tmp_path: Path) -> None:
    with ft.init({**rec, "every_n_steps": 10}) as run:
        for step in range(25):
            run.log({"x": float(step)}, step=step)
        directory = run.dir
    assert [p.step for p in metric_points(directory)] == [0, 10, 20]


def test_the_c_log_is_built_where_a_compiler_is_available() -> None:
    """A compiler and Python's headers are here, so the optional build must
    have worked: a silent build failure would make every run slower."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if shutil.which(compiler) is None or not headers.exists():
        pytest.skip("no C compiler or Python headers: the pure-Python run.log is expected")
    assert BUILT, "foundry_track._speedups did not build; reinstall with `pip install -e .` and read its warning"


def test_the_switch_selects_the_python_log() -> None:
    code = "import foundry_track.run as r; print(r._FastLog is None)"
    env = {**os.environ, "FOUNDRY_TRACK_NO_SPEEDUPS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_a_value_changed_while_the_call_runs_is_checked_as_logged(rec: dict, impl: str) -> None:
    """A finalizer run by the garbage collector inside the call changes the
    caller's dict: what reaches the journal is what was checked."""
    import gc

    with ft.init(rec) as run:
        metrics = {"loss": 1.0, "a": 1.0, "b": 1.0, "c": 1.0}
        del metrics["a"], metrics["b"], metrics["c"]  # a copy of this dict allocates before copying

        class Mutator:
            def __del__(self) -> None:
                metrics["loss"] = "not a number"

        gc.collect()
        gc.disable()
        try:
            for _ in range(200):
                cycle = Mutator()
                cycle.self = cycle  # type: ignore[attr-defined]
            del cycle
            keep = [{} for _ in range(200)]  # noqa: F841 - pushes the collector to its threshold
            gc.set_threshold(1)
            gc.enable()
            try:
                run.log(metrics, step=7)
            except TypeError as exc:
                assert "'loss'" in str(exc)
        finally:
            gc.set_threshold(700)
            gc.enable()
        directory = run.dir
    logged = [p.value for p in metric_points(directory)]
    assert all(isinstance(v, (int, float)) for v in logged), logged


def test_a_subclass_that_overrides_log_keeps_it(rec: dict, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []

    class MyRun(ft.Run):
        def log(self, metrics: Any, step: int | None = None, reduce: str | None = None) -> None:
            calls.append(dict(metrics))
            super().log({f"mine/{k}": v for k, v in metrics.items()}, step, reduce)

    monkeypatch.setattr(run_module, "Run", MyRun)  # init() builds run_module.Run
    run = ft.init(rec)
    assert isinstance(run, MyRun)
    run.log({"loss": 1.0}, step=0)
    run.finish()
    assert calls == [{"loss": 1.0}]
    assert [p.key for p in metric_points(run.dir)] == ["mine/loss"]


def test_run_log_looks_like_a_bound_method(rec: dict, impl: str) -> None:
    import weakref

    with ft.init(rec) as run:
        log = run.log
        assert (log.__name__, log.__qualname__, log.__self__) == ("log", "Run.log", run)
        assert log.__func__ is ft.Run.log
        assert weakref.ref(log)() is log
