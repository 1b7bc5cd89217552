"""Finding backends in the ``foundry_track`` entry-point group and wiring them
into a pluggy PluginManager.

Loud when loading: an entry point that fails to import is kept with its
traceback (the others still load), a misspelled hook is an error naming the
plugin. Quiet when calling: the dispatcher talks to each backend through
:class:`BackendHooks`, never through the ``Any``-typed ``pm.hook``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Final, Iterator, Mapping, Sequence, cast

import pluggy
from pydantic import BaseModel, ConfigDict

from foundry_track import hookspecs
from foundry_track.errors import PluginError

if TYPE_CHECKING:
    from pathlib import Path

    from foundry_track.events import (
        AlertEvent,
        ArtifactEvent,
        DoctorCheck,
        HistogramEvent,
        ImageEvent,
        MetricRow,
        ParamValue,
        RunInfo,
        Status,
        TableEvent,
        TextEvent,
    )

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackendInfo",
    "PluginError",
    "discover",
    "build_plugin_manager",
    "BackendHooks",
    "NoOptions",
    "import_sdk",
]

ENTRY_POINT_GROUP: Final = "foundry_track"
HOOK_NAMES: Final = tuple(hookspecs.__all__)
_log = logging.getLogger("foundry_track")


_SDK_IMPORT: Final = threading.Lock()


def import_sdk(name: str) -> ModuleType:
    """Import a tracker's SDK (or a module that imports one) from a hook, one
    SDK at a time.

    Call it inside ``tracker_start``, not at module level, and for any of the
    SDK's submodules a hook needs (``import_sdk("sdk.lib.urls")``, not a bare
    ``from sdk.lib import urls``). Why: each backend
    starts on its own thread, so two SDKs may be imported at once, and numpy's
    lazily imported submodules are not safe to import from two threads (seen:
    MLflow's import of scipy and another backend's import of numpy at once
    ended in a ``RecursionError`` in ``numpy.__getattr__`` importing
    ``numpy.linalg``, and MLflow did not start). An SDK already imported
    returns at once. The first call imports numpy whole (when installed) for
    the SDKs that load it lazily later.
    """
    with _SDK_IMPORT:
        _import_shared()
        try:
            return _import_clean(name)
        except Exception as exc:  # noqa: BLE001 - retried once, then raised as it was
            # Another thread's import may have met this one half-done (Python
            # then hands one of them a partial module). Retrying at once, from
            # a clean slate, usually finds the other import finished.
            _log.debug("importing %s failed (%s: %s); trying once more", name, type(exc).__name__, exc)
            return _import_clean(name)


def _import_clean(name: str) -> ModuleType:
    """Import ``name``; if that fails, forget what it left of its package.

    Why: a failed import removes the package from ``sys.modules`` but keeps
    the submodules it had finished, and a second import then gets a package
    without them as attributes (seen: W&B's retry after a failed first import
    raised "partially initialized module 'wandb' has no attribute 'errors'",
    every time, so the backend never started)."""
    package = name.partition(".")[0]
    if package not in sys.modules:
        # What an earlier failed import of the package left (one made outside
        # import_sdk, e.g. a plugin's own `from wandb.sdk.lib import urls` in a
        # try/except), or the retry below meets the same half-empty package.
        _forget(package, set(sys.modules))
    before = set(sys.modules)
    try:
        return importlib.import_module(name)
    except BaseException:
        _forget(package, set(sys.modules) - before)
        raise


def _forget(package: str, modules: set[str]) -> None:
    """Drop ``package`` and its submodules among ``modules`` from ``sys.modules``."""
    for module in modules:
        if module == package or module.startswith(package + "."):
            sys.modules.pop(module, None)


# What the SDKs import lazily, outside any import_sdk: W&B loads numpy on
# first use, scipy (MLflow's) runs `from numpy import *`, which imports these.
_SHARED_MODULES: Final = ("numpy", "numpy.linalg", "numpy.fft", "numpy.random", "numpy.testing")


@lru_cache(maxsize=None)
def _import_shared() -> None:
    """numpy, whole, before the first SDK: once it is in ``sys.modules`` no
    thread can meet it half-imported (seen: W&B's lazy numpy load on one
    thread while TensorBoard's protos imported numpy on another ended in
    numpy's "partially initialized module" ImportError)."""
    for module in _SHARED_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            return  # no numpy: nothing to race on


class NoOptions(BaseModel):
    """Options of a backend that declares none: any key is an error."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """One entry point of the ``foundry_track`` group, loaded or not."""

    name: str
    value: str
    distribution: str | None
    version: str | None
    plugin: Any | None  # the loaded class or module
    error: str | None  # traceback of a failed import
    unavailable: str | None  # why it cannot run here, with the fix

    @property
    def available(self) -> bool:
        return self.plugin is not None and self.error is None and self.unavailable is None

    @property
    def problem(self) -> str | None:
        if self.error is not None:
            return f"failed to load entry point {self.name} = {self.value}:\n{self.error}"
        return self.unavailable


def _env_list(name: str) -> set[str]:
    return {item.strip() for item in os.environ.get(name, "").split(",") if item.strip()}


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, metadata.EntryPoint]:
    """The group's entry points by name, without loading them (a cheap scan)."""
    blocked = _env_list("FOUNDRY_TRACK_DISABLE_PLUGINS")
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        # First distribution on sys.path wins, like importlib itself.
        if ep.name not in blocked and ep.name not in found:
            found[ep.name] = ep
    return found


_loaded: dict[tuple[str, str], BackendInfo] = {}


def _load(ep: metadata.EntryPoint) -> BackendInfo:
    """Import one entry point and ask it whether it can run here (cached per process)."""
    key = (ep.name, ep.value)
    if key in _loaded:
        return _loaded[key]
    dist = getattr(ep, "dist", None)
    dist_name = dist.metadata["Name"] if dist is not None else None
    version = dist.version if dist is not None else None
    try:
        plugin = ep.load()
    except Exception:  # noqa: BLE001 - a broken plugin must not stop the others
        info = BackendInfo(ep.name, ep.value, dist_name, version, None, traceback.format_exc(), None)
    else:
        try:
            unavailable = _call_static(plugin, "tracker_unavailable", ep.name)
        except PluginError as exc:
            info = BackendInfo(ep.name, ep.value, dist_name, version, None, str(exc), None)
        else:
            info = BackendInfo(ep.name, ep.value, dist_name, version, plugin, None, unavailable)
    _loaded[key] = info
    return info


class _Backends(Mapping[str, BackendInfo]):
    """The discovered backends by name; a backend's module is imported only when
    its entry is looked up, so ``init`` imports the backends it uses and no others."""

    def __init__(self, entry_points: Mapping[str, metadata.EntryPoint]) -> None:
        self._entry_points = entry_points

    def __getitem__(self, name: str) -> BackendInfo:
        return _load(self._entry_points[name])

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entry_points))

    def __len__(self) -> int:
        return len(self._entry_points)


