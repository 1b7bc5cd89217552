"""The run directory and its ``run.json``: the one module that reads and writes them.

A run directory holds ``run.json`` (the run's identity, its backends' options
with secrets redacted, each backend's own run identity, the status) next to
``journal.db`` (every event, and each backend's delivered position) and the
local backends' files. ``run.json`` is replaced atomically, so a reader sees
the old file or the new one, never half of one.

No pydantic, no plugins: ``foundry-track runs`` reads run directories through
this module on a login node and answers at once.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import socket
import string
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Final

from foundry_track.errors import RunDirError
from foundry_track.events import RunInfo

__all__ = [
    "JOURNAL_FILE",
    "RUN_FILE",
    "find_runs",
    "is_run_dir",
    "load_run_file",
    "new_run_id",
    "process_alive",
    "process_state",
    "read_run_file",
    "save_identity",
    "run_info",
    "slug",
    "update_run_file",
    "write_run_file",
]

RUN_FILE: Final = "run.json"
JOURNAL_FILE: Final = "journal.db"  # the journal module's name for it; kept here so readers need no SQLite code
WRITER_LOCK: Final = "writer.lock"  # held by the live process that writes the run
_MAX_DEPTH: Final = 4  # how deep `find_runs` looks below a folder (per-rank runs sit one level down)
_ID_ALPHABET: Final = string.ascii_lowercase + string.digits
# One lock for the read-modify-write of run.json by the threads of one process
# (the workers save their identities while the run updates its status).
_lock = threading.Lock()


# --------------------------------------------------------------------------- #
# run.json
# --------------------------------------------------------------------------- #


def read_run_file(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``run.json`` as a dict; ``{}`` when there is none yet (a new run)."""
    try:
        data = json.loads((Path(run_dir) / RUN_FILE).read_text())
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def load_run_file(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``run.json`` of an existing run; :class:`RunDirError` says why it cannot be read."""
    path = Path(run_dir) / RUN_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path.parent} is not a foundry-track run directory (no {RUN_FILE})") from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or "id" not in data:
        raise RunDirError(f"{path} is not a foundry-track {RUN_FILE} (no run id in it)")
    return data


def write_run_file(run_dir: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    path = Path(run_dir) / RUN_FILE
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    text = json.dumps(data, indent=2, default=str).encode()
    try:
        tmp.write_bytes(text)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not _overwrite_in_place(path, text):
            raise
        return
    os.replace(tmp, path)  # atomic: a crash leaves the old or the new file, never half


def _overwrite_in_place(path: Path, text: bytes) -> bool:
    """On a full disk, rewrite ``path`` in the space it already holds (a file
    system block or page: run.json grows by a few bytes when a run ends), so
    the run's status is still recorded. Not atomic, hence only the fallback."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        if len(text) > os.fstat(fd).st_blocks * 512:
            return False
        if os.pwrite(fd, text, 0) != len(text):
            return False
        os.ftruncate(fd, len(text))
        os.fsync(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def update_run_file(run_dir: str | os.PathLike[str], **changes: Any) -> None:
    """Set top-level keys of ``run.json``, keeping the others."""
    with _lock:
        data = read_run_file(run_dir)
        data.update(changes)
        write_run_file(run_dir, data)


def save_identity(run_dir: str | os.PathLike[str], name: str, identity: Mapping[str, str]) -> None:
    """Record one backend's run identity (what ``tracker_start`` returned) for resume and sync."""
    with _lock:
        data = read_run_file(run_dir)
        data.setdefault("backend_ids", {})[name] = dict(identity)
        write_run_file(run_dir, data)


def run_info(data: Mapping[str, Any], run_dir: Path, *, resumed: bool) -> RunInfo:
    """The :class:`RunInfo` backends receive, rebuilt from ``run.json`` (``sync``
    and the delivery process start the backends of a run another process began)."""
    return RunInfo(
        id=data["id"], name=data["name"], project=data.get("project", "foundry-track"), entity=data.get("entity"),
        tags=tuple(data.get("tags", ())), notes=data.get("notes"), group=data.get("group"),
        config=data.get("config", {}), dir=run_dir, resumed=resumed, sweep=data.get("sweep"),
    )


def add_backend(run_dir: str | os.PathLike[str], name: str, options: Mapping[str, Any]) -> None:
    """Record a backend the run added after it started (the fallback)."""
    with _lock:
        data = read_run_file(run_dir)
        data.setdefault("backends", {})[name] = dict(options)
        write_run_file(run_dir, data)


# --------------------------------------------------------------------------- #
# Is the process that writes a run still there?
# --------------------------------------------------------------------------- #


def process_alive(data: Mapping[str, Any]) -> bool:
    """Whether the process named in ``run.json`` is alive (on this host; another
    host's process counts as not alive here)."""
    return process_state({**data, "status": "running"}) == "running"


def process_state(data: Mapping[str, Any]) -> str:
    """The run's status, with ``running`` checked against the process table:
    ``crashed`` when its process is gone, ``running?`` when it ran on another
    host (it cannot be checked from here, so it is not guessed dead)."""
    status = str(data.get("status") or "unknown")
    if status != "running":
        return status
    if data.get("host") != socket.gethostname():
        return "running?"
    pid = data.get("pid")
    if not pid:
        return "crashed"
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except PermissionError:  # it exists, owned by another user
        return "running"
    except (ProcessLookupError, ValueError, OverflowError):
        return "crashed"
    return "running"


def hold_run_dir(run_dir: Path) -> IO[str] | None:
    """Hold the run directory for this process while its run is live (an
    exclusive ``flock`` on ``writer.lock``; the OS releases it when the process
    dies). A second live run with the same directory, in this process or
    another, gets a :class:`RunDirError` naming the process that holds it.
    Close the returned file to release it. Without ``fcntl`` nothing is held."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(run_dir / WRITER_LOCK, "a+")  # noqa: SIM115 - held for the run's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        data = read_run_file(run_dir)
        who = f"process {data.get('pid')} on {data.get('host')}" if data.get("pid") else "another process"
        raise RunDirError(
            f"run {data.get('id', run_dir.name)} ({run_dir}) is being written by {who}; two live runs cannot "
            f"share a run directory. Give this one another run_id, or resume it after that process ends."
        ) from None
    return handle


def dir_held(run_dir: Path) -> bool:
    """Whether a live process holds ``run_dir`` (see :func:`hold_run_dir`)."""
    if not (run_dir / WRITER_LOCK).exists():
        return False
    try:
        handle = hold_run_dir(run_dir)
    except RunDirError:
        return True
    if handle is not None:
        handle.close()
    return False


# --------------------------------------------------------------------------- #
# Finding and naming run directories
# --------------------------------------------------------------------------- #


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    path = Path(path)
    return (path / RUN_FILE).is_file() and (path / JOURNAL_FILE).is_file()


def find_runs(root: str | os.PathLike[str]) -> list[Path]:
    """Every run directory below ``root`` (or ``root`` itself), sorted by path.

    A run directory is not descended into (it holds TensorBoard and W&B files,
    maybe thousands); per-rank runs (``<run>/rank<N>``) sit below a folder that
    is not itself a run, so they are found.
    """
    root = Path(root)
    if is_run_dir(root):
        return [root]
    found: list[Path] = []
    base_depth = len(root.parts)
    for current, dirs, _files in os.walk(root):
        here = Path(current)
        if is_run_dir(here):
            found.append(here)
            dirs.clear()
            continue
        if len(here.parts) - base_depth >= _MAX_DEPTH:
            dirs.clear()
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def new_run_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def slug(name: str) -> str:
    """A run name as a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
