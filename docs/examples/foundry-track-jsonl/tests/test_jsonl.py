"""Tests of foundry-track-jsonl. Install the distribution first
(`pip install -e '.[test]'`): foundry-track finds the backend through its entry
point, the way it will find it for users."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import foundry_track
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
    assert lines[-1]["status"] == "success"


def test_default_file_is_in_the_run_directory_and_resume_appends(tmp_path: Path) -> None:
    config = {"dir": str(tmp_path), "backends": {"jsonl": {}}}
    run = foundry_track.init(config)
    run.log({"loss": 1.0})
    run.finish()
    resumed = foundry_track.init(config, resume=run.dir)
    resumed.log({"loss": 0.5})
    resumed.finish()
    lines = read(run.dir / "events.jsonl")
    assert [line["event"] for line in lines] == ["start", "metrics", "finish", "start", "metrics", "finish"]
    assert [line["step"] for line in lines if line["event"] == "metrics"] == [0, 1]
    assert lines[3]["resumed"] is True


def test_conformance(tmp_path: Path) -> None:
    check_backend("jsonl", {}, tmp_path).assert_ok()
