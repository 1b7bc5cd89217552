"""The conformance kit (foundry_track.testing) against the built-in backends and
the fault-injection recorder; broken backends reported with hook and case; the
read-back, which catches a backend that returns from every hook and stores
nothing; the report's parts, ran or skipped and why; and one test per hook,
named after it, on the TensorBoard backend or the recorder (read back from
their real output)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata

import foundry_track as ft
from foundry_track import hookspecs
from foundry_track.media import digest_path, encode_png
from foundry_track.plugins import discover, instantiate
from foundry_track.testing import Stored, check_backend
from foundry_track.testing.report import PARTS
from tests.helpers.recorder import records
from tests.helpers.tb import accumulator, scalars

HOOKS = set(hookspecs.__all__)
# The hooks a run calls; tracker_doctor is called by `foundry-track doctor`, never in a run.
LOG_HOOKS = HOOKS - {"tracker_options_model", "tracker_unavailable", "tracker_doctor"}
# Only a backend that buffers implements it (TensorBoard's event file); a call that is durable when it
# returns (MLflow's REST API) needs none.
BUFFERED_ONLY = {"tracker_flush"}


def _text(acc: Any, tag: str) -> list[str]:
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag)]


def _tb(run: ft.Run) -> Any:
    return accumulator(run.backend_ids["tensorboard"]["log_dir"])


# --------------------------------------------------------------------------- #
# The kit against real backends
# --------------------------------------------------------------------------- #


def tensorboard_readback(identity: Mapping[str, str]) -> Stored:
    """What a TensorBoard run directory holds, read with tensorboard's own event
    file reader: every scalar (each copy), the params of every HParams session
    start, the tags of images, histograms and texts, artifact notes and alert titles."""
    metrics: list[tuple[int, str, float]] = []
    params: dict[str, Any] = {}
    media: set[str] = set()
    artifacts: set[str] = set()
    alerts: set[str] = set()
    for path in sorted(Path(identity["log_dir"]).glob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if value.HasField("simple_value"):
                    metrics.append((event.step, value.tag, value.simple_value))
                elif plugin == hp_metadata.PLUGIN_NAME and value.tag == hp_metadata.SESSION_START_INFO_TAG:
                    start = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    for key, hparam in start.session_start_info.hparams.items():
                        params[key] = getattr(hparam, hparam.WhichOneof("kind"))
                elif value.HasField("image") or value.HasField("histo"):
                    media.add(value.tag)
                elif plugin == "text" and value.tag.startswith("artifacts/"):
                    artifacts.add(value.tag.removeprefix("artifacts/"))
                elif plugin == "text" and value.tag == "alerts":
                    title = re.match(r"\*\*[A-Z]+: (.*)\*\*\n", value.tensor.string_val[0].decode())
                    assert title is not None
                    alerts.add(title.group(1))
                elif plugin == "text":
                    media.add(value.tag)
    return Stored(metrics=metrics, params=params, media=media, artifacts=artifacts, alerts=alerts)


def test_tensorboard_passes_the_conformance_kit(tmp_path: Path) -> None:
    report = check_backend("tensorboard", {}, tmp_path, readback=tensorboard_readback).assert_ok()
    assert report.implemented == HOOKS
    called = {r.hook for r in report.results}
    assert LOG_HOOKS <= called  # every hook it implements was driven
    assert {"foundry_track.init", "foundry_track.sync"} <= called  # and the end-to-end cases ran
    for case in ("metrics: an empty batch", "metrics: unicode keys", "metrics: NaN and inf",
                 "metrics: a 10,000-row batch", "metrics: out-of-order and repeated steps", "finish twice",
                 "restart after a failed run: start with the saved identity"):
        assert case in report.cases
    # Every part ran, the read-back after each, and TensorBoard stores everything the kit sends.
    assert [(p.name, p.ran) for p in report.parts] == [(name, True) for name in PARTS]
    read_back = report.part("read-back")
    assert read_back is not None and read_back.note == (
        "checked after the hook cases, the new run, its resume, the sync, the process-delivery run")
    assert not [a for a in report.advice if "read-back" in a]
    # The 10,000 rows really reached the event file of the kit's run.
    log_dir = next((report.dir / "run").rglob("events.out.tfevents.*")).parent
    assert len([s for s, _ in scalars(log_dir)["train/loss"] if s >= 100]) == 10_000


def test_the_tensorboard_readback_catches_a_lost_and_a_doubled_value(tmp_path: Path) -> None:
    def lossy(identity: Mapping[str, str]) -> Stored:
        held = tensorboard_readback(identity)
        assert held.metrics is not None
        rows = [row for row in held.metrics if row[:2] != (100, "train/loss")]
        return Stored(metrics=[*rows, *[row for row in rows if row[:2] == (9, "train/loss")]],
                      params=held.params, media=held.media)

    report = check_backend("tensorboard", {}, tmp_path, readback=lossy, end_to_end=False)
    assert len(report.problems) == 2, report.format()
    missing = report.problems_with(case="read-back after the hook cases: metrics: a 10,000-row batch")
    assert len(missing) == 1 and missing[0].hook == "tracker_log_metrics"
    assert "does not hold 1 of the 10,000 metric value(s) this case sent: step 100 'train/loss' = 0.01" in missing[0].message
    doubled = [p for p in report.problems if "more often than they were delivered" in p.message]
    assert len(doubled) == 1 and "step 9 'train/loss' = 0.1 held 2 times, delivered once" in doubled[0].message
    assert doubled[0].case == "read-back after the hook cases: metrics: out-of-order and repeated steps"
    part = report.part("read-back")
    assert part is not None and part.ran and part.note == "checked after the hook cases; not read back: artifacts, alerts"


def test_recorder_passes_the_conformance_kit(tmp_path: Path, fault_plugins: Path) -> None:
    out = tmp_path / "recorder.jsonl"
    report = check_backend("recorder", {"out": str(out)}, tmp_path).assert_ok()
    assert report.implemented == {"tracker_options_model", "tracker_start", "tracker_log_metrics",
                                  "tracker_log_params", "tracker_finish"}
    assert "tracker_log_image (not implemented)" in report.skipped
    got = records(out)
    starts = [r for r in got if r["hook"] == "start"]
    assert [s["resumed"] for s in starts[:3]] == [False, True, True]  # new run, restart, sync
    assert [r["status"] for r in got if r["hook"] == "finish"][:4] == ["success", "success", "failed", "killed"]
    nan_row = next(r for r in got if r["hook"] == "metrics" and r["step"] == 2 and "train/ok" in r["values"])
    assert math.isnan(nan_row["values"]["train/loss"])


REMOTE = {
    "wandb": lambda tmp: {},  # offline: conftest sets WANDB_MODE=offline
    "mlflow": lambda tmp: {"tracking_uri": f"sqlite:///{tmp}/m.db"},
}


@pytest.mark.parametrize("name", sorted(REMOTE))
def test_remote_builtin_backend_passes_the_conformance_kit(name: str, tmp_path: Path) -> None:
    info = discover().get(name)
    if info is None or not info.available:
        pytest.skip(f"the {name} backend is not available here: {info.problem if info else 'not installed'}")
    report = check_backend(name, REMOTE[name](tmp_path), tmp_path).assert_ok()
    assert LOG_HOOKS - BUFFERED_ONLY <= report.implemented
    called = {r.hook for r in report.results}
    assert (report.implemented & LOG_HOOKS) <= called  # tracker_flush too, where it is implemented
    assert {"foundry_track.init", "foundry_track.sync"} <= called


# --------------------------------------------------------------------------- #
# Broken backends are reported with the hook and the case
# --------------------------------------------------------------------------- #


class Sloppy:
    """Raises on NaN/inf and on a second finish; gives a hook argument a default."""

    def __init__(self) -> None:
        self.finished = False

    @ft.hookimpl
    def tracker_start(self, run: Any, options: Any, resume_state: Any) -> dict[str, str]:
        return {"where": str(run.dir)}

    @ft.hookimpl
    def tracker_log_metrics(self, rows: Any) -> None:
        for row in rows:
            if any(isinstance(v, float) and not math.isfinite(v) for v in row.values.values()):
                raise ValueError("cannot store non-finite values")

    @ft.hookimpl
    def tracker_log_text(self, text: Any = None) -> None:
        pass

    @ft.hookimpl
    def tracker_finish(self, status: Any) -> None:
        if self.finished:
            raise RuntimeError("run already finished")
        self.finished = True


def test_a_broken_backend_is_reported_with_hook_and_case(tmp_path: Path) -> None:
    report = check_backend(Sloppy, {}, tmp_path)
    assert not report.ok
    nan = report.problems_with(hook="tracker_log_metrics")
    assert [p.case for p in nan] == ["metrics: NaN and inf"]
    assert "ValueError: cannot store non-finite values" in nan[0].message
    assert "must not raise" in nan[0].message and "cannot store non-finite" in nan[0].details
    assert [p.case for p in report.problems_with(hook="tracker_finish")] == ["finish twice"]
    defaults = report.problems_with(hook="tracker_log_text", case="contract")
    assert defaults and "defaults (text)" in defaults[0].message
    e2e = report.part("end to end")
    assert e2e is not None and not e2e.ran and "a run selects backends by entry-point name" in e2e.note
    with pytest.raises(AssertionError) as raised:
        report.assert_ok()
    assert "[metrics: NaN and inf] tracker_log_metrics: raised ValueError" in str(raised.value)
    assert "[finish twice] tracker_finish: raised RuntimeError" in str(raised.value)


# --------------------------------------------------------------------------- #
# The read-back: a hook that returns has not necessarily stored anything
# --------------------------------------------------------------------------- #


def memory_tracker(store: dict[str, dict[str, Any]], copies: int = 1, keep: bool = True) -> type:
    """A tracker in memory: each run's data in ``store`` under the id its
    ``tracker_start`` returns; ``copies`` of each metric value; ``keep=False``
    stores nothing at all (and returns from every hook)."""

    class Memory:
        def __init__(self) -> None:
            self.held: dict[str, Any] = {}

        @ft.hookimpl
        def tracker_start(self, run: Any, options: Any, resume_state: Mapping[str, str]) -> dict[str, str]:
            run_id = resume_state.get("id", run.id)
            self.held = store.setdefault(run_id, {"metrics": [], "params": {}, "media": [], "artifacts": [],
                                                  "alerts": []})
            return {"id": run_id}

        @ft.hookimpl
        def tracker_log_metrics(self, rows: Any) -> None:
            for _ in range(copies if keep else 0):
                self.held["metrics"] += [(row.step, key, value) for row in rows for key, value in row.values.items()]

        @ft.hookimpl
        def tracker_log_params(self, params: Any) -> None:
            if keep:
                self.held["params"].update(params)

        @ft.hookimpl
        def tracker_log_image(self, image: Any) -> None:
            if keep:
                self.held["media"].append(image.key)

        @ft.hookimpl
        def tracker_log_text(self, text: Any) -> None:
            if keep:
                self.held["media"].append(text.key)

        @ft.hookimpl
        def tracker_log_artifact(self, artifact: Any) -> None:
            if keep:
                self.held["artifacts"].append(artifact.name)

        @ft.hookimpl
        def tracker_alert(self, alert: Any) -> None:
            if keep:
                self.held["alerts"].append(alert.title)

        @ft.hookimpl
        def tracker_finish(self, status: Any, complete: bool) -> None:
            pass

    return Memory


def test_a_backend_that_stores_everything_passes_the_read_back(tmp_path: Path) -> None:
    store: dict[str, dict[str, Any]] = {}
    report = check_backend(memory_tracker(store), {}, tmp_path, readback=lambda identity: store[identity["id"]])
    assert report.assert_ok() and len(store) == 1
    part = report.part("read-back")
    assert part is not None and part.ran and part.note == "checked after the hook cases"


def test_a_backend_that_drops_every_event_fails_the_kit_given_a_read_back(tmp_path: Path) -> None:
    store: dict[str, dict[str, Any]] = {}
    drops = memory_tracker(store, keep=False)
    # Without a read-back every hook returned, so the kit finds nothing wrong;
    # the report says what was not checked.
    blind = check_backend(drops, {}, tmp_path / "blind").assert_ok()
    part = blind.part("read-back")
    assert part is not None and not part.ran and part.note.startswith("no readback= given")
    assert "skipped  read-back: no readback= given" in blind.format()

    report = check_backend(drops, {}, tmp_path / "read", readback=lambda identity: store[identity["id"]])
    assert not report.ok
    hooks = {p.hook for p in report.problems}
    assert hooks == {"tracker_log_metrics", "tracker_log_params", "tracker_log_image", "tracker_log_text",
                     "tracker_log_artifact", "tracker_alert"}
    assert all(p.case.startswith("read-back after the hook cases: ") for p in report.problems)
    (rows,) = report.problems_with(case="metrics: a 10,000-row batch")
    assert "does not hold 10,000 of the 10,000 metric value(s) this case sent" in rows.message
    assert report.problems_with(hook="tracker_log_params")[0].message == "the tracker holds no param 'lr'"
    assert any(p.message == "the tracker holds no alert 'Diverged'" for p in report.problems)
    # Data a backend may skip with a warning (unicode keys, NaN) is advice, not a problem.
    assert any(a.startswith("read-back after the hook cases [metrics: NaN and inf] tracker_log_metrics")
               for a in report.advice)
    with pytest.raises(AssertionError, match=r"\[read-back after the hook cases: metrics: one row\] "
                                             r"tracker_log_metrics: the tracker does not hold 2 of the 2"):
        report.assert_ok()


def test_a_backend_that_stores_each_value_twice_fails_the_read_back(tmp_path: Path) -> None:
    store: dict[str, dict[str, Any]] = {}
    report = check_backend(memory_tracker(store, copies=2), {}, tmp_path, readback=lambda i: store[i["id"]])
    doubled = [p for p in report.problems if "more often than they were delivered" in p.message]
    assert doubled and all(p.hook == "tracker_log_metrics" for p in doubled)
    (one,) = [p for p in doubled if p.case.endswith(": metrics: one row")]
    # The kit sent that row twice itself ("the same rows delivered again"): 4 copies are 2 too many.
    assert "step 0 'train/lr' = 0.001 held 4 times, delivered 2 times" in one.message


def test_a_read_back_that_fails_or_returns_the_wrong_shape_is_reported(tmp_path: Path) -> None:
    store: dict[str, dict[str, Any]] = {}
    backend = memory_tracker(store)

    def broken(identity: Mapping[str, str]) -> Any:
        raise KeyError("no such run")

    (problem,) = check_backend(backend, {}, tmp_path / "a", readback=broken).problems
    assert (problem.case, problem.hook) == ("read-back after the hook cases", None)
    assert problem.message == "the read-back raised KeyError: 'no such run'" and "KeyError" in problem.details
    (problem,) = check_backend(backend, {}, tmp_path / "b", readback=lambda i: {"rows": []}).problems
    assert "unknown key(s) rows; a read-back returns metrics, params, media, artifacts, alerts" in problem.message
    (problem,) = check_backend(backend, {}, tmp_path / "c", readback=lambda i: {"metrics": [("x",)]}).problems
    assert "a metric item must be a (step, key, value) triple or a row with step and values" in problem.message
    part = check_backend(backend, {}, tmp_path / "d", readback=broken).part("read-back")
    assert part is not None and not part.ran and part.note == "the read-back was never asked: no part got far enough"


def test_the_report_lists_every_part_and_why_one_was_skipped(tmp_path: Path) -> None:
    store: dict[str, dict[str, Any]] = {}
    report = check_backend(memory_tracker(store), {}, tmp_path / "class").assert_ok()
    assert [(p.name, p.ran) for p in report.parts] == [
        ("contract", True), ("hook cases", True), ("end to end", False), ("process delivery", False),
        ("read-back", False)]
    text = report.format()
    for line in ("  ran      contract: 8 hook(s) implemented; the options validate",
                 "  ran      hook cases: 32 calls on 3 instance(s): a new run, a restart after a failed run, "
                 "a sync of a closed run",
                 "  skipped  end to end: a run selects backends by entry-point name, and this backend was given as "
                 "a class: pass the name of the installed distribution's entry point",
                 "  skipped  read-back: no readback= given"):
        assert line in text, text
    assert text.splitlines()[0].endswith(f"parts run: contract, hook cases; files in {report.dir})")
    assert "tracker_log_histogram (not implemented)" in report.skipped  # hooks and cases that did not apply

    # Asked for explicitly, a part that cannot run is a problem, not a silent skip.
    (problem,) = check_backend(memory_tracker(store), {}, tmp_path / "asked", end_to_end=True).problems
    assert problem.case == "end to end" and problem.message.startswith("end_to_end=True, but the part cannot run")

    tb = check_backend("tensorboard", {}, tmp_path / "tb", end_to_end=False)
    assert [(p.name, p.ran, p.note) for p in tb.parts if not p.ran] == [
        ("end to end", False, "end_to_end=False"), ("process delivery", False, "end_to_end=False"),
        ("read-back", False, "no readback= given: the kit checked that the hooks return, not that the tracker "
                             "holds what they received")]

    class NoSdk:
        @ft.hookimpl
        def tracker_unavailable(self) -> str | None:
            return "the 'nosdk' package is missing: pip install nosdk"

    unavailable = check_backend(NoSdk, {}, tmp_path / "nosdk")
    assert [(p.name, p.ran) for p in unavailable.parts] == [("contract", True)] + [(n, False) for n in PARTS[1:]]
    assert unavailable.part("hook cases").note == "not run: the contract check failed (see the problems)"  # type: ignore[union-attr]


def test_the_kit_drives_tracker_flush_and_hands_its_checkpoint_back_at_restart(tmp_path: Path) -> None:
    seen: list[tuple[str, Any]] = []

    class Buffered:
        @ft.hookimpl
        def tracker_start(self, run: Any, options: Any, resume_state: Any) -> dict[str, str]:
            seen.append(("start", dict(resume_state)))
            return {"run_id": run.id}

        @ft.hookimpl
        def tracker_log_metrics(self, rows: Any) -> None:
            seen.append(("metrics", len(rows)))

        @ft.hookimpl
        def tracker_flush(self) -> dict[str, str]:
            seen.append(("flush", None))
            return {"offset": str(len(seen))}

        @ft.hookimpl
        def tracker_finish(self, status: Any, complete: bool) -> None:
            seen.append(("finish", (status, complete)))

    report = check_backend(Buffered, {}, tmp_path).assert_ok()
    for case in ("flush right after start", "flush after the metrics", "flush before finish",
                 "restart after a failed run: flush right after start"):
        assert case in report.cases
    starts = [i for i, (hook, _) in enumerate(seen) if hook == "start"]
    assert len(starts) == 3 and seen[starts[0]][1] == {}
    run_id = seen[starts[1]][1]["run_id"]
    for earlier, start in zip(starts, starts[1:]):
        # The checkpoint of the last flush of the instance before, with the identity.
        last_flush = max(i for i in range(earlier, start) if seen[i][0] == "flush")
        assert seen[start][1] == {"run_id": run_id, "offset": str(last_flush + 1)}
    # A flush right after each start, and after the last rows of a new run before its finish.
    assert [seen[i + 1][0] for i in starts] == ["flush"] * 3
    assert [s for hook, s in seen if hook == "finish"] == [("success", True), ("success", True),
                                                          ("failed", False), ("killed", True)]


def test_a_tracker_flush_that_returns_no_checkpoint_mapping_is_reported(tmp_path: Path) -> None:
    class BadCheckpoint:
        @ft.hookimpl
        def tracker_log_text(self, text: Any) -> None:
            pass

        @ft.hookimpl
        def tracker_flush(self) -> Any:
            return {"offset": 120}  # not a str

    report = check_backend(BadCheckpoint, {}, tmp_path)
    problems = report.problems_with(hook="tracker_flush")
    assert [p.case for p in problems][:3] == ["flush right after start", "flush after the metrics",
                                              "flush before finish"]
    assert "must return None or a mapping of str to str (the checkpoint), returned {'offset': 120}" in problems[0].message


def test_a_hook_that_never_returns_is_reported(tmp_path: Path) -> None:
    release = threading.Event()

    class Hangs:
        @ft.hookimpl
        def tracker_log_text(self, text: Any) -> None:
            release.wait(30)

    try:
        report = check_backend(Hangs, {}, tmp_path, hook_timeout=0.3)
    finally:
        release.set()
    (problem,) = report.problems
    assert (problem.case, problem.hook) == ("text: markdown and unicode", "tracker_log_text")
    assert "did not return within 0.3 s" in problem.message
    assert "restart after a failed run: start with the saved identity" not in report.cases  # instance abandoned


@pytest.mark.thread_delivery  # the hook is named from this process's log record
def test_a_named_backend_failing_end_to_end_names_the_hook(tmp_path: Path, fault_plugins: Path) -> None:
    flag = tmp_path / "flag"
    flag.touch()
    report = check_backend("raising", {"out": str(tmp_path / "o.jsonl"), "fault_flag": str(flag)}, tmp_path)
    (e2e,) = report.problems_with(case="end to end")
    assert e2e.hook == "tracker_log_params" and "RuntimeError: injected failure" in e2e.message
    assert {p.hook for p in report.problems} == {"tracker_log_params", "tracker_log_metrics"}


def test_an_unavailable_backend_is_reported(tmp_path: Path) -> None:
    class NoSdk:
        @ft.hookimpl
        def tracker_unavailable(self) -> str | None:
            return "the 'nosdk' package is missing"

    report = check_backend(NoSdk, {}, tmp_path)
    (problem,) = report.problems
    assert problem.hook == "tracker_unavailable" and "cannot run here: the 'nosdk' package is missing" in problem.message
    assert any("pip install" in advice for advice in report.advice)
    assert report.results == []


# --------------------------------------------------------------------------- #
# One test per hook, named after it
# --------------------------------------------------------------------------- #


def test_tracker_options_model_validates_tensorboard_options(tmp_path: Path) -> None:
    with pytest.raises(ft.ConfigError, match=r"tracking\.backends\.tensorboard\.flush_sec: unknown key; "
                                             r"did you mean 'flush_secs'\?"):
        ft.init({"dir": str(tmp_path), "backends": {"tensorboard": {"flush_sec": 1}}})
    with pytest.raises(ft.ConfigError, match=r"tracking\.backends\.tensorboard\.flush_secs: .*greater than 0"):
        ft.init({"dir": str(tmp_path), "backends": {"tensorboard": {"flush_secs": 0}}})
    assert not list(tmp_path.iterdir())  # rejected before anything was created


SDK_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def test_tracker_unavailable_of_every_builtin_names_its_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    builtins = {n: i for n, i in discover().items() if i.distribution == "foundry-track"}
    assert "tensorboard" in builtins
    for info in builtins.values():
        assert instantiate(info).tracker_unavailable() is None  # installed here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda mod, *a: None if mod in SDK_MODULES.values() else real(mod, *a))
    for name, info in builtins.items():
        reason = instantiate(info).tracker_unavailable()
        assert reason is not None and f"pip install 'foundry-track[{name}]'" in reason, (name, reason)


def test_tracker_start_identity_is_saved_and_given_back_on_resume(tmp_path: Path) -> None:
    config = {"dir": str(tmp_path), "backends": {"tensorboard": {"log_dir": str(tmp_path / "tb")}}, "strict": True}
    with ft.init(config, run_name="ident") as run:
        run.log({"loss": 1.0}, step=0)
    log_dir = run.backend_ids["tensorboard"]["log_dir"]
    assert Path(log_dir) == (tmp_path / "tb" / f"ident-{run.id}").resolve()
    assert json.loads((run.dir / "run.json").read_text())["backend_ids"]["tensorboard"] == {"log_dir": log_dir}
    with ft.init(config, resume=run.dir) as resumed:
        resumed.log({"loss": 0.5})
    assert resumed.backend_ids["tensorboard"]["log_dir"] == log_dir
    assert len(list(Path(log_dir).glob("events.out.tfevents.*"))) == 2
    assert scalars(log_dir)["loss"] == [(0, 1.0), (1, 0.5)]


def test_tracker_log_metrics_keeps_nan_unicode_and_out_of_order_steps(tmp_path: Path) -> None:
    with ft.init({"dir": str(tmp_path)}, strict=True) as run:
        for step in range(5):
            run.log({"train/loss": 1.0 / (step + 1), "pérdida/ñ": float(step)}, step=step)
        run.log({"train/loss": math.nan}, step=5)
        run.log({"train/loss": 0.9}, step=2)  # lower than a step already logged
    got = scalars(run.backend_ids["tensorboard"]["log_dir"])
    assert [s for s, _ in got["train/loss"]] == [0, 1, 2, 3, 4, 5, 2]
    assert math.isnan(got["train/loss"][5][1]) and got["train/loss"][6] == (2, pytest.approx(0.9))
    assert got["pérdida/ñ"] == [(s, float(s)) for s in range(5)]


def test_tracker_log_params_arrive_flat_and_redacted(tmp_path: Path, fault_plugins: Path) -> None:
    out = tmp_path / "rec.jsonl"
    with ft.init({"dir": str(tmp_path), "fallback": None, "backends": {"recorder": {"out": str(out)}}}) as run:
        run.log_params({"lr": 0.001, "model": {"layers": 4}, "wandb_api_key": "abc123", "amp": True})
    (params,) = [r["params"] for r in records(out) if r["hook"] == "params"]
    assert params == {"lr": 0.001, "model/layers": 4, "wandb_api_key": "***", "amp": True}
    assert "abc123" not in out.read_text() and "abc123" not in (run.dir / "journal.db").read_bytes().decode("latin-1")


def test_tracker_log_image_reaches_tensorboard(tmp_path: Path) -> None:
    pixels = (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3)
    with ft.init({"dir": str(tmp_path)}, strict=True) as run:
        run.log_image("samples/ñ", pixels, step=3, caption="a caption")
    image = _tb(run).Images("samples/ñ")[0]
    assert (image.step, image.width, image.height) == (3, 5, 4)
    assert image.encoded_image_string == encode_png(pixels)


def test_tracker_log_histogram_reaches_tensorboard(tmp_path: Path) -> None:
    with ft.init({"dir": str(tmp_path)}, strict=True) as run:
        run.log_histogram("weights/w", np.array([0.0, 1.0, 1.0, 2.0, math.nan]), step=4, bins=4)
    histo = _tb(run).Histograms("weights/w")[0]
    value = histo.histogram_value
    assert histo.step == 4 and (value.num, value.min, value.max, value.sum) == (4, 0.0, 2.0, 4.0)
    assert sum(value.bucket) == 4  # the NaN is left out, not an error


def test_tracker_log_table_reaches_tensorboard_as_markdown(tmp_path: Path) -> None:
    with ft.init({"dir": str(tmp_path)}, strict=True) as run:
        run.log_table("eval/preds", ["id", "text"], [[1, "hola"], [2, "日本語"]], step=2)
    assert _text(_tb(run), "eval/preds") == ["| id | text |\n|---|---|\n| 1 | hola |\n| 2 | 日本語 |"]


def test_tracker_log_text_reaches_tensorboard(tmp_path: Path) -> None:
    with ft.init({"dir": str(tmp_path)}, strict=True) as run:
        run.log_text("notes/summary", "# Résumé\n*down* 📉", step=1)
    assert _text(_tb(run), "notes/summary") == ["# Résumé\n*down* 📉"]


def test_tracker_log_artifact_is_noted_in_tensorboard_with_its_digest(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(bytes(range(256)))
    with ft.init({"dir": str(tmp_path / "runs")}, strict=True) as run:
        run.log_artifact(weights, type="model", name="weights", description="after step 1")
    (note,) = _text(_tb(run), "artifacts/weights")
    assert note == (f"**model** `weights` at `{weights.resolve()}` (sha256 {digest_path(weights)}): after step 1")


def test_tracker_alert_is_noted_in_tensorboard(tmp_path: Path) -> None:
    with ft.init({"dir": str(tmp_path)}, strict=True) as run:
        run.alert("Diverged", "loss is NaN at step 7", level="error")
    assert _text(_tb(run), "alerts") == ["**ERROR: Diverged**\n\nloss is NaN at step 7"]


def test_tracker_finish_closes_the_hparams_session_with_the_status(tmp_path: Path) -> None:
    run = ft.init({"dir": str(tmp_path)}, strict=True)
    run.log_params({"lr": 0.1})
    run.log({"loss": 1.0}, step=0)
    assert run.finish("failed") == {}
    assert run.finish("failed") == {}  # twice is harmless
    content = _tb(run).PluginTagToContent(hp_metadata.PLUGIN_NAME)
    end = plugin_data_pb2.HParamsPluginData.FromString(content[hp_metadata.SESSION_END_INFO_TAG])
    assert end.session_end_info.status == api_pb2.Status.STATUS_FAILURE
    assert json.loads((run.dir / "run.json").read_text())["status"] == "failed"


def test_the_kit_imports_no_tracker_sdk_torch_or_numpy() -> None:
    code = ("import sys, foundry_track.testing; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('wandb', 'mlflow', 'tensorboard', 'torch', 'numpy')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
