"""The Run API: values, steps, params and secrets, status, disabled mode, resume."""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import foundry_track as ft
from foundry_track.rundir import RUN_FILE
from tests.helpers.recorder import metric_steps, records
from tests.helpers.tb import scalars


@pytest.fixture
def rec(tmp_path: Path, fault_plugins: Path) -> dict:
    return {"dir": str(tmp_path / "runs"), "fallback": None, "strict": True,
            "backends": {"recorder": {"out": str(tmp_path / "rec.jsonl")}}}


def _metrics(tmp_path: Path) -> list[dict]:
    return [r for r in records(tmp_path / "rec.jsonl") if r["hook"] == "metrics"]


def test_value_types_are_accepted_and_converted(rec: dict, tmp_path: Path) -> None:
    import torch

    with ft.init(rec) as run:
        run.log({"int": 3, "float": 0.5, "bool": True, "np32": np.float32(1.5), "np_int": np.int64(7),
                 "np0d": np.array(2.5), "tensor": torch.tensor(4.25), "grad": torch.tensor(1.0, requires_grad=True) * 2,
                 "nan": float("nan"), "inf": float("inf")})
    values = _metrics(tmp_path)[0]["values"]
    assert values["int"] == 3 and values["float"] == 0.5 and values["bool"] == 1
    assert values["np32"] == 1.5 and values["np_int"] == 7 and values["np0d"] == 2.5
    assert values["tensor"] == 4.25 and values["grad"] == 2.0
    assert values["nan"] != values["nan"] and values["inf"] == float("inf")


@pytest.mark.parametrize("bad, fragment", [
    ("text", "'k' has a value of type str"),
    ([1.0, 2.0], "'k' has a value of type list"),
    (np.zeros(3), "'k' has a value of type ndarray"),
])
def test_bad_values_raise_type_error_naming_the_key(rec: dict, bad: object, fragment: str) -> None:
    with ft.init(rec) as run:
        with pytest.raises(TypeError, match=fragment):
            run.log({"ok": 1.0, "k": bad})


@pytest.mark.parametrize("others", [{}, {"ok": 1.0}, {"ok": np.float32(1.0)}], ids=["alone", "short-path", "slow-path"])
@pytest.mark.parametrize("huge, magnitude", [(10**400, "10**400"), (-(10**5000), "10**5000"),
                                             (2**1024 - 2**970, "10**308")], ids=["1e400", "-1e5000", "edge"])
def test_an_int_beyond_float_range_is_refused_at_the_call(rec: dict, tmp_path: Path, others: dict, huge: int,
                                                          magnitude: str) -> None:
    # Accepted before, TensorBoard and MLflow then raised OverflowError on its batch for ever.
    with ft.init(rec) as run:
        with pytest.raises(ValueError, match=rf"'k' is an int of about {re.escape(magnitude)}, beyond float "
                                             rf"range.*math\.log10"):
            run.log({**others, "k": huge}, step=0)
        run.log({"k": 1.0}, step=1)
    assert [(r["step"], r["values"]) for r in _metrics(tmp_path)] == [(1, {"k": 1.0})]


def test_large_numbers_that_fit_a_float_are_accepted(rec: dict, tmp_path: Path) -> None:
    # Ints above SQLite's and JSON's 64 bits are fine (the values travel as JSON
    # text); so are values for which the short path's one-pass check is unsure.
    from fractions import Fraction

    logged = [{"big": 2**63 + 1, "bigger": -(2**100), "top": 2**1024 - 2**971, "u64": np.uint64(2**64 - 1)},
              {"inf": math.inf, "-inf": -math.inf}, {"a": 1e308, "b": 1e308}, {"f": Fraction(1, 3)}]
    with ft.init(rec) as run:
        for step, values in enumerate(logged):
            run.log(values, step=step)
        with pytest.raises(ValueError, match="'g' = Fraction beyond float range"):
            run.log({"g": Fraction(10**400, 3)})
    got = [r["values"] for r in _metrics(tmp_path)]
    assert got[0] == {"big": 2**63 + 1, "bigger": -(2**100), "top": 2**1024 - 2**971, "u64": 2**64 - 1}
    assert got[1] == {"inf": math.inf, "-inf": -math.inf} and got[2] == {"a": 1e308, "b": 1e308}
    assert got[3] == {"f": 1 / 3}


