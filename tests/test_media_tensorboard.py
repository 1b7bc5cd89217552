"""Images, histograms, tables, text, artifacts, alerts, watch and system metrics,
read back from TensorBoard's event files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import foundry_track as ft
from foundry_track.media import encode_png
from tests.helpers.tb import accumulator


def _text(acc, tag: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag)]


def test_every_kind_reaches_tensorboard(tmp_path: Path) -> None:
    pixels = (np.arange(6 * 4 * 3) % 256).astype(np.uint8).reshape(6, 4, 3)
    artifact = tmp_path / "ckpt"
    artifact.mkdir()
    (artifact / "weights.bin").write_bytes(b"\x00" * 1000)
    with ft.init({"dir": str(tmp_path / "runs")}, strict=True) as run:
        run.log({"loss": 1.0}, step=7)
        run.log_image("img/hwc", pixels, caption="six by four")
        run.log_image("img/chw_float", np.ones((1, 5, 9)) * 0.5, step=8)
        run.log_histogram("weights", np.arange(100.0), step=9)
        run.log_table("preds", ["input", "output"], [["hola", "hello"], ["a|b", 2]])
        run.log_text("notes", "first *markdown*")
        run.log_artifact(artifact, type="model", description="step 7")
        run.alert("High Loss Detected", "Loss spiked to 11.0 at step 7", level="warn")
    acc = accumulator(run.backend_ids["tensorboard"]["log_dir"])

    hwc = acc.Images("img/hwc")[0]
    assert (hwc.step, hwc.width, hwc.height) == (7, 4, 6)
    assert hwc.encoded_image_string == encode_png(pixels)
    assert _text(acc, "img/hwc/caption") == ["six by four"]
    chw = acc.Images("img/chw_float")[0]
    assert (chw.step, chw.width, chw.height) == (8, 9, 5)

    histo = acc.Histograms("weights")[0]
    assert histo.step == 9 and histo.histogram_value.num == 100 and histo.histogram_value.max == 99
    assert sum(histo.histogram_value.bucket) == 100

    assert _text(acc, "preds") == ["| input | output |\n|---|---|\n| hola | hello |\n| a\\|b | 2 |"]
    assert _text(acc, "notes") == ["first *markdown*"]
    note = _text(acc, "artifacts/ckpt")[0]
    assert "model" in note and str(artifact.resolve()) in note and "step 7" in note
    assert _text(acc, "alerts") == ["**WARN: High Loss Detected**\n\nLoss spiked to 11.0 at step 7"]


def test_guide_training_curve_figure_and_custom_table(tmp_path: Path) -> None:
    """The guide's "Log Training Curves as Images" and "Custom Tables", the foundry_track way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    steps, losses = list(range(10)), [3.0 - 0.1 * s for s in range(10)]
    with ft.init({"dir": str(tmp_path)}, strict=True) as run:
        plt.figure(figsize=(10, 6))
        plt.plot(steps, losses)
        plt.xlabel("Step")
        plt.ylabel("Loss")
        plt.title("Training Loss")
        run.log_image("charts/loss_curve", plt)  # wandb.Image(plt) in the guide
        plt.close()
        run.log_table("training_metrics", columns=["epoch", "step", "loss", "perplexity"],
                      rows=[[1, 100, 3.2, 24.5], [1, 200, 3.0, 20.1], [2, 300, 2.8, 16.4]])
        run.log_table("as_dataframe", pd.DataFrame({"epoch": [1, 2], "loss": [3.2, 2.8]}))
    acc = accumulator(run.backend_ids["tensorboard"]["log_dir"])
    curve = acc.Images("charts/loss_curve")[0]
    assert (curve.width, curve.height) == (1000, 600)  # 10x6 inches at 100 dpi
    from PIL import Image

    assert Image.open(io.BytesIO(curve.encoded_image_string)).size == (1000, 600)
    assert "| 2 | 300 | 2.8 | 16.4 |" in _text(acc, "training_metrics")[0]
    assert _text(acc, "as_dataframe")[0].splitlines()[0] == "| epoch | loss |"


@pytest.mark.parametrize("bad, error", [
    (np.zeros((2, 2, 2, 2)), "expected an HW, HWC or CHW array"),
    (np.zeros((4, 4), dtype=np.int32), "uint8 or float"),
    ("not an image", "expected a numpy array"),
])
def test_bad_images_fail_at_the_call_site(tmp_path: Path, bad: object, error: str) -> None:
    with ft.init({"dir": str(tmp_path)}) as run, pytest.raises((TypeError, ValueError), match=error):
        run.log_image("x", bad)


def test_table_errors_name_the_row(tmp_path: Path) -> None:
    with ft.init({"dir": str(tmp_path)}) as run:
        with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
            run.log_table("t", ["a", "b"], [[1, 2], [3]])
        with pytest.raises(FileNotFoundError, match="does not exist"):
            run.log_artifact(tmp_path / "missing.pt", type="model")
        with pytest.raises(ValueError, match="level must be"):
            run.alert("t", "x", level="critical")


def test_watch_logs_parameter_and_gradient_histograms_at_the_frequency(tmp_path: Path) -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    with ft.init({"dir": str(tmp_path)}, strict=True) as run:
        run.watch(model, log="all", log_freq=25)
        for step in range(100):
            run.log({"step": float(step)}, step=step)
            model(torch.randn(2, 4)).sum().backward()
    acc = accumulator(run.backend_ids["tensorboard"]["log_dir"])
    names = [n for n, _ in model.named_parameters()]
    for name in names:
        for kind in ("parameters", "gradients"):
            steps = [e.step for e in acc.Histograms(f"{kind}/{name}")]
            assert steps == [0, 25, 50, 75], (kind, name, steps)
    # Gradient histograms hold the real gradient (checked on the last capture).
    assert acc.Histograms("gradients/2.bias")[-1].histogram_value.num == 1


def test_system_metrics_sampler(tmp_path: Path) -> None:
    import time

    with ft.init({"dir": str(tmp_path), "system_metrics_interval": 0.1}) as run:
        run.log({"x": 1.0}, step=0)
        time.sleep(0.5)
    acc = accumulator(run.backend_ids["tensorboard"]["log_dir"])
    rss = [e.value for e in acc.Scalars("system/process_rss_gb")]
    assert len(rss) >= 2 and all(0.01 < v < 64 for v in rss)
    assert "system/cpu_percent" in acc.Tags()["scalars"]
