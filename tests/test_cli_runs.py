"""`foundry-track runs | show | plot | export | clean` on real runs made here:
the TensorBoard backend, the fault-injection backends (a hanging one leaves
events pending, a raising one records errors), and a real MLflow server for
the run link. Every count is checked against the journal itself."""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import foundry_track as ft
from foundry_track.cli import main, render_table
from foundry_track.journal import JOURNAL_FILE, Journal

STEPS = 120
COMMANDS = ("backends", "sync", "runs", "show", "plot", "export", "doctor", "clean")


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foundry_track.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def _log_steps(run: ft.Run, steps: int, scale: float = 1.0) -> None:
    run.log_params({"lr": 0.01, "wandb_api_key": "s3cret-value", "model": {"layers": 2}})
    for step in range(steps):
        values: dict[str, Any] = {"train/loss": scale / (step + 1), "train/tokens": step * 512}
        if step % 10 == 0:
            values["val/loss"] = 2.0 * scale / (step + 1)
        run.log(values, step=step)
    run.log({"train/loss": math.nan}, step=steps)  # a NaN is kept and shown, not used for min/max
    run.log({"train/loss": 0.25 * scale}, step=steps)  # the same step again: export keeps both


def make_run(root: Path, name: str, backends: dict[str, Any] | None = None, *, steps: int = STEPS,
             flush_timeout: float = 10.0, scale: float = 1.0, project: str = "cli-tests") -> Path:
    run = ft.init({"dir": str(root), "run_name": name, "project": project, "fallback": None,
                   "flush_timeout": flush_timeout, "backends": backends or {"tensorboard": {}}},
                  params={"optimizer": {"name": "adamw", "betas": [0.9, 0.95]}, "hf_token": "hf_s3cret"})
    _log_steps(run, steps, scale)
    run.finish()
    assert run.dir is not None
    return run.dir


def make_faulty_run(root: Path, tmp_path: Path, name: str = "faulty") -> Path:
    """A finished run whose `hanging` backend never acknowledged anything and
    whose `raising` backend gave up after recording errors."""
    hang_flag, raise_flag = tmp_path / f"{name}-hang.flag", tmp_path / f"{name}-raise.flag"
    hang_flag.touch()
    raise_flag.touch()
    backends = {
        "tensorboard": {},
        "hanging": {"out": str(tmp_path / f"{name}-hang.jsonl"), "fault_flag": str(hang_flag)},
        "raising": {"out": str(tmp_path / f"{name}-raise.jsonl"), "fault_flag": str(raise_flag)},
    }
    return make_run(root, name, backends, flush_timeout=2.5)


