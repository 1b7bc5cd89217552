"""The plugin tutorial cannot rot: its code blocks are assembled into files, which
must be the example distribution's files, and a backend built from them alone
(with a dist-info made from the tutorial's own pyproject.toml) is discovered
through its entry point, selected by the tutorial's YAML and receives a run."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import foundry_track as ft
from foundry_track.journal import JOURNAL_FILE, Journal
from foundry_track.plugins import discover

try:
    import tomllib
except ImportError:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "plugins" / "tutorial.md"
EXAMPLE = ROOT / "docs" / "examples" / "foundry-track-jsonl"
FENCE = re.compile(r'^```(\w+) title="([^"]+)"\n(.*?)^```$', re.S | re.M)


def tutorial_files() -> dict[str, str]:
    """The tutorial's titled code blocks, joined per file in page order."""
    files: dict[str, list[str]] = {}
    for _lang, title, body in FENCE.findall(TUTORIAL.read_text()):
        files.setdefault(title, []).append(body)
    return {title: "\n".join(parts) for title, parts in files.items()}


def _normalised(text: str) -> str:
    # Blocks are joined with one blank line; PEP 8 puts two before a top-level def.
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def test_the_tutorial_builds_exactly_the_example_distribution() -> None:
    files = tutorial_files()
    assert set(files) == {"pyproject.toml", "foundry_track_jsonl/__init__.py", "tests/test_jsonl.py"}
    assert len(re.findall(r'title="foundry_track_jsonl/__init__.py"', TUTORIAL.read_text())) >= 5  # step by step
    for name, text in files.items():
        assert _normalised(text) == _normalised((EXAMPLE / name).read_text()), (
            f"the tutorial's {name} differs from docs/examples/foundry-track-jsonl/{name}: change both together")


@pytest.fixture
def tutorial_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The package written from the tutorial, with a dist-info made from the
    tutorial's pyproject.toml, on sys.path: discovered like an installed one."""
    files = tutorial_files()
    project = tomllib.loads(files["pyproject.toml"])["project"]
    site = tmp_path / "site"
    package = site / "foundry_track_jsonl"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(files["foundry_track_jsonl/__init__.py"])
    dist_info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    entry_points = project["entry-points"]["foundry_track"]
    (dist_info / "entry_points.txt").write_text(
        "[foundry_track]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    monkeypatch.delitem(sys.modules, "foundry_track_jsonl", raising=False)  # never a copy imported elsewhere
    monkeypatch.syspath_prepend(str(site))
    discover(refresh=True)
    return site


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.thread_delivery  # the tutorial's plugin is on sys.path only
def test_a_backend_built_from_the_tutorial_receives_a_run(tutorial_backend: Path, tmp_path: Path) -> None:
    info = discover()["jsonl"]
    assert (info.distribution, info.version, info.available) == ("foundry-track-jsonl", "0.1.0", True)
    assert Path(sys.modules["foundry_track_jsonl"].__file__ or "").is_relative_to(tutorial_backend)

    # Step 8's YAML, as the tutorial writes it, in a file.
    block = next(b for b in re.findall(r"^```yaml\n(.*?)^```", TUTORIAL.read_text(), re.S | re.M) if "jsonl" in b)
    config = yaml.safe_load(block)
    config["tracking"].update(dir=str(tmp_path / "runs"), strict=True)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))

    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"\x01" * 100)
    with ft.init(path, params={"lr": 0.001}) as run:
        run.log({"train/loss": 0.5}, step=0)
        run.log({"train/loss": math.inf, "ñ": 1}, step=1)
        run.log_image("img", np.zeros((2, 3, 3), dtype=np.uint8))
        run.log_histogram("h", np.arange(10.0))
        run.log_table("t", ["a"], [[1]])
        run.log_text("x", "hello")
        run.log_artifact(artifact, type="model")
        run.alert("t", "x", "warn")
    assert set(run.backend_ids) == {"jsonl", "tensorboard"}
    lines = _read(run.dir / "events.jsonl")
    assert {line["event"] for line in lines} == {"start", "params", "metrics", "image", "histogram", "table",
                                                 "text", "artifact", "alert", "finish"}
    assert [line["values"] for line in lines if line["event"] == "metrics"] == [
        {"train/loss": 0.5}, {"train/loss": "Infinity", "ñ": 1}]
    assert lines[0]["config"] == {"lr": 0.001}
    assert lines[-1] == {"event": "finish", "status": "success", "complete": True}
    # Delivered means durable: the last tracker_flush came after the last event,
    # and its checkpoint (the file up to the finish line) is stored with the position.
    events = run.dir / "events.jsonl"
    data = events.read_bytes()
    journal = Journal(run.dir / JOURNAL_FILE, readonly=True)
    assert journal.position("jsonl") == journal.refresh()
    assert journal.checkpoint("jsonl") == {"path": str(events.resolve()),
                                           "offset": str(len(data) - len(data.splitlines(keepends=True)[-1]))}
