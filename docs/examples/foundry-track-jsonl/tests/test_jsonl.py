"""Tests of foundry-track-jsonl. Install the distribution first
(`pip install -e '.[test]'`): foundry-track finds the backend through its entry
point, the way it will find it for users."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import foundry_track
from foundry_track.events import MetricRow, RunInfo
from foundry_track.testing import check_backend


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_event_is_one_json_line(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    config = {"dir": str(tmp_path / "runs"), "backends": {"jsonl": {"path": str(out)}}, "strict": True}
    with foundry_track.init(config) as run:
        run.log_params({"lr": 0.001, "model": {"layers": 2}})
        run.log({"loss": 0.5}, step=0)
        run.log({"loss": float("nan")}, step=1)
        run.log_text("notes", "ça marche")
        run.alert("Done", "training finished", "info")
    lines = read(out)
    assert [line["event"] for line in lines] == ["start", "params", "metrics", "metrics", "text", "alert", "finish"]
    assert lines[1]["params"] == {"lr": 0.001, "model/layers": 2}
    assert lines[2]["values"] == {"loss": 0.5} and lines[3]["values"] == {"loss": "NaN"}
    assert lines[4]["text"] == "ça marche" and lines[5]["level"] == "info"
    assert lines[-1] == {"event": "finish", "status": "success", "complete": True}


def test_default_file_is_in_the_run_directory_and_resume_appends(tmp_path: Path) -> None:
    config = {"dir": str(tmp_path), "backends": {"jsonl": {}}}
    run = foundry_track.init(config)
    run.log({"loss": 1.0})
    run.finish()
    resumed = foundry_track.init(config, resume=run.dir)
    resumed.log({"loss": 0.5})
    resumed.finish()
    lines = read(run.dir / "events.jsonl")
    # The first finish line was written after the last checkpoint: the resume
    # cut it off, so the file ends with one finish line, the run's last.
    assert [line["event"] for line in lines] == ["start", "metrics", "start", "metrics", "finish"]
    assert [line["step"] for line in lines if line["event"] == "metrics"] == [0, 1]
    assert lines[2]["resumed"] is True


def test_a_restart_drops_what_was_written_after_the_checkpoint(tmp_path: Path) -> None:
    # The hooks called by hand, in the order the dispatcher calls them.
    from foundry_track_jsonl import JsonlBackend, JsonlOptions

    info = RunInfo(id="r1", name="r1", project="demo", entity=None, tags=(), notes=None, group=None, config={},
                   dir=tmp_path, resumed=False)
    first = JsonlBackend()
    identity = first.tracker_start(info, JsonlOptions(), {})
    first.tracker_log_metrics([MetricRow(0, 1.0, {"loss": 1.0})])
    checkpoint = first.tracker_flush()  # step 0 is durable: the journal notes it as delivered
    first.tracker_log_metrics([MetricRow(1, 2.0, {"loss": 0.5})])  # written, not yet flushed, when...
    first.tracker_finish("failed", False)  # ...the run ends with a gap (or the process dies)

    # `foundry-track sync`: a new instance gets the identity and the checkpoint, then step 1 again.
    second = JsonlBackend()
    second.tracker_start(dataclasses.replace(info, resumed=True), JsonlOptions(), {**identity, **checkpoint})
    second.tracker_log_metrics([MetricRow(1, 2.0, {"loss": 0.5})])
    second.tracker_finish("failed", True)
    lines = read(tmp_path / "events.jsonl")
    assert [(line["event"], line.get("step")) for line in lines] == [
        ("start", None), ("metrics", 0), ("start", None), ("metrics", 1), ("finish", None)]
    assert lines[-1] == {"event": "finish", "status": "failed", "complete": True}


def stored(identity: Mapping[str, str]) -> dict[str, Any]:
    """What the events file of a run holds (`identity` is what tracker_start
    returned): the conformance kit checks it against what it sent."""
    lines = read(Path(identity["path"]))
    params: dict[str, Any] = {}
    for line in lines:
        if line["event"] == "params":
            params.update(line["params"])
    return {
        "metrics": [line for line in lines if line["event"] == "metrics"],  # rows with "step" and "values"
        "params": params,
        "media": [line["key"] for line in lines if line["event"] in ("image", "histogram", "table", "text")],
        "artifacts": [line["name"] for line in lines if line["event"] == "artifact"],
        "alerts": [line["title"] for line in lines if line["event"] == "alert"],
    }


def test_conformance(tmp_path: Path) -> None:
    # With a read-back the kit checks that every event is in the file (once),
    # not only that each hook returned.
    report = check_backend("jsonl", {}, tmp_path, readback=stored).assert_ok()
    assert all(part.ran for part in report.parts), report.format()