def discover(*, refresh: bool = False) -> Mapping[str, BackendInfo]:
    """Every backend in the entry-point group, by name (cached per process).

    Looking a name up loads that backend only. ``FOUNDRY_TRACK_DISABLE_PLUGINS=a,b``
    hides entry points by name, a kill switch for a broken third-party plugin.
    """
    if refresh:
        _entry_points.cache_clear()
        _loaded.clear()
        _static_manager.cache_clear()
    return _Backends(_entry_points())


def instantiate(info: BackendInfo) -> Any:
    """One plugin object per run: a class is instantiated, a module is used as is."""
    if info.plugin is None:
        raise PluginError(info.problem or f"backend {info.name!r} is not loaded")
    return info.plugin() if inspect.isclass(info.plugin) else info.plugin


@lru_cache(maxsize=None)
def _static_manager(plugin: Any, name: str) -> pluggy.PluginManager:
    """A PluginManager holding one fresh instance of ``plugin``, for its
    discovery hooks (made once per plugin; the contract is checked on the way)."""
    obj = plugin() if inspect.isclass(plugin) else plugin
    return build_plugin_manager({name: obj}, trace=False)


def _call_static(plugin: Any, hook_name: str, name: str) -> Any:
    """Call a discovery hook (``tracker_unavailable``, ``tracker_options_model``)."""
    return getattr(_static_manager(plugin, name).hook, hook_name)()


def options_model(info: BackendInfo) -> type[BaseModel]:
    model = _call_static(info.plugin, "tracker_options_model", info.name)
    return model if model is not None else NoOptions


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def _check_contract(name: str, plugin: Any, pm: pluggy.PluginManager) -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"backend {name!r}: {exc}") from exc
    registered = {hook_name for hook_name, hook in vars(pm.hook).items()
                  if isinstance(hook, pluggy.HookCaller)
                  and any(impl.plugin is plugin for impl in hook.get_hookimpls())}
    for attr in dir(plugin):
        if attr.startswith("tracker_") and attr not in registered and callable(getattr(plugin, attr)):
            raise PluginError(
                f"backend {name!r} defines {attr}() without @foundry_track.hookimpl, "
                f"so it would never be called. Mark it, or rename it if it is a helper."
            )


def build_plugin_manager(
    plugins: Mapping[str, Any], *, trace: bool | None = None
) -> pluggy.PluginManager:
    """A PluginManager holding one object per backend, registered under its name."""
    pm = _new_manager()
    for name, plugin in plugins.items():
        try:
            pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"backend {name!r}: {exc}") from exc
        _check_contract(name, plugin, pm)
    if trace if trace is not None else os.environ.get("FOUNDRY_TRACK_TRACE", "") not in ("", "0"):
        _add_trace(pm)
    return pm


