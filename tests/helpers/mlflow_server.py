"""Start and stop a *real* ``mlflow server`` subprocess for tests.

Why a real server and not a mock: the code under test talks to MLflow over
HTTP (REST store + proxied artifact upload/download), and the failure modes
we care about (server killed mid-run, restarted on the same port and the same
SQLite DB, retries/time-outs of the client) only show up against the real
thing.

Design notes (measured against MLflow 3.17.2 on a 2-core machine):

* ``python -m mlflow server`` is a small supervisor that spawns
  ``python -m uvicorn ... mlflow.server.fastapi_app:app``.  With the default
  settings it *also* spawns a job runner plus ~7 ``huey_consumer`` processes
  (server-side job execution).  We switch that off with
  ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` so a test server is exactly two
  processes (CLI + one uvicorn worker, ``--workers 1``).
* The server is started in its own session (``start_new_session=True``), so
  its pid is also its process-group id and :meth:`MlflowServer.stop` can
  signal the whole tree (CLI + uvicorn) at once.
* Artifacts: ``--serve-artifacts`` with ``--default-artifact-root
  mlflow-artifacts:/`` makes new experiments use the HTTP artifact proxy, and
  ``--artifacts-destination <artifacts_dir>`` is where the proxied files land
  on disk.  (A plain local path as ``--default-artifact-root`` would make the
  *client* write to the file system directly, bypassing HTTP.)
* MLflow 3's security middleware (Host-header / CORS checks) allows
  ``localhost``/``127.0.0.1`` on any port by default, so no extra flags are
  needed for a loopback-only test server.
* Server stdout/stderr go to a log file next to the DB (not to the test
  output); its tail is included in the error if the server fails to come up.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["MlflowServer", "free_port", "start_mlflow_server"]

LOOPBACK = "127.0.0.1"

# Environment for the server process.  Job execution would add ~8 extra
# processes (huey consumers) that tests never use; telemetry would try to reach
# the internet, which is not available here.
_SERVER_ENV_OVERRIDES: dict[str, str] = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PYTHONUNBUFFERED": "1",
}

# Opener that ignores *_proxy environment variables: the health probe must talk
# to the loopback server directly.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Servers that are (possibly) running, so they can be killed if the test
# process exits without calling stop() (e.g. a crashed fixture).
_LIVE_SERVERS: weakref.WeakSet[MlflowServer] = weakref.WeakSet()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    Why: each test server needs its own port so parallel test sessions do not
    collide, and the port must stay fixed across :meth:`MlflowServer.restart`.
    The OS picks the port (bind to 0); there is an unavoidable small race
    between closing this probe socket and the server binding it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _port_is_bindable(host: str, port: int) -> bool:
    """Whether a listening socket could be bound to ``host:port`` now.

    Uses ``SO_REUSEADDR`` exactly like uvicorn/asyncio do, so sockets left in
    TIME_WAIT by a killed server do not count as "in use" (they would not
    prevent uvicorn from binding either).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is still in process group ``pgid``.

    Why not just ``os.killpg(pgid, 0)``: that also succeeds for zombies, and an
    orphaned grandchild may stay a zombie for a while in containers whose
    PID 1 does not reap promptly.  On Linux we therefore scan ``/proc``.
    """
    if sys.platform.startswith("linux"):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as fh:
                    stat = fh.read().decode(errors="replace")
            except OSError:
                continue
            # Format: "pid (comm) state ppid pgrp ..."; comm may contain spaces/")".
            fields = stat.rpartition(")")[2].split()
            if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _killpg(pgid: int, sig: int) -> None:
    """Send ``sig`` to a process group, ignoring "already gone"."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass(eq=False)  # identity semantics: one object == one server process
