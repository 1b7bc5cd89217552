"""The ``wandb`` module's own calls inside a foundry-track run
(foundry_track/integrations/wandb.py): they reach every backend, W&B's
included (read back from its offline ``.wandb`` file), and ``import wandb``
is safe right after the run starts, whatever the delivery.
"""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import foundry_track as ft
from foundry_track.integrations import wandb as ft_wandb
from tests.helpers.tb import accumulator
from tests.helpers.wandb_offline import finished_runs

REPO = Path(__file__).resolve().parents[1]


def _text(acc: Any, tag: str) -> list[str]:
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag)]


def _rows(run: Any) -> dict[int, dict[str, Any]]:
    """W&B history merged by training step (the backend's x-axis is ``trainer/step``)."""
    merged: dict[int, dict[str, Any]] = {}
    for row in run.history:
        merged.setdefault(row["trainer/step"], {}).update(row)
    return merged


@pytest.fixture(autouse=True)
def _bridge_left_clean() -> Any:
    yield
    ft_wandb.uninstall()


def test_wandb_calls_reach_every_backend_and_the_same_wandb_run(tmp_path: Path) -> None:
    import torch
    from model_foundry.logging_components import WandBLogger

    checkpoint = tmp_path / "output" / "checkpoint-7"
    (checkpoint / "sub").mkdir(parents=True)
    (checkpoint / "model.pt").write_bytes(b"weights")
    (checkpoint / "sub" / "optim.pt").write_bytes(b"adam")
    (tmp_path / "vocab.txt").write_text("a b c")
    model = torch.nn.Linear(3, 2)

    logger = WandBLogger(project="bridge", name="every-kind", config={"lr": 0.1})
    import wandb

    logger.log_metrics(step=5, metrics={"train/loss": 2.0})
    wandb.log({"val/loss": 2.5, "nested": {"acc": 0.5}, "note": "hello *md*"}, step=6)
    pixels = (np.arange(4 * 6 * 3) % 256).astype(np.uint8).reshape(4, 6, 3)
    wandb.log({"samples/grid": wandb.Image(pixels, caption="a grid"),
               "preds": wandb.Table(columns=["input", "output"], data=[["hola", "hello"]]),
               "weights": wandb.Histogram(np_histogram=([1, 3, 2], [0.0, 1.0, 2.0, 4.0]))}, step=7)
    wandb.watch(model, log="all", log_freq=1)
    model(torch.ones(2, 3)).sum().backward()

    whole = wandb.Artifact(name="checkpoint-7", type="model", description="at step 7", metadata={"step": 7})
    whole.add_dir(str(checkpoint))
    wandb.log_artifact(whole)
    mixed = wandb.Artifact(name="bundle", type="dataset")
    mixed.add_file(str(tmp_path / "vocab.txt"), name="tokenizer/vocab.txt")
    mixed.add_file(str(checkpoint / "model.pt"))
    wandb.log_artifact(mixed)
    wandb.log_artifact(str(tmp_path / "vocab.txt"), name="vocab", type="vocabulary")
    wandb.alert(title="High Loss Detected", text="Loss spiked", level=wandb.AlertLevel.WARN)
    wandb.alert(title="Diverged", text="NaN", level="ERROR")
    wandb.alert(title="Note", text="no level given")
    logger.finish()

    # The staging copies W&B made of these artifacts' files (add_file's default policy) are gone.
    copies = [Path(e.local_path) for a in (whole, mixed) for e in a.manifest.entries.values()]
    assert len(copies) == 4 and not any(path.exists() for path in copies)

    (run,) = finished_runs(tmp_path)
    rows = _rows(run)
    assert rows[5]["train/loss"] == 2.0
    assert (rows[6]["val/loss"], rows[6]["nested.acc"]) == (2.5, 0.5)
    assert rows[7]["samples/grid._type"] == "image-file" and rows[7]["samples/grid.width"] == 6
    assert rows[7]["preds._type"] == "table-file" and rows[7]["preds.nrows"] == 1
    assert rows[7]["weights.values"] == [1, 3, 2] and rows[7]["weights.bins"] == [0.0, 1.0, 2.0, 4.0]
    assert "note._type" in rows[6]  # text: a one-row table in W&B
    assert any(key.startswith("parameters/weight") for row in run.history for key in row)
    artifacts = {a["name"]: a for a in run.artifacts if a["type"] != "run_table"}
    assert sorted(artifacts["checkpoint-7"]["entries"]) == ["model.pt", "sub/optim.pt"]
    assert sorted(artifacts["bundle"]["entries"]) == ["model.pt", "tokenizer/vocab.txt"]
    assert (artifacts["bundle"]["type"], artifacts["vocab"]["type"]) == ("dataset", "vocabulary")
    assert [(a["title"], a["level"]) for a in run.alerts] == [
        ("High Loss Detected", "WARN"), ("Diverged", "ERROR"), ("Note", "INFO")]

    assert logger.run is not None
    acc = accumulator(logger.run.backend_ids["tensorboard"]["log_dir"])
    assert [(e.step, e.value) for e in acc.Scalars("val/loss")] == [(6, 2.5)]
    assert [(e.step, e.value) for e in acc.Scalars("nested.acc")] == [(6, 0.5)]
    image = acc.Images("samples/grid")[0]
    assert (image.step, image.width, image.height) == (7, 6, 4)
    assert _text(acc, "samples/grid/caption") == ["a grid"]
    assert _text(acc, "preds") == ["| input | output |\n|---|---|\n| hola | hello |"]
    assert _text(acc, "note") == ["hello *md*"]
    assert list(acc.Histograms("weights")[0].histogram_value.bucket) == [1, 3, 2]
    # The directory artifact is logged from where it is; the mixed one is assembled in the run dir.
    assert f"at `{checkpoint.resolve()}`" in _text(acc, "artifacts/checkpoint-7")[0]
    assert f"at `{logger.run.dir}{os.sep}artifacts{os.sep}bundle-" in _text(acc, "artifacts/bundle")[0]
    assert _text(acc, "alerts") == ["**WARN: High Loss Detected**\n\nLoss spiked", "**ERROR: Diverged**\n\nNaN",
                                    "**INFO: Note**\n\nno level given"]


