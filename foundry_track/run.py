"""The ``Run`` a training loop holds.

``Run.log`` is the hot path: it checks the values, stamps step and time, and
appends to the journal's in-memory queue. It never does I/O and never waits on
a backend.

``init`` and ``sync``, which make and replay runs, live in
:mod:`foundry_track.start`; the run directory's ``run.json`` in
:mod:`foundry_track.rundir`.
"""

from __future__ import annotations

import atexit
import functools
import logging
import numbers
import os
import queue
import threading
import time
import weakref
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Final, Mapping, Sequence

from pydantic import BaseModel

from foundry_track import distributed, media
from foundry_track.config import TrackingConfig
from foundry_track.errors import BackendError
from foundry_track.events import STATUSES, RunInfo, Status
from foundry_track.params import flatten, redact
from foundry_track.rundir import read_run_file, update_run_file
from foundry_track.values import FAST_TYPES as _FAST_TYPES
from foundry_track.values import FLOAT_INTS, check_int, coerce, read_cpu_tensors, small_numbers

if TYPE_CHECKING:
    from foundry_track.delivery import Delivery
    from foundry_track.journal import Journal

__all__ = ["Run"]

_log = logging.getLogger("foundry_track")
_FLOAT_TYPE: Final = frozenset({float})
_STR_TYPE: Final = frozenset({str})
_now: Final = time.time
_STEP_LIMIT: Final = 2**63  # SQLite's INTEGER
_live_runs: weakref.WeakSet[Run] = weakref.WeakSet()


class _Gate:
    """Whether ``run.log`` may take its short path, and the last step. One small
    object read by the hot path with a single attribute lookup; the step is read
    and written on it with no call in between, so concurrent callers get
    distinct steps."""

    __slots__ = ("hot", "last_step")

    def __init__(self, last_step: int) -> None:
        self.hot = False
        self.last_step = last_step


def _param_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)


