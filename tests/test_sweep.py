"""``foundry-track sweep``: the W&B sweep format, run without a W&B server.

The trials are real processes that log through foundry_track; results are
read back from their journals, MLflow (``MlflowClient`` on a SQLite store),
TensorBoard's own reader and Optuna's study. Tiny Python programs written
into ``tmp_path`` keep most tests to seconds; one test runs the guide's
``configs/sweep_config.yaml`` on the trainer, made tiny.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from foundry_track.cli import main
from foundry_track.history import load_run, metric_series, scan
from foundry_track.sweep import (
    STATE_FILE,
    SweepError,
    build_command,
    grid_points,
    parse_spec,
    sample_params,
)

ROOT = Path(__file__).resolve().parents[1]

# A program that logs `loss` per step as the sweep's parameters say; `crash`
# makes it raise, `steps`/`pause` set its length. Tracking: the journal only
# (or TensorBoard), so a trial costs about a second.
PROGRAM = """
import sys, time
import foundry_track as ft

args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
a, b = float(args.get("a", 0)), float(args.get("b", 0))
offset = float(args.get("offset", 0))
steps, pause = int(args.get("steps", 5)), float(args.get("pause", 0.02))
backends = {"tensorboard": {}} if args.get("tb") == "True" else {}
with ft.init({"backends": backends, "flush_timeout": 10, "journal_flush_interval": 0.05}, params=args) as run:
    for step in range(steps):
        run.log({"loss": offset + (a - 1) ** 2 + b + 1 / (step + 1)}, step=step)
        time.sleep(pause)
    if args.get("crash") == "True":
        raise RuntimeError("this trial was told to crash")
"""


def write_sweep(tmp_path: Path, spec: dict[str, Any], name: str = "sweep.yaml") -> Path:
    (tmp_path / "prog.py").write_text(PROGRAM)
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"program": "prog.py", **spec}, sort_keys=False))
    return path


def sweep_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    """``foundry-track sweep ARGS --json`` in this process: exit code, summary, progress lines."""
    code = main(["sweep", *args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else {}, err


def state_of(sweep_dir: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((sweep_dir / STATE_FILE).read_text())
    return state


def logged(sweep_dir: Path, trial: str, key: str) -> int:
    """How many values of ``key`` the trial's run has committed so far."""
    journals = list(sweep_dir.glob(f"runs/*-{trial}-*/journal.db"))
    if not journals:
        return 0
    try:
        series = metric_series(journals[0].parent, [key]).get(key)
    except Exception:  # noqa: BLE001 - the journal is being created
        return 0
    return len(series.values) if series else 0


def optuna_trials(sweep_dir: Path, study: str) -> list[Any]:
    import optuna

    return optuna.load_study(study_name=study, storage=f"sqlite:///{sweep_dir / 'optuna.db'}").get_trials()


# --------------------------------------------------------------------------- #
# (1) the guide's sweep file on the trainer: bayes, 6 trials, 2 at a time
# --------------------------------------------------------------------------- #


