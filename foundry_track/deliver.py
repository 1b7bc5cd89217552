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

__all__ = ["ProcessDelivery", "main"]

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
        if not self._finishing:
            code = self.process.wait()
            _log.error("foundry-track: the delivery process exited early (exit code %s; its error is above, on "
                       "stderr). Logging goes on into the journal; deliver it with: foundry-track sync %s",
                       code, self.run_dir)
        self._replies.put(None)

    def finish(self, status: str, timeout: float) -> dict[str, int]:
        """Commit the journal, ask the child to deliver the rest within ``timeout``
        seconds and close the backends; return what each backend did not get."""
        self._finishing = True
        self.journal.flush()
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps({"finish": status, "timeout": timeout}) + "\n")
            self.process.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the child is gone: what it did not deliver is counted below
        reply: dict[str, Any] | None = None
        try:
            line = self._replies.get(timeout=timeout + _GRACE)
            reply = json.loads(line) if line else None
        except (queue.Empty, ValueError):
            reply = None
        try:
            self.process.wait(timeout=_GRACE if reply else 0.1)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            _log.warning("foundry-track: the delivery process did not finish within flush_timeout; it was "
                         "stopped. Deliver the rest with: foundry-track sync %s", self.run_dir)
        if reply is not None and reply.get("error") and self.strict:
            self.error = BackendError(reply["error"])
        if reply is not None:
            return {str(k): int(v) for k, v in reply.get("undelivered", {}).items()}
        return _undelivered(self.journal, self.run_dir)


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
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The pipe to the training process carries only our JSON lines: what the
    # SDKs print (MLflow's "View run ..." lines, C libraries) goes to stderr.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    setup = json.loads(sys.stdin.readline() or "{}")
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
    )
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
    line = sys.stdin.readline()
    orphaned = not line.strip()
    message = {"finish": "killed", "timeout": data.get("flush_timeout", 30.0)} if orphaned else json.loads(line)
    stop.set()
    follower.join()
    journal.refresh()  # the training process committed everything before asking to finish
    undelivered = dispatcher.finish(message["finish"], float(message["timeout"]))
    undelivered.update({n: max(0, journal.last_seq - journal.position(n)) for n in missing})
    journal.close()
    if orphaned:  # nobody else will close the run
        _update_run_file(run_dir, status="killed", finished=time.time(), undelivered=undelivered)
    error = f"{type(dispatcher.error).__name__}: {dispatcher.error}" if dispatcher.error is not None else None
    try:
        with _stdout_lock:
            channel.write(json.dumps({"undelivered": undelivered, "error": error}) + "\n")
            channel.flush()
            channel.close()
    except (BrokenPipeError, OSError):
        pass
    if any(w.thread is not None and w.thread.is_alive() for w in dispatcher.workers.values()):
        # A backend still stuck in a call past the deadline: its SDK's exit
        # handlers could hang too, and its events are safe in the journal.
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
