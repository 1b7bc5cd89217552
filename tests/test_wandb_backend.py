"""The W&B backend on the real ``wandb`` SDK in offline mode, read back from the
``.wandb`` file it wrote (tests/helpers/wandb_offline.py), never mocked.

conftest.py isolates every test: WANDB_MODE=offline, WANDB_SILENT, no git/code
capture, WANDB_DIR=tmp_path, WANDB_CONFIG_DIR and NETRC inside tmp_path, and no
WANDB_API_KEY. A test that needs something else says so with monkeypatch.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from foundry_track_wandb import (
    EXIT_CODES,
    INSTALL,
    STEP_METRIC,
    WandbBackend,
    WandbOptions,
    has_credentials,
    resolve_base_url,
    resolve_mode,
)
from PIL import Image

import foundry_track as ft
from foundry_track.events import (
    AlertEvent,
    ArtifactEvent,
    HistogramEvent,
    ImageEvent,
    MetricRow,
    RunInfo,
    TableEvent,
    TextEvent,
)
from tests.helpers.tb import scalars
from tests.helpers.wandb_offline import find_run_files
from tests.helpers.wandb_offline import finished_runs as _finished_runs

SECRET = "hunter2-not-for-wandb"


def _cfg(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return {"dir": str(tmp_path / "runs"), "backends": {"wandb": {}}, "fallback": None, "strict": True, **overrides}


def _steps(history: list[dict[str, Any]]) -> list[int]:
    return [row[STEP_METRIC] for row in history]


def _media(history: list[dict[str, Any]], key: str) -> tuple[int, dict[str, Any]]:
    """The step and fields of the one history row holding media ``key`` (the
    reader flattens ``{key: {"_type": ..}}`` into ``key._type``)."""
    (found,) = [(row[STEP_METRIC], {k[len(key) + 1:]: v for k, v in row.items() if k.startswith(key + ".")})
                for row in history if f"{key}._type" in row]
    return found


def _started_backend(tmp_path: Path, run_id: str) -> WandbBackend:
    """A backend started by hand, for hooks the Run API does not expose yet."""
    info = RunInfo(id=run_id, name=run_id, project="p", entity=None, tags=(), notes=None, group=None,
                   config={}, dir=tmp_path / "run", resumed=False)
    backend = WandbBackend()
    identity = backend.tracker_start(run=info, options=WandbOptions(), resume_state={})
    assert identity["run_id"] == run_id and identity["mode"] == "offline"
    return backend


# --------------------------------------------------------------------------- #
# Through foundry_track.init: metrics, params, identity, status
# --------------------------------------------------------------------------- #


def test_every_step_config_redacted_summary_and_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("WANDB_DIR")  # W&B's own default then: ./wandb in the working directory (tmp_path)
    caplog.set_level(logging.WARNING, logger="foundry_track")
    cfg = _cfg(tmp_path, project="proj", run_name="exp0", tags=["a", "b"], notes="first", group="g")
    t0 = time.time()
    with ft.init(cfg) as run:
        run.log_params({"lr": 0.1, "model": {"layers": 2}, "api_key": SECRET})
        for step in range(5):
            run.log({"train/loss": 1.0 / (step + 1)}, step=step)
        run.log({"val/loss": 0.5}, step=4)  # same step as the row before: one W&B row
        run.log({"train/loss": 9.0}, step=2)  # lower than step 4: kept, reported
    t1 = time.time()
    assert run.undelivered == {}

    (wb,) = _finished_runs(tmp_path / "wandb")
    # Named as the run's TensorBoard folder and MLflow run: runs of one config stay apart.
    assert (wb.run_id, wb.name, wb.project, wb.tags, wb.group) == (run.id, f"exp0-{run.id}", "proj", ["a", "b"], "g")
    got = [(row[STEP_METRIC], row.get("train/loss"), row.get("val/loss")) for row in wb.history]
    assert got == [(0, 1.0, None), (1, 0.5, None), (2, pytest.approx(1 / 3), None), (3, 0.25, None),
                   (4, 0.2, 0.5), (2, 9.0, None)]
    assert all(t0 <= row["_timestamp"] <= t1 for row in wb.history)  # the time run.log was called
    assert {"name": STEP_METRIC}.items() <= wb.metric_definitions[0].items()
    assert (wb.metric_definitions[1]["glob_name"], wb.metric_definitions[1]["step_metric"]) == ("*", STEP_METRIC)

    assert wb.config["lr"] == 0.1 and wb.config["model/layers"] == 2
    assert wb.config["api_key"] == "***"
    for path in wb.run_files:
        assert SECRET.encode() not in path.read_bytes()
    assert wb.summary["train/loss"] == 9.0 and wb.summary["val/loss"] == 0.5
    assert wb.summary[STEP_METRIC] == 2  # the summary is the last row logged
    assert wb.exit_code == 0

    identity = run.backend_ids["wandb"]
    assert identity == {"run_id": run.id, "mode": "offline", "dir": str(wb.run_files[0].parent)}
    # Where the guide's `wandb sync wandb/offline-run-...` and `rm -rf wandb/offline-run-*` look.
    assert Path(identity["dir"]).parent == tmp_path / "wandb" and Path(identity["dir"]).is_absolute()
    assert Path(identity["dir"]).name.startswith("offline-run-")
    assert not [p for p in run.dir.rglob("*") if "wandb" in p.name]  # nothing of W&B's in the run directory
    conflicts = [r.getMessage() for r in caplog.records if r.name == "foundry_track.wandb"]
    assert len(conflicts) == 1 and "step 2 arrived after step 4" in conflicts[0]


def test_two_runs_in_one_process_with_status_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment beats the YAML (the W&B guide: WANDB_PROJECT "overrides config").
    monkeypatch.setenv("WANDB_PROJECT", "env-project")
    monkeypatch.setenv("WANDB_ENTITY", "env-team")
    options = {"project": "yaml-project", "entity": "yaml-team", "mode": "online", "job_type": "train"}
    expected = {}
    for status in ("failed", "killed"):
        run = ft.init(_cfg(tmp_path, entity="tracking-team", tags=["t" * 80], backends={"wandb": options}))
        run.log({"x": 1.0}, step=0)
        assert run.finish(status) == {}
        expected[run.id] = EXIT_CODES[status]
    runs = _finished_runs(tmp_path)  # WANDB_DIR=tmp_path (conftest) beats the default run dir
    assert {wb.run_id: wb.exit_code for wb in runs} == expected == dict(zip(expected, (1, 255)))
    for wb in runs:
        assert (wb.project, wb.entity, wb.job_type) == ("env-project", "env-team", "train")
        assert wb.tags == ["t" * 64]  # W&B refuses longer tags; cut rather than fail the start
        assert _steps(wb.history) == [0]


def test_resume_continues_the_same_wandb_run(tmp_path: Path) -> None:
    with ft.init(_cfg(tmp_path)) as first:
        for step in range(100):
            first.log({"loss": float(step)}, step=step)
    # Restored from the checkpoint of step 95: steps 95..99 come again.
    with ft.init(_cfg(tmp_path), resume=first.dir) as second:
        for step in range(95, 200):
            second.log({"loss": float(step)}, step=step)
    assert second.id == first.id
    assert second.backend_ids["wandb"]["run_id"] == first.id

    (wb,) = _finished_runs(tmp_path)  # one W&B run id ...
    assert len(wb.run_files) == 2  # ... written offline as two segments (wandb sync joins them)
    assert _steps(wb.history) == [*range(100), *range(95, 200)]  # nothing dropped, replays kept
    assert [row["loss"] for row in wb.history] == [float(s) for s in _steps(wb.history)]
    assert sorted(set(_steps(wb.history))) == list(range(200))
    assert wb.exit_code == 0


def test_resume_from_another_directory_adds_to_the_first_wandb_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B's default folder is ./wandb of the directory the run started in; a resume
    from elsewhere writes its segment there too, so one folder holds the W&B run."""
    monkeypatch.delenv("WANDB_DIR")
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(here)
    with ft.init(_cfg(tmp_path)) as first:
        for step in range(5):
            first.log({"loss": float(step)}, step=step)
    monkeypatch.chdir(elsewhere)
    with ft.init(_cfg(tmp_path), resume=first.dir) as second:
        for step in range(5, 10):
            second.log({"loss": float(step)}, step=step)
    assert not (elsewhere / "wandb").exists()
    assert Path(second.backend_ids["wandb"]["dir"]).parent == here / "wandb"
    (wb,) = _finished_runs(here / "wandb")
    assert len(wb.run_files) == 2 and _steps(wb.history) == list(range(10))


