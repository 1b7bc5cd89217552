"""Making runs: ``init`` starts one (or resumes it), ``sync`` replays what a
backend never received.

``init`` validates the ``tracking:`` config and each backend's options, lays
out the run directory (:mod:`foundry_track.rundir`), opens the journal and
starts delivery: worker threads in this process (``delivery: thread``,
:mod:`foundry_track.delivery.threads`) or a delivery process
(``delivery: process``, :mod:`foundry_track.delivery.process`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Mapping

from pydantic import BaseModel

from foundry_track import distributed
from foundry_track.config import TrackingConfig, load_config, with_overrides
from foundry_track.delivery.process import LOCK_FILE, ProcessDelivery, wait_for_delivery
from foundry_track.delivery.threads import hooks_for, start_dispatcher, validate_options
from foundry_track.dispatcher import Dispatcher
from foundry_track.errors import ConfigError
from foundry_track.events import STATUSES, RunInfo, Status
from foundry_track.journal import JOURNAL_FILE, Journal
from foundry_track.params import redact
from foundry_track.plugins import BackendInfo, discover
from foundry_track.run import Run, _plain
from foundry_track.rundir import (
    RUN_FILE,
    dir_held,
    hold_run_dir,
    new_run_id,
    process_alive,
    read_run_file,
    run_info,
    save_identity,
    slug,
    update_run_file,
    write_run_file,
)

if TYPE_CHECKING:
    from foundry_track.delivery import Delivery

__all__ = ["init", "sync", "sync_run", "SyncReport", "resolve_backends"]

_log = logging.getLogger("foundry_track")


def resolve_backends(cfg: TrackingConfig) -> dict[str, tuple[BackendInfo, BaseModel]]:
    """Validate the selection and each backend's options; raise ConfigError on any problem."""
    found = discover()
    chosen: dict[str, tuple[BackendInfo, BaseModel]] = {}
    problems: list[str] = []
    for name, raw in cfg.backends.items():
        info = found.get(name)
        if info is None:
            known = ", ".join(found) or "none"
            problems.append(
                f"unknown backend {name!r} under tracking.backends; discovered backends: {known} "
                f"(a third-party backend must be pip-installed so it appears in the 'foundry_track' entry-point group)"
            )
            continue
        if not info.available:
            problems.append(f"backend {name!r} cannot be used: {info.problem}")
            continue
        chosen[name] = (info, validate_options(info, raw or {}))
    if cfg.fallback is not None and cfg.fallback not in found:
        problems.append(
            f"tracking.fallback: unknown backend {cfg.fallback!r}; discovered backends: {', '.join(found) or 'none'} "
            f"(or set it to null)"
        )
    if problems:
        raise ConfigError("\n".join(problems))
    return chosen


def identity(cfg: TrackingConfig, resume: str | os.PathLike[str] | None) -> tuple[str, str, str, dict[str, Any]]:
    """(run id, name, run directory, previous run.json) of a new or resumed run."""
    if resume is not None:
        previous = read_run_file(Path(resume))
        if not previous:
            raise ConfigError(f"resume={str(resume)!r}: no {RUN_FILE} there; pass the directory of an earlier run")
        return previous["id"], previous["name"], str(Path(resume).resolve()), previous
    run_id = cfg.run_id or new_run_id()
    name = cfg.run_name or run_id
    run_dir = (Path(cfg.dir) / (f"{slug(name)}-{run_id}" if cfg.run_name else run_id)).resolve()
    return run_id, name, str(run_dir), read_run_file(run_dir)  # the same run_id again continues it


