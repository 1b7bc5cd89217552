"""What the framework integrations share: a run started on demand and reopened
after it finished, numbers-only logging, and checkpoints kept for upload.

The frameworks call a logger on their main process only. ``foundry_track.init``
broadcasts the run's identity when ``torch.distributed`` is up, which would
wait forever for ranks that never call it; :func:`start_here` starts the run in
this process alone.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from foundry_track import distributed
from foundry_track.config import TrackingConfig, load_config, with_overrides
from foundry_track.events import Status
from foundry_track.run import Run
from foundry_track.rundir import RUN_FILE
from foundry_track.start import init

__all__ = ["RunHandle", "Config", "keep_for_upload", "log_numbers", "status_of"]

Config = str | os.PathLike[str] | Mapping[str, Any] | TrackingConfig | None

_log = logging.getLogger("foundry_track")
_local_lock = threading.Lock()


@contextmanager
def _this_process_only() -> Iterator[None]:
    """Hide the process group from ``init`` while it runs: only this rank calls it."""
    if not distributed.collective():
        yield
        return
    with _local_lock:
        saved = distributed._dist
        distributed._dist = lambda: None  # restored below; init takes the rank from RANK
        try:
            yield
        finally:
            distributed._dist = saved


def start_here(config: TrackingConfig, resume: str | os.PathLike[str] | None = None,
               params: Mapping[str, Any] | None = None) -> Run:
    """``foundry_track.init`` in this process only (the framework's main process)."""
    with _this_process_only():
        return init(config, resume=resume, params=params)


class RunHandle:
    """The run an integration logs to: started on first use, reopened (resumed,
    so the same tracker runs continue) when a framework logs again after
    finishing it, as Lightning does for ``fit`` then ``test``."""

    def __init__(self, config: Config, *, version: str | os.PathLike[str] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> None:
        cfg = with_overrides(load_config(config), overrides or {}, "overrides")
        self.resume: Path | None = None
        if version is not None:
            if (Path(version) / RUN_FILE).exists() or os.sep in str(version):
                self.resume = Path(version)
            else:
                cfg = cfg.model_copy(update={"run_id": str(version)})
        self.config = cfg
        self.run: Run | None = None
        self._lock = threading.Lock()
        self._close_registered = False

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (Lightning's ``ddp_spawn`` pickles the trainer's loggers): a
        copy holds no live run; a started run's copy continues it when used."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "run")}
        state["run"] = None
        if self.run is not None and self.run.dir is not None:
            state["resume"] = self.run.dir
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def live(self) -> bool:
        return self.run is not None and not self.run.finished

    def get(self, params: Mapping[str, Any] | None = None) -> Run:
        run = self.run
        if run is not None and not run.finished:
            return run
        with self._lock:
            if self.run is None:
                self.run = start_here(self.config, resume=self.resume, params=params)
            elif self.run.finished and self.run.dir is not None:
                self.run = start_here(self.config, resume=self.run.dir, params=params)
                if not self._close_registered:
                    # Registered after the core's own exit hook, so it runs first:
                    # a run reopened by ``trainer.evaluate()`` after training ends
                    # as success at exit, not as killed, unless the program failed.
                    self._close_registered = True
                    atexit.register(self._close_at_exit)
            return self.run

    def _close_at_exit(self) -> None:
        self.finish("failed" if getattr(sys, "last_value", None) is not None else "success")

    def finish(self, status: Status) -> None:
        if self.live:
            assert self.run is not None
            self.run.finish(status)


def log_numbers(run: Run, values: Mapping[str, Any], step: int | None, warned: list[str]) -> None:
    """``run.log``, dropping the values that are not numbers (a framework may hand
    over strings); the check runs only when ``run.log`` refuses the whole call."""
    try:
        run.log(values, step=step)
        return
    except TypeError:
        pass
    kept = {k: v for k, v in values.items() if not isinstance(v, (str, bytes, type(None), list, dict, tuple))}
    dropped = sorted(set(values) - set(kept))
    if dropped and not warned:
        warned.append("x")
        _log.warning("foundry-track: values that are not numbers are not logged as metrics: %s (reported once)", dropped)
    if kept:
        run.log(kept, step=step)


def keep_for_upload(run: Run, path: Path) -> Path:
    """A hard link of a checkpoint (file or folder) inside the run directory, so
    that the backends still find it after the framework deletes it (``save_top_k``,
    ``save_total_limit``). Linking copies nothing; where it is impossible (another
    file system) the original path is returned."""
    if run.dir is None:
        return path
    stamp = f"{path.stat().st_mtime_ns:x}"
    target = run.dir / "checkpoints" / stamp / path.name
    try:
        if path.is_dir():
            for source in sorted(p for p in path.rglob("*") if p.is_file()):
                _link(source, target / source.relative_to(path))
        else:
            _link(path, target)
    except OSError:
        return path
    return target


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.link(source, target)


def status_of(framework_status: str | None, exc: BaseException | None = None) -> Status:
    """A framework's end status (Lightning: ``success``/``failed``/``finished``) as a run status.
    An end while a KeyboardInterrupt is being handled is ``killed``."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "killed"
    status = (framework_status or "success").lower()
    if status in ("success", "finished", "completed"):
        return "success"
    if status in ("killed", "interrupted", "aborted"):
        return "killed"
    return "failed"
