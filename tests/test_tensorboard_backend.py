"""The TensorBoard backend, read back with tensorboard's EventAccumulator."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams import plugin_data_pb2

import foundry_track as ft
from tests.helpers.tb import accumulator, scalars


def test_10k_steps_x_10_scalars_each_exactly_once(tmp_path: Path) -> None:
    keys = [f"train/m{i}" for i in range(10)]
    with ft.init({"backends": {"tensorboard": {}}, "dir": str(tmp_path / "runs")}, strict=True) as run:
        for step in range(10_000):
            run.log({k: step * 10 + i + 0.5 for i, k in enumerate(keys)}, step=step)
    assert run.undelivered == {}
    got = scalars(run.backend_ids["tensorboard"]["log_dir"])
    assert sorted(got) == keys
    for i, key in enumerate(keys):
        steps = [s for s, _ in got[key]]
        assert steps == list(range(10_000)), key  # every step, once, in order
        assert all(v == pytest.approx(s * 10 + i + 0.5) for s, v in got[key])


def test_one_event_per_step_and_out_of_order_steps_kept(tmp_path: Path) -> None:
    with ft.init({"dir": str(tmp_path)}, strict=True) as run:
        run.log({"a": 1.0}, step=5)
        run.log({"b": 2.0}, step=5)  # same step: merged into one Event
        run.log({"a": 3.0}, step=2)  # lower step: kept
    acc = accumulator(run.backend_ids["tensorboard"]["log_dir"])
    assert [(e.step, e.value) for e in acc.Scalars("a")] == [(5, 1.0), (2, 3.0)]
    assert [(e.step, e.value) for e in acc.Scalars("b")] == [(5, 2.0)]


def test_params_become_an_hparams_session(tmp_path: Path) -> None:
    with ft.init({"dir": str(tmp_path)}, strict=True) as run:
        run.log_params({"lr": 3e-4, "model": {"layers": 4, "name": "gpt"}, "amp": True, "api_key": "hunter2"})
        run.log({"loss": 1.0}, step=0)
    acc = accumulator(run.backend_ids["tensorboard"]["log_dir"])
    content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    start = plugin_data_pb2.HParamsPluginData.FromString(content[hp_metadata.SESSION_START_INFO_TAG])
    hp = start.session_start_info.hparams
    assert hp["lr"].number_value == pytest.approx(3e-4)
    assert hp["model/layers"].number_value == 4 and hp["model/name"].string_value == "gpt"
    assert hp["amp"].bool_value is True
    assert hp["api_key"].string_value == "***"
    end = plugin_data_pb2.HParamsPluginData.FromString(content[hp_metadata.SESSION_END_INFO_TAG])
    assert end.session_end_info.status == 1  # STATUS_SUCCESS


def test_log_dir_option_gives_one_folder_per_run(tmp_path: Path) -> None:
    cfg = {"dir": str(tmp_path / "runs"), "run_name": "exp0", "group": "g",
           "backends": {"tensorboard": {"log_dir": str(tmp_path / "tb")}}}
    with ft.init(cfg, strict=True) as run:
        run.log({"x": 1.0})
    log_dir = Path(run.backend_ids["tensorboard"]["log_dir"])
    assert log_dir == (tmp_path / "tb" / "g" / f"exp0-{run.id}").resolve()
    assert scalars(log_dir)["x"] == [(0, 1.0)]


def _hparams_table(log_dirs: list[str]) -> tuple[list[str], dict[str, dict[str, object]]]:
    """What TensorBoard's HParams dashboard shows for these runs, computed by its own plugin code:
    the columns in its order (differing values first, then by name; the first five are shown) and
    each run's stored values."""
    from tensorboard.plugins.hparams import backend_context

    from tests.helpers.tb import accumulator

    contents = {d: accumulator(d).PluginTagToContent(hp_metadata.PLUGIN_NAME) for d in log_dirs}
    context = backend_context.Context(None)
    experiment = backend_context.api_pb2.Experiment(hparam_infos=context._compute_hparam_infos(contents))
    backend_context._sort_and_reduce_to_hparams_limit(experiment)
    values = {}
    for d, tags in contents.items():
        start = plugin_data_pb2.HParamsPluginData.FromString(tags[hp_metadata.SESSION_START_INFO_TAG])
        values[d] = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.session_start_info.hparams.items()}
    return [info.name for info in experiment.hparam_infos], values


def test_the_hparams_table_leads_with_what_is_trained(tmp_path: Path) -> None:
    """The guide's runs side by side (the trainer logs its whole config): the logging and tracking
    settings that differ between them used to fill TensorBoard's first columns; they are not
    hyperparameters and stay out of the table (they are in the run's params everywhere else)."""
    import yaml

    root = Path(__file__).resolve().parents[1] / "configs"
    log_dirs = []
    for name in ("quickstart.yaml", "exp0_baseline.yaml", "exp1_remove_expletives.yaml"):
        config = yaml.safe_load((root / name).read_text())
        with ft.init({"dir": str(tmp_path / "runs"), "run_name": name}, strict=True) as run:
            run.log_params(config)  # the whole experiment file, as the guide's trainer logs `config.dict()`
            run.log({"train/loss": 1.0}, step=1)
        log_dirs.append(run.backend_ids["tensorboard"]["log_dir"])
    columns, values = _hparams_table(log_dirs)
    assert not [c for c in columns if c.startswith(("logging/", "tracking/"))], columns
    shown = columns[:5]  # the columns TensorBoard displays without asking
    assert all(c.startswith(("training/", "model/", "data/")) or c == "experiment_name" for c in shown), shown
    # What differs between the runs comes first: the ablation's data filter, then model and training.
    assert {"training/lr", "training/batch_size", "model/layers", "model/hidden_size"} <= set(columns[:13]), columns
    assert values[log_dirs[1]]["training/lr"] == pytest.approx(6e-4)
