"""ExperimentConfig: the guide's fields, one-line errors, and where tracking settings come from."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from model_foundry.config import ConfigError, ExperimentConfig, LoggingConfig, load_experiment

from foundry_track import TrackingConfig

REPO = Path(__file__).resolve().parents[1]
GUIDE_LOGGING_FIELDS = [
    "console_level", "file_level", "dir", "use_wandb", "wandb_project", "wandb_entity", "use_structured_logging",
    "log_metrics_every_n_steps", "log_detailed_metrics_every_n_steps", "profile_performance",
    "log_memory_every_n_steps", "max_log_files",
]


#: Not in the guide's block: the switch for the guide's `watch_model` (histograms).
EXTRA_LOGGING_FIELDS = ["watch_model", "watch_log_freq"]
GUIDE_CONFIGS = ["exp0_baseline.yaml", "exp1_remove_expletives.yaml", "exp2_remove_topic_shift.yaml",
                 "experiment_with_wandb.yaml"]


def test_logging_config_has_the_guides_fields_then_the_watch_switch_each_described() -> None:
    assert list(LoggingConfig.model_fields) == GUIDE_LOGGING_FIELDS + EXTRA_LOGGING_FIELDS
    for name, field in LoggingConfig.model_fields.items():
        assert field.description and len(field.description) > 15, name
    assert (LoggingConfig().watch_model, LoggingConfig().watch_log_freq) == (False, 100)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml") if p.name != "sweep_config.yaml"))
def test_shipped_configs_validate(name: str) -> None:
    config = load_experiment(REPO / "configs" / name)
    assert config.experiment_name
    config.tracking_config()  # and the tracking block they produce is valid


@pytest.mark.parametrize(
    ("section", "raw", "expected"),
    [
        ("logging", {"use_wandbb": True}, "logging.use_wandbb: unknown key; did you mean 'use_wandb'?"),
        ("training", {"lr": "fast"}, "training.lr: "),
        ("model", {"layers": "six"}, "model.layers: "),
        ("tracking", {"projct": "x"}, "tracking.projct: unknown key; did you mean 'project'?"),
        ("model", {"hidden_size": 100, "heads": 3}, "model.heads: heads=3 must divide hidden_size=100"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(section: str, raw: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        ExperimentConfig(experiment_name="x", **{section: raw})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(expected), message


def test_typo_in_yaml_fails_in_the_cli_before_any_model_is_built(tmp_path: Path) -> None:
    """Exit 2, one line on stderr naming the field, and nothing created: no logs, no runs, no torch import."""
    data = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    data["logging"]["use_wandbb"] = True
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(data))
    probe = ("import sys, runpy; sys.argv = ['model_foundry.cli', 'train', 'typo.yaml']\n"
             "try:\n    runpy.run_module('model_foundry.cli', run_name='__main__')\n"
             "except SystemExit as e:\n    print('torch imported:', 'torch' in sys.modules); raise")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: logging.use_wandbb: unknown key; did you mean 'use_wandb'?"]
    assert "torch imported: False" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["typo.yaml"]


def test_wrong_type_in_yaml_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("experiment_name: x\ntraining:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=r"^training\.batch_size: .*'many'") as info:
        load_experiment(path)
    assert "\n" not in str(info.value)


def test_dict_and_model_dump_agree_without_warnings() -> None:
    config = ExperimentConfig(experiment_name="x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config.dict() == config.model_dump()
        assert config.logging.dict() == config.logging.model_dump()


def test_logging_shortcuts_fill_the_tracking_block() -> None:
    config = ExperimentConfig(experiment_name="exp0", logging={"use_wandb": True, "wandb_project": "spanish-subject-drop",
                                                               "wandb_entity": "lab"})
    tracking = config.tracking_config()
    assert isinstance(tracking, TrackingConfig)
    assert tracking.backends == {"tensorboard": {}, "wandb": {}}
    assert (tracking.project, tracking.entity, tracking.run_name) == ("spanish-subject-drop", "lab", "exp0")


def test_explicit_tracking_values_win_over_the_shortcuts() -> None:
    config = ExperimentConfig(
        experiment_name="exp0",
        logging={"use_wandb": True, "wandb_project": "from-logging", "wandb_entity": "lab"},
        tracking={"project": "from-tracking", "run_name": "custom", "backends": {"mlflow": {}, "wandb": {"mode": "offline"}}},
    )
    tracking = config.tracking_config()
    assert tracking.project == "from-tracking"
    assert tracking.entity == "lab"  # not set under tracking: the shortcut fills it
    assert tracking.run_name == "custom"
    assert tracking.backends == {"mlflow": {}, "wandb": {"mode": "offline"}}  # the explicit W&B options are kept


def test_defaults_without_wandb() -> None:
    tracking = ExperimentConfig(experiment_name="exp0").tracking_config()
    assert (tracking.project, tracking.run_name, tracking.backends) == ("model-foundry", "exp0", {"tensorboard": {}})


def test_wandb_mode_disabled_drops_only_the_wandb_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    config = ExperimentConfig(experiment_name="x", logging={"use_wandb": True},
                              tracking={"backends": {"mlflow": {}, "wandb": {}}})
    assert config.tracking_config().backends == {"mlflow": {}}


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml") if p.name != "sweep_config.yaml"))
def test_init_doctor_and_the_trainer_read_an_experiment_file_alike(name: str) -> None:
    """`foundry_track.init(path)` and `foundry-track doctor path` use the trainer's mapping of `logging:`."""
    from foundry_track.config import load_config

    assert load_config(REPO / "configs" / name) == load_experiment(REPO / "configs" / name).tracking_config()


@pytest.mark.parametrize("name", GUIDE_CONFIGS)
def test_the_guides_experiments_reach_wandb_tensorboard_and_a_local_mlflow(name: str) -> None:
    raw = yaml.safe_load((REPO / "configs" / name).read_text())
    assert raw["logging"]["use_wandb"] is True and raw["logging"]["wandb_project"]  # the guide's keys, as it shows them
    backends = load_experiment(REPO / "configs" / name).tracking_config().backends
    assert backends == {"tensorboard": {}, "mlflow": {"tracking_uri": "sqlite:///mlflow.db"}, "wandb": {}}


def test_run_params_put_what_is_trained_first_and_show_values_as_written() -> None:
    from model_foundry.config import run_params

    from foundry_track.params import flatten

    config = load_experiment(REPO / "configs" / "exp1_remove_expletives.yaml")
    tracking = config.tracking_config()
    params = flatten(run_params(config, tracking, {"model": {"num_parameters": 123}}))
    keys = list(params)
    assert [k.split("/")[0] for k in keys[:3]] == ["training"] * 3
    blocks = list(dict.fromkeys(k.split("/")[0] for k in keys))
    assert blocks == ["training", "model", "data", "experiment_name", "logging", "tracking"]
    assert params["model/num_parameters"] == 123
    written = (REPO / "configs" / "exp1_remove_expletives.yaml").read_text()
    pattern = params["data/remove_sentences_matching"]
    assert pattern == "[" + yaml.safe_load(written)["data"]["remove_sentences_matching"][0] + "]"
    assert "\\\\" not in pattern and "\\b(hay|había" in pattern  # one backslash, as in the file (not a repr)
    # The tracking settings in effect, not the tracking block's defaults.
    assert params["tracking/project"] == "spanish-subject-drop" == tracking.project
    assert params["tracking/backends"] == "[tensorboard, mlflow, wandb]"
    assert params["tracking/tags"] == "[gpt2, spanish, ablation, remove-expletives]"
    assert "training/resume_from" not in params  # unset values are left out

