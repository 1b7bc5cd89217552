"""A sweep in a shared Optuna storage: ``sweep create``, what agents read, ``sweep status``.

The storage is the only coordinator, as W&B's server is for ``wandb agent``:
the study holds the sweep file and its settings (study user attributes), the
trials still to run (``WAITING`` trials: every grid point, or ``count``
placeholders), and every result. Agents on any machine take a waiting trial
the way Optuna's ``study.ask`` does (the storage lets one worker move it to
``RUNNING``), so no trial runs twice.

``--storage`` is an SQLAlchemy URL (``postgresql://``, ``mysql://``,
``sqlite:///`` for one machine) or a plain path: Optuna's journal file, for a
file system every machine shares. Its password is never printed (see
:func:`display_url`).

A killed agent leaves its trial ``RUNNING``: Optuna's heartbeat (RDB storages)
fails it once its heartbeat is older than the grace period, and
``RetryHeartbeatStaleTrialCallback`` puts it back as a waiting trial with the
same grid point. The journal storage has no heartbeat of Optuna's; the agents
record theirs as a trial user attribute and fail stale trials the same way,
one agent at a time (a lock file next to the journal).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from foundry_track.params import mask_credentials
from foundry_track.sweep.errors import SweepError
from foundry_track.sweep.sampling import grid_points
from foundry_track.sweep.spec import SweepSpec, load_spec, parse_spec
from foundry_track.sweep.storage import new_sweep_id
from foundry_track.sweep.study import import_optuna, make_pruner, require_optuna

__all__ = [
    "ATTR",
    "HEARTBEAT",
    "SharedSweep",
    "create_sweep",
    "display_url",
    "open_sweep",
    "sweep_status",
]

#: Prefix of the study's and trials' user attributes foundry-track writes.
ATTR: Final = "foundry_track."
HEARTBEAT: Final = 60  # seconds between an agent's heartbeats; stale after twice that (Optuna's default)
_SCHEME: Final = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_RETRIES: Final = 3  # how often a point whose agent died is put back


def display_url(url: str) -> str:
    """The storage as it may be printed or logged: a URL's password masked."""
    return mask_credentials(url)


def _with_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed: SQLAlchemy 2.1 defaults to psycopg (3),
    2.0 to psycopg2, and either is a fine PostgreSQL driver for Optuna."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() not in ("postgresql", "postgres"):
        return url
    for module, driver in (("psycopg2", "psycopg2"), ("psycopg", "psycopg")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}{sep}{rest}"
    return url


@dataclass
class _Storage:
    url: str
    storage: Any
    journal: Path | None  # the journal file, for the journal storage


def _retry_callback(optuna: Any) -> Any:
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) \
        or optuna.storages.RetryFailedTrialCallback  # older Optuna
    with _quiet(optuna):
        return cls(max_retry=_RETRIES)


@contextlib.contextmanager
def _quiet(optuna: Any) -> Iterator[None]:
    """The heartbeat and its retry callback are "experimental" in Optuna: no warning per agent for that."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _open_storage(optuna: Any, url: str, heartbeat: int | None) -> _Storage:
    """Optuna's storage for ``url``: RDB for a URL, the journal file for a path."""
    if not url:
        raise SweepError("--storage: give a database URL (postgresql://..., mysql://..., sqlite:///...) or the "
                         "path of a journal file on a shared file system")
    if not _SCHEME.match(url):
        path = Path(url).expanduser().resolve()
        if not path.parent.is_dir():
            raise SweepError(f"--storage {url}: folder {path.parent} does not exist")
        journal = optuna.storages.journal
        backend_cls = getattr(journal, "JournalFileBackend", None) or optuna.storages.JournalFileStorage
        return _Storage(url, optuna.storages.JournalStorage(backend_cls(str(path))), path)
    options: dict[str, Any] = {}
    if heartbeat is not None:
        options = {"heartbeat_interval": heartbeat, "grace_period": 2 * heartbeat}
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
            options["heartbeat_stale_trial_callback"] = _retry_callback(optuna)
        else:
            options["failed_trial_callback"] = _retry_callback(optuna)
    try:
        with _quiet(optuna):
            storage = optuna.storages.RDBStorage(_with_driver(url), **options)
    except ImportError as exc:
        raise SweepError(f"--storage {display_url(url)}: the database driver is missing ({exc}); for PostgreSQL: "
                         f"pip install 'foundry-track[sweep]' (psycopg2-binary)") from None
    except Exception as exc:  # SQLAlchemy's errors: a bad URL, a server that does not answer
        raise SweepError(f"--storage {display_url(url)}: {display_url(str(exc)).splitlines()[0]}") from None
    return _Storage(url, storage, None)