def test_after_the_run_finishes_wandb_has_its_own_functions_back(tmp_path: Path) -> None:
    import wandb

    own = {name: getattr(wandb, name) for name in ft_wandb.BRIDGED}
    with ft_wandb.init({"backends": {"tensorboard": {}}}) as run:
        assert wandb.log is ft_wandb.log and ft_wandb.installed_run() is run
        wandb.log({"loss": 1.0}, step=3)
    # A run finished without uninstall (the trainer's): the next call notices.
    with pytest.raises(wandb.Error, match=r"wandb.init\(\) before wandb.log"):
        wandb.log({"loss": 2.0})
    assert {name: getattr(wandb, name) for name in ft_wandb.BRIDGED} == own
    acc = accumulator(run.backend_ids["tensorboard"]["log_dir"])
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(3, 1.0)]

    # uninstall puts them back at once; a later run installs again.
    second = ft_wandb.init({"backends": {"tensorboard": {}}})
    assert wandb.alert is ft_wandb.alert
    ft_wandb.uninstall(second)
    assert wandb.alert is own["alert"]
    second.finish()


def test_a_wandb_init_of_the_user_wins(tmp_path: Path) -> None:
    import wandb

    own = wandb.init(mode="disabled")
    try:
        with ft_wandb.init({"backends": {"tensorboard": {}}}):
            assert wandb.log is not ft_wandb.log
            wandb.log({"loss": 1.0})  # the user's own (disabled) W&B run takes it
    finally:
        own.finish()


def test_with_tracking_disabled_wandb_calls_are_no_ops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from model_foundry.logging_components import WandBLogger

    monkeypatch.setenv("FOUNDRY_TRACK_MODE", "disabled")
    logger = WandBLogger(project="p", name="off", config={})
    import wandb

    wandb.log({"loss": 1.0})
    wandb.alert(title="t", text="x", level=wandb.AlertLevel.INFO)
    logger.finish()
    assert not (tmp_path / "runs").exists() and not list(tmp_path.rglob("*.wandb"))


class _Severity(enum.Enum):
    WARN = "WARN"


class _ByName(enum.Enum):
    error = 3


def test_run_alert_takes_enum_levels_without_wandb(tmp_path: Path) -> None:
    with ft.init({"backends": {"tensorboard": {}}}, strict=True) as run:
        run.alert("a", "by value", level=_Severity.WARN)
        run.alert("b", "by name", level=_ByName.error)
        run.alert("c", "upper case", level="INFO")
        for bad in ("critical", 3, None, _ByName):
            with pytest.raises(ValueError, match="level must be"):
                run.alert("d", "x", level=bad)
    acc = accumulator(run.backend_ids["tensorboard"]["log_dir"])
    assert [t.split("**")[1] for t in _text(acc, "alerts")] == ["WARN: a", "ERROR: b", "INFO: c"]


# --------------------------------------------------------------------------- #
# import wandb right after the logger: fresh processes
# --------------------------------------------------------------------------- #

_SCRIPT = textwrap.dedent("""
    import json, sys
    from model_foundry.logging_components import WandBLogger

    wandb_logger = WandBLogger(project="import-race", name=sys.argv[1], config={"i": sys.argv[1]})
    imported_before = "wandb" in sys.modules
    import wandb

    wandb_logger.log_metrics(step=1, metrics={"train/loss": 1.5})
    wandb.log({"train/acc": 0.25}, step=2)
    wandb.alert(title="Started", text=sys.argv[1], level=wandb.AlertLevel.INFO)
    wandb_logger.finish()
    print(json.dumps({"imported_before": imported_before}))
""")


@pytest.mark.parametrize("delivery", ["thread", "process"])
def test_import_wandb_right_after_wandb_logger(tmp_path: Path, delivery: str) -> None:
    """Three fresh processes each (the failure was a race between a worker thread's
    ``import wandb`` and the user's): every one imports wandb, logs, and its W&B run
    holds the events. With the default delivery, wandb stays out of the training
    process until the user imports it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("FOUNDRY_TRACK_DELIVERY", None)
    if delivery == "thread":
        env["FOUNDRY_TRACK_DELIVERY"] = "thread"
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    procs = [subprocess.Popen([sys.executable, str(script), f"try{i}"], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(3)]
    outputs = [proc.communicate(timeout=240) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert "could not start" not in err and "circular import" not in err, err
        assert json.loads(out.splitlines()[-1]) == {"imported_before": delivery == "thread"}

    runs = {run.name.removesuffix(f"-{run.run_id}"): run for run in finished_runs(tmp_path)}  # <name>-<id>
    assert sorted(runs) == ["try0", "try1", "try2"]
    for name, run in runs.items():
        rows = _rows(run)
        assert rows[1]["train/loss"] == 1.5 and rows[2]["train/acc"] == 0.25, name
        assert [(a["title"], a["text"], a["level"]) for a in run.alerts] == [("Started", name, "INFO")]