def test_sync_after_a_crash_from_another_directory_reads_the_runs_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint names the crashed run's files by absolute path: a sync from
    another working directory reads them back and sends each step once, into
    the same wandb/ folder."""
    import collections

    from tests.test_wandb_exactly_once import _closed_run, _crashed, _info, _media_after, _rows

    monkeypatch.delenv("WANDB_DIR")
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(here)
    sent = _rows(list(range(400)), time.time())
    identity, checkpoint = _crashed(tmp_path, "moved001", sent, at=300, truncate=False)
    assert Path(checkpoint["wandb_file"]).parent.parent == here / "wandb"

    monkeypatch.chdir(elsewhere)
    backend = WandbBackend()
    backend.tracker_start(run=_info(tmp_path, "moved001"), options=WandbOptions(),
                          resume_state={**identity, **checkpoint})
    backend.tracker_flush()
    backend.tracker_log_metrics(sent[300:])  # what the journal holds past the checkpoint, offered again
    for event in _media_after(tmp_path, sent[-1].time):
        getattr(backend, event[0])(event[1])
    backend.tracker_finish("killed", True)

    assert not (elsewhere / "wandb").exists()
    wb = _closed_run(here / "wandb")
    assert len(wb.run_files) == 2
    held = collections.Counter(int(row[STEP_METRIC]) for row in wb.history if "loss" in row)
    assert held == collections.Counter(range(400))
    assert [a["title"] for a in wb.alerts] == ["spike"]


def test_the_trainer_prints_the_folder_wandb_sync_takes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The guide's offline mode: the trainer's closing line names the folder W&B
    wrote, relative to where the user is, as the guide's `wandb sync` takes it."""
    import re

    import yaml
    from model_foundry.cli import main

    from tests.test_trainer_run import tiny

    monkeypatch.delenv("WANDB_DIR")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny(tmp_path, training={"steps": 10}, logging={"use_wandb": True})))
    assert main(["train", str(config), "--no-progress", "--sample", "0"]) == 0
    (hint,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("W&B:")]
    folder = hint.split("wandb sync ", 1)[1]
    assert re.fullmatch(r"wandb/offline-run-\d{8}_\d{6}-[a-z0-9]+", folder), hint
    (wb,) = _finished_runs(tmp_path / folder)
    assert wb.exit_code == 0 and wb.name.startswith("tiny-")