class Run:
    """One tracked run. Get it from :func:`foundry_track.init`."""

    def __init__(
        self,
        config: TrackingConfig,
        *,
        info: RunInfo | None,
        journal: Journal | None,
        dispatcher: Delivery | None,
        last_step: int = -1,
    ) -> None:
        self.config = config
        self._info = info
        self._journal = journal
        self._dispatcher = dispatcher
        self._lock = threading.Lock()
        self._gate = _Gate(last_step)
        self.dir_lock: IO[str] | None = None  # held by init while the run is live (one writer per run dir)
        self._max_step = last_step
        self._every = config.every_n_steps
        self._warned_backwards = False
        self._finished = journal is None
        self._warned_after_finish = False
        self._warned_keys = False
        self._append: Callable[[tuple[str, int, float, Any]], None] = lambda event: None
        if journal is not None:
            self._append = journal.append_event
            journal.check_metrics = self._check_metrics
            journal.on_backlog = self._update_gate
        self.undelivered: dict[str, int] = {}
        # Set by finish: events log() accepted that never reached the journal
        # (its disk stayed full), and why.
        self.not_journaled = 0
        self.journal_error: str | None = None
        self._media_queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._media_thread: threading.Thread | None = None
        self._watches: list[Any] = []
        self._sampler: Any = None
        self._attach(dispatcher)
        if journal is not None:
            _live_runs.add(self)
            if config.system_metrics_interval:
                from foundry_track.system import SystemSampler

                self._sampler = SystemSampler(self, config.system_metrics_interval)

    def _attach(self, dispatcher: Delivery | None) -> None:
        """Hand the run its delivery (in-process workers, or the delivery process)."""
        self._dispatcher = dispatcher
        if dispatcher is not None:
            dispatcher.on_error = self._update_gate
        self._update_gate()

    # -- identity ---------------------------------------------------------- #

    @property
    def id(self) -> str | None:
        return self._info.id if self._info else None

    @property
    def name(self) -> str | None:
        return self._info.name if self._info else None

    @property
    def dir(self) -> Path | None:
        """The run directory (journal, run.json, local backend files); None when disabled."""
        return self._info.dir if self._info else None

    @property
    def enabled(self) -> bool:
        """False for a run of ``mode: disabled`` (or a non-zero rank's): its calls do nothing."""
        return self._journal is not None

    @property
    def finished(self) -> bool:
        """True once ``finish()`` ran; later log calls are ignored."""
        return self._finished

    @property
    def backend_ids(self) -> dict[str, dict[str, str]]:
        """Each backend's run identity (W&B run id, MLflow run id, TensorBoard dir)."""
        if self._info is None:
            return {}
        return dict(read_run_file(self._info.dir).get("backend_ids", {}))

    # -- logging ----------------------------------------------------------- #

    @property
    def _hot(self) -> bool:
        return bool(self._gate.hot)

    @_hot.setter
    def _hot(self, value: bool) -> None:
        self._gate.hot = value

    @property
    def _last_step(self) -> int:
        return int(self._gate.last_step)

    @_last_step.setter
    def _last_step(self, value: int) -> None:
        self._gate.last_step = value

    def log(self, metrics: Mapping[str, Any], step: int | None = None, reduce: str | None = None) -> None:
        """Record scalars at ``step`` (default: the last step + 1). Returns in microseconds.

        Values may be int, float, bool, numpy scalars or 0-d torch tensors. A CPU
        tensor is read at the call; a GPU tensor is copied (asynchronously) and
        read on the journal's thread, so the step never syncs. An int beyond
        float range raises ValueError, a value of another type TypeError. A step
        lower than one already logged is kept and reported once.

        ``reduce="mean" | "sum" | "max" | "min"`` makes this call a COLLECTIVE
        under torch.distributed: every rank must call it, with the same keys in
        the same order; rank 0 logs the reduced values. Different keys raise
        :class:`~foundry_track.distributed.KeyMismatchError` on every rank.
        """
        try:
            values = dict(metrics)
        except (TypeError, ValueError):
            raise TypeError(f"run.log expects a mapping of metric names to numbers, got {type(metrics).__name__}"
                            ) from None
        # The common call (plain numbers, an int step or none) does as little as
        # it can: right after a training step the CPU caches are cold and every
        # extra branch or attribute costs a fraction of a microsecond. The rest
        # of the checks (keys, steps going back) run on the journal's thread.
        gate = self._gate
        if gate.hot and reduce is None and (_FLOAT_TYPE.issuperset(map(type, values.values()))
                                            or small_numbers(values.values()) or read_cpu_tensors(values)):
            if type(step) is not int or step >= _STEP_LIMIT or step < 0:
                if step is not None:
                    return self._log_slow(values, step, reduce)
                # No call between the read and the write: the GIL is not
                # released there, so concurrent callers still get distinct steps.
                step = gate.last_step + 1
                if step == _STEP_LIMIT:
                    return self._log_slow(values, None, reduce)
            gate.last_step = step
            self._append(("metrics", step, _now(), values))
            return None
        return self._log_slow(values, step, reduce)

    def _log_slow(self, values: dict[str, Any], step: Any, reduce: str | None) -> None:
        """Everything but the common call: reductions, values to convert, bad
        input, a finished or strict-failed run, ``every_n_steps``, a backlog.
        ``values`` is the caller's copy, changed in place."""
        if reduce is not None:
            values = dict(distributed.reduce_metrics(values, reduce))
        journal = self._journal
        if journal is None or self._finished:
            if self._finished and journal is not None:
                self._after_finish()
            return
        if self._dispatcher is not None and self._dispatcher.error is not None:
            raise BackendError(f"a backend failed in strict mode: {self._dispatcher.error!r}") from self._dispatcher.error
        for key, value in values.items():
            if type(value) not in _FAST_TYPES:
                value = values[key] = coerce(key, value)
            if isinstance(value, int) and not -FLOAT_INTS < value < FLOAT_INTS:
                check_int(key, value)
        # The gate, not the _last_step property: a property call between the
        # read and the write would let another thread take the same step.
        gate = self._gate
        if type(step) is not int:
            step = gate.last_step + 1 if step is None else _step_int(step)
        if not 0 <= step < _STEP_LIMIT:
            raise ValueError(f"run.log: step must be in 0..2**63-1, got {step}")
        gate.last_step = step
        if self._every != 1 and step % self._every:
            return
        journal.append("metrics", step, _now(), values)
        if journal.backlogged:
            # The loop logs faster than the journal commits: wait for it rather
            # than queue without bound (a bounded wait, should the writer be stuck).
            journal.wait_backlog(timeout=1.0)

    def _check_metrics(self, step: int, values: dict[str, Any]) -> dict[str, Any]:
        """The checks ``log`` leaves to the journal's thread, in the order of the calls."""
        if step < self._max_step:
            if not self._warned_backwards:
                self._warned_backwards = True
                _log.warning(
                    "run.log: step %d is lower than step %d already logged; it is kept (each backend's "
                    "policy for repeated steps is in the docs). Reported once per run.", step, self._max_step
                )
        else:
            self._max_step = step
        if not _STR_TYPE.issuperset(map(type, values)):
            bad = next(k for k in values if type(k) is not str)
            if not self._warned_keys:
                self._warned_keys = True
                _log.warning("run.log: metric keys should be str, got %r (%s); logged as %r. Use string names "
                             "such as 'train/loss'. Reported once per run.", bad, type(bad).__name__, str(bad))
            values = {str(k): v for k, v in values.items()}
        return values

    def _update_gate(self, *_: Any) -> None:
        """Recompute whether ``log`` may take its short path (from any thread: the
        lock keeps a late writer-thread call from reopening a finished run)."""
        with self._lock:
            journal, dispatcher = self._journal, self._dispatcher
            self._hot = (journal is not None and not self._finished and self._every == 1
                         and not journal.backlogged and (dispatcher is None or dispatcher.error is None))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record hyperparameters: nested dicts are flattened with ``/``, secrets redacted."""
        if self._journal is None or self._finished:
            return
        if not isinstance(params, Mapping):
            raise TypeError(f"run.log_params expects a mapping, got {type(params).__name__}")
        flat = {k: _param_value(v) for k, v in flatten(redact(_plain(params))).items()}
        self._journal.append("params", max(self._last_step, 0), time.time(), flat)

    # -- rich data: captured here, prepared on the media thread ---------------- #

    def _step_for(self, step: int | None) -> int:
        return max(self._last_step, 0) if step is None else _step_int(step)

    def _emit(self, kind: str, step: int | None, data: Mapping[str, Any]) -> None:
        """Queue an event that needs no preparation (text, table, alert)."""
        if self._journal is None or self._finished:
            return
        self._journal.append(kind, self._step_for(step), time.time(), dict(data))

    def _prepare(self, kind: str, step: int | None, prepare: Callable[[Path], dict[str, Any]]) -> None:
        """Queue an event whose heavy part (encoding, .cpu(), hashing) runs on the media thread."""
        if self._journal is None or self._finished:
            return
        if self._media_thread is None:
            with self._lock:
                if self._media_thread is None:
                    self._media_thread = threading.Thread(target=self._media_loop, name="foundry-track-media",
                                                          daemon=True)
                    self._media_thread.start()
        self._media_queue.put((kind, self._step_for(step), time.time(), prepare))

    def _media_loop(self) -> None:
        assert self._journal is not None and self._info is not None
        media_dir = self._info.dir / "media"
        while True:
            item = self._media_queue.get()
            if item is None:
                return
            kind, step, stamp, prepare = item
            try:
                self._journal.append(kind, step, stamp, prepare(media_dir))
            except Exception:  # noqa: BLE001 - one bad image must not stop the others
                _log.exception("could not prepare a %s event at step %d; it was not logged", kind, step)

    def log_image(self, key: str, image: Any, step: int | None = None, caption: str | None = None) -> None:
        """Log an image: a numpy array or tensor (HW, HWC or CHW; uint8, or float in
        [0, 1]), a PIL image or a matplotlib figure. Encoded to PNG off the training thread."""
        prepare = media.capture_image(_key(key, "log_image"), image)
        self._prepare("image", step, lambda d: {**prepare(d), "caption": caption})

    def log_histogram(self, key: str, values: Any, step: int | None = None, bins: int = 64) -> None:
        """Log the distribution of ``values`` (numpy array, tensor, list). A GPU tensor
        is copied asynchronously and histogrammed off the training thread."""
        copy = media.capture_values(values)
        self._prepare("histogram", step, lambda _d: media.prepare_histogram(_key(key, "log_histogram"), copy, bins))

    def log_table(self, key: str, columns: Any = None, rows: Sequence[Sequence[Any]] | None = None, *,
                  dataframe: Any = None, step: int | None = None) -> None:
        """Log a table from ``columns`` and ``rows``, or a pandas DataFrame
        (``run.log_table("preds", df)`` or ``dataframe=df``)."""
        if dataframe is None and hasattr(columns, "itertuples"):
            dataframe, columns = columns, None
        cols, cells = media.table_rows(_key(key, "log_table"), columns, rows, dataframe)
        self._emit("table", step, {"key": key, "columns": cols, "rows": cells})

    def log_text(self, key: str, text: str, step: int | None = None) -> None:
        """Log a piece of text (markdown allowed)."""
        if not isinstance(text, str):
            raise TypeError(f"log_text({key!r}): text must be str, got {type(text).__name__}")
        self._emit("text", step, {"key": _key(key, "log_text"), "text": text})

    def log_artifact(self, path: str | os.PathLike[str], type: str, name: str | None = None,
                     description: str | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        """Upload a file or directory to every backend that stores artifacts.

        Only the path and a content hash go through the journal; backends read
        the files from disk later, so keep them until the run is finished.
        """
        target = Path(path).resolve()
        if not target.exists():
            raise FileNotFoundError(f"log_artifact: {str(path)!r} does not exist")
        label = name or target.name
        extra = media.flat_mapping(metadata)
        self._prepare("artifact", None, lambda _d: {
            "path": str(target), "type": type, "name": label, "description": description,
            "digest": media.digest_path(target), "metadata": extra,
        })

    def alert(self, title: str, text: str, level: object = "info") -> None:
        """Send an alert to every backend that implements ``tracker_alert``.

        ``level`` is ``"info"``, ``"warn"`` or ``"error"`` in any case, or an enum
        member whose ``value`` or ``name`` is one of them (``wandb.AlertLevel.WARN``).
        """
        # Duck-typed, so the core never imports a tracker's SDK for its enum.
        names = [level] if isinstance(level, str) else [getattr(level, "value", None), getattr(level, "name", None)]
        found = next((n.lower() for n in names if isinstance(n, str) and n.lower() in ("info", "warn", "error")), None)
        if found is None:
            raise ValueError(f"alert: level must be 'info', 'warn' or 'error' (or wandb.AlertLevel), got {level!r}")
        self._emit("alert", None, {"title": str(title), "text": str(text), "level": found})

    def watch(self, model: Any, log: str = "gradients", log_freq: int = 1000) -> None:
        """Log histograms of ``model``'s gradients and/or parameters every
        ``log_freq`` backward passes, to every backend (torch hooks, no GPU sync)."""
        from foundry_track.watch import watch

        if self._journal is not None:
            self._watches.append(watch(self, model, log=log, log_freq=log_freq))

    def log_system_metrics(self, step: int | None = None, *, gather: bool = False) -> None:
        """Log one reading of ``system/*`` (CPU %, process memory, GPU memory).

        ``gather=True`` is a collective: every rank's reading is sent to rank 0
        and logged as ``system/rank<N>/...``.
        """
        from foundry_track.system import sample

        values = sample(None, _psutil_process())
        if gather and distributed.collective():
            per_rank = distributed.all_gather(values)
            values = {f"system/rank{r}/{k.removeprefix('system/')}": v
                      for r, reading in enumerate(per_rank) for k, v in reading.items()}
        if self._journal is not None and not self._finished:
            self._journal.append("metrics", self._step_for(step), time.time(), values)

    def _log_sample(self, values: Mapping[str, float]) -> None:
        """System metrics at the current step, without moving the step counter."""
        if self._journal is not None and not self._finished and values:
            self._journal.append("metrics", max(self._last_step, 0), time.time(), dict(values))

    def _after_finish(self) -> None:
        if not self._warned_after_finish:
            self._warned_after_finish = True
            _log.warning("run %s is finished; later log calls are ignored", self.id)

    # -- finishing --------------------------------------------------------- #

    def finish(self, status: Status = "success", *, timeout: float | None = None) -> dict[str, int]:
        """Deliver what is left (waiting at most ``flush_timeout`` seconds) and close.

        Returns the number of events each backend did not receive; they stay in
        the journal for ``foundry-track sync``. Calling it twice is harmless.
        Events that never reached the journal (its disk stayed full) are
        counted in :attr:`not_journaled`, the reason in :attr:`journal_error`.
        """
        if status not in STATUSES:
            raise ValueError(f"run.finish: status must be one of {', '.join(STATUSES)}, got {status!r}")
        with self._lock:
            if self._finished:
                return self.undelivered
            self._finished = True
            self._hot = False
        _live_runs.discard(self)
        assert self._journal is not None and self._dispatcher is not None and self._info is not None
        flush_timeout = self.config.flush_timeout if timeout is None else timeout
        deadline = time.monotonic() + flush_timeout
        for handle in self._watches:
            handle.remove()
        if self._sampler is not None:
            self._sampler.stop()
        if self._media_thread is not None:
            self._media_queue.put(None)
            self._media_thread.join(flush_timeout)
        # A journal that cannot be written (a full disk) gets at most half of
        # the time, so the backends still get theirs.
        self._journal.commit_pending(min(flush_timeout / 2, max(0.0, deadline - time.monotonic())))
        self.undelivered = self._dispatcher.finish(status, max(0.0, deadline - time.monotonic()))
        self._journal.close()
        self._close_run_file(status)
        self._release_dir()
        if self.config.strict and self._dispatcher.error is not None:
            raise BackendError(f"a backend failed in strict mode: {self._dispatcher.error!r}") from self._dispatcher.error
        return self.undelivered

    def _close_run_file(self, status: Status) -> None:
        """Count what never reached the journal, and record how the run ended in
        run.json. Never raises: on a full disk run.json may not be writable either."""
        assert self._journal is not None and self._info is not None
        self.not_journaled = self._journal.not_journaled
        if self.not_journaled:
            self.journal_error = self._journal.last_write_error or "unknown"
            _log.error(
                "run %s: %d logged events could not be written to the journal %s (%s) and are lost; every other "
                "event is in the journal. Keep free space on that disk.", self.id, self.not_journaled,
                self._journal.path, self.journal_error)
        try:
            update_run_file(self._info.dir, status=status, finished=time.time(), undelivered=self.undelivered,
                            not_journaled=self.not_journaled, journal_error=self.journal_error)
        except OSError as exc:
            _log.error("run %s: could not record its end (%s) in %s: %s. `foundry-track runs` shows it as crashed "
                       "once this process has ended.", self.id, status, self._info.dir, exc)

    def _abort_start(self) -> None:
        """``init`` could not start delivery: no half-started run. What was
        logged (params) stays in the journal for ``sync``."""
        self._finished, self._hot = True, False
        _live_runs.discard(self)
        if self._sampler is not None:
            self._sampler.stop()
        if self._journal is not None:
            self._journal.close()
        if self._info is not None:
            update_run_file(self._info.dir, status="failed", finished=time.time())
        self._release_dir()

    def _release_dir(self) -> None:
        """Let another process write this run directory (``init`` holds it while the run is live)."""
        lock, self.dir_lock = self.dir_lock, None
        if lock is not None:
            lock.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            status: Status = "success"
        elif issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            status = "killed"
        else:
            status = "failed"
        self.finish(status)

    def __repr__(self) -> str:
        return f"<foundry_track.Run id={self.id} dir={self.dir}>" if self.enabled else "<foundry_track.Run disabled>"


def _step_int(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        item = getattr(step, "item", None)
        if item is None or not isinstance(item(), int):
            raise TypeError(f"step must be an int, got {step!r} ({type(step).__name__})")
        step = item()
    if not 0 <= step < _STEP_LIMIT:
        raise ValueError(f"step must be in 0..2**63-1, got {step}")
    return int(step)


@functools.lru_cache(maxsize=1)
def _psutil_process() -> Any:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process()


def _key(key: Any, where: str) -> str:
    if type(key) is not str or not key:
        raise TypeError(f"{where}: key must be a non-empty str, got {key!r}")
    return key


def _plain(value: Any) -> Any:
    """Pydantic models and dataclass-like configs become dicts before flattening."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


@atexit.register
def _close_unfinished_runs() -> None:
    for run in list(_live_runs):
        try:
            run.finish("killed")
        except Exception:  # noqa: BLE001 - exiting anyway
            _log.exception("could not close run %s at exit", run.id)
