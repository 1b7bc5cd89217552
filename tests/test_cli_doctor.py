"""`foundry-track doctor` against real servers: the session's `mlflow server`
(reachable), a free port with nothing listening (stopped), a TLS server with a
self-signed certificate (the guide's "SSL" entry), and real credential files.
No secret may ever appear in the output."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from foundry_track.cli import main
from foundry_track.cli.doctor import GUIDE_ISSUES
from foundry_track.journal import JOURNAL_FILE, Journal
from tests.helpers.mlflow_server import free_port

API_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, like a W&B key


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback servers must be reached directly, whatever the developer's shell has."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)


def _config(tmp_path: Path, backends: dict[str, Any], **tracking: Any) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"model": {"layers": 2},
                                    "tracking": {"dir": str(tmp_path / "runs"), "backends": backends, **tracking}}))
    return str(path)


def _doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    """Run doctor twice (JSON and text); both must agree on the exit code."""
    code = main(["doctor", *args, "--json", "--timeout", "2"])
    report = json.loads(capsys.readouterr().out)
    assert main(["doctor", *args, "--timeout", "2"]) == code
    return code, report, capsys.readouterr().out


def _find(report: dict[str, Any], scope: str, check: str) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["scope"] == scope and f["check"] == check]


# --------------------------------------------------------------------------- #
# MLflow: reachable or not
# --------------------------------------------------------------------------- #


def test_stopped_mlflow_server_is_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a stopped server
    code, report, text = _doctor(capsys, _config(tmp_path, {"mlflow": {"tracking_uri": uri}}))
    assert code == 1 and not report["ok"]
    [finding] = _find(report, "mlflow", "reachable")
    assert finding["level"] == "error" and "unreachable" in finding["message"]
    assert "connection refused" in finding["message"]
    assert "mlflow server --host 127.0.0.1" in finding["fix"] and "foundry-track sync" in finding["fix"]
    assert "unreachable" in text and "fix: start it" in text
    assert "1 problem(s)" in text


def test_running_mlflow_server_is_fine(tmp_path: Path, mlflow_server: Any,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, report, text = _doctor(capsys, _config(tmp_path, {"mlflow": {"tracking_uri": mlflow_server.uri},
                                                            "tensorboard": {}}))
    assert code == 0 and report["ok"], [f for f in report["findings"] if f["level"] in ("warn", "error")]
    [finding] = _find(report, "mlflow", "reachable")
    assert finding["level"] == "ok" and "REST API works" in finding["message"]
    [sdk] = _find(report, "mlflow", "sdk")
    assert sdk["level"] == "ok" and sdk["message"].startswith("mlflow 3.")  # version from package metadata
    assert "no problems found" in text


def test_secrets_in_uris_are_never_printed(tmp_path: Path, mlflow_server: Any, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    uri = mlflow_server.uri.replace("http://", "http://alice:hunter2@")
    monkeypatch.setenv("HTTPS_PROXY", "http://bob:pr0xy-pass@proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    code, report, text = _doctor(capsys, _config(tmp_path, {"mlflow": {"tracking_uri": uri}}))
    dumped = json.dumps(report) + text
    assert "hunter2" not in dumped and "pr0xy-pass" not in dumped
    assert "alice:***@" in dumped and "bob:***@proxy.invalid" in dumped
    assert _find(report, "mlflow", "reachable")[0]["level"] == "ok"  # NO_PROXY sent it direct, with the user


# --------------------------------------------------------------------------- #
# W&B: credentials, reachability, the guide's list
# --------------------------------------------------------------------------- #


def test_wandb_online_without_a_key_is_not_logged_in(tmp_path: Path, mlflow_server: Any,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", mlflow_server.uri)  # any HTTP server answers the reachability check
    code, report, text = _doctor(capsys, _config(tmp_path, {"wandb": {}}))
    assert code == 1
    [creds] = _find(report, "wandb", "credentials")
    assert creds["level"] == "error" and "wandb login" in creds["fix"] and "WANDB_API_KEY" in creds["fix"]
    assert report["guide"]["Not logged in"][0]["level"] == "error"
    assert report["guide"]["API key not found"][0]["level"] == "error"
    assert "'Not logged in'" in text and "ERROR" in text


def test_wandb_key_from_env_or_netrc_is_found_and_never_printed(tmp_path: Path, mlflow_server: Any,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", mlflow_server.uri)
    config = _config(tmp_path, {"wandb": {}})

    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    code, report, text = _doctor(capsys, config)
    assert code == 0, [f for f in report["findings"] if f["level"] in ("warn", "error")]
    assert _find(report, "wandb", "credentials")[0]["message"] == "API key found in env (WANDB_API_KEY)"
    assert _find(report, "wandb", "reachable")[0]["level"] == "ok"
    assert API_KEY not in json.dumps(report) + text

    monkeypatch.delenv("WANDB_API_KEY")
    netrc_file = Path(os.environ["NETRC"])  # conftest points NETRC into tmp_path
    netrc_file.write_text(f"machine 127.0.0.1\n  login user\n  password {API_KEY}\n")
    netrc_file.chmod(0o600)
    code, report, text = _doctor(capsys, config)
    assert code == 0
    [creds] = _find(report, "wandb", "credentials")
    assert creds["level"] == "ok" and creds["message"].startswith("API key found in ")
    assert netrc_file.name in creds["message"] and "machine 127.0.0.1" in creds["message"]
    assert API_KEY not in json.dumps(report) + text

    netrc_file.chmod(0o644)
    code, report, _ = _doctor(capsys, config)
    assert code == 1
    assert any(f["level"] == "warn" and f["fix"].startswith("chmod 600 ") and netrc_file.name in f["fix"]
               for f in _find(report, "wandb", "credentials"))


def test_wandb_unreachable_is_a_warning_with_the_offline_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{free_port()}")  # a node without internet
    config = _config(tmp_path, {"wandb": {}})
    code, report, _ = _doctor(capsys, config)
    assert code == 1
    [reach] = _find(report, "wandb", "reachable")
    assert reach["level"] == "warn" and "unreachable" in reach["message"]
    assert "WANDB_MODE=offline" in reach["fix"] and "foundry-track sync RUN --backend wandb" in reach["fix"]
    assert {"firewall", "hangs at init"} <= set(reach["answers"])

    monkeypatch.setenv("WANDB_MODE", "offline")  # the fix: nothing to reach, nothing wrong
    code, report, _ = _doctor(capsys, config)
    assert code == 0 and not _find(report, "wandb", "reachable")


def test_every_entry_of_the_guides_troubleshooting_list_is_answered(
        tmp_path: Path, mlflow_server: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", mlflow_server.uri)
    code, report, text = _doctor(capsys, _config(tmp_path, {"wandb": {}, "mlflow": {"tracking_uri": mlflow_server.uri}}))
    assert code == 0
    assert list(report["guide"]) == list(GUIDE_ISSUES)
    for issue, answers in report["guide"].items():
        assert answers, f"nothing answers {issue!r}"
        assert all(a["level"] in ("ok", "info") for a in answers), (issue, answers)
        assert f"{issue!r}:" in text


# --------------------------------------------------------------------------- #
# TLS: a real server with a self-signed certificate
# --------------------------------------------------------------------------- #


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()


def test_ssl_errors_and_their_fix(tmp_path: Path, tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    url, cert = tls_server
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", url)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    config = _config(tmp_path, {"wandb": {}})

    code, report, _ = _doctor(capsys, config)
    [reach] = _find(report, "wandb", "reachable")
    assert code == 1 and reach["level"] == "error" and "certificate not trusted" in reach["message"]
    assert "REQUESTS_CA_BUNDLE" in reach["fix"] and report["guide"]["SSL"][0]["level"] == "error"

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # the fix the finding gives
    code, report, _ = _doctor(capsys, config)
    assert code == 0 and _find(report, "wandb", "reachable")[0]["level"] == "ok"

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("WANDB_VERIFY_SSL", "false")  # the guide's advice, which the SDK ignores
    code, report, _ = _doctor(capsys, config)
    tls = _find(report, "general", "tls")
    assert code == 1
    assert any(f["level"] == "error" and "missing.pem does not exist" in f["message"] for f in tls)
    assert any(f["level"] == "warn" and "WANDB_VERIFY_SSL" in f["message"] for f in tls)


# --------------------------------------------------------------------------- #
# Disk, earlier runs, bad input
# --------------------------------------------------------------------------- #


def test_low_disk_and_recorded_rate_limits_are_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import foundry_track as ft

    config = _config(tmp_path, {"tensorboard": {}})
    with ft.init(config, run_name="limited") as run:
        run.log({"loss": 1.0}, step=0)
    # What a backend records when a server answers 429 (fault injection through the journal's own API).
    Journal(run.dir / JOURNAL_FILE).record_error("tensorboard", "HTTPError: 429 Too Many Requests")

    code, report, text = _doctor(capsys, config, "--min-free", "1e9")  # more GB than any disk has
    assert code == 1
    [disk] = _find(report, "general", "disk")
    assert disk["level"] in ("warn", "error") and "foundry-track clean --synced-only" in disk["fix"]
    [limit] = _find(report, "general", "rate-limit")
    assert limit["level"] == "warn" and "limited" in limit["message"] and "every_n_steps" in limit["fix"]
    assert report["guide"]["disk space"][0]["level"] in ("warn", "error")
    assert report["guide"]["rate limit"][0]["level"] == "warn"


def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("tracking:\n  projekt: x\n")
    assert main(["doctor", str(bad)]) == 2
    assert "did you mean 'project'" in capsys.readouterr().err
    code, report, _ = _doctor(capsys, _config(tmp_path, {"nosuchtracker": {}}))
    assert code == 1
    [plugin] = _find(report, "nosuchtracker", "plugin")
    assert plugin["level"] == "error" and "pip install 'foundry-track[nosuchtracker]'" in plugin["fix"]
    code, report, _ = _doctor(capsys, _config(tmp_path, {"mlflow": {"tracking_urii": "x"}}))
    assert code == 1 and "tracking_uri" in _find(report, "mlflow", "options")[0]["message"]


# --------------------------------------------------------------------------- #
# tracker_doctor: each backend reports its own checks
# --------------------------------------------------------------------------- #


def test_a_backend_without_tracker_doctor_reports_no_checks(tmp_path: Path, fault_plugins: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, report, text = _doctor(capsys, _config(tmp_path, {"recorder": {"out": str(tmp_path / "o.jsonl")}}))
    assert code == 0
    assert [(f["check"], f["level"]) for f in report["findings"] if f["scope"] == "recorder"] == [
        ("sdk", "ok"), ("checks", "info")]
    [sdk] = _find(report, "recorder", "sdk")
    assert sdk["message"] == "plugin foundry-track-faults 0.1 loads"
    [checks] = _find(report, "recorder", "checks")
    assert "reports no checks" in checks["message"] and "tracker_doctor" in checks["message"]
    assert "reports no checks" in text


def test_a_failing_tracker_doctor_is_an_error_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import foundry_track_tensorboard._doctor as tb_doctor

    def broken(*args: Any) -> list[Any]:
        raise RuntimeError("checks exploded")

    monkeypatch.setattr(tb_doctor, "doctor", broken)
    code, report, _ = _doctor(capsys, _config(tmp_path, {"tensorboard": {}}))
    assert code == 1
    [failed] = _find(report, "tensorboard", "checks")
    assert failed["level"] == "error" and "RuntimeError: checks exploded" in failed["message"]
    assert _find(report, "general", "disk")  # the general checks still ran


def test_tracker_doctor_folders_share_the_disk_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Folders a backend writes to (check_disk) are checked for free space with the run folder, once per disk."""
    import foundry_track.cli.doctor as doctor_module

    checked: list[tuple[str, Path]] = []
    real_disk = doctor_module._disk
    monkeypatch.setattr(doctor_module, "_disk", lambda paths, min_free: checked.extend(paths) or real_disk(paths, min_free))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    _, report, _ = _doctor(capsys, _config(tmp_path, {"tensorboard": {"log_dir": str(tmp_path / "tb")},
                                                      "wandb": {}}), "--min-free", "1e9")
    assert checked[:3] == [("run folder", tmp_path / "runs"), ("TensorBoard log_dir", tmp_path / "tb"),
                           ("W&B dir", tmp_path / "wandb")]
    [disk] = _find(report, "general", "disk")  # one disk: one line, named after the run folder
    assert "for the run folder" in disk["message"] and disk["level"] in ("warn", "error")
    [folder] = _find(report, "tensorboard", "folder")
    assert folder["level"] == "ok" and str(tmp_path / "tb") in folder["message"]


