"""Every rich-data kind through the public Run API, read back from the W&B offline
file and from MLflow's store (the TensorBoard side is tests/test_media_tensorboard.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import foundry_track as ft
from foundry_track.media import encode_png
from tests.helpers.wandb_offline import finished_runs

PIXELS = (np.arange(5 * 7 * 3) % 256).astype(np.uint8).reshape(5, 7, 3)


def _log_every_kind(run: ft.Run, tmp_path: Path) -> Path:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "weights.bin").write_bytes(b"\x01" * 4096)
    run.log({"loss": 2.0}, step=4)
    run.log_image("samples/img", PIXELS, caption="five by seven")
    run.log_histogram("weights", np.arange(10.0), step=5)
    run.log_table("preds", ["input", "output"], [["hola", "hello"], ["adiós", "bye"]], step=6)
    run.log_text("notes", "**loss** went down", step=7)
    run.log_artifact(ckpt, type="model", name="ckpt-4")
    run.alert("High Loss Detected", "Loss spiked to 11.0 at step 4", level="warn")
    return ckpt


def _media_rows(history: list[dict]) -> dict[str, tuple[int, dict]]:
    """key -> (step, fields) of each media value; the reader flattens
    ``{key: {"_type": ...}}`` into ``key._type``, ``key.path``, ..."""
    rows = {}
    for row in history:
        for field in row:
            if field.endswith("._type"):
                key = field[: -len("._type")]
                rows[key] = (row["trainer/step"],
                             {f[len(key) + 1:]: v for f, v in row.items() if f.startswith(key + ".")})
    return rows


def test_every_kind_reaches_wandb_offline(tmp_path: Path) -> None:
    from PIL import Image

    with ft.init({"dir": str(tmp_path / "runs"), "backends": {"wandb": {}}, "fallback": None, "strict": True}) as run:
        _log_every_kind(run, tmp_path)
    (wb,) = finished_runs(tmp_path)
    files = wb.run_files[0].parent / "files"
    media = _media_rows(wb.history)
    step, img = media["samples/img"]
    assert step == 4 and img["_type"] == "image-file" and img["caption"] == "five by seven"
    assert np.array_equal(np.asarray(Image.open(files / img["path"]).convert("RGB")), PIXELS)
    step, hist = media["weights"]
    assert step == 5 and hist["_type"] == "histogram" and sum(hist["values"]) == 10
    step, table = media["preds"]
    assert step == 6 and json.loads((files / table["path"]).read_text())["data"] == [["hola", "hello"], ["adiós", "bye"]]
    assert media["notes"][0] == 7
    assert [a["name"] for a in wb.artifacts if a["type"] == "model"] == ["ckpt-4"]
    assert [(a["title"], a["level"]) for a in wb.alerts] == [("High Loss Detected", "WARN")]


def test_every_kind_reaches_mlflow(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with ft.init({"dir": str(tmp_path / "runs"), "backends": {"mlflow": {"tracking_uri": uri}},
                  "fallback": None, "strict": True}) as run:
        ckpt = _log_every_kind(run, tmp_path)
    client = MlflowClient(tracking_uri=uri)
    run_id = run.backend_ids["mlflow"]["run_id"]
    dl = tmp_path / "dl"

    def fetch(path: str) -> bytes:
        return Path(client.download_artifacts(run_id, path, str(dl))).read_bytes()

    assert fetch("images/samples/img/step_4.png") == encode_png(PIXELS)
    assert json.loads(fetch("histograms/weights/step_5.json"))["num"] == 10
    assert json.loads(fetch("tables/preds_6.json"))["data"] == [["hola", "hello"], ["adiós", "bye"]]
    assert fetch("text/notes/step_7.txt").decode() == "**loss** went down"
    assert fetch("model/ckpt-4/weights.bin") == (ckpt / "weights.bin").read_bytes()
    assert [f.path.rsplit("_", 1)[-1] for f in client.list_artifacts(run_id, "alerts")] == ["warn.txt"]
    assert client.get_run(run_id).info.status == "FINISHED"