def init(
    config: str | os.PathLike[str] | Mapping[str, Any] | TrackingConfig | None = None,
    *,
    resume: str | os.PathLike[str] | None = None,
    params: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Run:
    """Start a run from a YAML path, a dict, a :class:`TrackingConfig` or nothing.

    Keyword ``overrides`` replace fields of the config (``project=``,
    ``run_name=``, ``backends=``...). ``resume=RUN_DIR`` continues a run: the
    same id, directory and backend runs, steps continuing after the last one.
    ``params`` is the experiment's configuration: redacted, handed to every
    backend at start (W&B's run config) and logged as params.
    """
    cfg = _config(config, overrides)
    if cfg.mode == "disabled":
        return Run(cfg, info=None, journal=None, dispatcher=None)
    # Validated on every rank before any collective, so a bad config raises
    # everywhere instead of leaving the other ranks waiting in a broadcast.
    chosen = resolve_backends(cfg)
    rank, world = distributed.rank_world()
    run_id, name, run_dir, previous = _shared_identity(cfg, resume, rank)
    group = cfg.group
    if world > 1 and cfg.per_rank:
        group = group or name
        run_id, name, run_dir = f"{run_id}r{rank}", f"{name}-rank{rank}", run_dir / f"rank{rank}"
        previous = read_run_file(run_dir)
    elif rank != 0:
        # Rank 0 owns the backends, the journal and the run directory; this rank
        # knows the run's id and directory, and its log() is a no-op unless reducing.
        info = RunInfo(id=run_id, name=name, project=cfg.project, entity=cfg.entity, tags=tuple(cfg.tags),
                       notes=cfg.notes, group=group, config={}, dir=run_dir, resumed=bool(previous))
        return Run(cfg, info=info, journal=None, dispatcher=None)
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    dir_lock = hold_run_dir(run_dir)  # before run.json is written: a second live writer must not touch it
    try:
        run = _start_run(cfg, run_dir, run_id, name, group, previous, chosen, params)
    except BaseException:
        if dir_lock is not None:
            dir_lock.close()
        raise
    run.dir_lock = dir_lock
    return run


def _start_run(cfg: TrackingConfig, run_dir: Path, run_id: str, name: str, group: str | None,
               previous: dict[str, Any], chosen: Mapping[str, tuple[BackendInfo, BaseModel]],
               params: Mapping[str, Any] | None) -> Run:
    info = RunInfo(
        id=run_id, name=name, project=cfg.project, entity=cfg.entity, tags=tuple(cfg.tags), notes=cfg.notes,
        group=group, config=redact(_plain(params or {})), dir=run_dir, resumed=bool(previous), sweep=cfg.sweep,
    )
    _write_run_json(cfg, info, previous, list(chosen))
    journal = Journal(run_dir / JOURNAL_FILE, flush_interval=cfg.journal_flush_interval)
    last_step = journal.max_step()
    run = Run(cfg, info=info, journal=journal, dispatcher=None, last_step=last_step if last_step is not None else -1)
    journal.start()
    if params:
        run.log_params(params)
    try:
        delivery = _start_delivery(cfg, info, journal, chosen, previous)
    except BaseException:
        run._abort_start()
        raise
    run._attach(delivery)
    return run


def _config(config: str | os.PathLike[str] | Mapping[str, Any] | TrackingConfig | None,
            overrides: Mapping[str, Any]) -> TrackingConfig:
    return with_overrides(load_config(config), overrides, "init()")


def _shared_identity(cfg: TrackingConfig, resume: str | os.PathLike[str] | None,
                     rank: int) -> tuple[str, str, Path, dict[str, Any]]:
    """The run's identity, decided by rank 0 and broadcast under torch.distributed."""
    shared = distributed.collective() and not (cfg.per_rank and cfg.run_id)
    ident: Any = None
    if rank == 0 or not shared:
        try:
            ident = identity(cfg, resume)
        except ConfigError as exc:
            ident = exc  # sent to every rank, so all of them raise it
    if shared:
        ident = distributed.broadcast(ident)
    if isinstance(ident, ConfigError):
        raise ident
    run_id, name, run_dir, previous = ident
    return run_id, name, Path(run_dir), previous


def _write_run_json(cfg: TrackingConfig, info: RunInfo, previous: Mapping[str, Any], backends: list[str]) -> None:
    write_run_file(info.dir, {
        **previous,
        "id": info.id, "name": info.name, "project": cfg.project, "entity": cfg.entity, "tags": list(cfg.tags),
        "notes": cfg.notes, "group": info.group, "sweep": cfg.sweep, "status": "running",
        "started": previous.get("started", time.time()), "finished": None,
        "resumed_at": time.time() if previous else None,
        "pid": os.getpid(), "host": socket.gethostname(),
        "backends": {n: redact(dict(cfg.backends[n] or {})) for n in backends},
        "fallback": cfg.fallback, "backend_ids": dict(previous.get("backend_ids", {})), "config": info.config,
        "start_timeout": cfg.start_timeout, "flush_timeout": cfg.flush_timeout,
    })


def _start_delivery(cfg: TrackingConfig, info: RunInfo, journal: Journal,
                    chosen: Mapping[str, tuple[BackendInfo, BaseModel]], previous: Mapping[str, Any]) -> Delivery:
    if cfg.delivery == "process":
        def deliver_here(names: list[str]) -> Dispatcher:
            # Backends the delivery process cannot take; no fallback of their
            # own, since the delivery process runs the run's fallback.
            return start_dispatcher(journal, info, {n: chosen[n][1] for n in names},
                                    dict(previous.get("backend_ids", {})), fallback=None,
                                    start_timeout=cfg.start_timeout, strict=cfg.strict, interval=cfg.delivery_interval)

        return ProcessDelivery.start(
            journal, info.dir, {n: dict(cfg.backends[n] or {}) for n in chosen}, fallback=cfg.fallback,
            start_timeout=cfg.start_timeout, strict=cfg.strict, interval=cfg.delivery_interval,
            priority=_delivery_priority(cfg, journal), deliver_here=deliver_here)
    if previous:
        wait_for_orphaned_delivery(info.dir, previous)
    return start_dispatcher(journal, info, {n: options for n, (_, options) in chosen.items()},
                            dict(previous.get("backend_ids", {})), fallback=cfg.fallback,
                            start_timeout=cfg.start_timeout, strict=cfg.strict, interval=cfg.delivery_interval)


def _delivery_priority(cfg: TrackingConfig, journal: Journal) -> str:
    """``idle`` only where the delivery process cannot hold up the training
    process's commits: with SQLite's rollback journal (network file systems) a
    reader's lock blocks the writer, and a reader that gets no CPU for a while
    would make the training process's journal wait on it."""
    if cfg.delivery_priority == "idle" and journal.journal_mode != "wal":
        _log.debug("foundry-track: journal_mode=%s: the delivery process takes a fair share (batch), not idle",
                    journal.journal_mode)
        return "batch"
    return cfg.delivery_priority


def wait_for_orphaned_delivery(run_dir: Path, data: Mapping[str, Any]) -> None:
    """A delivery process left by a killed training process delivers and closes
    the run within its flush_timeout: let it, rather than deliver the same events
    twice from here."""
    if not (run_dir / LOCK_FILE).exists():
        return
    try:
        wait_for_delivery(run_dir, float(data.get("flush_timeout", 30.0)) + 10.0)
    except TimeoutError:
        raise ConfigError(f"a delivery process still holds {run_dir / LOCK_FILE}; wait for it to end "
                          f"(it stops within the run's flush_timeout), then try again") from None


SYNC_TIMEOUT: Final = 600.0  # seconds `sync` delivers before it reports what is left


@dataclass(frozen=True)
class SyncReport:
    """What ``sync`` did, per backend: events delivered now and events still missing."""

    delivered: dict[str, int]
    remaining: dict[str, int]


def sync(run_dir: str | os.PathLike[str], backend: str | None = None, *, timeout: float | None = None,
         config: str | os.PathLike[str] | Mapping[str, Any] | TrackingConfig | None = None) -> dict[str, int]:
    """Deliver every event a backend of ``run_dir`` does not hold; return what is still missing.

    Idempotent: a backend's position moves only once the tracker holds the
    events durably, so a second call finds nothing to deliver. A run left
    ``running`` by a dead process is closed as ``killed``. See :func:`sync_run`
    for ``timeout`` and ``config``.
    """
    return sync_run(run_dir, backend, timeout=timeout, config=config).remaining


def sync_run(run_dir: str | os.PathLike[str], backend: str | None = None, *, timeout: float | None = None,
             config: str | os.PathLike[str] | Mapping[str, Any] | TrackingConfig | None = None) -> SyncReport:
    """:func:`sync`, reporting per backend what was delivered and what is left.

    ``timeout`` (default 600 s) bounds the whole call: a backend that hangs or
    is still behind then is left with its events counted as remaining.
    ``config`` is the run's tracking config (a YAML path, a dict, a
    TrackingConfig): its backend options replace the copies in ``run.json``,
    where secrets are redacted, so credentials come from the config (or the
    environment, for a backend that reads it) and never from the redacted copy.
    """
    run_dir = Path(run_dir).resolve()
    data = read_run_file(run_dir)
    if not data or not (run_dir / JOURNAL_FILE).exists():
        raise ConfigError(f"{run_dir} is not a foundry-track run directory (no {RUN_FILE} or {JOURNAL_FILE})")
    if dir_held(run_dir) or (data.get("status") == "running" and process_alive(data)
                             and data.get("pid") != os.getpid()):
        raise ConfigError(f"run {data['id']} is still being written by process {data.get('pid')}; "
                          f"sync it after it ends")
    status: Status = data.get("status") if data.get("status") in STATUSES else "killed"  # type: ignore[assignment]
    wait_for_orphaned_delivery(run_dir, data)
    journal = Journal(run_dir / JOURNAL_FILE)
    names = _sync_names(data, journal, backend)
    given = load_config(config).backends if config is not None else {}
    dispatcher = Dispatcher(journal, run_info(data, run_dir, resumed=True),
                            start_timeout=data.get("start_timeout", 60.0), strict=False,
                            on_identity=lambda n, ident: save_identity(run_dir, n, ident))
    dispatcher.status = status
    dispatcher.closing.set()  # nothing new will arrive: deliver up to last_seq and finish
    found, before = discover(), {}
    for name in names:
        if (journal.position(name) >= journal.last_seq and data.get("status") in STATUSES
                and not journal.set_aside_seqs(name)):  # events set aside are offered again
            continue
        info_b = found.get(name)
        if info_b is None or not info_b.available:
            raise ConfigError(f"cannot sync backend {name!r}: {info_b.problem if info_b else 'not installed'}")
        options = validate_options(info_b, given.get(name) or data.get("backends", {}).get(name) or {})
        before[name] = journal.last_seq - journal.position(name)
        dispatcher.add(name, hooks_for(info_b), options, data.get("backend_ids", {}).get(name, {}))
    left = dispatcher.finish(status, SYNC_TIMEOUT if timeout is None else timeout)
    journal.close()
    update_run_file(run_dir, status=status, undelivered=left, synced=time.time())
    return SyncReport(delivered={n: max(0, c - left.get(n, 0)) for n, c in before.items()}, remaining=left)


def _sync_names(data: Mapping[str, Any], journal: Journal, backend: str | None) -> list[str]:
    names = list(dict.fromkeys([*data.get("backends", {}), *journal.positions()]))
    if backend is None:
        return names
    if backend not in names:
        raise ConfigError(f"run {data['id']} has no backend {backend!r}; it has: {', '.join(names) or 'none'}")
    return [backend]
