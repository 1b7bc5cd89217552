"""The command line: overrides in both forms, clear errors, the progress display."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from model_foundry.cli import SWEEP_PARAMETERS, main, parse_value
from model_foundry.progress import Progress

from tests.test_trainer_guide import tensorboard_scalars
from tests.test_trainer_run import tiny


def write_tiny(tmp_path: Path, **sections: object) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny(tmp_path, **sections)))
    return path


@pytest.mark.parametrize(("text", "value"), [("3e-4", 3e-4), ("32", 32), ("0.1", 0.1), ("true", True),
                                             ("null", None), ("[1, 2]", [1, 2]), ("adamw", "adamw")])
def test_values_are_parsed_like_a_person_means_them(text: str, value: object) -> None:
    assert parse_value(text) == value


def test_set_and_sweep_forms_reach_the_trained_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`train CONFIG --set a.b=v` and the sweep agent's `--learning_rate=v` / `--batch_size v` forms."""
    config = write_tiny(tmp_path, tracking={"backends": {"tensorboard": {}}})
    code = main(["train", str(config), "--set", "training.steps=10", "--set", "model.layers=1",
                 "--learning_rate=0.004", "--batch_size", "4", "--dropout=0.1", "--no-progress", "--sample", "20"])
    out = capsys.readouterr().out
    assert code == 0
    (checkpoint,) = tmp_path.glob("runs/*/checkpoints/step-000010.pt")
    saved = torch.load(checkpoint, weights_only=True)["config"]
    assert (saved["training"]["steps"], saved["model"]["layers"]) == (10, 1)
    assert (saved["training"]["lr"], saved["training"]["batch_size"], saved["model"]["dropout"]) == (0.004, 4, 0.1)
    assert "sample: 'El " in out and "TensorBoard: tensorboard --logdir runs" in out
    # The peak learning rate the sweep asked for is what the schedule used.
    lrs = [v for _, v in tensorboard_scalars(checkpoint.parents[1] / "tensorboard")["train/lr"]]
    assert max(lrs) == pytest.approx(0.004)


def test_sweep_agent_form_without_train_subcommand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m model_foundry.cli --learning_rate=...` as the guide's sweep runs it; config from the environment."""
    monkeypatch.setenv("MODEL_FOUNDRY_CONFIG", str(write_tiny(tmp_path, training={"steps": 5})))
    monkeypatch.setenv("FOUNDRY_TRACK_MODE", "disabled")
    assert main(["--learning_rate=0.002", "--no-progress", "--sample=0"]) == 0
    saved = torch.load(tmp_path / "output" / "tiny" / "checkpoints" / "step-000005.pt", weights_only=True)["config"]
    assert saved["training"]["lr"] == 0.002


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--warmup_ratio=0.1"], "error: unknown parameter --warmup_ratio; sweep parameters: learning_rate, lr,"),
        (["--set", "training.lrr=0.1"], "error: training.lrr: unknown key; did you mean 'lr'?"),
        (["--set", "training.lr"], "error: --set 'training.lr': expected KEY=VALUE"),
        (["--learning_rate=fast"], "error: training.lr: Input should be a valid number"),
        (["--resume", "missing.pt"], "error: training.resume_from: no checkpoint at"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                            message: str) -> None:
    config = write_tiny(tmp_path)
    assert main(["train", str(config), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # nothing created


def test_every_sweep_parameter_names_a_real_field() -> None:
    from model_foundry.config import ExperimentConfig

    fields = ExperimentConfig(experiment_name="x").model_dump()
    for name, dotted in SWEEP_PARAMETERS.items():
        section, key = dotted.split(".")
        assert key in fields[section], name


def test_module_entry_point_runs(tmp_path: Path) -> None:
    """`python -m model_foundry.cli train CONFIG`, not a TTY: plain progress lines, then the summary."""
    config = write_tiny(tmp_path, training={"steps": 20}, tracking={"backends": {"tensorboard": {}}})
    proc = subprocess.run([sys.executable, "-m", "model_foundry.cli", "train", str(config), "--sample", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    progress = [line for line in lines if line.startswith("step ")]
    assert [line.split("|")[0].strip() for line in progress] == [f"step {n:>2}/20" for n in range(2, 21, 2)]
    assert "\r" not in proc.stdout
    assert any(line.startswith("first loss ") for line in lines)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_redraws_in_place_on_a_terminal() -> None:
    stream = FakeTTY()
    bar = Progress(total=50, stream=stream)
    for step in range(1, 51):
        bar.update(step, loss=torch.tensor(2.0) if step % 10 == 0 else None, tokens_per_sec=1000.0 if step % 10 == 0 else None)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r[") and text.endswith("\n") and text.count("\n") == 1
    last = text.rsplit("\r", 1)[-1]
    assert "100%" in last and "step 50/50" in last and "loss 2.0000" in last and "1,000 tok/s" in last and "ETA 0:00:00" in last


def test_progress_plain_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    bar = Progress(total=100, start=50, stream=stream)
    for step in range(51, 101):
        bar.update(step, loss=3.0 if step % 10 == 0 else None)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert [line.split("|")[0].strip() for line in lines] == [f"step {n:>3}/100" for n in range(55, 101, 5)]
    assert "loss 3.0000" in lines[-1]
