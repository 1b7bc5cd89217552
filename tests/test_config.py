"""Bad configuration gets one clear error each: the field, the value, the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

import foundry_track as ft
from foundry_track.config import REDACTED, TrackingConfig, flatten, load_config, redact


def test_yaml_with_tracking_key_or_block_itself(tmp_path: Path) -> None:
    full = tmp_path / "exp.yaml"
    full.write_text("experiment_name: x\ntracking:\n  project: p1\n  tags: [a, b]\n")
    block = tmp_path / "block.yaml"
    block.write_text("project: p2\nbackends:\n  tensorboard: {}\n")
    assert load_config(full).project == "p1"
    assert load_config(full).tags == ["a", "b"]
    assert load_config(block).project == "p2"
    assert load_config({"tracking": {"project": "p3"}}).project == "p3"
    assert load_config(TrackingConfig(project="p4")).project == "p4"


def test_unknown_key_names_key_path_and_closest(tmp_path: Path) -> None:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("tracking:\n  projct: p\n")
    with pytest.raises(ft.ConfigError) as err:
        ft.init(cfg)
    message = str(err.value)
    assert "tracking.projct" in message and "did you mean 'project'" in message
    assert str(cfg) in message


def test_unknown_backend_lists_discovered() -> None:
    with pytest.raises(ft.ConfigError) as err:
        ft.init({"backends": {"tensorbord": {}}})
    assert "unknown backend 'tensorbord'" in str(err.value)
    assert "tensorboard" in str(err.value).split("discovered backends:")[1]


def test_wrong_type_names_field_and_expected_type() -> None:
    with pytest.raises(ft.ConfigError) as err:
        ft.init({"flush_timeout": "soon"})
    assert "flush_timeout" in str(err.value) and "number" in str(err.value) and "'soon'" in str(err.value)


def test_wrong_backend_option_is_reported_with_its_path() -> None:
    with pytest.raises(ft.ConfigError) as err:
        ft.init({"backends": {"tensorboard": {"flush_sec": 1}}})
    assert "tracking.backends.tensorboard.flush_sec" in str(err.value)
    assert "did you mean 'flush_secs'" in str(err.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("tracking:\n  project: [unclosed\n  tags: x\n")
    with pytest.raises(ft.ConfigError) as err:
        ft.init(cfg)
    assert "YAML syntax error" in str(err.value) and "line" in str(err.value) and str(cfg) in str(err.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ft.ConfigError, match="cannot read config file"):
        ft.init(tmp_path / "nope.yaml")


def test_env_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FOUNDRY_TRACK_BACKENDS", "tensorboard")
    monkeypatch.setenv("FOUNDRY_TRACK_DIR", str(tmp_path / "elsewhere"))
    cfg = load_config({"backends": {"mlflow": {"tracking_uri": "x"}}})
    assert list(cfg.backends) == ["tensorboard"]
    assert cfg.dir == tmp_path / "elsewhere"
    monkeypatch.setenv("FOUNDRY_TRACK_MODE", "sometimes")
    with pytest.raises(ft.ConfigError, match="FOUNDRY_TRACK_MODE"):
        load_config(None)


def test_redact_and_flatten() -> None:
    cfg = {"WANDB_API_KEY": "abc", "db": {"Password": "p", "host": "h"}, "hf_token": "t", "lr": 0.1,
           "client_secret": None}
    red = redact(cfg)
    assert red["WANDB_API_KEY"] == REDACTED and red["db"]["Password"] == REDACTED and red["hf_token"] == REDACTED
    assert red["db"]["host"] == "h" and red["lr"] == 0.1 and red["client_secret"] is None
    assert flatten({"a": {"b": {"c": 1}}, "d": [1, 2]}) == {"a/b/c": 1, "d": [1, 2]}


def test_every_field_has_a_description() -> None:
    missing = [name for name, field in TrackingConfig.model_fields.items() if not field.description]
    assert missing == []


def test_launcher_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDRY_TRACK_GROUP", "sweep-1")
    monkeypatch.setenv("FOUNDRY_TRACK_RUN_NAME", "trial-3")
    monkeypatch.setenv("FOUNDRY_TRACK_PROJECT", "p")
    monkeypatch.setenv("FOUNDRY_TRACK_TAGS", "sweep, a")
    cfg = load_config({"tags": ["a"], "run_name": "x"})
    assert (cfg.group, cfg.run_name, cfg.project, cfg.tags) == ("sweep-1", "trial-3", "p", ["a", "sweep"])
