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
  "start_timeout", "strict"}``. The options travel on a pipe, not on the
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
from typing import IO, Any, Callable, Final, Mapping

from foundry_track.errors import BackendError
from foundry_track.journal import Journal
from foundry_track.rundir import read_run_file

__all__ = ["ProcessDelivery", "wait_for_delivery", "lock_run", "LOCK_FILE", "CHILD_MODULE"]

_log = logging.getLogger("foundry_track")
CHILD_MODULE: Final = "foundry_track.delivery"  # python -m CHILD_MODULE RUN_DIR
_GRACE: Final = 5.0  # seconds beyond flush_timeout for the child's finish hooks and exit


class ProcessDelivery:
    """The training process's handle on its delivery process (what ``Run`` calls
    its dispatcher: ``finish``, ``error``, ``on_error``)."""

    def __init__(self, journal: Journal, run_dir: Path, process: subprocess.Popen[str], strict: bool) -> None:
        self.journal = journal
        self.run_dir = run_dir
        self.process = process
        self.strict = strict
        self.error: BaseException | None = None
        self.on_error: Callable[[], None] | None = None
        self._replies: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._finishing = False
        assert process.stdout is not None
        threading.Thread(target=self._read, args=(process.stdout,), name="foundry-track-delivery-reader",
                         daemon=True).start()

    @classmethod
    def start(cls, journal: Journal, run_dir: Path, backends: Mapping[str, Mapping[str, Any]], *,
              fallback: str | None, start_timeout: float, strict: bool) -> ProcessDelivery:
        process = subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE, str(run_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8",
        )
        assert process.stdin is not None
        setup = {"backends": {n: dict(o) for n, o in backends.items()}, "fallback": fallback,
                 "start_timeout": start_timeout, "strict": strict,
                 "log_level": logging.getLogger("foundry_track").getEffectiveLevel()}
        process.stdin.write(json.dumps(setup, default=str) + "\n")
        process.stdin.flush()
        return cls(journal, run_dir, process, strict)

    def _read(self, stream: IO[str]) -> None:
        """The child's lines: log records to re-emit here, and its final reply."""
        for line in stream:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if "log" in message:
                name, level, text = message["log"]
                logging.getLogger(name).log(level, "%s", text)
            elif "undelivered" in message:
                self._replies.put(line)
        stream.close()
        if not self._finishing:
            code = self.process.wait()
            _log.error("foundry-track: the delivery process exited early (exit code %s; its error is above, on "
                       "stderr). Logging goes on into the journal; deliver it with: foundry-track sync %s",
                       code, self.run_dir)
            self._fail(f"the delivery process exited early (exit code {code})")
        self._replies.put(None)

    def _fail(self, message: str) -> None:
        if self.strict and self.error is None:
            self.error = BackendError(message)
            if self.on_error is not None:
                self.on_error()

    def finish(self, status: str, timeout: float) -> dict[str, int]:
        """Commit the journal, ask the child to deliver the rest within ``timeout``
        seconds and close the backends; return what each backend did not get.
        Returns within ``timeout`` + 5 s whatever the child does."""
        end = time.monotonic() + timeout + _GRACE
        self._finishing = True
        self.journal.flush()
        try:
            assert self.process.stdin is not None
            # A wall-clock deadline, not a duration: the child may read this line late.
            self.process.stdin.write(json.dumps({"finish": status, "deadline": time.time() + timeout}) + "\n")
            self.process.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the child is gone: what it did not deliver is counted below
        reply: dict[str, Any] | None = None
        try:
            line = self._replies.get(timeout=max(0.0, end - time.monotonic()))
            reply = json.loads(line) if line else None
        except (queue.Empty, ValueError):
            reply = None
        try:
            self.process.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            if reply is None:
                _log.warning("foundry-track: the delivery process did not finish within flush_timeout; it was "
                             "stopped. Deliver the rest with: foundry-track sync %s", self.run_dir)
        if reply is None:
            self._fail("the delivery process did not report how delivery ended")
            return _undelivered(self.journal, self.run_dir)
        if reply.get("error"):
            self._fail(reply["error"])
        return {str(k): int(v) for k, v in reply.get("undelivered", {}).items()}


def _undelivered(journal: Journal, run_dir: Path) -> dict[str, int]:
    last, positions = journal.last_seq, journal.positions()
    names = [*read_run_file(run_dir).get("backends", {}), *positions]
    return {n: max(0, last - positions.get(n, {}).get("seq", 0)) for n in dict.fromkeys(names)}


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
