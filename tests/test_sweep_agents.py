"""Sweeps across machines: ``sweep create`` + ``foundry-track agent`` on Optuna's shared storages.

The agents are separate processes, as on a cluster, sharing a real
PostgreSQL server (started by a fixture on 127.0.0.1 in a temporary data
directory) or Optuna's journal file. The trials are a tiny program that logs
its metric through foundry_track (journal only) and exits in about a second;
one grid point hangs once, so the test can SIGKILL the agent running it and
see the point run again by another agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("optuna")

from foundry_track.cli import main  # noqa: E402
from foundry_track.sweep.shared import display_url, open_sweep, sweep_status  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "s3cret-pw"

# a, b: the grid; the point a=0, b=0.3 hangs the first time it runs (the test
# kills the agent running it); the marker holds that agent's pid.
PROGRAM = """
import os, sys, time
import foundry_track as ft

args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
a, b = float(args.get("a", 0)), float(args.get("b", 0))
marker = os.environ.get("HANG_MARKER")
with ft.init({"backends": {}, "flush_timeout": 10, "journal_flush_interval": 0.05}, params=args) as run:
    for step in range(3):
        run.log({"loss": (a - 1) ** 2 + b + 1 / (step + 1)}, step=step)
        time.sleep(float(args.get("pause", 0)))
    if marker and (a, b) == (0.0, 0.3) and not os.path.exists(marker):
        with open(marker + ".tmp", "w") as f:
            f.write(f"{os.getppid()} {os.getpid()}")
        os.replace(marker + ".tmp", marker)
        time.sleep(120)
