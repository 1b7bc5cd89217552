"""Delivery in a separate process, the training process's side.

With ``tracking.delivery: process`` the training process keeps only the
journal (``run.log`` -> queue -> writer thread -> ``journal.db``) and starts
``python -m foundry_track.delivery RUN_DIR``: a child process that runs the
same workers as ``delivery: thread``, reading the journal from disk as the
training process commits it. Why: Python runs one thread at a time, so a
tracker whose SDK costs interpreter time on every step (W&B's ``run.log`` has
no batch call) takes that time from the training thread when it runs in the
same process. In its own process it takes a core instead.

The two talk over the child's stdin and stdout, one JSON line each way:

- at start, parent -> child: ``{"backends": {name: options}, "fallback",
  "start_timeout", "strict", "interval", "priority"}``. The options travel on a pipe, not on the
  command line, so a token in them never shows in ``ps``.
- at finish, parent -> child: ``{"finish": status, "timeout": seconds}``.
- while it runs, child -> parent: ``{"log": [logger name, level, message]}``
  for each log record, re-emitted by the parent's ``foundry_track`` loggers so
  the training process's logging configuration applies to them as before.
- when done, child -> parent: ``{"undelivered": {name: count}, "error": str | null}``.

If the training process dies, the child reads the end of its stdin without a
finish line: it delivers what was committed (within ``flush_timeout``) and
closes the run as ``killed``. The child ignores SIGINT: Ctrl-C in a terminal
reaches the whole process group, and the training process's own handling
(``with init(...)`` marks the run failed and finishes it) needs the child alive.
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Final, Mapping

from foundry_track.errors import BackendError
from foundry_track.events import Status
from foundry_track.journal import Journal
from foundry_track.rundir import read_run_file

__all__ = ["ProcessDelivery", "wait_for_delivery", "lock_run", "LOCK_FILE", "CHILD_MODULE", "MAX_RESTARTS"]

if TYPE_CHECKING:
    from foundry_track.dispatcher import Dispatcher

_log = logging.getLogger("foundry_track")
CHILD_MODULE: Final = "foundry_track.delivery"  # python -m CHILD_MODULE RUN_DIR
_GRACE: Final = 5.0  # seconds beyond flush_timeout for the child's finish hooks and exit
MAX_RESTARTS: Final = 3  # delivery processes started again after one died, before threads take over


class ProcessDelivery:
    """The training process's handle on its delivery process (what ``Run`` calls
    its delivery: ``finish``, ``error``, ``on_error``).

    Supervised: if the delivery process dies, the reader thread sees its pipe
    close at once and starts a new one (at most ``MAX_RESTARTS`` times), which
    resumes every backend from its durable journal position; after that, the
    backends are delivered by worker threads in this process. A backend the
    delivery process cannot import (a plugin put on ``sys.path`` at run time,
    a class registered in a test) is delivered in this process from the start.
    """

    def __init__(self, journal: Journal, run_dir: Path, setup: Mapping[str, Any], strict: bool,
                 deliver_here: Callable[[list[str]], Dispatcher]) -> None:
        self.journal = journal
        self.run_dir = run_dir
        self.setup = dict(setup)
        self.strict = strict
        self.error: BaseException | None = None
        self.on_error: Callable[[], None] | None = None
        self.restarts = 0
        #: Worker threads in this process, for the backends the child cannot deliver.
        self.local: Dispatcher | None = None
        self.process: subprocess.Popen[str] | None = None
        self._deliver_here = deliver_here
        self._here: list[str] = []
        self._lock = threading.Lock()
        self._finishing = False
        self._replies: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        # Set once the first delivery process said which backends it cannot
        # import (or died): finish waits for it, so none is left uncounted.
        self._ready = threading.Event()
        self._spawn()

    @classmethod
    def start(cls, journal: Journal, run_dir: Path, backends: Mapping[str, Mapping[str, Any]], *,
              fallback: str | None, start_timeout: float, strict: bool, interval: float = 0.0,
              priority: str = "idle",
              deliver_here: Callable[[list[str]], Dispatcher]) -> ProcessDelivery:
        setup = {"backends": {n: dict(o) for n, o in backends.items()}, "fallback": fallback,
                 "start_timeout": start_timeout, "strict": strict, "interval": interval, "priority": priority,
                 "log_level": logging.getLogger("foundry_track").getEffectiveLevel()}
        return cls(journal, run_dir, setup, strict, deliver_here)

    def _spawn(self) -> None:
        """Start a delivery process for the backends not delivered here (under ``_lock`` or in ``__init__``)."""
        process = subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE, str(self.run_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8",
        )
        assert process.stdin is not None and process.stdout is not None
        setup = {**self.setup, "backends": {n: o for n, o in self.setup["backends"].items() if n not in self._here}}
        process.stdin.write(json.dumps(setup, default=str) + "\n")
        process.stdin.flush()
        self.process, self._replies = process, queue.SimpleQueue()
        threading.Thread(target=self._read, args=(process, self._replies), name="foundry-track-delivery-reader",
                         daemon=True).start()

    def _read(self, process: subprocess.Popen[str], replies: queue.SimpleQueue[str | None]) -> None:
        """One child's lines: log records to re-emit here, backends it cannot
        import, and its final reply; then, if it died early, what comes next."""
        assert process.stdout is not None
        for line in process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if "log" in message:
                name, level, text = message["log"]
                logging.getLogger(name).log(level, "%s", text)
            elif "missing" in message:
                self._take_over([str(n) for n in message["missing"]], "the delivery process cannot import it "
                                "(a plugin installed as a distribution, or on PYTHONPATH, is delivered there)")
                self._ready.set()
            elif "undelivered" in message:
                replies.put(line)
        process.stdout.close()
        code = process.wait()
        with self._lock:
            if not self._finishing and process is self.process:
                self._child_died(code)
        self._ready.set()
        replies.put(None)

    def _child_died(self, code: int) -> None:
        if self.restarts < MAX_RESTARTS:
            self.restarts += 1
            _log.warning("foundry-track: the delivery process exited early (exit code %s; its error is above, on "
                         "stderr); starting a new one (%d of %d), which resumes each backend from its durable "
                         "position.", code, self.restarts, MAX_RESTARTS)
            self._spawn()
            return
        self.process = None
        _log.error("foundry-track: the delivery process exited early %d times (last exit code %s); the backends are "
                   "delivered by threads of this process from now on.", MAX_RESTARTS + 1, code)
        self._fail(f"the delivery process exited early (exit code {code})")
        names = [n for n in self.setup["backends"] if n not in self._here]
        self._take_over(names, "the delivery process kept exiting", locked=True)

    def _take_over(self, names: list[str], why: str, *, locked: bool = False) -> None:
        """Deliver ``names`` with worker threads of this process from now on."""
        if not names:
            return
        if not locked:
            with self._lock:
                return self._take_over(names, why, locked=True)
        if self._finishing:
            return
        for name in names:
            _log.info("foundry-track: backend %r is delivered in this process (delivery: thread), because %s.",
                      name, why)
        self._here += names
        if self.local is None:
            self.local = self._deliver_here(names)
        else:
            extra = self._deliver_here(names)  # a second set of workers: both are finished together
            self.local.workers.update(extra.workers)

    def _fail(self, message: str) -> None:
        if self.strict and self.error is None:
            self.error = BackendError(message)
            if self.on_error is not None:
                self.on_error()

    def finish(self, status: Status, timeout: float) -> dict[str, int]:
        """Commit the journal, ask the child to deliver the rest within ``timeout``
        seconds and close the backends; return what each backend did not get.
        Returns within ``timeout`` + 5 s whatever the child does."""
        deadline = time.monotonic() + timeout
        end = deadline + _GRACE
        self._ready.wait(timeout)
        with self._lock:
            self._finishing = True
            process, replies, local = self.process, self._replies, self.local
        self.journal.flush()
        undelivered: dict[str, int] = {}
        if process is not None:
            self._ask_to_finish(process, status, max(0.0, deadline - time.monotonic()))
        if local is not None:
            undelivered.update(local.finish(status, max(0.0, deadline - time.monotonic())))
            if local.error is not None and self.strict and self.error is None:
                self.error = local.error
        if process is not None:
            undelivered.update(self._child_reply(process, replies, end))
        elif local is None:
            undelivered.update(_undelivered(self.journal, self.run_dir, exclude=self._here))
        return undelivered

    @staticmethod
    def _ask_to_finish(process: subprocess.Popen[str], status: str, timeout: float) -> None:
        try:
            assert process.stdin is not None
            # A wall-clock deadline, not a duration: the child may read this line late.
            process.stdin.write(json.dumps({"finish": status, "deadline": time.time() + timeout}) + "\n")
            process.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the child is gone: what it did not deliver is counted below

    def _child_reply(self, process: subprocess.Popen[str], replies: queue.SimpleQueue[str | None],
                     end: float) -> dict[str, int]:
        reply: dict[str, Any] | None = None
        try:
            line = replies.get(timeout=max(0.0, end - time.monotonic()))
            reply = json.loads(line) if line else None
        except (queue.Empty, ValueError):
            reply = None
        try:
            process.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            if reply is None:
                _log.warning("foundry-track: the delivery process did not finish within flush_timeout; it was "
                             "stopped. Deliver the rest with: foundry-track sync %s", self.run_dir)
        if reply is None:
            self._fail("the delivery process did not report how delivery ended")
            return _undelivered(self.journal, self.run_dir, exclude=self._here)
        if reply.get("error"):
            self._fail(reply["error"])
        return {str(k): int(v) for k, v in reply.get("undelivered", {}).items()}


def _undelivered(journal: Journal, run_dir: Path, exclude: list[str]) -> dict[str, int]:
    last, positions = journal.last_seq, journal.positions()
    names = [*read_run_file(run_dir).get("backends", {}), *positions]
    return {n: max(0, last - positions.get(n, {}).get("seq", 0)) for n in dict.fromkeys(names) if n not in exclude}


LOCK_FILE: Final = "delivery.lock"


def wait_for_delivery(run_dir: Path, timeout: float) -> None:
    """Wait (at most ``timeout`` seconds; then TimeoutError) until no delivery
    process holds ``run_dir`` — an orphan of a killed training process finishing."""
    handle = lock_run(run_dir, timeout)
    if handle is not None:
        handle.close()


def lock_run(run_dir: Path, timeout: float | None = None) -> IO[str] | None:
    """Hold the run's delivery lock (POSIX; elsewhere nothing is locked).
    Blocks until a previous holder exits, or ``timeout`` seconds (then TimeoutError)."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(run_dir / LOCK_FILE, "w")  # noqa: SIM115 - held for the process's life
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if end is not None and time.monotonic() > end:
                handle.close()
                raise TimeoutError(f"another process is delivering {run_dir}") from None
            time.sleep(0.05)
