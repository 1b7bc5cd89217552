"""The command line: overrides in both forms, clear errors, the progress display."""

from __future__ import annotations

import io
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
import yaml
from model_foundry.cli import SWEEP_PARAMETERS, main, parse_value
from model_foundry.progress import Progress

from tests.test_trainer_run import tensorboard_scalars, tiny


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
    assert "sample: El " in out and "TensorBoard: tensorboard --logdir runs" in out
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
    # A line about every tenth of the run, but only once a new loss is known (every 5 steps here).
    assert [line.split("|")[0].strip() for line in progress] == [f"step {n:>2}/20" for n in range(5, 21, 5)]
    assert all(" loss " in line and " tok/s " in line and "(step" not in line for line in progress), progress
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
        bar.update(step, loss=float(step) if step % 10 == 0 else None, tokens_per_sec=500.0 if step % 10 == 0 else None)
    bar.close()
    lines = stream.getvalue().splitlines()
    # Every fifth step is due, but a line waits for a loss it has not shown: each loss once, none stale.
    assert [line.split("|")[0].strip() for line in lines] == [f"step {n:>3}/100" for n in range(60, 101, 10)]
    assert [line.split("|")[1].strip() for line in lines] == [f"loss {n}.0000" for n in range(60, 101, 10)]
    assert all("500 tok/s" in line for line in lines)


def test_progress_lines_never_show_placeholders_or_stale_losses() -> None:
    """Before the first logging step there is no loss and no throughput: they are left out, not `-` and 0."""
    stream = io.StringIO()
    bar = Progress(total=30, stream=stream)  # a line due every 3 steps; losses every 7
    for step in range(1, 31):
        logged = step % 7 == 0
        bar.update(step, loss=10.0 - step / 10 if logged else None, tokens_per_sec=1000.0 + step if logged else None)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert [line.split("|")[0].strip() for line in lines] == ["step  7/30", "step 14/30", "step 21/30", "step 28/30",
                                                                "step 30/30"]
    assert not any("loss  -" in line or "loss -" in line or "| 0 tok/s" in line for line in lines), lines
    losses = [line.split("|")[1].strip() for line in lines[:-1]]
    assert len(set(losses)) == len(losses)  # no line repeats the loss of the one before
    assert "loss 7.2000 (step 28)" in lines[-1]  # the end of the run names how old its loss is

    quiet = io.StringIO()
    short = Progress(total=3, stream=quiet)  # nothing logged at all
    for step in range(1, 4):
        short.update(step)
    short.close()
    assert quiet.getvalue().startswith("step 3/3 | 0:00:00 elapsed")


class FakeCudaLoss:
    """Stands in for a CUDA tensor: reading it is what Progress defers by one interval."""

    is_cuda = True

    def __init__(self, value: float) -> None:
        self.value = value

    def __float__(self) -> float:
        return self.value


def test_progress_on_a_gpu_shows_the_previous_loss_with_its_step() -> None:
    stream = io.StringIO()
    bar = Progress(total=20, stream=stream)
    for step in range(1, 21):
        bar.update(step, loss=FakeCudaLoss(float(step)) if step % 5 == 0 else None)  # type: ignore[arg-type]
    bar.close()
    lines = stream.getvalue().splitlines()
    assert [line.split("|")[1].strip() for line in lines] == ["loss 5.0000 (step 5)", "loss 10.0000 (step 10)",
                                                              "loss 20.0000"]
    assert lines[-1].startswith("step 20/20")


def test_a_run_shorter_than_the_logging_interval_reports_its_losses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """3 steps, train metrics every 5: the last step is logged, the summary has both losses, and the
    sample's control bytes are printed escaped."""
    from model_foundry.trainer import Trainer

    monkeypatch.setenv("FOUNDRY_TRACK_MODE", "disabled")
    monkeypatch.setattr(Trainer, "sample", lambda self, **kw: "El \x1b[31mrojo\x07\x00\u202e fin\nsegunda")
    config = write_tiny(tmp_path, training={"steps": 3})
    assert main(["train", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nothing to train" not in out
    result = next(line for line in out.splitlines() if line.startswith("first loss "))
    first, final = (float(part.split()[-1]) for part in result.split(" over ")[0].split(" -> "))
    assert first != final and " over 3 steps, val loss " in result
    assert "sample: El \\x1b[31mrojo\\x07\\x00\\u202e fin\n        segunda" in out
    assert not [ch for ch in out if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf")]


def test_nothing_to_train_only_when_no_step_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FOUNDRY_TRACK_MODE", "disabled")
    config = write_tiny(tmp_path, training={"steps": 2})
    assert main(["train", str(config), "--no-progress", "--sample", "0"]) == 0
    (checkpoint,) = tmp_path.glob("output/tiny/checkpoints/step-000002.pt")
    capsys.readouterr()
    assert main(["train", str(config), "--no-progress", "--sample", "0", "--resume", str(checkpoint)]) == 0
    assert "nothing to train: the checkpoint is already at training.steps" in capsys.readouterr().out