def _add_trace(pm: pluggy.PluginManager) -> None:
    started: dict[int, float] = {}
    trace_log = logging.getLogger("foundry_track.trace")
    if not trace_log.handlers and not logging.getLogger().handlers:
        # Asking for a trace means wanting to see it, even with logging unconfigured.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("foundry-track trace: %(message)s"))
        trace_log.addHandler(handler)
    trace_log.setLevel(logging.INFO)

    def before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        started[id(kwargs)] = time.perf_counter()

    def after(outcome: pluggy.Result[Any], hook_name: str, impls: Sequence[pluggy.HookImpl],
              kwargs: Mapping[str, Any]) -> None:
        elapsed = time.perf_counter() - started.pop(id(kwargs), time.perf_counter())
        size = next((len(v) for v in kwargs.values() if isinstance(v, (list, tuple, dict))), 1)
        failed = " FAILED" if outcome.exception is not None else ""
        for impl in impls:
            trace_log.info(
                "%s.%s batch=%d %.3f ms%s", impl.plugin_name, hook_name, size, elapsed * 1e3, failed
            )

    pm.add_hookcall_monitoring(before, after)


class BackendHooks:
    """Typed calls into exactly one backend of a PluginManager.

    pluggy stops at the first exception of a multi-plugin call, so the
    dispatcher never calls ``pm.hook.X`` for all backends at once: it calls each
    backend through its own subset caller and handles its errors alone.
    """

    __slots__ = ("name", "implemented", "_callers")

    def __init__(self, pm: pluggy.PluginManager, name: str) -> None:
        plugin = pm.get_plugin(name)
        others = [p for n, p in pm.list_name_plugin() if n != name]
        self.name = name
        self._callers: dict[str, Callable[..., Any]] = {}
        self.implemented: frozenset[str] = frozenset(
            hook for hook in HOOK_NAMES
            if any(impl.plugin is plugin for impl in getattr(pm.hook, hook).get_hookimpls())
        )
        for hook in self.implemented:
            self._callers[hook] = pm.subset_hook_caller(hook, others) if others else getattr(pm.hook, hook)

    def _call(self, hook: str, **kwargs: Any) -> Any:
        caller = self._callers.get(hook)
        if caller is None:
            return None
        result = caller(**kwargs)
        # firstresult hooks give the value; the others a one-item list.
        if isinstance(result, list):
            return result[0] if result else None
        return result

    # One typed method per hook, so mypy checks every call site; a hook the
    # backend does not implement is a no-op returning None.

    def options_model(self) -> type[BaseModel] | None:
        return cast("type[BaseModel] | None", self._call("tracker_options_model"))

    def unavailable(self) -> str | None:
        return cast("str | None", self._call("tracker_unavailable"))

    def doctor(self, options: BaseModel, runs_dir: Path, fallback: str | None, start_timeout: float,
               timeout: float, check_disk: Callable[[str, Path], None]) -> list[DoctorCheck]:
        return list(self._call("tracker_doctor", options=options, runs_dir=runs_dir, fallback=fallback,
                               start_timeout=start_timeout, timeout=timeout, check_disk=check_disk) or [])

    def start(self, run: RunInfo, options: BaseModel, resume_state: Mapping[str, str]) -> Mapping[str, Any] | None:
        return cast("Mapping[str, Any] | None",
                    self._call("tracker_start", run=run, options=options, resume_state=dict(resume_state)))

    def log_metrics(self, rows: Sequence[MetricRow]) -> None:
        self._call("tracker_log_metrics", rows=rows)

    def log_params(self, params: Mapping[str, ParamValue]) -> None:
        self._call("tracker_log_params", params=params)

    def log_image(self, image: ImageEvent) -> None:
        self._call("tracker_log_image", image=image)

    def log_histogram(self, histogram: HistogramEvent) -> None:
        self._call("tracker_log_histogram", histogram=histogram)

    def log_table(self, table: TableEvent) -> None:
        self._call("tracker_log_table", table=table)

    def log_text(self, text: TextEvent) -> None:
        self._call("tracker_log_text", text=text)

    def log_artifact(self, artifact: ArtifactEvent) -> None:
        self._call("tracker_log_artifact", artifact=artifact)

    def alert(self, alert: AlertEvent) -> None:
        self._call("tracker_alert", alert=alert)

    def flush(self) -> Mapping[str, str] | None:
        return cast("Mapping[str, str] | None", self._call("tracker_flush"))

    def finish(self, status: Status, complete: bool) -> None:
        self._call("tracker_finish", status=status, complete=complete)