def test_online_without_api_key_fails_fast_and_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")  # no WANDB_API_KEY, NETRC points to no file (conftest)
    caplog.set_level(logging.WARNING, logger="foundry_track")
    started = time.perf_counter()
    run = ft.init(_cfg(tmp_path, fallback="tensorboard", strict=False, flush_timeout=10))
    slowest = 0.0
    for step in range(50):
        t = time.perf_counter()
        run.log({"loss": float(step)}, step=step)
        slowest = max(slowest, time.perf_counter() - t)
    while "tensorboard" not in run.backend_ids and time.perf_counter() - started < 10:
        time.sleep(0.02)
    fell_back_after = time.perf_counter() - started
    assert run.finish() == {"wandb": 50}
    print(f"\nfallback running {fell_back_after:.2f} s after init; slowest run.log {slowest * 1e6:.0f} us")

    assert fell_back_after < 5
    assert slowest < 0.05
    assert "wandb" not in run.backend_ids
    assert scalars(run.backend_ids["tensorboard"]["log_dir"])["loss"] == [(s, float(s)) for s in range(50)]
    assert find_run_files(tmp_path) == []  # wandb.init was never called
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "no API key is configured" in text and "WANDB_API_KEY" in text
    assert f"foundry-track sync {run.dir} --backend wandb" in text

    # Later, offline (or with a key): sync delivers every step once; again adds nothing.
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert ft.sync(run.dir, backend="wandb") == {}
    assert ft.sync(run.dir, backend="wandb") == {}
    (wb,) = _finished_runs(tmp_path)
    assert wb.run_id == run.id and _steps(wb.history) == list(range(50))


