"""What every source shares: a source run, and writing it as a run directory.

A source yields :class:`SourceRun` objects; :func:`import_run` lays one out
as a foundry-track run directory (``journal.db`` first, ``run.json`` last) and
delivers it with :func:`foundry_track.start.sync_run`, as ``foundry-track
sync`` would. The run id is derived from the source's identity, so a second
import of the same source run finds the first one.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Final, Iterator, Mapping

from foundry_track.errors import RunDirError
from foundry_track.events import Status
from foundry_track.journal import JOURNAL_FILE, Journal
from foundry_track.params import flatten, redact
from foundry_track.rundir import RUN_FILE, hold_run_dir, read_run_file, slug, write_run_file

__all__ = ["Event", "SourceRun", "ImportResult", "Progress", "check_exists", "import_run", "run_id_for"]

#: (kind, step, wall time, data): one journal record, as ``Run`` would append it.
Event = tuple[str, int, float, dict[str, Any]]
#: Called with the number of events written so far (and the total, when known).
Progress = Callable[[int, "int | None"], None]
_PROGRESS_EVERY: Final = 5000


@dataclass
class SourceRun:
    """One run of a source, read lazily: ``events(media_dir)`` yields its records
    in the source's (deterministic) order; images are written below ``media_dir``."""

    kind: str  # "tensorboard", "wandb", "mlflow"
    id: str  # the source's own identity of the run (a path, a W&B run id, an MLflow run id)
    name: str
    events: Callable[[Path], Iterator[Event]]
    project: str | None = None
    tags: tuple[str, ...] = ()
    status: Status = "success"
    config: dict[str, Any] = field(default_factory=dict)
    notes: str | None = None
    group: str | None = None
    started: float | None = None
    finished: float | None = None
    total: int | None = None  # events, for the progress bar
    where: str = ""  # a file, folder or URI, for run.json and messages


@dataclass(frozen=True)
class ImportResult:
    run_dir: Path
    events: int  # events journaled by this call (0: the run was imported before)
    delivered: dict[str, int]
    remaining: dict[str, int]


def run_id_for(kind: str, source_id: str) -> str:
    """The foundry-track run id of an imported run: the same source run, the same id."""
    return hashlib.sha256(f"{kind}\0{source_id}".encode()).hexdigest()[:10]


def _existing(root: Path, run_id: str) -> Path | None:
    """The directory of an earlier (maybe partial) import of this run, whatever its name was."""
    if not root.is_dir():
        return None
    for path in sorted(root.glob(f"*-{run_id}")):
        if path.is_dir() and ((path / JOURNAL_FILE).exists() or (path / RUN_FILE).exists()):
            return path
    return None


def import_run(source: SourceRun, config: Any, runs_dir: str | os.PathLike[str] | None = None, *,
               progress: Progress | None = None, deliver: bool = True,
               timeout: float | None = None) -> ImportResult:
    """Write ``source`` as a run directory under ``runs_dir`` (default: the config's
    ``dir``) and deliver it to the config's backends.

    ``run.json`` is written only once the journal holds every event, so an
    interrupted import is never listed by ``foundry-track runs``; importing
    again resumes it after the events already journaled. A run imported
    before is not written again: its (maybe new) backends get what they miss.
    """
    from foundry_track.config import load_config
    from foundry_track.start import resolve_backends, sync_run

    cfg = load_config(config)
    chosen = resolve_backends(cfg)  # a wrong config fails before anything is written
    run_id = run_id_for(source.kind, source.id)
    root = Path(runs_dir if runs_dir is not None else cfg.dir).resolve()
    run_dir = _existing(root, run_id) or root / f"{slug(source.name)}-{run_id}"
    previous = read_run_file(run_dir)
    if previous and previous.get("imported_from", {}).get("id") != source.id:
        raise RunDirError(f"{run_dir} holds run {previous.get('id')}, not an import of {source.kind} run "
                          f"{source.id}; move it away or pass another --dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = hold_run_dir(run_dir)  # two imports of one run at once: the second is refused
    try:
        written = 0 if previous else _journal_events(source, run_dir, progress)
        _write_run_json(source, cfg, run_dir, run_id, previous, list(chosen))
    finally:
        if lock is not None:
            lock.close()
    if not deliver or (not chosen and not previous.get("backends")):
        return ImportResult(run_dir, written, {}, {})
    report = sync_run(run_dir, config=cfg, timeout=timeout)
    return ImportResult(run_dir, written, report.delivered, report.remaining)


def _journal_events(source: SourceRun, run_dir: Path, progress: Progress | None) -> int:
    """Append the source's events after those an interrupted import journaled; return how many."""
    journal = Journal(run_dir / JOURNAL_FILE, flush_interval=0.05)
    done = journal.last_seq
    journal.start()
    written = 0
    try:
        params = _params_event(source)
        stream: Iterator[Event] = _chain(params, source.events(run_dir / "media"))
        append = journal.append_event
        for index, event in enumerate(stream):
            if index < done:
                continue  # journaled by an import that was interrupted
            append(event)
            written += 1
            if not written % _PROGRESS_EVERY:
                journal.wait_backlog(60.0)  # the writer's backlog bound, as for a live run
                if progress is not None:
                    progress(done + written, source.total)
    finally:
        journal.close()
    if journal.not_journaled:
        raise RunDirError(f"{run_dir / JOURNAL_FILE}: {journal.not_journaled} events could not be written "
                          f"({journal.last_write_error}); free space there and import again: it resumes")
    if progress is not None:
        progress(done + written, source.total)
    return written


def _chain(first: Event | None, rest: Iterator[Event]) -> Iterator[Event]:
    if first is not None:
        yield first
    yield from rest


def _params_event(source: SourceRun) -> Event | None:
    if not source.config:
        return None
    flat = {k: v if v is None or isinstance(v, (str, int, float, bool)) else str(v)
            for k, v in flatten(redact(source.config)).items()}
    return ("params", 0, source.started or time.time(), flat)


def _write_run_json(source: SourceRun, cfg: Any, run_dir: Path, run_id: str, previous: Mapping[str, Any],
                    backends: list[str]) -> None:
    """run.json as ``init`` writes it, plus where the run came from; backends of an
    earlier import are kept, so importing again with another config adds a tracker."""
    kept = dict(previous.get("backends", {}))
    kept.update({n: redact(dict(cfg.backends[n] or {})) for n in backends})
    write_run_file(run_dir, {
        **previous,
        "id": run_id, "name": source.name, "project": source.project or cfg.project, "entity": cfg.entity,
        "tags": list(source.tags), "notes": source.notes, "group": source.group, "sweep": None,
        "status": previous.get("status", source.status),
        "started": source.started, "finished": source.finished, "resumed_at": None,
        "pid": os.getpid(), "host": socket.gethostname(),
        "backends": kept, "fallback": cfg.fallback, "backend_ids": dict(previous.get("backend_ids", {})),
        "config": redact(source.config),
        "start_timeout": cfg.start_timeout, "flush_timeout": cfg.flush_timeout,
        "imported_from": {"kind": source.kind, "id": source.id, "where": source.where},
        "imported_at": previous.get("imported_at", time.time()),
    })


def check_exists(path: Path, what: str) -> Path:
    """``path`` as given, or a RunDirError saying what was expected there."""
    if not path.exists():
        raise RunDirError(f"{path} does not exist; give the {what}")
    return path

