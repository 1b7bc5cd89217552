"""The ``wandb`` module's own calls, sent to a foundry-track run.

Code written for W&B calls the SDK's module-level functions: ``wandb.log``,
``wandb.log_artifact``, ``wandb.alert``, ``wandb.watch``. Without
``wandb.init()`` in this process (foundry-track's W&B backend runs the SDK in
its delivery process, with a run of its own) they raise "You must call
wandb.init() before ...". While a run is bridged, those four are replaced by
functions that make the matching :class:`~foundry_track.Run` call, so the
event reaches **every** backend of the run (TensorBoard, MLflow, ...), and
W&B's backend writes it into the same W&B run as the rest::

    from foundry_track.integrations import wandb as ft_wandb

    with ft_wandb.init("configs/exp.yaml") as run:      # foundry_track.init + install(run)
        import wandb
        wandb.log({"charts/loss_curve": wandb.Image(plt)})
        wandb.alert(title="High Loss", text="...", level=wandb.AlertLevel.WARN)

What each becomes: numbers -> ``run.log``; ``wandb.Image`` (a figure, ``plt``,
PIL, an array, a path) -> ``run.log_image``; ``wandb.Table`` ->
``run.log_table``; ``wandb.Histogram`` -> ``run.log_histogram``; a string ->
``run.log_text``; ``wandb.Artifact`` built with ``add_dir``/``add_file``, or a
path -> ``run.log_artifact``; ``wandb.alert`` -> ``run.alert`` (any
``wandb.AlertLevel``); ``wandb.watch`` -> ``run.watch``.

The SDK is not imported by this module: when the run's backends are delivered
by threads of this process (``delivery: thread``), :func:`init` imports it
first, on the calling thread, so no worker thread is half-way through
importing it when user code does (that made ``import wandb`` fail with
"partially initialized module"). Otherwise the functions are replaced when
user code imports ``wandb`` (an import hook), and a training process that
never imports it never loads it.

The bridge follows the last run installed that is still live. Once it has
finished, the next call puts W&B's own functions back (they raise as after
``wandb.finish()``); :func:`uninstall` does so at once. A ``wandb.init()``
called in this process wins: its run's functions are left alone.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, Final

from foundry_track.config import TrackingConfig, load_config
from foundry_track.integrations._wandb_values import log_values, log_wandb_artifact
from foundry_track.run import Run
from foundry_track.start import init as _init

__all__ = ["BRIDGED", "import_sdk", "init", "install", "installed_run", "uninstall"]

#: The ``wandb`` module's functions that the bridge replaces while a run is installed.
BRIDGED: Final = ("log", "log_artifact", "alert", "watch")

_log = logging.getLogger("foundry_track")
# Guards the state below. Never held while importing wandb: the import hook
# takes it while Python holds wandb's module lock.
_lock = threading.RLock()
_runs: list[Run] = []  # installed runs, the most recent last
_originals: dict[str, Any] = {}  # wandb's own functions, put back by _restore


# --------------------------------------------------------------------------- #
# Installing
# --------------------------------------------------------------------------- #


def import_sdk() -> ModuleType:
    """``import wandb`` on this thread (call it before any thread could import it)."""
    return importlib.import_module("wandb")


def init(config: str | os.PathLike[str] | Mapping[str, Any] | TrackingConfig | None = None, *,
         resume: str | os.PathLike[str] | None = None, params: Mapping[str, Any] | None = None,
         **overrides: Any) -> Run:
    """:func:`foundry_track.init`, then :func:`install` the run.

    When the W&B backend will run in this process (``delivery: thread``), the
    SDK is imported here first, before the backend's worker thread imports it.
    """
    if _sdk_runs_here(config, overrides):
        try:
            import_sdk()
        except ImportError:
            pass  # init names the missing package and the install command
    run = _init(config, resume=resume, params=params, **overrides)
    install(run)
    return run


def _sdk_runs_here(config: str | os.PathLike[str] | Mapping[str, Any] | TrackingConfig | None,
                   overrides: Mapping[str, Any]) -> bool:
    try:
        cfg = load_config(config)
        if overrides:
            cfg = TrackingConfig.model_validate({**cfg.model_dump(), **overrides})
    except Exception:  # noqa: BLE001 - init reports the problem itself
        return False
    return cfg.mode != "disabled" and cfg.delivery == "thread" and "wandb" in cfg.backends


def install(run: Run) -> None:
    """Send ``wandb.log``/``log_artifact``/``alert``/``watch`` to ``run`` from now on.

    If ``wandb`` is not imported yet, it is patched when it is. With
    ``delivery: thread`` and a W&B backend, import it (:func:`import_sdk`)
    before ``foundry_track.init``, or use :func:`init`, which does.
    """
    with _lock:
        if run not in _runs:
            _runs.append(run)
        sdk = sys.modules.get("wandb")
        if sdk is not None and hasattr(sdk, "log"):
            _patch(sdk)
        elif _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)


def uninstall(run: Run | None = None) -> None:
    """Stop sending ``wandb.*`` calls to ``run`` (to any run, without one). When no
    installed run is left, W&B's own functions are put back."""
    with _lock:
        _runs[:] = [r for r in _runs if run is not None and r is not run]
        if not _runs:
            _restore()