def test_unreachable_server_gives_up_after_init_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # a key, but nothing listens on the server's port
    options = {"base_url": "http://127.0.0.1:9", "init_timeout": 1}
    started = time.perf_counter()
    run = ft.init(_cfg(tmp_path, backends={"wandb": options}, fallback="tensorboard", strict=False))
    run.log({"loss": 1.0}, step=0)
    while "tensorboard" not in run.backend_ids and time.perf_counter() - started < 20:
        time.sleep(0.05)
    gave_up_after = time.perf_counter() - started
    assert run.finish() == {"wandb": 1}
    print(f"\nunreachable W&B server: fallback running after {gave_up_after:.1f} s (init_timeout 1 s)")
    assert gave_up_after < 10  # W&B's own default would wait 90 s
    assert scalars(run.backend_ids["tensorboard"]["log_dir"])["loss"] == [(0, 1.0)]


@pytest.mark.parametrize("how", ["WANDB_MODE", "option"])
def test_disabled_mode_creates_no_wandb_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    options: dict[str, Any] = {}
    if how == "WANDB_MODE":
        monkeypatch.setenv("WANDB_MODE", "disabled")
    else:
        monkeypatch.delenv("WANDB_MODE")
        options = {"mode": "disabled"}
    with ft.init(_cfg(tmp_path, backends={"wandb": options})) as run:
        run.log_params({"lr": 0.1})
        for step in range(10):
            run.log({"loss": 1.0}, step=step)
    assert run.undelivered == {}
    assert run.backend_ids["wandb"] == {"run_id": run.id, "mode": "disabled"}
    wandb_files = [p for p in tmp_path.rglob("*") if "wandb" in p.name and p.name != ".wandb-config"]
    assert wandb_files == []
    assert not (tmp_path / ".wandb-config").exists()


# --------------------------------------------------------------------------- #
# Hooks called directly (media hooks, retries, cost)
# --------------------------------------------------------------------------- #


def test_media_artifact_and_alert_hooks(tmp_path: Path) -> None:
    backend = _started_backend(tmp_path, "media001")
    now = time.time()
    png = tmp_path / "sample.png"
    Image.new("RGB", (4, 3), (255, 0, 0)).save(png)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.bin").write_bytes(b"weights")
    (ckpt / "config.json").write_text("{}")

    backend.tracker_log_image(ImageEvent("samples/img", 1, now, png, caption="red", width=4, height=3))
    backend.tracker_log_histogram(HistogramEvent("w/hist", 2, now, (0.0, 1.0, 2.0, 3.0), (1.0, 2.0, 3.0),
                                                 0.0, 3.0, 6, 9.0, 20.0))
    edges = tuple(float(i) for i in range(1001))
    backend.tracker_log_histogram(HistogramEvent("w/wide", 2, now, edges, (1.0,) * 1000, 0, 1000, 1000, 0, 0))
    backend.tracker_log_table(TableEvent("eval/preds", 3, now, ("id", "pred"), ((1, "cat"), (2, "dog"))))
    backend.tracker_log_text(TextEvent("notes", 4, now, "**loss** went down"))
    backend.tracker_log_artifact(ArtifactEvent(ckpt, "model", "ckpt step 5", 5, now, "sha256:abc", "at step 5"))
    backend.tracker_log_artifact(ArtifactEvent(tmp_path / "gone", "model", "gone", 5, now, "x"))  # skipped
    backend.tracker_alert(AlertEvent("Loss spike", "loss 12 at step 6", "warn", 6, now))
    backend.tracker_finish("success", True)
    backend.tracker_finish("success", True)  # harmless
    WandbBackend().tracker_finish("failed", True)  # never started: harmless

    (wb,) = _finished_runs(tmp_path)
    files = wb.run_files[0].parent / "files"
    rows = {key: _media(wb.history, key) for key in ("samples/img", "w/hist", "w/wide", "eval/preds", "notes")}
    step, img = rows["samples/img"]
    assert (step, img["_type"], img["caption"], img["width"], img["height"]) == (1, "image-file", "red", 4, 3)
    assert Image.open(files / img["path"]).getpixel((0, 0)) == (255, 0, 0)
    assert rows["w/hist"] == (2, {"_type": "histogram", "values": [1, 2, 3], "bins": [0, 1, 2, 3]})
    wide = rows["w/wide"][1]
    assert len(wide["values"]) <= 512 and sum(wide["values"]) == 1000 and wide["bins"][-1] == 1000
    assert len(wide["bins"]) == len(wide["values"]) + 1
    step, table = rows["eval/preds"]
    assert step == 3 and table["_type"] == "table-file"
    assert json.loads((files / table["path"]).read_text())["data"] == [[1, "cat"], [2, "dog"]]
    step, text = rows["notes"]
    assert step == 4 and json.loads((files / text["path"]).read_text())["data"] == [[4, "**loss** went down"]]
    (art,) = [a for a in wb.artifacts if a["type"] == "model"]
    assert art["name"] == "ckpt-step-5" and sorted(art["entries"]) == ["config.json", "model.bin"]
    assert wb.alerts == [{"title": "Loss spike", "text": "loss 12 at step 6", "level": "WARN", "wait_duration": 60_000}]
    assert wb.exit_code == 0