class MlflowServer:
    """A real ``mlflow server`` subprocess bound to ``host:port``.

    Why a dataclass holding paths + port: a test that kills the server and
    brings it back needs the *same* port (clients keep their tracking URI) and
    the *same* SQLite DB / artifact directory (data must survive), so those are
    fixed at construction and reused by every :meth:`start`.

    Usage::

        with MlflowServer(port=free_port(), db_path=tmp / "mlflow.db",
                          artifacts_dir=tmp / "artifacts") as server:
            client = mlflow.MlflowClient(tracking_uri=server.uri)
    """

    port: int
    db_path: Path
    artifacts_dir: Path
    host: str = LOOPBACK
    #: Where server stdout/stderr go (appended across restarts).
    #: Defaults to ``db_path.parent / "mlflow-server.log"``.
    log_path: Path | None = None
    #: Extra environment variables for the server process.
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Seconds the last successful :meth:`start` took (spawn -> /health 200).
    last_start_seconds: float | None = field(default=None, init=False)

    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log_fh: IO[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.db_path = Path(self.db_path).resolve()
        self.artifacts_dir = Path(self.artifacts_dir).resolve()
        if self.log_path is None:
            self.log_path = self.db_path.parent / "mlflow-server.log"
        self.log_path = Path(self.log_path).resolve()

    # ------------------------------------------------------------------ info
    @property
    def uri(self) -> str:
        """Tracking URI for ``MlflowClient(tracking_uri=...)``."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Pid (== process-group id) of the ``mlflow server`` CLI process, if started."""
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        """The exact command line used to launch the server.

        Why these options:
        * ``sqlite:///<abs path>`` (-> four slashes) keeps all tracking data in
          one file that survives restarts;
        * ``--serve-artifacts`` + ``--default-artifact-root mlflow-artifacts:/``
          + ``--artifacts-destination`` make clients upload/download artifacts
          over HTTP, stored under :attr:`artifacts_dir`;
        * ``--workers 1``: one uvicorn process, light enough for 2 cores.
        """
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.db_path}",
            "--default-artifact-root",
            "mlflow-artifacts:/",
            "--serve-artifacts",
            "--artifacts-destination",
            self.artifacts_dir.as_uri(),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]

    def is_up(self, timeout: float = 1.0) -> bool:
        """Whether ``GET /health`` answers 200 right now.

        Why /health: it is served without touching the DB, so it is the cheapest
        readiness probe, and it only answers once uvicorn has bound the port.
        """
        try:
            with _NO_PROXY_OPENER.open(f"{self.uri}/health", timeout=timeout) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def is_running(self) -> bool:
        """Whether the server process (started by us) is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        """Last ``lines`` lines of the server log (for error messages)."""
        assert self.log_path is not None
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no server log>"
        return "\n".join(text.splitlines()[-lines:])

    # -------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 60) -> None:
        """Spawn the server and block until ``GET /health`` answers 200.

        Raises ``RuntimeError`` (with the tail of the server log) if the process
        exits early or the port is taken by something else, and
        ``TimeoutError`` if it is not healthy within ``timeout`` seconds (the
        half-started server is killed first).  No-op if already running.
        """
        if self.is_running():
            return
        self._proc = None

        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        assert self.log_path is not None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

        t0 = time.monotonic()
        deadline = t0 + timeout
        # After a stop()/kill the port is normally free at once (SO_REUSEADDR);
        # still wait a little rather than fail on a slow release.
        while not _port_is_bindable(self.host, self.port):
            if time.monotonic() > min(deadline, t0 + 10):
                what = "an HTTP server (answers /health)" if self.is_up() else "another socket"
                raise RuntimeError(
                    f"Cannot start mlflow server: {self.host}:{self.port} is in use by {what}."
                )
            time.sleep(0.1)

        env = {**os.environ, **_SERVER_ENV_OVERRIDES, **self.extra_env}
        cmd = self.command()
        log_fh = open(self.log_path, "ab")  # noqa: SIM115 - kept open while the server runs
        log_fh.write(
            f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode()
        )
        log_fh.flush()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                cwd=self.db_path.parent,  # stray ./mlruns, ./mlartifacts land in the tmp dir
                env=env,
                start_new_session=True,  # own session + process group => killpg kills the tree
            )
        except BaseException:
            log_fh.close()
            raise
        self._proc, self._log_fh = proc, log_fh
        _LIVE_SERVERS.add(self)

        while True:
            if proc.poll() is not None:
                self._cleanup_after_exit()
                raise RuntimeError(
                    f"mlflow server exited with code {proc.returncode} before becoming healthy "
                    f"on {self.uri}. Log tail ({self.log_path}):\n{self.log_tail()}"
                )
            if self.is_up(timeout=0.5):
                break
            if time.monotonic() > deadline:
                self.stop(grace=2)
                raise TimeoutError(
                    f"mlflow server did not answer GET {self.uri}/health with 200 within "
                    f"{timeout:.0f}s. Log tail ({self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(0.1)
        self.last_start_seconds = time.monotonic() - t0

    def stop(self, grace: float = 5.0) -> None:
        """Stop the whole server process tree; idempotent.

        SIGTERM to the process group (graceful uvicorn shutdown), then SIGKILL
        to the group if anything is still alive after ``grace`` seconds.
        Returns once no process of the group is left, so the port can be
        reused immediately by :meth:`start`.
        """
        self._terminate(signal.SIGTERM, grace)

    def kill(self) -> None:
        """SIGKILL the whole process tree at once (simulates a crash); idempotent."""
        self._terminate(signal.SIGKILL, 0.0)

    def restart(self, timeout: float = 60) -> None:
        """Stop, then start again on the same port with the same DB/artifacts."""
        self.stop()
        self.start(timeout=timeout)

    def _terminate(self, first_signal: int, grace: float) -> None:
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session=True => pgid == pid
        _killpg(pgid, first_signal)
        if not self._wait_group_gone(proc, pgid, grace) and first_signal != signal.SIGKILL:
            _killpg(pgid, signal.SIGKILL)
        if not self._wait_group_gone(proc, pgid, 10.0):
            raise RuntimeError(f"mlflow server process group {pgid} survived SIGKILL")
        self._cleanup_after_exit()

    @staticmethod
    def _wait_group_gone(proc: subprocess.Popen[bytes], pgid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            proc.poll()  # reap our direct child so it does not linger as a zombie
            if proc.returncode is not None and not _group_alive(pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _cleanup_after_exit(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self._log_fh is not None:
            self._log_fh.close()
        self._proc, self._log_fh = None, None
        _LIVE_SERVERS.discard(self)

    # -------------------------------------------------------- context manager
    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_mlflow_server(
    tmp_dir: Path, *, port: int | None = None, timeout: float = 60
) -> MlflowServer:
    """Create and start a server whose DB, artifacts and log all live in ``tmp_dir``.

    Why: the common fixture case (``tmp_path_factory.mktemp(...)``) in one call;
    the returned object can be stopped/restarted/killed by the test.
    """
    tmp_dir = Path(tmp_dir)
    server = MlflowServer(
        port=port if port is not None else free_port(),
        db_path=tmp_dir / "mlflow.db",
        artifacts_dir=tmp_dir / "artifacts",
        log_path=tmp_dir / "mlflow-server.log",
    )
    server.start(timeout=timeout)
    return server


@atexit.register
def _stop_leftover_servers() -> None:
    """Do not leak server processes if a test session ends without stop()."""
    for server in list(_LIVE_SERVERS):
        try:
            server.kill()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