"""

GRID = {"program": "prog.py", "method": "grid", "metric": {"name": "loss", "goal": "minimize"},
        "parameters": {"a": {"values": [0, 1]}, "b": {"values": [0.1, 0.2, 0.3]}}}
POINTS = {(a, b) for a in (0, 1) for b in (0.1, 0.2, 0.3)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bindir() -> Path | None:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").is_file() and (Path(out) / "pg_ctl").is_file():
            return Path(out)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own on 127.0.0.1 (trust auth: the URL's password is only there to be masked)."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("no PostgreSQL driver: pip install 'foundry-track[sweep]' (psycopg2-binary)")
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="ft-pg-"))
    if os.geteuid() == 0:  # initdb refuses root
        if shutil.which("runuser") is None:
            pytest.skip("running as root and no runuser to start PostgreSQL as another user")
        try:
            shutil.chown(data, "postgres")
        except LookupError:
            pytest.skip("running as root and no `postgres` user to start PostgreSQL as")
        as_user = ["runuser", "-u", "postgres", "--"]
    port, db = _free_port(), data / "db"
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(db), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(db), "-l", str(data / "log"), "-w", "-o",
                        f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off", "start"], check=True, capture_output=True)
        yield f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(db), "-m", "immediate", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(data, ignore_errors=True)


def _sweep_file(tmp_path: Path, spec: dict[str, Any]) -> Path:
    (tmp_path / "prog.py").write_text(PROGRAM)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _create(tmp_path: Path, capsys: pytest.CaptureFixture[str], storage: str, spec: dict[str, Any],
            *extra: str) -> str:
    code = main(["sweep", "create", str(_sweep_file(tmp_path, spec)), "--storage", storage, "--heartbeat", "1",
                 *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert PASSWORD not in out + err
    return out.strip().splitlines()[-1]  # the sweep id is the last line


def _agent(tmp_path: Path, storage: str, sweep_id: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "HANG_MARKER": str(tmp_path / "hang"), "FOUNDRY_TRACK_SWEEP_STORAGE": storage,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "foundry_track.cli", "agent", sweep_id, "--dir",
                             str(tmp_path / "runs"), "--json", *extra],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_the_hanging_agent(tmp_path: Path, agents: list[subprocess.Popen[str]]) -> tuple[int, int]:
    """SIGKILL the agent whose trial hangs (mid-trial): (agent pid, trial pid)."""
    marker, deadline = tmp_path / "hang", time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, "no agent reached the hanging point"
        assert any(a.poll() is None for a in agents)
        time.sleep(0.05)
    agent_pid, trial_pid = map(int, marker.read_text().split())
    assert agent_pid in {a.pid for a in agents}
    os.kill(agent_pid, signal.SIGKILL)
    return agent_pid, trial_pid


def _alive(pid: int) -> bool:
    """Running (a zombie that no init reaps counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _finish(agents: list[subprocess.Popen[str]]) -> list[tuple[int, dict[str, Any], str]]:
    done = []
    for a in agents:
        out, err = a.communicate(timeout=90)
        assert PASSWORD not in out + err
        done.append((a.returncode, json.loads(out) if out.strip() else {}, err))
    return done


def _check_grid_with_a_killed_agent(tmp_path: Path, storage: str, sweep_id: str, n_agents: int) -> None:
    agents = [_agent(tmp_path, storage, sweep_id) for _ in range(n_agents)]
    killed, trial_pid = _kill_the_hanging_agent(tmp_path, agents)
    results = _finish(agents)
    for agent, (code, _, err) in zip(agents, results):
        assert code == (-signal.SIGKILL if agent.pid == killed else 0), err
    assert not _alive(trial_pid)  # the killed agent took its trial with it

    status = sweep_status(sweep_id, storage)
    trials = status["trials"]
    complete = [t for t in trials if t["state"] == "complete"]
    points = Counter((t["params"]["a"], t["params"]["b"]) for t in complete)
    assert set(points) == POINTS and set(points.values()) == {1}  # every point exactly once
    failed = [t for t in trials if t["state"] == "fail"]
    assert len(trials) == 7 and len(failed) == 1
    assert failed[0]["agent"].endswith(f":{killed}")
    assert (failed[0]["params"]["a"], failed[0]["params"]["b"]) == (0, 0.3)
    rerun = next(t for t in complete if t["retry_of"] == failed[0]["number"])
    assert (rerun["params"]["a"], rerun["params"]["b"]) == (0, 0.3) and not rerun["agent"].endswith(f":{killed}")
    assert status["best"]["params"] == {"a": 1, "b": 0.1}
    assert status["best"]["value"] == pytest.approx(0.1 + 1 / 3)
    per_agent = {agent: per.get("complete", 0) for agent, per in status["agents"].items()}
    by_killed = sum(n for agent, n in per_agent.items() if agent.endswith(f":{killed}"))
    ran = sum(len(r[1]["trials"]) for r in results if r[1])  # the survivors' own summaries
    assert sum(per_agent.values()) == 6 and ran == 6 - by_killed
    print(f"\n{storage.split(':')[0]}: trials per agent: {per_agent}; killed agent {killed} left trial {failed[0]['number']} failed, "
          f"its point ran again as trial {rerun['number']}", file=sys.__stderr__)
    # Every trial is a run of the sweep's group, wherever it ran.
    run_files = list((tmp_path / "runs" / sweep_id / "runs").glob("*/run.json"))
    grouping = {(data.get("group"), data.get("sweep")) for data in (json.loads(p.read_text()) for p in run_files)}
    assert len(run_files) == 7 and grouping == {(sweep_id, sweep_id)}
    for path in (tmp_path / "runs").rglob("*"):  # the storage's password never reaches a trial's run or log
        assert not path.is_file() or PASSWORD.encode() not in path.read_bytes(), path


def test_three_agents_on_postgresql_run_each_grid_point_once_and_rerun_a_killed_agents_point(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], postgres_url: str) -> None:
    sweep_id = _create(tmp_path, capsys, postgres_url, GRID, "--name", "pg-grid")
    assert sweep_id == "pg-grid"
    _check_grid_with_a_killed_agent(tmp_path, postgres_url, sweep_id, n_agents=3)
    code = main(["sweep", "status", sweep_id, "--storage", postgres_url])
    out, err = capsys.readouterr()
    assert code == 0 and "best so far: trial" in out and PASSWORD not in out + err
    assert "postgres:***@127.0.0.1" in out


