"""The core must stay cheap to import: no tracker SDK, no torch."""

from __future__ import annotations

import json
import subprocess
import sys


def test_import_loads_no_tracker_library_and_no_torch() -> None:
    code = (
        "import sys, json, foundry_track;"
        "heavy = ('wandb', 'mlflow', 'tensorboard', 'torch', 'tensorflow');"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_discovering_backends_imports_no_sdk() -> None:
    code = (
        "import sys, json; from foundry_track.plugins import discover; found = discover();"
        "heavy = ('wandb', 'mlflow', 'tensorboard', 'torch');"
        "print(json.dumps([sorted(found), sorted(m for m in sys.modules if m.split('.')[0] in heavy)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, loaded = json.loads(out)
    assert "tensorboard" in names
    assert loaded == []
