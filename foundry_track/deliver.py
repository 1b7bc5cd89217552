"""Delivery in a separate process: the trackers' SDKs off the training process.

With ``tracking.delivery: process`` the training process keeps only the
journal (``run.log`` -> queue -> writer thread -> ``journal.db``) and starts
``python -m foundry_track.deliver RUN_DIR``: a child process that runs the
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
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Final, Mapping

from foundry_track.dispatcher import BackendError
from foundry_track.journal import JOURNAL_FILE, Journal

__all__ = ["ProcessDelivery", "main", "wait_for_delivery", "LOCK_FILE"]

_log = logging.getLogger("foundry_track")
_POLL: Final = 0.02  # how often the child looks for newly committed events
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
            [sys.executable, "-m", "foundry_track.deliver", str(run_dir)],
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


class _ToParent(logging.Handler):
    """Log records of the delivery process, sent to the training process as JSON lines."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(logging.DEBUG)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = json.dumps({"log": [record.name, record.levelno, self.format(record)]})
            with _stdout_lock:
                self.stream.write(line + "\n")
                self.stream.flush()
        except Exception:  # noqa: BLE001 - the parent is gone; nothing to tell
            pass


_stdout_lock = threading.Lock()


def _undelivered(journal: Journal, run_dir: Path) -> dict[str, int]:
    from foundry_track.run import _read_run_file

    last, positions = journal.last_seq, journal.positions()
    names = [*_read_run_file(run_dir).get("backends", {}), *positions]
    return {n: max(0, last - positions.get(n, {}).get("seq", 0)) for n in dict.fromkeys(names)}


LOCK_FILE: Final = "delivery.lock"


def wait_for_delivery(run_dir: Path, timeout: float) -> None:
    """Wait (at most ``timeout`` seconds; then TimeoutError) until no delivery
    process holds ``run_dir`` — an orphan of a killed training process finishing."""
    handle = _lock_run(run_dir, timeout)
    if handle is not None:
        handle.close()


def _lock_run(run_dir: Path, timeout: float | None = None) -> IO[str] | None:
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


class _Lines:
    """Lines from the parent on stdin, read from the file descriptor (not through
    ``sys.stdin``, whose buffer would hide a line from ``select``)."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.buffered = b""

    def next(self, parent: int) -> str | None:
        """The next line, or None once the parent is gone: at end of file, or when
        the parent's pid changes — a process forked from the parent (a data
        loader worker, an uploader) keeps the pipe open after the parent died."""
        if os.name != "posix":
            line = sys.stdin.readline()
            return line if line.strip() else None
        import select

        while b"\n" not in self.buffered:
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return None
                self.buffered += chunk
            elif os.getppid() != parent:
                return None
        line, self.buffered = self.buffered.split(b"\n", 1)
        return line.decode("utf-8")


def _follow(journal: Journal, stop: threading.Event) -> None:
    """Wake the workers when the training process has committed more events."""
    while not stop.wait(_POLL):
        before = journal.last_seq
        if journal.refresh() > before:
            journal.wake()


def main(argv: list[str] | None = None) -> int:
    """The delivery process: ``python -m foundry_track.deliver RUN_DIR``, started by ``init``."""
    from foundry_track.events import RunInfo
    from foundry_track.plugins import discover
    from foundry_track.run import _read_run_file, _update_run_file, _validate_options, start_dispatcher

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m foundry_track.deliver RUN_DIR  (started by foundry_track.init with "
              "tracking.delivery: process; reads its setup from stdin)", file=sys.stderr)
        return 2
    # Ctrl-C and a scheduler's SIGTERM reach the whole process group; the
    # training process handles them (finishing the run), which needs this one alive.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    lines = _Lines()
    # The pipe to the training process carries only our JSON lines: what the
    # SDKs print (MLflow's "View run ..." lines, C libraries) goes to stderr.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    setup = json.loads(lines.next(parent) or "{}")
    # foundry_track's own records go to the training process (its logging
    # configuration decides what to show); the SDKs' warnings go to stderr.
    ours = logging.getLogger("foundry_track")
    ours.addHandler(_ToParent(channel))
    ours.setLevel(int(setup.get("log_level", logging.INFO)))
    ours.propagate = False
    logging.basicConfig(level=logging.WARNING, format="foundry-track delivery (pid %(process)d): %(name)s: %(message)s")
    run_dir = Path(args[0]).resolve()
    data = _read_run_file(run_dir)
    info = RunInfo(
        id=data["id"], name=data["name"], project=data.get("project", "foundry-track"), entity=data.get("entity"),
        tags=tuple(data.get("tags", ())), notes=data.get("notes"), group=data.get("group"),
        config=data.get("config", {}), dir=run_dir, resumed=data.get("resumed_at") is not None,
        sweep=data.get("sweep"),
    )
    owner = data.get("pid")
    # One delivery process per run at a time: after a crash, the orphaned one
    # finishes before a resumed run's starts (or `sync` runs), so no event is
    # delivered twice and no backend run is closed under its successor.
    lock = _lock_run(run_dir)
    journal = Journal(run_dir / JOURNAL_FILE)
    found = discover()
    options, missing = {}, []
    for name, raw in setup.get("backends", {}).items():
        if name in found and found[name].available:
            options[name] = _validate_options(found[name], raw)
        else:
            # Imported by the training script but not installed: this process
            # finds plugins through entry points (or PYTHONPATH) only.
            missing.append(name)
            journal.register_backend(name)
            _log.error("backend %r is not available in the delivery process (%s); its events stay in the "
                       "journal. Install it as a distribution (or put it on PYTHONPATH), then: foundry-track sync "
                       "%s --backend %s", name, found[name].problem if name in found else "not installed",
                       run_dir, name)
    dispatcher = start_dispatcher(journal, info, options, data.get("backend_ids", {}),
                                  fallback=setup.get("fallback"), start_timeout=float(setup.get("start_timeout", 60)),
                                  strict=bool(setup.get("strict", False)))
    stop = threading.Event()
    follower = threading.Thread(target=_follow, args=(journal, stop), name="foundry-track-follow", daemon=True)
    follower.start()
    line = lines.next(parent)
    orphaned = line is None
    if orphaned:
        message = {"finish": "killed", "deadline": time.time() + float(data.get("flush_timeout", 30.0))}
    else:
        message = json.loads(line)
    stop.set()
    follower.join()
    journal.refresh()  # the training process committed everything before asking to finish
    undelivered = dispatcher.finish(message["finish"], max(0.0, float(message["deadline"]) - time.time()))
    undelivered.update({n: max(0, journal.last_seq - journal.position(n)) for n in missing})
    journal.close()
    if orphaned and _read_run_file(run_dir).get("pid") == owner:  # nobody else will close the run
        _update_run_file(run_dir, status="killed", finished=time.time(), undelivered=undelivered)
    error = f"{type(dispatcher.error).__name__}: {dispatcher.error}" if dispatcher.error is not None else None
    try:
        with _stdout_lock:
            channel.write(json.dumps({"undelivered": undelivered, "error": error}) + "\n")
            channel.flush()
            channel.close()
    except (BrokenPipeError, OSError):
        pass
    if lock is not None:
        lock.close()
    if any(w.thread is not None and w.thread.is_alive() for w in dispatcher.workers.values()):
        # A backend still stuck in a call past the deadline: its SDK's exit
        # handlers could hang too, and its events are safe in the journal.
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