@dataclass
class SharedSweep:
    """A sweep's study, loaded from the shared storage, with what ``sweep create`` stored."""

    id: str
    url: str
    optuna: Any
    study: Any
    spec: SweepSpec
    attrs: dict[str, Any]
    heartbeat: int
    _storage: _Storage = field(repr=False)

    @property
    def storage(self) -> Any:
        return self._storage.storage

    @property
    def capped(self) -> bool:
        """The storage holds every trial to run (grid points, or ``count`` placeholders)."""
        return self.spec.method == "grid" or self.attrs.get("count") is not None

    def trials(self, *states: str) -> list[Any]:
        """The study's trials (Optuna's ``FrozenTrial``), of the given ``TrialState`` names."""
        wanted = tuple(getattr(self.optuna.trial.TrialState, s) for s in states) or None
        return list(self.study.get_trials(deepcopy=False, states=wanted))

    def pop_waiting(self) -> Any | None:
        """A waiting trial, now ``RUNNING`` and ours, as Optuna's ``study.ask`` pops one; None when none is left.

        Unlike ``ask`` this never makes a new trial: the storage holds every trial a capped sweep runs."""
        storage, state = self.storage, self.optuna.trial.TrialState
        study_id = storage.get_study_id_from_name(self.id)
        for frozen in self.trials("WAITING"):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
            try:
                if not storage.set_trial_state_values(trial_id, state=state.RUNNING):
                    continue  # another agent took it first
            except self.optuna.exceptions.UpdateFinishedTrialError:
                continue
            return self.optuna.Trial(self.study, trial_id)
        return None

    def beat(self, trial: Any) -> None:
        """The running trial's heartbeat: Optuna's for RDB storages, a user attribute for the journal."""
        if hasattr(self.storage, "record_heartbeat"):
            self.storage.record_heartbeat(trial._trial_id)
        else:
            trial.set_user_attr(ATTR + "heartbeat", time.time())

    def fail_stale(self) -> None:
        """Fail the trials whose agent stopped beating; the retry callback puts their point back."""
        if hasattr(self.storage, "record_heartbeat"):
            with _quiet(self.optuna):
                self.optuna.storages.fail_stale_trials(self.study)
            return
        with self._journal_lock():
            now, grace = time.time(), 2 * self.heartbeat
            for frozen in self.trials("RUNNING"):
                started = frozen.datetime_start.timestamp() if frozen.datetime_start else now
                if now - float(frozen.user_attrs.get(ATTR + "heartbeat", started)) <= grace:
                    continue
                with contextlib.suppress(self.optuna.exceptions.UpdateFinishedTrialError):
                    if self.storage.set_trial_state_values(frozen._trial_id, state=self.optuna.trial.TrialState.FAIL):
                        self.retry(self.storage.get_trial(frozen._trial_id))

    def retry(self, failed: Any) -> None:
        """Put a failed trial's point back as a waiting trial (Optuna's retry callback, as the heartbeat does)."""
        _retry_callback(self.optuna)(self.study, failed)

    @contextlib.contextmanager
    def _journal_lock(self) -> Iterator[None]:
        journal = self._storage.journal
        try:
            import fcntl
        except ImportError:
            yield
            return
        assert journal is not None
        with open(f"{journal}.foundry-track.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def create_sweep(sweep_file: str | os.PathLike[str], storage: str, *, name: str | None = None,
                 count: int | None = None, config: str | None = None, seed: int | None = None,
                 heartbeat: int = HEARTBEAT) -> str:
    """Validate the sweep file and create its study in ``storage``: the sweep id (the study's name)."""
    spec, raw = load_spec(sweep_file)
    if count is not None and count < 1:
        raise SweepError(f"--count {count}: give a number of trials >= 1")
    if heartbeat < 1:
        raise SweepError(f"--heartbeat {heartbeat}: give a number of seconds >= 1")
    if config is not None:
        if not Path(config).is_file():
            raise SweepError(f"--config {config}: no such file")
        config = str(Path(config).resolve())
    if (config is not None) != ("config" in spec.macros) and spec.command is not None:
        raise SweepError("the sweep's `command:` and --config go together: ${config} in the command needs "
                         "--config, and --config needs ${config}")
    require_optuna(spec)
    optuna = import_optuna(spec)
    points = grid_points(spec.params) if spec.method == "grid" else None
    total = min(len(points), count or spec.run_cap or len(points)) if points is not None else count or spec.run_cap
    sweep_id = name or new_sweep_id()
    opened = _open_storage(optuna, storage, None)
    try:
        study = optuna.create_study(storage=opened.storage, study_name=sweep_id,
                                    direction=spec.metric.goal if spec.metric else "minimize")
    except optuna.exceptions.DuplicatedStudyError:
        raise SweepError(f"--name {sweep_id}: the storage has a sweep of that name already") from None
    attrs = {
        "version": 1, "spec": raw, "spec_file": str(Path(sweep_file).resolve()), "config": config,
        "seed": seed if seed is not None else random.SystemRandom().randrange(2**31), "count": total,
        "heartbeat": heartbeat, "created": time.time(),
    }
    for key, value in attrs.items():
        study.set_user_attr(ATTR + key, value)
    # Every trial a capped sweep runs waits in the storage: agents only take them.
    for slot in range(total or 0):
        point = {ATTR + "point": slot} if points is not None else {}
        study.enqueue_trial({}, user_attrs={ATTR + "slot": slot, **point})
    return sweep_id


