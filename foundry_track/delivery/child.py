"""The delivery process itself: ``python -m foundry_track.delivery RUN_DIR``.

Started by ``init`` with ``delivery: process`` (see
:mod:`foundry_track.delivery.process` for the protocol on its stdin and
stdout). It runs the same workers as ``delivery: thread``
(:func:`foundry_track.delivery.threads.start_dispatcher`), following the
journal as the training process commits it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Final, Mapping

from pydantic import BaseModel

from foundry_track.delivery.process import CHILD_MODULE, lock_run
from foundry_track.delivery.threads import start_dispatcher, validate_options
from foundry_track.events import Status
from foundry_track.journal import JOURNAL_FILE, Journal
from foundry_track.plugins import discover
from foundry_track.rundir import read_run_file, run_info, update_run_file

__all__ = ["main"]

_log = logging.getLogger("foundry_track")
_POLL: Final = 0.02  # how often the child looks for newly committed events (delivery_interval 0)


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


def _follow(journal: Journal, stop: threading.Event, interval: float) -> None:
    """Wake the workers when the training process has committed more events.
    With a delivery interval, a worker reads the journal itself when its rest
    ends; this only wakes one that found nothing then, so a few looks per
    interval are enough."""
    poll = min(0.25, interval / 4) if interval > 0 else _POLL
    while not stop.wait(poll):
        before = journal.last_seq
        if journal.refresh() > before:
            journal.wake()


def _send(channel: IO[str], message: Mapping[str, Any]) -> None:
    try:
        with _stdout_lock:
            channel.write(json.dumps(message) + "\n")
            channel.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass  # the training process is gone


def _protocol_channel() -> IO[str]:
    """The pipe to the training process, for our JSON lines only: what the
    SDKs print (MLflow's "View run ..." lines, C libraries) goes to stderr."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return channel


def _log_to_parent(channel: IO[str], level: int) -> None:
    """foundry_track's own records go to the training process (its logging
    configuration decides what to show); the SDKs' warnings go to stderr."""
    ours = logging.getLogger("foundry_track")
    ours.addHandler(_ToParent(channel))
    ours.setLevel(level)
    ours.propagate = False
    logging.basicConfig(level=logging.WARNING, format="foundry-track delivery (pid %(process)d): %(name)s: %(message)s")


def _backend_options(backends: Mapping[str, Any], journal: Journal,
                     run_dir: Path) -> tuple[dict[str, BaseModel], list[str]]:
    """Each backend's validated options, and the backends this process cannot find."""
    found = discover()
    options: dict[str, BaseModel] = {}
    missing: list[str] = []
    for name, raw in backends.items():
        if name in found and found[name].available:
            options[name] = validate_options(found[name], raw)
            continue
        # Imported by the training script but not installed: this process
        # finds plugins through entry points (or PYTHONPATH) only. The
        # training process delivers it with threads of its own instead.
        missing.append(name)
        journal.register_backend(name)
        _log.debug("backend %r is not available in the delivery process: %s", name,
                   found[name].problem if name in found else "not installed")
    return options, missing


#: tracking.delivery_priority -> the Linux scheduling policy of the delivery process ("normal": left as it is)
_POLICIES: Final = {"idle": "SCHED_IDLE", "batch": "SCHED_BATCH"}


def _yield_to_training(priority: str) -> None:
    """Run this process (its threads, and the helper processes the SDKs start,
    which inherit it) under the scheduling policy ``tracking.delivery_priority``
    names. Delivery is throughput work; the training step is the latency that
    counts. ``idle`` (the default, SCHED_IDLE) runs it on CPU time the training
    process leaves free; ``batch`` (SCHED_BATCH) keeps a fair share but its
    wake-ups do not preempt the training thread. Measured with the 1 ms step of
    benchmarks/peers.py (W&B, TensorBoard and a local MLflow server on 2 cores):
    1.21x the untracked step with SCHED_BATCH, 1.05x with SCHED_IDLE, every
    event delivered in both. An unprivileged process cannot take a policy back,
    so it is chosen once, here."""
    name = _POLICIES.get(priority)
    policy = getattr(os, name, None) if name else None
    if name is None or policy is None:  # nothing to change, or not Linux
        return
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as exc:  # a container's seccomp profile; delivery works as before
        print(f"foundry-track delivery: could not switch to {name}: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """The delivery process: ``python -m foundry_track.delivery RUN_DIR``, started by ``init``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {CHILD_MODULE} RUN_DIR  (started by foundry_track.init with "
              "tracking.delivery: process; reads its setup from stdin)", file=sys.stderr)
        return 2
    # Ctrl-C and a scheduler's SIGTERM reach the whole process group; the
    # training process handles them (finishing the run), which needs this one alive.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    lines = _Lines()
    channel = _protocol_channel()
    setup = json.loads(lines.next(parent) or "{}")
    _yield_to_training(str(setup.get("priority", "idle")))  # before any thread or SDK process starts
    _log_to_parent(channel, int(setup.get("log_level", logging.INFO)))
    run_dir = Path(args[0]).resolve()
    data = read_run_file(run_dir)
    info = run_info(data, run_dir, resumed=data.get("resumed_at") is not None)
    owner = data.get("pid")
    # One delivery process per run at a time: after a crash, the orphaned one
    # finishes before a resumed run's starts (or `sync` runs), so no event is
    # delivered twice and no backend run is closed under its successor.
    lock = lock_run(run_dir)
    journal = Journal(run_dir / JOURNAL_FILE)
    options, missing = _backend_options(setup.get("backends", {}), journal, run_dir)
    _send(channel, {"missing": missing})  # also tells the training process this one is up
    interval = float(setup.get("interval", 0.0))
    dispatcher = start_dispatcher(journal, info, options, data.get("backend_ids", {}),
                                  fallback=setup.get("fallback"), start_timeout=float(setup.get("start_timeout", 60)),
                                  strict=bool(setup.get("strict", False)), interval=interval)
    stop = threading.Event()
    follower = threading.Thread(target=_follow, args=(journal, stop, interval), name="foundry-track-follow", daemon=True)
    follower.start()
    line = lines.next(parent)
    orphaned = line is None
    status: Status = "killed"
    deadline = time.time() + float(data.get("flush_timeout", 30.0))
    if line is not None:
        message = json.loads(line)
        status, deadline = message["finish"], float(message["deadline"])
    stop.set()
    follower.join()
    journal.refresh()  # the training process committed everything before asking to finish
    undelivered = dispatcher.finish(status, max(0.0, deadline - time.time()))
    journal.close()
    if orphaned and read_run_file(run_dir).get("pid") == owner:  # nobody else will close the run
        update_run_file(run_dir, status="killed", finished=time.time(), undelivered=undelivered)
    error = f"{type(dispatcher.error).__name__}: {dispatcher.error}" if dispatcher.error is not None else None
    _send(channel, {"undelivered": undelivered, "error": error})
    try:
        channel.close()
    except OSError:
        pass
    if lock is not None:
        lock.close()
    if any(w.thread is not None and w.thread.is_alive() for w in dispatcher.workers.values()):
        # A backend still stuck in a call past the deadline: its SDK's exit
        # handlers could hang too, and its events are safe in the journal.
        os._exit(0)
    return 0
