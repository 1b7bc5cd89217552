"""A trial's process: its environment, its process group, signals and exit.

Shared by the one-machine controller (:mod:`~foundry_track.sweep.runner`)
and the agent (:mod:`~foundry_track.sweep.agent`): both start the program the
same way and group its run the same way, wherever it runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from foundry_track.sweep.spec import SweepSpec

__all__ = ["STORAGE_ENV", "SWEEP_ENV", "exit_text", "last_line", "new_process_group", "send", "show", "trial_env"]

SWEEP_ENV: Final = "FOUNDRY_TRACK_SWEEP"  # tracking.sweep of the trials (MLflow nests the group under a parent)
STORAGE_ENV: Final = "FOUNDRY_TRACK_SWEEP_STORAGE"  # the shared storage's URL, for `sweep create`/`agent`


def trial_env(base: Mapping[str, str], *, runs_dir: Path, sweep_id: str, run_name: str,
              spec: SweepSpec) -> dict[str, str]:
    """The launcher variables that place a trial's run and group it under the sweep."""
    env = {k: v for k, v in base.items() if k != STORAGE_ENV}  # the storage's password stays with the agent
    tags = [t.strip() for t in env.get("FOUNDRY_TRACK_TAGS", "").split(",") if t.strip()]
    env.update({
        "FOUNDRY_TRACK_DIR": str(runs_dir), "FOUNDRY_TRACK_GROUP": sweep_id,
        "FOUNDRY_TRACK_RUN_NAME": run_name, "FOUNDRY_TRACK_TAGS": ",".join([*tags, "sweep"]),
        SWEEP_ENV: sweep_id, "PYTHONUNBUFFERED": "1",
    })
    if spec.project:
        env["FOUNDRY_TRACK_PROJECT"] = spec.project
    if spec.entity:
        env["WANDB_ENTITY"] = spec.entity
    return env


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send the trial SIGTERM when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return preexec


def new_process_group(*, die_with_parent: bool = False) -> dict[str, Any]:
    """Trials get their own process group: a terminal's Ctrl-C reaches only the
    controller, which stops them in order (and their own children with them).
    ``die_with_parent``: an agent killed with SIGKILL takes its trial with it, so
    the trial the storage marks failed is not still running somewhere."""
    if os.name == "posix":
        options: dict[str, Any] = {"start_new_session": True}
        preexec = _die_with_parent() if die_with_parent else None
        if preexec is not None:
            options["preexec_fn"] = preexec
        return options
    return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}


def send(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.name == "posix":
            os.killpg(proc.pid, sig)
        elif sig == signal.SIGINT:
            proc.send_signal(getattr(signal, "CTRL_C_EVENT", sig))
        else:
            proc.kill()


def exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def last_line(log_file: str | None) -> str:
    """The log's last non-empty line (usually the exception), for the console."""
    if not log_file:
        return ""
    try:
        with open(log_file, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" ({lines[-1][:200]})" if lines else ""


def show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