def open_sweep(sweep_id: str, storage: str, *, seed: int | None = None) -> SharedSweep:
    """The sweep ``sweep create`` made, with its sampler (TPE for bayes) and pruner (hyperband)."""
    optuna = import_optuna()
    plain = _open_storage(optuna, storage, None)
    try:
        study = optuna.load_study(study_name=sweep_id, storage=plain.storage)
    except KeyError:
        raise SweepError(f"no sweep {sweep_id!r} in {display_url(storage)}; `foundry-track sweep create` "
                         f"prints the id") from None
    attrs = {k.removeprefix(ATTR): v for k, v in study.user_attrs.items() if k.startswith(ATTR)}
    if "spec" not in attrs:
        raise SweepError(f"study {sweep_id!r} in {display_url(storage)} was not made by `foundry-track sweep create`")
    spec = parse_spec(attrs["spec"], f"{sweep_id}: spec")
    heartbeat = int(attrs.get("heartbeat") or HEARTBEAT)
    opened = _open_storage(optuna, storage, heartbeat) if plain.journal is None else plain
    # Each agent draws its own start-up points (the same seed everywhere would repeat them).
    base = attrs["seed"] if seed is None else seed
    sampler = (optuna.samplers.TPESampler(seed=(base + os.getpid() + random.SystemRandom().randrange(2**20))
                                          % 2**31, constant_liar=True)
               if spec.method == "bayes" else optuna.samplers.RandomSampler())
    study = optuna.load_study(study_name=sweep_id, storage=opened.storage, sampler=sampler,
                              pruner=make_pruner(optuna, spec))
    return SharedSweep(sweep_id, storage, optuna, study, spec, attrs, heartbeat, opened)


def _agent_of(frozen: Any) -> str | None:
    host, pid = frozen.user_attrs.get(ATTR + "host"), frozen.user_attrs.get(ATTR + "pid")
    return f"{host}:{pid}" if host else None


def sweep_status(sweep_id: str, storage: str) -> dict[str, Any]:
    """Every trial (state, result, parameters, agent), the best so far, and the trials per agent."""
    sweep = open_sweep(sweep_id, storage)
    metric = sweep.spec.metric
    trials: list[dict[str, Any]] = []
    agents: dict[str, dict[str, int]] = {}
    for frozen in sorted(sweep.trials(), key=lambda t: t.number):
        state = frozen.state.name.lower()
        agent = _agent_of(frozen) if state != "waiting" else None
        trials.append({
            "number": frozen.number, "state": state, "value": frozen.value if metric else None,
            "params": frozen.user_attrs.get(ATTR + "params", {}), "agent": agent,
            "run_name": frozen.user_attrs.get(ATTR + "run_name"), "reason": frozen.user_attrs.get(ATTR + "reason"),
            "retry_of": frozen.system_attrs.get("failed_trial"),
            "duration_s": frozen.duration.total_seconds() if frozen.duration else None,
        })
        if agent is not None:
            per = agents.setdefault(agent, {})
            per[state] = per.get(state, 0) + 1
    best = None
    if metric is not None and any(t["state"] == "complete" for t in trials):
        best_number = sweep.study.best_trial.number
        best = next(t for t in trials if t["number"] == best_number)
    states: dict[str, int] = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    return {
        "id": sweep_id, "storage": display_url(storage), "method": sweep.spec.method,
        "metric": metric.name if metric else None, "goal": metric.goal if metric else "minimize",
        "count": sweep.attrs.get("count"), "states": states, "best": best, "agents": agents, "trials": trials,
    }