class _FlakyRun:
    """Fault injection: the real wandb run, whose ``log`` fails once at call ``fail_at``."""

    def __init__(self, run: Any, fail_at: int) -> None:
        self._run, self._fail_at, self.calls = run, fail_at, 0

    def log(self, data: dict[str, Any]) -> None:
        self.calls += 1
        if self.calls == self._fail_at:
            raise ConnectionError("injected")
        self._run.log(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)


def test_retried_batch_is_not_sent_twice_and_hook_cost(tmp_path: Path) -> None:
    backend = _started_backend(tmp_path, "cost0001")
    real = backend._run
    backend._run = _FlakyRun(real, fail_at=4)
    rows = [MetricRow(s, time.time(), {"loss": float(s)}) for s in range(10)]
    with pytest.raises(ConnectionError):
        backend.tracker_log_metrics(rows)
    backend.tracker_log_metrics(rows)  # the dispatcher offers the same batch again
    backend._run = real

    n = 2000
    rows = [MetricRow(s, time.time(), {"train/loss": 1.0 / (s + 1), "train/lr": 3e-4}) for s in range(10, 10 + n)]
    started = time.perf_counter()
    backend.tracker_log_metrics(rows)
    per_step = (time.perf_counter() - started) / n
    backend.tracker_finish("success", True)
    print(f"\ntracker_log_metrics: {per_step * 1e6:.0f} us per step (2 scalars, offline)")

    (wb,) = _finished_runs(tmp_path)
    assert _steps(wb.history) == list(range(10 + n))  # each step exactly once
    assert per_step < 0.01


# --------------------------------------------------------------------------- #
# Options and environment (pure, no wandb.init)
# --------------------------------------------------------------------------- #


def test_options_are_documented_and_typos_named(tmp_path: Path) -> None:
    for name, field in WandbOptions.model_fields.items():
        assert field.description, name
    with pytest.raises(ft.ConfigError, match=r"tracking\.backends\.wandb\.projekt.*did you mean 'project'"):
        ft.init(_cfg(tmp_path, backends={"wandb": {"projekt": "x"}}))


def test_mode_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_mode(WandbOptions(mode="online")) == ("offline", "WANDB_MODE")  # conftest: offline
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_mode(WandbOptions())[0] == "offline"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="WANDB_MODE='sometimes'.*online, offline or disabled"):
        resolve_mode(WandbOptions())
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_mode(WandbOptions(mode="disabled")) == ("disabled", "tracking.backends.wandb.mode")
    assert resolve_mode(WandbOptions()) == ("online", "the default")


def test_credentials_and_base_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = resolve_base_url(WandbOptions())
    assert not has_credentials(default)
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert has_credentials(default)  # the guide's netrc entry works for W&B's default server
    assert resolve_base_url(WandbOptions(base_url="https://wandb.example.com/")) == "https://wandb.example.com"
    assert not has_credentials("https://wandb.example.com")  # a key for another host does not count
    monkeypatch.setenv("WANDB_BASE_URL", "https://env.example.com")
    assert resolve_base_url(WandbOptions(base_url="https://wandb.example.com")) == "https://env.example.com"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert has_credentials("https://wandb.example.com")


def test_unavailable_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import foundry_track_wandb

    assert WandbBackend().tracker_unavailable() is None
    monkeypatch.setattr(foundry_track_wandb.importlib.util, "find_spec", lambda name: None)
    message = WandbBackend().tracker_unavailable()
    assert message is not None and INSTALL in message