def _journal_counts(run_dir: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    journal = Journal(run_dir / JOURNAL_FILE, readonly=True)
    return journal.refresh(), journal.positions()


def _journal_points(run_dir: Path) -> list[tuple[int, int, float, str, Any]]:
    journal = Journal(run_dir / JOURNAL_FILE, readonly=True)
    return [(r.seq, r.step, r.time, k, v) for r in journal.iter_records("metrics") for k, v in r.data.items()]


def _shown(path: Path) -> str:
    """How the CLI prints a run directory: relative to the working directory when below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _same_value(a: Any, b: Any) -> bool:
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or a == b


# --------------------------------------------------------------------------- #
# runs
# --------------------------------------------------------------------------- #


def test_runs_counts_match_the_journal(tmp_path: Path, fault_plugins: Path) -> None:
    root = tmp_path / "runs"
    good = make_run(root, "good")
    bad = make_faulty_run(root, tmp_path)

    result = _cli("runs", str(root), "--json")
    assert result.returncode == 0, result.stderr
    listed = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(listed) == {"good", "faulty"}
    for name, run_dir in (("good", good), ("faulty", bad)):
        last, positions = _journal_counts(run_dir)
        row = listed[name]
        assert row["events"] == last and row["dir"] == str(run_dir)
        assert row["last_step"] == STEPS and row["status"] == row["state"] == "success"
        assert set(row["backends"]) == set(positions)
        for backend, pos in positions.items():
            b = row["backends"][backend]
            # Events a backend refused for good are set aside behind its position: pending, not delivered.
            aside = b["set_aside"]
            assert (b["delivered"], b["pending"], b["errors"]) == (pos["seq"] - aside, last - pos["seq"] + aside,
                                                                   pos["errors"])
    faulty = listed["faulty"]["backends"]
    assert faulty["hanging"]["pending"] == listed["faulty"]["events"] > 0  # it acknowledged nothing
    assert faulty["raising"]["errors"] >= 1 and faulty["raising"]["pending"] > 0
    assert faulty["tensorboard"]["pending"] == 0

    table = _cli("runs", str(root))
    assert table.returncode == 0
    pending = faulty["hanging"]["pending"]
    assert f"hanging: {pending:,} pending - run `foundry-track sync {_shown(bad)} --backend hanging`" in table.stdout
    assert "tensorboard: " in table.stdout and "good" in table.stdout


@pytest.mark.thread_delivery  # the delivery process would close the run as killed
def test_runs_reads_a_live_run_and_shows_a_dead_one_as_crashed(tmp_path: Path) -> None:
    """A process that dies without finish() leaves `running` in run.json: shown as crashed."""
    root = tmp_path / "runs"
    child = textwrap.dedent(
        f"""
        import os, sys, time, foundry_track as ft
        run = ft.init({{"dir": {str(root)!r}, "run_name": "dies", "fallback": None, "backends": {{"tensorboard": {{}}}}}})
        for step in range(50):
            run.log({{"loss": 1.0 / (step + 1)}}, step=step)
        print(run.dir, flush=True)
        sys.stdin.readline()  # stay alive until the test has looked at the live run
        time.sleep(0.3)  # > journal_flush_interval: the last commit is done
        os._exit(0)  # no finish(), no atexit: like a crash
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    run_dir = Path(proc.stdout.readline().strip())
    time.sleep(0.3)
    live = json.loads(_cli("runs", str(root), "--json").stdout)
    assert [r["state"] for r in live] == ["running"]
    proc.stdin.write("\n")
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0

    dead = json.loads(_cli("runs", str(root), "--json").stdout)
    assert dead[0]["status"] == "running" and dead[0]["state"] == "crashed"
    assert dead[0]["last_step"] == 49 and dead[0]["events"] == _journal_counts(run_dir)[0]
    table = _cli("runs", str(root)).stdout
    assert "crashed" in table and f"`foundry-track sync {_shown(run_dir)}`" in table


def test_runs_on_a_missing_folder_is_bad_input(tmp_path: Path) -> None:
    result = _cli("runs", str(tmp_path / "nope"))
    assert result.returncode == 2 and "does not exist" in result.stderr


# --------------------------------------------------------------------------- #
# show
# --------------------------------------------------------------------------- #


def test_show_reports_config_metrics_and_backend_health(tmp_path: Path, fault_plugins: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_faulty_run(tmp_path / "runs", tmp_path)
    assert main(["show", str(run_dir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)

    assert shown["params"]["wandb_api_key"] == "***" and shown["params"]["model/layers"] == 2
    assert shown["params"]["hf_token"] == "***" and shown["params"]["optimizer/name"] == "adamw"
    assert shown["config"]["optimizer"] == {"name": "adamw", "betas": [0.9, 0.95]}  # init(params=) as given
    # Metric summaries, recomputed here from the journal.
    values: dict[str, list[tuple[int, float]]] = {}
    for _seq, step, _t, key, value in _journal_points(run_dir):
        values.setdefault(key, []).append((step, value))
    assert set(shown["metrics"]) == set(values)
    for key, points in values.items():
        finite = [v for _, v in points if math.isfinite(v)]
        stats = shown["metrics"][key]
        assert stats["count"] == len(points) and stats["last_step"] == points[-1][0]
        assert stats["min"] == min(finite) and stats["max"] == max(finite)
    assert shown["metrics"]["train/loss"]["last"] == 0.25 and shown["metrics"]["train/loss"]["non_finite"] == 1

    last, positions = _journal_counts(run_dir)
    backends = shown["run"]["backends"]
    assert backends["tensorboard"]["batches"] == positions["tensorboard"]["batches"] > 0
    assert backends["tensorboard"]["mean_batch_ms"] > 0
    assert backends["raising"]["errors"] == positions["raising"]["errors"] >= 1
    assert "injected failure" in backends["raising"]["last_error"]
    assert backends["hanging"]["undelivered_at_finish"] == last
    assert backends["tensorboard"]["identity"]["log_dir"].startswith(str(run_dir))

    assert main(["show", "faulty", "--dir", str(tmp_path / "runs")]) == 0  # by name
    text = capsys.readouterr().out
    assert "s3cret" not in text and "wandb_api_key = ***" in text and "optimizer/name = adamw" in text
    assert "train/loss" in text and "val/loss" in text and "injected failure" in text
    assert f"pending - run `foundry-track sync {_shown(run_dir)} --backend hanging`" in text


def test_show_links_the_mlflow_run(tmp_path: Path, mlflow_server: Any) -> None:
    import mlflow

    run_dir = make_run(tmp_path / "runs", "linked", {"mlflow": {"tracking_uri": mlflow_server.uri}},
                       steps=20, project="cli-show-link")
    result = _cli("show", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    mlflow_state = json.loads(result.stdout)["run"]["backends"]["mlflow"]
    run_id, link = mlflow_state["identity"]["run_id"], mlflow_state["link"]
    assert link == f"{mlflow_server.uri}/#/experiments/{mlflow_state['identity']['experiment_id']}/runs/{run_id}"
    remote = mlflow.MlflowClient(tracking_uri=mlflow_server.uri).get_run(run_id)
    assert remote.data.metrics["train/loss"] == 0.25  # the run behind the link is this run
    assert link in _cli("show", str(run_dir)).stdout


def test_show_a_trainer_run_keys_read_alike_and_the_project_is_the_runs(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The guide's shortcut `logging.wandb_project` sets the run's project: show must not print the
    tracking block's default as `tracking/project`; every key is written `a/b`, in logged order."""
    from model_foundry.config import ExperimentConfig
    from model_foundry.trainer import Trainer

    from tests.test_trainer_run import tiny

    config = tiny(tmp_path, training={"steps": 5}, logging={"wandb_project": "spanish-subject-drop"},
                  tracking={"backends": {"tensorboard": {"flush_secs": 2}}})
    del config["tracking"]["project"]
    summary = Trainer(ExperimentConfig(**config), base_dir=tmp_path, progress=False).train()
    assert main(["show", summary["run_dir"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["run"]["project"] == "spanish-subject-drop" == shown["params"]["tracking/project"]
    keys = [*shown["params"], *shown["backend_options"]]
    assert [k for k in keys if "." in k] == [], keys
    assert shown["backend_options"]["tracking/backends/tensorboard/flush_secs"] == 2
    assert main(["show", summary["run_dir"]]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert "tracking/project = spanish-subject-drop" in lines and "tracking/project = foundry-track" not in lines
    order = [line.split(" = ")[0] for line in lines if " = " in line]
    assert order.index("training/lr") < order.index("model/layers") < order.index("logging/dir")


def test_show_unknown_run_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    result = _cli("show", "nope", "--dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and "no run 'nope'" in result.stderr


# --------------------------------------------------------------------------- #
# plot
# --------------------------------------------------------------------------- #


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", header[16:24])


def test_plot_draws_one_line_per_run_per_metric(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra: pip install 'foundry-track[plot]'")
    from PIL import Image  # a matplotlib dependency

    from foundry_track.cli.plot import plot_runs

    root = tmp_path / "runs"
    runs = [make_run(root, f"exp{i}", steps=60, scale=1.0 + i) for i in range(3)]
    fig, warnings = plot_runs(runs, ["train/loss", "val/loss"], smooth=5)
    assert warnings == []
    for ax, metric in zip(fig.axes, ["train/loss", "val/loss"]):
        curves = [line for line in ax.lines if not line.get_label().startswith("_")]
        assert [line.get_label() for line in curves] == ["exp0", "exp1", "exp2"]
        assert len(ax.lines) == 2 * len(runs)  # plus the faint raw curve of each
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["exp0", "exp1", "exp2"]
        raw = [line for line in ax.lines if line.get_label().startswith("_raw")][0]
        expected = [s for _, s, _, k, _ in _journal_points(runs[0]) if k == metric]
        assert list(raw.get_xdata()) == expected  # every logged step is on the curve

    out = tmp_path / "cmp.png"
    result = _cli("plot", *map(str, runs), "--metric", "train/loss", "--metric", "val/loss", "--smooth", "5",
                  "--size", "900x700", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert _png_size(out) == (900, 700) and out.stat().st_size > 10_000
    with Image.open(out) as image:  # not a blank canvas: many colours were drawn
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 50


def test_plot_a_series_of_one_point_is_drawn_as_a_dot(tmp_path: Path) -> None:
    """A run shorter than the evaluation interval has one val/loss: without a marker it is invisible."""
    pytest.importorskip("matplotlib", reason="the plot extra: pip install 'foundry-track[plot]'")
    from foundry_track.cli.plot import plot_runs

    with ft.init({"dir": str(tmp_path / "runs"), "run_name": "short", "backends": {}}) as run:
        run.log({"train/loss": 2.0, "val/loss": 2.5}, step=3)
        run.log({"train/loss": 1.5}, step=4)
    assert run.dir is not None
    for smooth in (0, 5):
        fig, _ = plot_runs([run.dir], ["val/loss", "train/loss"], smooth=smooth)
        (dot,) = [line for line in fig.axes[0].lines if not line.get_label().startswith("_")]
        assert dot.get_marker() == "o" and list(dot.get_xdata()) == [3.0]
        (line,) = [line for line in fig.axes[1].lines if not line.get_label().startswith("_")]
        assert line.get_marker() in (None, "None", "")  # two points make a line: no dots


def test_plot_errors_are_clear(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra: pip install 'foundry-track[plot]'")
    run = make_run(tmp_path / "runs", "one", steps=5)
    result = _cli("plot", str(run), "--metric", "train/los", "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2 and "did you mean 'train/loss'" in result.stderr
    assert not (tmp_path / "x.png").exists()
    code = ("import sys; sys.modules['matplotlib'] = None\nfrom foundry_track.cli import main\n"
            f"sys.exit(main(['plot', {str(run)!r}, '--metric', 'train/loss', '-o', 'y.png']))")
    missing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert missing.returncode == 1 and "pip install 'foundry-track[plot]'" in missing.stderr


def test_smoothing() -> None:
    from foundry_track.cli.plot import ema, moving_average

    assert ema([3.0] * 10, 5) == pytest.approx([3.0] * 10)  # debiased: no ramp from 0
    assert moving_average([1, 2, 3, 4, 5], 2) == [1.0, 1.5, 2.5, 3.5, 4.5]
    smoothed = ema([1.0, math.nan, 1.0], 3)
    assert smoothed[0] == 1.0 and math.isnan(smoothed[1]) and smoothed[2] == 1.0


# --------------------------------------------------------------------------- #
# export
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "parquet"])
def test_export_round_trips_every_value(tmp_path: Path, fmt: str) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow", reason="parquet needs pyarrow")
    run_dir = make_run(tmp_path / "runs", "exp")
    out = tmp_path / f"exp.{fmt}"
    result = _cli("export", str(run_dir), "--format", fmt, "-o", str(out))
    assert result.returncode == 0, result.stderr

    if fmt == "csv":
        with open(out, newline="") as fh:
            rows = [(int(r["seq"]), int(r["step"]), float(r["time"]), r["key"], float(r["value"]))
                    for r in csv.DictReader(fh)]
    elif fmt == "json":
        rows = [(r["seq"], r["step"], r["time"], r["key"], r["value"]) for r in json.loads(out.read_text())]
    elif fmt == "jsonl":
        rows = [(r["seq"], r["step"], r["time"], r["key"], r["value"])
                for r in map(json.loads, out.read_text().splitlines())]
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(out).to_pylist()
        rows = [(r["seq"], r["step"], r["time"], r["key"], r["value"]) for r in table]
    expected = _journal_points(run_dir)
    assert len(rows) == len(expected) == STEPS * 2 + STEPS // 10 + 2
    for got, want in zip(rows, expected):
        assert got[:4] == want[:4] and _same_value(got[4], want[4]), (got, want)
    if fmt in ("json", "jsonl"):  # ints stay ints
        assert {type(r[4]) for r in rows if r[3] == "train/tokens"} == {int}
    assert f"{len(expected):,} rows" in result.stderr


def test_export_wide_layout_has_one_row_per_log_call(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "runs", "exp", steps=30)
    result = _cli("export", str(run_dir), "--layout", "wide", "-o", str(tmp_path / "w.csv"))
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "w.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_seq: dict[int, dict[str, Any]] = {}
    for seq, step, _t, key, value in _journal_points(run_dir):
        by_seq.setdefault(seq, {"step": step})[key] = value
    assert [int(r["seq"]) for r in rows] == list(by_seq)
    for row in rows:
        want = by_seq[int(row["seq"])]
        assert int(row["step"]) == want["step"]
        for key in ("train/loss", "train/tokens", "val/loss"):
            assert (row[key] == "") == (key not in want)
            if key in want:
                assert _same_value(row[key], want[key])


def test_export_bad_requests(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "runs", "exp", steps=3)
    result = _cli("export", str(run_dir), "--format", "parquet")
    assert result.returncode == 2 and "-o FILE.parquet" in result.stderr
    result = _cli("export", str(run_dir), "-o", str(tmp_path / "missing" / "x.csv"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    streamed = _cli("export", str(run_dir), "--format", "jsonl", "--metric", "val/loss")
    assert [json.loads(line)["key"] for line in streamed.stdout.splitlines()] == ["val/loss"]


# --------------------------------------------------------------------------- #
# clean
# --------------------------------------------------------------------------- #


def test_clean_never_removes_undelivered_events_without_force(tmp_path: Path, fault_plugins: Path) -> None:
    root = tmp_path / "runs"
    outside = make_run(root, "synced", {"tensorboard": {"log_dir": str(tmp_path / "tb")}}, steps=10)
    inside = make_run(root, "local-tb", steps=10)  # its TensorBoard files live in the run dir
    pending = make_faulty_run(root, tmp_path, "pending")
    before = _journal_counts(pending)

    dry = _cli("clean", str(root), "--synced-only", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert {Path(r["dir"]).name: r["action"] for r in json.loads(dry.stdout)} == {
        outside.name: "would remove", inside.name: "kept", pending.name: "kept"}
    assert outside.exists()

    synced_only = _cli("clean", str(root), "--synced-only")
    assert synced_only.returncode == 0, synced_only.stderr
    assert not outside.exists() and inside.exists() and pending.exists()
    assert (tmp_path / "tb").exists()  # the TensorBoard copy elsewhere is untouched
    assert _journal_counts(pending) == before  # not a single event touched
    assert "pending" in synced_only.stdout and "foundry-track sync" in synced_only.stdout

    default = _cli("clean", str(root), "--json")
    assert {Path(r["dir"]).name: r["action"] for r in json.loads(default.stdout)} == {
        inside.name: "removed", pending.name: "kept"}
    assert not inside.exists() and pending.exists()

    assert _cli("clean", str(root), "--synced-only", "--force").returncode == 2
    assert _cli("clean", str(root), "--force", "--older-than", "1d").returncode == 0
    assert pending.exists()  # too recent
    forced = _cli("clean", str(root), "--force")
    assert forced.returncode == 0 and not pending.exists()
    assert "undelivered events are lost" in forced.stdout


def test_clean_keeps_wandb_offline_files_until_they_are_uploaded(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B offline files are a queue for `wandb sync`, not the final copy."""
    monkeypatch.delenv("WANDB_DIR")  # the backend's default: W&B's own ./wandb, outside the run directory
    root = tmp_path / "runs"
    run_dir = make_run(root, "offline", {"wandb": {"mode": "offline"}}, steps=5)
    listed = json.loads(_cli("runs", str(root), "--json").stdout)[0]["backends"]["wandb"]
    offline_dir = Path(listed["awaiting_upload"])
    assert offline_dir.parent == tmp_path / "wandb"  # the working directory's (conftest: tmp_path)
    assert listed["pending"] == 0 and list(offline_dir.glob("*.wandb"))  # delivered to the offline file

    for flags in ([], ["--synced-only"]):
        result = _cli("clean", str(root), *flags, "--json")
        [row] = json.loads(result.stdout)
        assert row["action"] == "kept" and "offline files not uploaded yet" in row["reason"]
    assert run_dir.exists()

    # What `wandb sync` leaves behind once the upload finished (no W&B server here to run it).
    next(offline_dir.glob("*.wandb")).with_suffix(".wandb.synced").touch()
    assert json.loads(_cli("runs", str(root), "--json").stdout)[0]["backends"]["wandb"]["awaiting_upload"] is None
    [row] = json.loads(_cli("clean", str(root), "--synced-only", "--json").stdout)
    assert row["action"] == "removed" and not run_dir.exists()


def test_clean_bad_age_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    result = _cli("clean", str(tmp_path / "runs"), "--older-than", "7 days")
    assert result.returncode == 2 and "e.g. 7d, 12h, 30m" in result.stderr


# --------------------------------------------------------------------------- #
# Every command: help with an example, JSON that parses, lazy imports
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "example" in capsys.readouterr().out


def test_json_outputs_parse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs"
    run_dir = make_run(root, "exp", steps=5)
    for argv in (["runs", str(root)], ["show", str(run_dir)], ["clean", str(root), "--dry-run"],
                 ["backends"], ["doctor"]):
        main([*argv, "--json"])
        out = capsys.readouterr().out
        assert json.loads(out), argv


def test_cli_imports_nothing_heavy(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root, "exp", steps=3)
    code = (
        "import sys; from foundry_track.cli import main; main(['runs', sys.argv[1]]);"
        "heavy = ('matplotlib', 'rich', 'pandas', 'pyarrow', 'pydantic', 'wandb', 'mlflow', 'tensorboard', 'torch');"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_tables_render_plain_and_with_rich() -> None:
    rows = [["exp0", "mlflow: 1,234 pending"], ["exp1", "loss[0] [bold]x[/bold]"]]
    plain = render_table(["name", "backends"], rows)
    assert plain.splitlines()[0].split() == ["NAME", "BACKENDS"] and "mlflow: 1,234 pending" in plain
    fancy = render_table(["name", "backends"], rows, use_rich=True)
    assert "┃" in fancy or "│" in fancy
    assert "mlflow: 1,234 pending" in fancy and "loss[0] [bold]x[/bold]" in fancy  # no markup


def test_default_dir_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "elsewhere"
    make_run(root, "exp", steps=3)
    monkeypatch.setenv("FOUNDRY_TRACK_DIR", str(root))
    assert main(["runs", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["exp"]
    assert os.environ["FOUNDRY_TRACK_DIR"] == str(root)
