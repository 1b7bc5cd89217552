"""Fan-out: every backend reads the journal on its own worker thread.

The training thread only appends to the journal. The dispatcher owns one
:class:`~foundry_track.worker.Worker` per backend (its thread, position,
retries and set-aside events), switches on the fallback when a backend cannot
start, reports each backend's errors once, and bounds the end of the run:
:meth:`Dispatcher.finish` waits for the backends within the run's
``flush_timeout``, keeping a little of it to close the ones still behind.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from typing import Callable, Final, Mapping

from pydantic import BaseModel

from foundry_track.errors import BackendError, TransientError
from foundry_track.events import RunInfo, Status
from foundry_track.journal import Journal
from foundry_track.plugins import BackendHooks
from foundry_track.worker import _BACKOFF_CAP as _BACKOFF_CAP  # the figures the docs state, read here too
from foundry_track.worker import _MAX_PERMANENT_ATTEMPTS as _MAX_PERMANENT_ATTEMPTS
from foundry_track.worker import BATCH_LIMIT, Batch, Worker, hook_groups, is_transient, to_event

__all__ = ["Dispatcher", "Worker", "TransientError", "BackendError", "is_transient", "BATCH_LIMIT",
           "Batch", "hook_groups", "to_event"]

_log = logging.getLogger("foundry_track")
# At finish, what is kept of the timeout to close the backends still behind
# (tracker_finish with complete=False) after delivery was abandoned.
_CLOSE_RESERVE: Final = 2.0
_CLOSE_SHARE: Final = 0.1


class Dispatcher:
    """Owns the workers of one run: start, fallback, errors, bounded finish.

    ``retry_start``: a start that fails for a transient reason is retried in
    the background until ``finish`` (a live run); ``sync`` leaves it off and
    reports the backend as not started.

    ``interval``: seconds between two deliveries to one backend while the run
    goes on (``tracking.delivery_interval``); 0 delivers as soon as events are
    committed. Once ``finish`` begins (``closing``), every backend is fed
    without a pause.
    """

    def __init__(
        self,
        journal: Journal,
        run_info: RunInfo,
        *,
        start_timeout: float,
        strict: bool,
        fallback: Callable[[str], Worker | None] | None = None,
        on_identity: Callable[[str, dict[str, str]], None] | None = None,
        retry_start: bool = False,
        interval: float = 0.0,
    ) -> None:
        self.journal = journal
        #: seconds between two deliveries to one backend while the run goes on (0: as soon as committed)
        self.interval = interval
        self.run_info = run_info
        self.start_timeout = start_timeout
        self.strict = strict
        self.retry_start = retry_start
        self.workers: dict[str, Worker] = {}
        self.closing = threading.Event()
        self.status: Status = "success"
        self.deadline = math.inf  # monotonic time finish() returns by; no tracker_finish starts after it
        self.error: BaseException | None = None
        self.on_error: Callable[[], None] | None = None  # the run's log() stops taking its short path
        self._fallback = fallback
        self._on_identity = on_identity
        self._lock = threading.Lock()

    def add(self, name: str, hooks: BackendHooks, options: BaseModel, resume_state: Mapping[str, str],
            *, synchronous: bool = False) -> Worker:
        worker = Worker(name, hooks, options, resume_state, self)
        with self._lock:
            self.workers[name] = worker
        self.journal.register_backend(name)
        worker.begin(synchronous=synchronous)
        return worker

    # -- called from workers ----------------------------------------------- #

    def report(self, worker: Worker, hook: str, exc: BaseException, count: int) -> None:
        message = f"{type(exc).__name__}: {exc}"
        try:
            self.journal.record_error(worker.name, message)
        except Exception:  # noqa: BLE001 - reporting must not fail the worker
            pass
        if self.strict and self.error is None:
            self.error = exc
            if self.on_error is not None:
                self.on_error()
        if not worker.error_reported:
            worker.error_reported = True
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            if hook in ("tracker_start", "tracker_finish", "worker"):
                retry = "not retried"
            else:
                retry = ("retrying with backoff" if is_transient(exc)
                         else "retrying a few times, then setting the events it refuses aside")
            _log.error(
                "backend %r failed in %s (%d events affected; %s; the training loop is not affected). "
                "Later errors of this backend are counted, not printed.\n%s",
                worker.name, hook, count, retry, tb,
            )
        else:
            _log.debug("backend %r failed again in %s: %s", worker.name, hook, message)

    def start_failed(self, worker: Worker, exc: BaseException, *, retrying: bool, fallback: bool) -> None:
        """A backend's start failed or timed out: say so once, and switch on the
        fallback (``fallback``) the first time."""
        # One warning says it all (a missing API key needs no traceback); the
        # traceback goes to debug level for plugin authors.
        worker.error_reported = True
        self.report(worker, "tracker_start", exc, 0)
        _log.debug("backend %r: tracker_start failed", worker.name, exc_info=exc)
        used = self._fallback(worker.name) if fallback and self._fallback else None
        also = f"; events now also go to the fallback backend {used.name!r}" if used else ""
        if retrying:
            _log.warning(
                "backend %r could not start (%s: %s). Retrying in the background (backoff capped at %g s) until "
                "the run finishes; meanwhile its events are kept in the journal%s. Once it starts it catches up "
                "from the journal; if it has not started by then, deliver them with: foundry-track sync %s "
                "--backend %s",
                worker.name, type(exc).__name__, exc, _BACKOFF_CAP, also, self.run_info.dir, worker.name,
            )
            return
        _log.warning(
            "backend %r could not start (%s: %s). Its events are kept in the journal%s. "
            "Deliver them later with: foundry-track sync %s --backend %s",
            worker.name, type(exc).__name__, exc, also, self.run_info.dir, worker.name,
        )

    def save_identity(self, name: str, identity: dict[str, str]) -> None:
        if self._on_identity is not None:
            self._on_identity(name, identity)

    # -- called from the run ----------------------------------------------- #

    def finish(self, status: Status, timeout: float) -> dict[str, int]:
        """Deliver what is left within ``timeout`` seconds; return undelivered counts.

        A backend still behind when all but a small reserve of the time is
        used (min(2 s, 10 %)) is abandoned: its worker stops delivering and,
        once its current call returns, closes the backend's run with
        ``tracker_finish(status, complete=False)`` within the reserve.
        """
        deadline = time.monotonic() + timeout
        self.deadline = deadline
        self.status = status
        self.journal.flush()
        self.closing.set()
        self.journal.wake()  # workers idling in wait_for see `closing` now, not 0.25 s later
        workers = self._wait(deadline - min(_CLOSE_RESERVE, _CLOSE_SHARE * timeout))
        late = [worker for worker in workers if not worker.done.is_set()]
        for worker in late:
            worker.abandon.set()
        for worker in late:
            worker.done.wait(max(0.0, deadline - time.monotonic()))
        undelivered: dict[str, int] = {}
        for worker in workers:
            if not worker.done.is_set():  # stuck in a call: the next sync closes its run
                worker.state = "abandoned"
            pending = worker.pending()
            if pending:
                undelivered[worker.name] = pending
                aside = sum(1 for seq in worker.aside.copy() if seq <= worker.durable)
                why = worker.state if not aside else f"{worker.state}; {aside} set aside"
                _log.warning(
                    "backend %r: %d events not delivered (%s). Deliver them with: foundry-track sync %s --backend %s",
                    worker.name, pending, why, self.run_info.dir, worker.name,
                )
        return undelivered

    def _wait(self, until: float) -> list[Worker]:
        """Wait (until ``until``) for every worker to be done; the workers."""
        while True:
            # A worker that fails to start adds the fallback's worker meanwhile,
            # so look again until no new worker appeared while waiting.
            workers = list(self.workers.values())
            for worker in workers:
                worker.done.wait(max(0.0, until - time.monotonic()))
            if len(self.workers) == len(workers):
                return workers