# --------------------------------------------------------------------------- #
# Experiment files: read as the trainer reads them
# --------------------------------------------------------------------------- #

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["exp0_baseline.yaml", "experiment_with_wandb.yaml"])
def test_an_experiment_file_is_read_as_the_trainer_reads_it(name: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The guide's files: `logging.use_wandb` adds W&B (it used to be ignored: "no problems found"),
    and the trainer's blocks are not tracking keys (it used to fail on `tracking.experiment_name`)."""
    from model_foundry.config import load_experiment

    shutil.copy(REPO / "configs" / name, tmp_path / name)
    code, report, text = _doctor(capsys, name)  # WANDB_MODE=offline (conftest): no network needed
    assert code in (0, 1), text  # not 2: the file is a valid config
    expected = load_experiment(name).tracking_config()
    assert sorted({f["scope"] for f in report["findings"]} - {"general"}) == sorted(expected.backends)
    assert "wandb" in expected.backends and _find(report, "wandb", "sdk")
    [how] = [f for f in _find(report, "general", "config") if f["message"].startswith("experiment file")]
    assert "logging.use_wandb: true" in how["message"] and f"project {expected.project!r}" in how["message"]
    assert f"run name {expected.run_name!r}" in how["message"]
    assert "'Not logged in': not applicable" not in text  # W&B is in the config's backends


def test_wandb_mode_disabled_drops_wandb_from_an_experiment_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    shutil.copy(REPO / "configs" / "exp0_baseline.yaml", tmp_path / "exp0.yaml")
    _, report, _ = _doctor(capsys, "exp0.yaml")
    assert not _find(report, "wandb", "sdk") and _find(report, "tensorboard", "sdk") and _find(report, "mlflow", "sdk")


def test_a_wrong_shortcut_type_in_an_experiment_file_is_bad_config(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "exp.yaml").write_text("experiment_name: x\nlogging:\n  use_wandb: maybe\n")
    assert main(["doctor", "exp.yaml"]) == 2
    assert "exp.yaml: logging.use_wandb: expected true or false, got 'maybe'" in capsys.readouterr().err