def test_two_agents_on_a_journal_file_run_each_grid_point_once_and_rerun_a_killed_agents_point(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = str(tmp_path / "sweeps.journal")  # a plain path: Optuna's journal file
    sweep_id = _create(tmp_path, capsys, storage, GRID)
    assert sweep_id.startswith("sweep-")
    _check_grid_with_a_killed_agent(tmp_path, storage, sweep_id, n_agents=2)


def test_bayes_with_two_agents_runs_exactly_the_sum_of_their_counts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = str(tmp_path / "sweeps.journal")
    spec = {"program": "prog.py", "method": "bayes", "metric": {"name": "loss", "goal": "minimize"},
            "parameters": {"a": {"min": -1.0, "max": 3.0}, "b": {"values": [0.1, 0.2]}}}
    sweep_id = _create(tmp_path, capsys, storage, spec)
    agents = [_agent(tmp_path, storage, sweep_id, "--count", "2"), _agent(tmp_path, storage, sweep_id, "--count", "3")]
    results = _finish(agents)
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    assert sorted(len(r["trials"]) for _, r, _ in results) == [2, 3]
    status = sweep_status(sweep_id, storage)
    assert status["states"] == {"complete": 5}
    assert len({t["number"] for t in status["trials"]}) == 5
    assert all(-1.0 <= t["params"]["a"] <= 3.0 for t in status["trials"])


def test_a_capped_random_sweep_stops_every_agent_at_its_count(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = {"program": "prog.py", "method": "random", "metric": {"name": "loss", "goal": "minimize"},
            "parameters": {"a": {"min": 0.0, "max": 2.0}, "b": {"value": 0.5}}}
    sweep_id = _create(tmp_path, capsys, storage, spec, "--count", "2")
    [(code, result, err)] = _finish([_agent(tmp_path, storage, sweep_id)])
    assert code == 0, err
    assert len(result["trials"]) == 2 and result["finished_sweep"]
    assert sweep_status(sweep_id, storage)["states"] == {"complete": 2}


def test_hyperband_prunes_on_the_results_of_every_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = str(tmp_path / "sweeps.journal")
    spec = {**GRID, "parameters": {"a": {"values": [1, 9, 11, 13]}, "b": {"value": 0.1}, "pause": {"value": 0.4}},
            "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2}}
    sweep_id = _create(tmp_path, capsys, storage, spec)
    results = _finish([_agent(tmp_path, storage, sweep_id), _agent(tmp_path, storage, sweep_id)])
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    status = sweep_status(sweep_id, storage)
    states = {t["params"]["a"]: t["state"] for t in status["trials"]}
    # a=1 is the best at every step; 11 and 13 start after it reported, on either agent.
    assert states[1] == "complete" and states[11] == states[13] == "pruned" and len(states) == 4
    study = open_sweep(sweep_id, storage).study
    assert all(0 in t.intermediate_values for t in study.trials)  # every agent reported to the one study


def test_create_checks_the_file_and_the_storage_and_masks_the_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = {**GRID, "parameters": {"a": {"valuez": [1]}}}
    assert main(["sweep", "create", str(_sweep_file(tmp_path, bad)), "--storage", str(tmp_path / "j")]) == 2
    assert "valuez" in capsys.readouterr().err
    url = f"postgresql://me:{PASSWORD}@127.0.0.1:{_free_port()}/nowhere"
    assert main(["sweep", "create", str(_sweep_file(tmp_path, GRID)), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert PASSWORD not in err and "me:***@127.0.0.1" in err
    assert display_url(url) == url.replace(PASSWORD, "***")
    assert main(["agent", "no-such-sweep", "--storage", str(tmp_path / "j")]) == 2
    assert "no sweep 'no-such-sweep'" in capsys.readouterr().err