def installed_run() -> Run | None:
    """The run ``wandb.*`` calls go to now (None when none is live)."""
    with _lock:
        while _runs and _finished(_runs[-1]):
            _runs.pop()
        if not _runs:
            _restore()
            return None
        return _runs[-1]


def _finished(run: Run) -> bool:
    # A disabled run (no journal) is never "live" but stays installed: its calls are no-ops.
    return run.enabled and run.finished


def _patch(sdk: ModuleType) -> None:
    if getattr(sdk, "run", None) is not None:
        _log.warning("wandb.init() was called in this process: wandb.log and friends go to that W&B run, "
                     "not to the foundry-track run")
        return
    for name in BRIDGED:
        current = getattr(sdk, name, None)
        if current is not _BRIDGE[name]:
            _originals[name] = current
            setattr(sdk, name, _BRIDGE[name])


def _restore() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    sdk = sys.modules.get("wandb")
    for name, original in _originals.items():
        if sdk is not None and getattr(sdk, name, None) is _BRIDGE[name]:
            setattr(sdk, name, original)
    _originals.clear()


class _PatchingLoader(importlib.abc.Loader):
    """wandb's own loader, plus the patch once its ``__init__`` has run."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._inner.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        with _lock:
            if _FINDER in sys.meta_path:
                sys.meta_path.remove(_FINDER)
            if _runs:
                _patch(module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, get_code...
        return getattr(self._inner, name)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds ``wandb`` with the other finders and wraps its loader in :class:`_PatchingLoader`."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "wandb":
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: importlib.machinery.ModuleSpec | None = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


_FINDER: Final = _PatchOnImport()


# --------------------------------------------------------------------------- #
# The functions put in the wandb module
# --------------------------------------------------------------------------- #


def _sdk() -> Any:
    return sys.modules["wandb"]


def log(data: Mapping[str, Any], step: int | None = None, commit: bool | None = None,
        sync: bool | None = None) -> None:
    """``wandb.log``: numbers, images, tables, histograms and text, to every backend.

    ``commit`` is accepted and ignored: a step's values are merged by the
    backends (W&B writes one row per step). Without ``step``, numbers go to the
    run's next step and media to the step the numbers took.
    """
    run = installed_run()
    if run is None:
        _sdk().log(data, step=step, commit=commit)  # W&B's own: raises without wandb.init()
    elif run.enabled:
        log_values(run, _sdk(), data, step)


def log_artifact(artifact_or_path: Any, name: str | None = None, type: str | None = None,
                 aliases: list[str] | None = None, tags: list[str] | None = None) -> Any:
    """``wandb.log_artifact``: a ``wandb.Artifact`` (its files) or a path, to every backend
    that stores artifacts. ``aliases`` and ``tags`` are W&B's own and not sent."""
    run = installed_run()
    if run is None:
        return _sdk().log_artifact(artifact_or_path, name=name, type=type, aliases=aliases, tags=tags)
    if not run.enabled:
        return artifact_or_path
    sdk = _sdk()
    if isinstance(artifact_or_path, sdk.Artifact):
        log_wandb_artifact(run, sdk, artifact_or_path, name)
    else:
        run.log_artifact(os.fspath(artifact_or_path), type=type or "unspecified", name=name)
    return artifact_or_path


def alert(title: str, text: str, level: Any = None, wait_duration: Any = None) -> None:
    """``wandb.alert``: to every backend with alerts; ``level`` a ``wandb.AlertLevel`` or
    ``"INFO"``/``"WARN"``/``"ERROR"`` (default INFO). ``wait_duration`` is W&B's own."""
    run = installed_run()
    if run is None:
        _sdk().alert(title=title, text=text, level=level, wait_duration=wait_duration)
    else:
        run.alert(title, text, "info" if level is None else level)


def watch(models: Any, criterion: Any = None, log: str | None = "gradients", log_freq: int = 1000,
          idx: int | None = None, log_graph: bool = False) -> None:
    """``wandb.watch``: histograms of the model's gradients and/or parameters, to every backend."""
    run = installed_run()
    if run is None:
        _sdk().watch(models, criterion=criterion, log=log, log_freq=log_freq, idx=idx, log_graph=log_graph)
    elif log is not None:
        for model in models if isinstance(models, (list, tuple)) else [models]:
            run.watch(model, log=log, log_freq=log_freq)


_BRIDGE: Final[Mapping[str, Any]] = {"log": log, "log_artifact": log_artifact, "alert": alert, "watch": watch}