def test_non_str_keys_are_logged_as_str_and_reported_once(
    rec: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Keys are checked on the journal's thread (the call stays short), so a
    # non-str key is converted and reported, not raised.
    caplog.set_level(logging.WARNING, logger="foundry_track")
    with ft.init(rec) as run:
        run.log({1: 1.0, "ok": 2.0}, step=0)
        run.log({(2, 3): 3.0}, step=1)
    assert [r["values"] for r in _metrics(tmp_path)] == [{"1": 1.0, "ok": 2.0}, {"(2, 3)": 3.0}]
    assert caplog.text.count("metric keys should be str, got 1 (int)") == 1


def test_a_tensor_changed_in_place_after_log_keeps_the_logged_value(rec: dict, tmp_path: Path) -> None:
    import torch

    temperature = torch.nn.Parameter(torch.tensor(1.0))  # a learnable scalar the optimizer updates in place
    running = torch.zeros(())
    with ft.init(rec) as run:
        for step in range(3):
            running += 0.5
            run.log({"temperature": temperature, "running": running}, step=step)
            with torch.no_grad():
                temperature -= 1.0
            running.zero_()
    assert [r["values"] for r in _metrics(tmp_path)] == [
        {"temperature": 1.0 - step, "running": 0.5} for step in range(3)]


def test_steps_outside_the_journal_range_are_refused_at_the_call(rec: dict, tmp_path: Path) -> None:
    with ft.init(rec) as run:
        run.log({"a": 1.0}, step=0)
        for bad in (2**63, -1):
            with pytest.raises(ValueError, match=r"step must be in 0\.\.2\*\*63-1"):
                run.log({"a": 2.0}, step=bad)
        run.log({"a": 3.0}, step=1)
    assert [r["step"] for r in _metrics(tmp_path)] == [0, 1]


def test_non_str_keys_are_converted_on_the_slow_path_too(rec: dict, tmp_path: Path) -> None:
    with ft.init(rec) as run:
        run.log({1: True}, step=0)  # a bool goes through the slow path
        run.log({2: 0.5}, step=np.int64(1))  # so does a numpy step
    assert [r["values"] for r in _metrics(tmp_path)] == [{"1": 1}, {"2": 0.5}]


def test_not_a_mapping_is_a_clear_error(rec: dict) -> None:
    with ft.init(rec) as run, pytest.raises(TypeError, match="mapping of metric names to numbers, got float"):
        run.log(0.5)  # type: ignore[arg-type]


def test_tensor_of_many_values_is_rejected_with_advice(rec: dict) -> None:
    import torch

    with ft.init(rec) as run, pytest.raises(TypeError, match=r"shape \(3,\).*log_histogram"):
        run.log({"w": torch.zeros(3)})


def test_steps_default_continue_and_lower_steps_are_kept_and_reported_once(
    rec: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="foundry_track")
    with ft.init(rec) as run:
        run.log({"a": 0.0})
        run.log({"a": 1.0})
        run.log({"a": 10.0}, step=10)
        run.log({"a": 11.0})
        run.log({"a": 5.0}, step=5)
        run.log({"a": 4.0}, step=4)
    assert [r["step"] for r in _metrics(tmp_path)] == [0, 1, 10, 11, 5, 4]
    assert caplog.text.count("is lower than step") == 1


def test_every_n_steps_keeps_only_multiples(rec: dict, tmp_path: Path) -> None:
    with ft.init({**rec, "every_n_steps": 10}) as run:
        for step in range(35):
            run.log({"a": float(step)}, step=step)
    assert [r["step"] for r in _metrics(tmp_path)] == [0, 10, 20, 30]


def test_params_flattened_and_secrets_never_reach_journal_or_backend(rec: dict, tmp_path: Path) -> None:
    with ft.init(rec) as run:
        run.log_params({"optimizer": {"lr": 1e-3, "name": "adamw"}, "WANDB_API_KEY": "sk-123",
                        "db": {"password": "hunter2"}, "hf_token": "hf_abc", "path": Path("/x")})
    params = next(r["params"] for r in records(tmp_path / "rec.jsonl") if r["hook"] == "params")
    assert params == {"optimizer/lr": 1e-3, "optimizer/name": "adamw", "WANDB_API_KEY": "***",
                      "db/password": "***", "hf_token": "***", "path": "/x"}
    raw = b"".join(p.read_bytes() for p in Path(run.dir).iterdir() if p.is_file())
    assert b"sk-123" not in raw and b"hunter2" not in raw and b"hf_abc" not in raw


def test_secrets_in_backend_options_are_not_written_to_run_json(tmp_path: Path) -> None:
    cfg = {"dir": str(tmp_path), "backends": {"tensorboard": {}}, "notes": "n"}
    with ft.init(cfg) as run:
        pass
    data = json.loads((Path(run.dir) / RUN_FILE).read_text())
    assert data["status"] == "success" and data["backends"] == {"tensorboard": {}}


def test_context_manager_marks_failed_and_reraises(rec: dict, tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        with ft.init(rec) as run:
            run.log({"a": 1.0})
            1 / 0  # noqa: B018 - an error inside the block
    assert [r["status"] for r in records(tmp_path / "rec.jsonl") if r["hook"] == "finish"] == ["failed"]
    assert json.loads((Path(run.dir) / RUN_FILE).read_text())["status"] == "failed"


def test_finish_twice_and_log_after_finish_are_harmless(rec: dict, tmp_path: Path) -> None:
    run = ft.init(rec)
    run.log({"a": 1.0})
    assert run.finish() == {}
    assert run.finish() == {}
    run.log({"a": 2.0})
    assert len(_metrics(tmp_path)) == 1
    with pytest.raises(ValueError, match="status must be one of"):
        ft.init(rec).finish("done")  # type: ignore[arg-type]


def test_unfinished_run_is_closed_as_killed_at_exit(tmp_path: Path, fault_plugins: Path) -> None:
    out = tmp_path / "rec.jsonl"
    code = (
        "import foundry_track as ft;"
        f"run = ft.init({{'dir': {str(tmp_path)!r}, 'fallback': None, 'backends': {{'recorder': {{'out': {str(out)!r}}}}}}});"
        "[run.log({'a': float(i)}) for i in range(100)]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert metric_steps(out) == {s: 1 for s in range(100)}
    assert [r["status"] for r in records(out) if r["hook"] == "finish"] == ["killed"]


def test_log_is_safe_from_many_threads(rec: dict, tmp_path: Path) -> None:
    with ft.init(rec) as run:
        def worker(offset: int) -> None:
            for i in range(500):
                run.log({"v": float(i)}, step=offset + i)
        threads = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert metric_steps(tmp_path / "rec.jsonl") == {k * 1000 + i: 1 for k in range(4) for i in range(500)}


def test_log_faster_than_the_journal_waits_instead_of_queueing_without_bound(rec: dict, tmp_path: Path) -> None:
    # 100,000 steps of 10 values, logged with nothing in between: far faster
    # than the journal's writer commits. Without the backlog wait the queue of
    # uncommitted events holds most of the run at once (measured: ~97% of the
    # steps); with it, the queue stays within a few GIL hand-offs of the
    # 100,000-value mark (10,000 events; measured 12,000-29,000), and every
    # step still arrives exactly once.
    steps, keys = 100_000, [f"m{i}" for i in range(10)]
    with ft.init(rec) as run:
        pending = run._journal._pending  # what the training thread has handed over but not yet committed
        longest = 0
        for step in range(steps):
            run.log({k: float(step) for k in keys}, step=step)
            if step % 100 == 0:
                longest = max(longest, len(pending))
    assert longest < steps // 2, f"{longest:,} events queued at once"
    assert metric_steps(tmp_path / "rec.jsonl") == {s: 1 for s in range(steps)}


def test_disabled_mode_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_TRACK_MODE", "disabled")
    before = threading.active_count()
    with ft.init({"dir": str(tmp_path / "runs")}) as run:
        run.log({"a": 1.0})
        run.log_params({"x": 1})
        assert run.dir is None and not run.enabled
    assert threading.active_count() == before
    assert list(tmp_path.iterdir()) == []


def test_resume_continues_the_same_run_and_steps(tmp_path: Path) -> None:
    cfg = {"dir": str(tmp_path / "runs"), "run_name": "exp"}
    with ft.init(cfg) as first:
        for step in range(100):
            first.log({"loss": float(step)}, step=step)
    with ft.init(cfg, resume=first.dir) as second:
        assert second.id == first.id and second.dir == first.dir
        for _ in range(100):
            second.log({"loss": 1.0})  # step omitted: continues after 99
    assert second.backend_ids["tensorboard"] == first.backend_ids["tensorboard"]
    got = scalars(second.backend_ids["tensorboard"]["log_dir"])["loss"]
    assert [s for s, _ in got] == list(range(200))
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_resume_of_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ft.ConfigError, match="no run.json"):
        ft.init({"dir": str(tmp_path)}, resume=tmp_path / "nothing")
