"""A throwaway ``mlflow server`` on loopback for the benchmarks.

The same settings as the test suite's server (tests/helpers/mlflow_server.py),
reduced to start and stop: a SQLite store, proxied artifacts, one uvicorn
worker, and no server-side job execution (which would add ~8 processes that
compete for the CPU with what is being measured).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PYTHONUNBUFFERED": "1",
}
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MlflowServer:
    """``with MlflowServer(tmp) as server: MlflowClient(server.uri)``."""

    root: Path
    port: int = field(default_factory=_free_port)
    #: "idle" runs the server (and its uvicorn worker) under SCHED_IDLE, as a
    #: local server should run next to a training loop; "normal" is how
    #: `mlflow server` starts when nobody says otherwise.
    priority: str = "normal"
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _healthy(self) -> bool:
        try:
            with _NO_PROXY.open(f"{self.uri}/health", timeout=0.5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def start(self, timeout: float = 120) -> float:
        """Start the server; return the seconds until ``/health`` answered."""
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", f"sqlite:///{(self.root / 'mlflow.db').resolve()}",
               "--default-artifact-root", "mlflow-artifacts:/", "--serve-artifacts",
               "--artifacts-destination", (self.root / "artifacts").resolve().as_uri(),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self._log = open(self.root / "mlflow-server.log", "ab")  # noqa: SIM115 - open while the server runs
        t0 = time.monotonic()
        # Own session: the CLI and its uvicorn child form one process group we can stop together.
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                      cwd=self.root, env={**os.environ, **_ENV}, start_new_session=True,
                                      preexec_fn=_idle if self.priority == "idle" else None)
        while not self._healthy():
            if self._proc.poll() is not None or time.monotonic() - t0 > timeout:
                self.stop()
                tail = (self.root / "mlflow-server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mlflow server did not come up on {self.uri}; log tail:\n{tail}")
            time.sleep(0.1)
        return time.monotonic() - t0

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            # The uvicorn child may outlive the CLI by a moment: make sure the group is gone.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _idle() -> None:
    """In the server's process before exec: lowest CPU priority, inherited by its workers."""
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:  # not Linux
        os.nice(19)


def mlflow_target(backends: list[str], given_uri: str | None, tmp: Path) -> tuple[str, MlflowServer | None]:
    """The MLflow URI a benchmark logs to: ``given_uri`` if set, else a throwaway
    server started here (the caller stops it); ``""`` when MLflow is not measured."""
    if "mlflow" not in backends:
        return given_uri or "", None
    if given_uri:
        return given_uri, None
    server = MlflowServer(tmp / "mlflow-server")
    print(f"mlflow server on {server.uri} (started in {server.start():.1f} s)")
    return server.uri, server