def test_the_guides_bayes_sweep_runs_on_the_trainer_grouped_in_mlflow_and_tensorboard(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    from tests.helpers.tb import scalars

    db = tmp_path / "mlflow.db"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "experiment_name": "tiny",
        "model": {"layers": 1, "hidden_size": 32, "heads": 2, "context_length": 32},
        "training": {"steps": 20, "batch_size": 8, "lr": 0.01, "warmup_steps": 5, "eval_batches": 2,
                     "num_threads": 1},
        "logging": {"console_level": "WARNING", "log_metrics_every_n_steps": 5,
                    "log_detailed_metrics_every_n_steps": 10, "log_memory_every_n_steps": 10},
        "tracking": {"project": "sweep-guide", "flush_timeout": 60, "backends": {
            "tensorboard": {"log_dir": str(tmp_path / "tb")}, "mlflow": {"tracking_uri": f"sqlite:///{db}"}}},
    }))
    started = time.monotonic()
    code, summary, progress = sweep_cli(capsys, str(ROOT / "configs" / "sweep_config.yaml"), "--config", str(config),
                                        "--count", "6", "--workers", "2", "--seed", "7")
    wall = time.monotonic() - started
    print(f"guide sweep at test size: {wall:.1f} s wall")
    assert code == 0, progress
    sweep_id, sweep_dir = summary["id"], Path(summary["dir"])
    trials = summary["trials"]
    assert [t["state"] for t in trials] == ["finished"] * 6, progress
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 6
    for t in trials:
        assert set(t["params"]) == {"learning_rate", "batch_size", "dropout"}
        assert 1e-5 <= t["params"]["learning_rate"] <= 1e-3 and 0 <= t["params"]["dropout"] <= 0.3
        assert t["params"]["batch_size"] in (16, 32, 64)

    # Each trial is a foundry-track run in the sweep's group, with the sweep's
    # values as the trainer's params, and its result is its last val/loss.
    by_run: dict[str, dict[str, Any]] = {}
    for t in trials:
        run = load_run(t["run_dir"])
        assert run.dir.parent == sweep_dir / "runs"
        assert (run.name, run.group, run.status) == (f"{sweep_id}-trial-{t['number']}", sweep_id, "success")
        assert "sweep" in run.tags
        params = scan(run.dir).params
        assert params["training/lr"] == pytest.approx(t["params"]["learning_rate"])
        assert params["training/batch_size"] == t["params"]["batch_size"]
        assert params["model/dropout"] == pytest.approx(t["params"]["dropout"])
        assert t["metric"] == metric_series(run.dir, ["val/loss"])["val/loss"].values[-1]
        by_run[run.backends["mlflow"].identity["run_id"]] = t

    best = min(trials, key=lambda t: t["metric"])
    assert summary["best"]["number"] == best["number"]

    # MLflow: one parent run named after the sweep, the six trials nested under it.
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("sweep-guide")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("foundry_track.sweep") == sweep_id]
    assert parent.info.run_name == sweep_id and parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_id for r in children) == sorted(by_run)
    for child in children:
        t = by_run[child.info.run_id]
        assert child.info.status == "FINISHED" and child.data.tags["foundry_track.group"] == sweep_id
        assert float(child.data.params["training/lr"]) == pytest.approx(t["params"]["learning_rate"])
        history = sorted(client.get_metric_history(child.info.run_id, "val/loss"), key=lambda m: m.step)
        assert history[-1].value == pytest.approx(t["metric"])

    # TensorBoard: <log_dir>/<sweep id>/<trial>, each with its val/loss curve.
    group_dir = tmp_path / "tb" / sweep_id
    folders = sorted(p for p in group_dir.iterdir() if p.is_dir())
    assert len(folders) == 6 and Path(summary["log_dir"]) == group_dir.resolve()
    for folder in folders:
        (t,) = [t for t in trials if folder.name.startswith(f"{sweep_id}-trial-{t['number']}-")]
        assert scalars(folder)["val/loss"][-1][1] == pytest.approx(t["metric"], rel=1e-6)

    # Optuna's study holds the same six results (TPE learns from these).
    done = optuna_trials(sweep_dir, sweep_id)
    assert sorted(ot.value for ot in done) == sorted(t["metric"] for t in trials)
    assert (sweep_dir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert progress.count(" started: learning_rate=") == 6


# --------------------------------------------------------------------------- #
# (2) grid: exactly the grid, with nothing but the core installed
# --------------------------------------------------------------------------- #


def test_grid_over_2x2_values_runs_exactly_4_trials_without_optuna(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    sweep = write_sweep(tmp_path, {"method": "grid", "metric": {"name": "loss", "goal": "minimize"},
                                   "parameters": {"a": {"values": [0, 1]}, "b": {"values": [0.5, 2.0]},
                                                  "tb": {"value": True}}})
    # Optuna made unimportable: grid (and random) must not need it.
    code = ("import sys; sys.modules['optuna'] = None; from foundry_track.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "sweep", str(sweep), "--workers", "2", "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    trials = summary["trials"]
    assert len(trials) == 4 and {t["state"] for t in trials} == {"finished"}
    assert sorted((t["params"]["a"], t["params"]["b"]) for t in trials) == [(0, 0.5), (0, 2.0), (1, 0.5), (1, 2.0)]
    for t in trials:
        a, b = t["params"]["a"], t["params"]["b"]
        assert t["metric"] == pytest.approx((a - 1) ** 2 + b + 1 / 5) and t["iterations"] == 5
        assert scan(t["run_dir"]).params == {"a": str(a), "b": str(b), "tb": "True"}
    assert summary["best"]["params"] == {"a": 1, "b": 0.5, "tb": True}
    assert not (Path(summary["dir"]) / "optuna.db").exists()
    # `tensorboard --logdir <sweep dir>` finds the four trials, and only them.
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(summary["dir"])
    mux.Reload()
    assert sorted(name.split("/")[1].rsplit("-", 1)[0] for name in mux.Runs()) == \
        [f"{summary['id']}-trial-{n}" for n in range(4)]


def test_grid_points_and_sizes() -> None:
    spec = parse_spec({"program": "x.py", "method": "grid", "parameters": {
        "layers": {"min": 1, "max": 3}, "width": {"distribution": "q_uniform", "min": 16, "max": 40, "q": 8},
        "opt": {"value": "adamw"}}})
    points = grid_points(spec.params)
    assert points[:2] == [{"layers": 1, "width": 16, "opt": "adamw"}, {"layers": 1, "width": 24, "opt": "adamw"}]
    assert len(points) == 3 * 4 and all(type(p["width"]) is int for p in points)
    with pytest.raises(SweepError, match=r"parameters\.lr: method grid needs a finite set of values.*uniform"):
        grid_points(parse_spec({"program": "x.py", "method": "grid",
                                "parameters": {"lr": {"min": 0.1, "max": 0.2}}}).params)


# --------------------------------------------------------------------------- #
# (3) random: every draw inside its distribution (property test, no processes)
# --------------------------------------------------------------------------- #


def test_random_sampler_respects_bounds_choices_log_scale_and_quantisation() -> None:
    spec = parse_spec({"program": "x.py", "method": "random", "parameters": {
        "u": {"distribution": "uniform", "min": -2.0, "max": 3.0},
        "i": {"distribution": "int_uniform", "min": 2, "max": 5},
        "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
        "e": {"distribution": "log_uniform", "min": 0, "max": 2},
        "qu": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.1},
        "qi": {"distribution": "q_uniform", "min": 8, "max": 64, "q": 8},
        "n": {"distribution": "normal", "mu": 3.0, "sigma": 0.5},
        "qn": {"distribution": "q_normal", "mu": 10, "sigma": 4, "q": 2},
        "c": {"values": ["adam", "sgd", "lion"], "probabilities": [0.7, 0.2, 0.1]},
        "k": {"value": 42},
        "bs": {"values": [16, 32, 64]},
    }})
    N = 2000
    for seed in range(3):  # a property: for any seed, every draw holds it
        rng = random.Random(seed)
        draws = [sample_params(spec.params, rng) for _ in range(N)]
        col = {name: [d[name] for d in draws] for name in draws[0]}
        assert all(-2.0 <= v <= 3.0 for v in col["u"])
        assert set(col["i"]) == {2, 3, 4, 5} and all(type(v) is int for v in col["i"])
        assert all(1e-5 <= v <= 1e-1 for v in col["lr"])
        # log scale: half the draws below the geometric mean (1e-3), not below the arithmetic one (0.05)
        assert 0.45 < sum(v < 1e-3 for v in col["lr"]) / N < 0.55
        assert sum(v < 0.05 for v in col["lr"]) / N > 0.9
        assert all(1.0 <= v <= math.e ** 2 for v in col["e"])
        assert all(0 <= v <= 1 and abs(v * 10 - round(v * 10)) < 1e-9 and v == round(v, 1) for v in col["qu"])
        assert set(col["qi"]) <= set(range(8, 65, 8)) and all(type(v) is int for v in col["qi"])
        assert abs(sum(col["n"]) / N - 3.0) < 0.05
        assert abs(math.sqrt(sum((v - 3.0) ** 2 for v in col["n"]) / N) - 0.5) < 0.05
        assert all(v % 2 == 0 and type(v) is int for v in col["qn"])
        assert set(col["c"]) == {"adam", "sgd", "lion"} and 0.65 < col["c"].count("adam") / N < 0.75
        assert col["k"] == [42] * N and set(col["bs"]) == {16, 32, 64}


@pytest.mark.parametrize(("spec", "message"), [
    ({"method": "bayesian"}, "method: Input should be 'grid', 'random' or 'bayes'"),
    ({"parameters": {"lr": {"distribtion": "uniform"}}},
     "parameters.lr.distribtion: unknown key; did you mean 'distribution'?"),
    ({"metrc": {"name": "loss"}}, "metrc: unknown key; did you mean 'metric'?"),
    ({"parameters": {"lr": {"distribution": "log_uniform_values", "min": 0, "max": 1}}}, "needs min > 0"),
    ({"parameters": {"n": {"distribution": "int_uniform", "min": 1.5, "max": 4}}},
     "int_uniform needs integer min and max"),
    ({"parameters": {"lr": {"distribution": "uniform", "min": 0.1, "max": 0.2, "q": 0.1}}}, "`q` does not apply"),
    ({"parameters": {"c": {"values": [1, 2], "probabilities": [0.5, 0.6]}}}, "sum to 1"),
    ({"parameters": {"lr": {"min": "fast", "max": 1.0}}}, "min: expected a number, got 'fast'"),
    ({"method": "bayes", "metric": None}, "method bayes needs a `metric`"),
    ({"early_terminate": {"type": "hyperband"}}, "hyperband needs `min_iter`"),
    ({"command": ["${interpreter}", "${progam}"]}, "unknown macro(s) ${progam}"),
    ({"program": None}, "`program` is missing: name what each trial runs, a script (`program: train.py`)"),
    ({"parameters": {"opt": {"parameters": {"lr": {"value": 1}}}}}, "nested `parameters` are not supported"),
])
def test_bad_sweep_files_name_the_field(spec: dict[str, Any], message: str) -> None:
    base = {"program": "x.py", "method": "random", "metric": {"name": "loss"},
            "parameters": {"lr": {"min": 0.1, "max": 0.2}}}
    with pytest.raises(SweepError) as info:
        parse_spec({**base, **spec}, "s.yaml")
    assert str(info.value).startswith("s.yaml: ") and message in str(info.value), str(info.value)


def test_the_guides_sweep_file_is_valid_and_infers_like_wandb() -> None:
    spec = parse_spec(yaml.safe_load((ROOT / "configs" / "sweep_config.yaml").read_text()))
    assert [(p.name, p.distribution) for p in spec.params] == [
        ("learning_rate", "log_uniform_values"), ("batch_size", "categorical"), ("dropout", "uniform")]
    inferred = parse_spec({"program": "x", "method": "random", "parameters": {
        "i": {"min": 1, "max": 4}, "f": {"min": 1, "max": 4.0}, "n": {"mu": 1}, "v": {"value": None}}})
    assert [p.distribution for p in inferred.params] == ["int_uniform", "uniform", "normal", "constant"]


def test_command_lines_follow_the_wandb_agent(tmp_path: Path) -> None:
    # The runner knows no program: the default command passes the config as the
    # program's first argument; a sweep file that wants `train CONFIG` says so.
    spec = parse_spec({"program": "model_foundry.cli", "method": "random",
                       "parameters": {"learning_rate": {"value": 1e-5}, "flag": {"value": True}}})
    argv = build_command(spec, ["-m", "model_foundry.cli"], {"learning_rate": 1e-5, "flag": True},
                         config="/c/quick.yaml", args_file=tmp_path / "a.json")
    assert argv == [sys.executable, "-m", "model_foundry.cli", "/c/quick.yaml",
                    "--learning_rate=1e-05", "--flag=True"]
    spec = parse_spec({"program": "model_foundry.cli", "method": "random",
                       "command": ["${env}", "${interpreter}", "${program}", "train", "${config}", "${args}"],
                       "parameters": {"learning_rate": {"value": 1e-5}, "flag": {"value": True}}})
    argv = build_command(spec, ["-m", "model_foundry.cli"], {"learning_rate": 1e-5, "flag": True},
                         config="/c/quick.yaml", args_file=tmp_path / "a.json")
    assert argv == [sys.executable, "-m", "model_foundry.cli", "train", "/c/quick.yaml",
                    "--learning_rate=1e-05", "--flag=True"]
    custom = parse_spec({"program": "t.py", "method": "random", "parameters": {"x": {"value": 1}},
                         "command": ["${env}", "python3", "${program}", "--cfg", "${config}", "${args_no_hyphens}",
                                     "--all=${args_json}", "${args_json_file}"]})
    argv = build_command(custom, ["/p/t.py"], {"x": 1, "y": "a b"}, config="c.yaml", args_file=tmp_path / "a.json")
    assert argv == ["python3", "/p/t.py", "--cfg", "c.yaml", "x=1", "y=a b", '--all={"x": 1, "y": "a b"}',
                    str(tmp_path / "a.json")]
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1, "y": "a b"}


# --------------------------------------------------------------------------- #
# (4) a trial that raises is failed, and the sweep goes on
# --------------------------------------------------------------------------- #


def test_a_trial_that_raises_is_marked_failed_and_the_sweep_goes_on(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    sweep = write_sweep(tmp_path, {"method": "grid", "metric": {"name": "loss"},
                                   "parameters": {"b": {"values": [1, 2, 3]}, "crash": {"values": [False, True]}}})
    code, summary, progress = sweep_cli(capsys, str(sweep), "--workers", "2")
    assert code == 0, progress
    trials = summary["trials"]
    assert len(trials) == 6
    for t in trials:
        run = load_run(t["run_dir"])
        if t["params"]["crash"]:
            assert t["state"] == "failed" and t["exit_code"] == 1
            assert "exit code 1" in t["reason"] and "RuntimeError: this trial was told to crash" in t["reason"]
            assert run.status == "failed"  # the program's own run says so too
        else:
            assert t["state"] == "finished" and run.status == "success"
    assert summary["states"] == {"finished": 3, "failed": 3}
    assert summary["best"]["params"] == {"b": 1, "crash": False}
    assert progress.count(" failed in ") == 3


def test_every_trial_failing_exits_1_and_a_bad_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = write_sweep(tmp_path, {"method": "grid", "metric": {"name": "loss"},
                                   "parameters": {"crash": {"value": True}}})
    code, summary, _ = sweep_cli(capsys, str(sweep))
    assert code == 1 and summary["states"] == {"failed": 1}
    sweeps = set((tmp_path / "runs").glob("sweep-*"))
    bad = write_sweep(tmp_path, {"method": "random", "parameters": {"a": {"min": 0, "max": 1}}}, "bad.yaml")
    assert main(["sweep", str(bad)]) == 2
    assert "method random never runs out of parameters: give --count N" in capsys.readouterr().err
    assert main(["sweep"]) == 2
    assert "give a sweep file, or --resume SWEEP_DIR" in capsys.readouterr().err
    monkeypatch.delenv("MODEL_FOUNDRY_CONFIG", raising=False)
    needs_config = write_sweep(tmp_path, {
        "method": "grid", "parameters": {"a": {"value": 1}},
        "command": ["${env}", "${interpreter}", "${program}", "train", "${config}", "${args}"]}, "config.yaml")
    assert main(["sweep", str(needs_config)]) == 2
    assert "the sweep's `command:` uses ${config}: give --config CONFIG" in capsys.readouterr().err
    assert set((tmp_path / "runs").glob("sweep-*")) == sweeps  # bad input makes no sweep directory


def test_reaching_the_metric_target_stops_starting_trials(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    sweep = write_sweep(tmp_path, {"method": "grid", "metric": {"name": "loss", "goal": "minimize", "target": 1.5},
                                   "parameters": {"b": {"values": [3, 0.1, 2, 0]}}})
    code, summary, _ = sweep_cli(capsys, str(sweep))
    assert code == 0 and summary["target_reached"] and summary["remaining"] == 0
    assert [t["params"]["b"] for t in summary["trials"]] == [3, 0.1]  # 1 + 0.1 + 1/5 <= 1.5: no third trial


def test_a_sweep_without_a_metric_runs_every_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No `metric:`: nothing to optimise or plot, but each trial's run is found and the trial finishes."""
    sweep = write_sweep(tmp_path, {"method": "grid", "parameters": {"b": {"values": [1, 2]}}})
    code, summary, progress = sweep_cli(capsys, str(sweep))
    assert code == 0, progress
    assert [t["state"] for t in summary["trials"]] == ["finished", "finished"], summary["trials"]
    assert all(load_run(t["run_dir"]).status == "success" for t in summary["trials"])
    assert summary["best"] is None and summary["plot"] is None and summary["plot_note"] is None


# --------------------------------------------------------------------------- #
# (5) Ctrl-C, then --resume runs only the trials left
# --------------------------------------------------------------------------- #


def test_interrupted_sweep_resumes_only_the_remaining_trials(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # bayes: the slot interrupted is asked of Optuna again with the same values (random redraws them by seed).
    sweep = write_sweep(tmp_path, {"method": "bayes", "metric": {"name": "loss"}, "parameters": {
        "a": {"min": 0.0, "max": 2.0}, "b": {"values": [0, 1, 2]}, "steps": {"value": 20}, "pause": {"value": 0.1}}})
    proc = subprocess.Popen([sys.executable, "-m", "foundry_track.cli", "sweep", str(sweep), "--count", "4",
                             "--seed", "3"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        sweep_dir = None
        while time.monotonic() < deadline:  # wait: trial 0 finished and trial 1 running
            found = list((tmp_path / "runs").glob(f"sweep-*/{STATE_FILE}"))
            if found:
                sweep_dir = found[0].parent
                states = [t["state"] for t in state_of(sweep_dir)["trials"]]
                if states[:1] == ["finished"] and states[1:] == ["running"]:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the sweep did not reach its second trial")
        while time.monotonic() < deadline and logged(sweep_dir, "trial-1", "loss") < 2:  # trial 1 is logging
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stopping the running trials" in err and "3 trial(s) left: foundry-track sweep --resume" in out
    before = state_of(sweep_dir)["trials"]
    assert [t["state"] for t in before] == ["finished", "interrupted"]
    assert load_run(before[1]["run_dir"]).status == "killed"  # the trial closed its own run on the way out
    assert 0 < before[1]["iterations"] < 20

    code, summary, progress = sweep_cli(capsys, "--resume", str(sweep_dir))
    assert code == 0, progress
    trials = summary["trials"]
    assert [t["state"] for t in trials] == ["finished", "interrupted", "finished", "finished", "finished"]
    assert progress.count(" started: ") == 3  # only the trials left
    assert [t["slot"] for t in trials] == [0, 1, 1, 2, 3]
    assert trials[2]["params"] == trials[1]["params"]  # the interrupted slot, again, with its parameters
    finished = [json.dumps(t["params"], sort_keys=True) for t in trials if t["state"] == "finished"]
    assert len(finished) == len(set(finished)) == 4  # no trial repeated
    assert summary["remaining"] == 0
    states = [ot.state.name for ot in optuna_trials(sweep_dir, summary["id"])]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    # A second resume has nothing to do.
    code, again, progress = sweep_cli(capsys, "--resume", str(sweep_dir))
    assert code == 0 and len(again["trials"]) == 5 and " started: " not in progress


# --------------------------------------------------------------------------- #
# (6) hyperband stops a clearly bad trial
# --------------------------------------------------------------------------- #


def test_hyperband_prunes_a_clearly_bad_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = write_sweep(tmp_path, {
        "method": "grid", "metric": {"name": "loss", "goal": "minimize"},
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 3},
        "parameters": {"offset": {"values": [0, 10]}, "steps": {"value": 15}, "pause": {"value": 0.15}},
    })
    code, summary, progress = sweep_cli(capsys, str(sweep))
    assert code == 0, progress
    good, bad = summary["trials"]
    assert (good["state"], good["iterations"]) == ("finished", 15)
    assert bad["state"] == "pruned" and 3 <= bad["iterations"] < 15, bad
    assert bad["reason"].startswith("pruned at iteration 3 (loss=11.33)")
    assert load_run(bad["run_dir"]).status == "killed"
    assert summary["best"]["number"] == 0
    states = [ot.state.name for ot in optuna_trials(Path(summary["dir"]), summary["id"])]
    assert states == ["COMPLETE", "PRUNED"]


# --------------------------------------------------------------------------- #
# MLflow: a parent run per group, only when asked (the sweep asks)
# --------------------------------------------------------------------------- #


def test_mlflow_parent_run_per_group_is_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    import foundry_track as ft

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = {"project": "nesting", "dir": str(tmp_path / "runs"), "fallback": None, "strict": True,
           "backends": {"mlflow": {"tracking_uri": uri}}}
    with ft.init(cfg, group="plain", run_name="p0") as run:
        run.log({"x": 1.0}, step=0)
    monkeypatch.setenv("FOUNDRY_TRACK_SWEEP", "sw1")
    for n in range(2):
        with ft.init(cfg, group="sw1", run_name=f"c{n}") as run:
            run.log({"x": float(n)}, step=0)
    with ft.init(cfg, group="other", run_name="o0") as run:  # FOUNDRY_TRACK_SWEEP names another group
        run.log({"x": 2.0}, step=0)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("nesting")
    assert experiment is not None
    runs = {r.info.run_name.removesuffix("-" + r.data.tags.get("foundry_track.run_id", "")): r  # <run name>-<id>
            for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["c0", "c1", "o0", "p0", "sw1"]  # one parent, made once
    parent = runs["sw1"]
    assert parent.data.tags["foundry_track.sweep"] == "sw1" and parent.info.status == "FINISHED"
    for child in ("c0", "c1"):
        assert runs[child].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "mlflow.parentRunId" not in runs["p0"].data.tags and "mlflow.parentRunId" not in runs["o0"].data.tags


def test_mlflow_resumed_child_keeps_its_parent_without_the_sweep_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    import foundry_track as ft

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = {"project": "nesting", "dir": str(tmp_path / "runs"), "fallback": None, "strict": True,
           "backends": {"mlflow": {"tracking_uri": uri}}}
    monkeypatch.setenv("FOUNDRY_TRACK_SWEEP", "sw1")
    with ft.init(cfg, group="sw1", run_name="c0") as run:
        run.log({"x": 0.0}, step=0)
    client = MlflowClient(uri)
    parent_id = client.get_run(run.backend_ids["mlflow"]["run_id"]).data.tags["mlflow.parentRunId"]
    client.update_run(parent_id, status="RUNNING")  # as while another trial of the sweep runs
    monkeypatch.delenv("FOUNDRY_TRACK_SWEEP")  # resumed later from a plain shell
    with ft.init(cfg, resume=run.dir) as resumed:
        resumed.log({"x": 1.0}, step=1)
    child = client.get_run(run.backend_ids["mlflow"]["run_id"])
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert client.get_run(parent_id).info.status == "FINISHED"  # the child's finish still closes its parent


def test_sweep_is_imported_only_by_the_sweep_command() -> None:
    code = textwrap.dedent("""
        import sys
        import foundry_track, foundry_track.cli
        foundry_track.cli._parser()
        assert "foundry_track.sweep" not in sys.modules and "optuna" not in sys.modules
        import foundry_track.sweep
        assert "optuna" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_grid_params_cover_the_product() -> None:
    """The grid is the cartesian product in declared order (the first parameter varies slowest)."""
    spec = parse_spec({"program": "x.py", "method": "grid",
                       "parameters": {"a": {"values": [1, 2]}, "b": {"values": ["x", "y", "z"]}}})
    assert [tuple(p.values()) for p in grid_points(spec.params)] == list(itertools.product([1, 2], ["x", "y", "z"]))


def test_the_best_column_is_the_running_best(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each trial's loss falls as it runs, so its own best along the way is its result: the table's
    best column must be the sweep's best so far, not that value again."""
    sweep = write_sweep(tmp_path, {"method": "grid", "metric": {"name": "loss", "goal": "minimize"},
                                   "parameters": {"offset": {"values": [3, 1, 2]}, "a": {"value": 1}}})
    assert main(["sweep", str(sweep), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.lower().split()[:2] == ["trial", "state"])
    assert "best so far" in header.lower()
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"])]
    results = [float(row[2]) for row in rows]
    assert results == pytest.approx([3.2, 1.2, 2.2])
    assert [float(row[3]) for row in rows] == pytest.approx([3.2, 1.2, 1.2])
    (state,) = tmp_path.rglob(STATE_FILE)
    code, summary_json, _ = sweep_cli(capsys, "--resume", str(state.parent))  # nothing left: the summary again
    assert code == 0
    assert [t["best_so_far"] for t in summary_json["trials"]] == pytest.approx([3.2, 1.2, 1.2])
    assert [t["best"] for t in summary_json["trials"]] == pytest.approx([3.2, 1.2, 2.2])  # each trial's own
