"""Step 1 of the kit, the contract: the plugin loads into a PluginManager, no hook
argument has a default, the discovery hooks return what the hookspec says, and
the options validate."""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from foundry_track.testing.report import Checker

if TYPE_CHECKING:
    from pydantic import BaseModel

    from foundry_track.plugins import BackendHooks

__all__ = ["Loaded", "load", "plugin_name"]

_CASE: Final = "contract"


@dataclass(frozen=True)
class Loaded:
    """A backend that passed the contract: how to make a fresh instance, and its validated options."""

    factory: Callable[[], Any]
    options: BaseModel


def plugin_name(plugin: Any) -> str:
    """The name a class or module is registered under when none is given."""
    return str(getattr(plugin, "__name__", type(plugin).__name__)).lower()


def _factory(checker: Checker, backend: Any) -> Callable[[], Any] | None:
    """How to make an instance: through the entry point for a name, else from the class or module."""
    from foundry_track.plugins import discover, instantiate

    if not isinstance(backend, str):
        return (lambda: backend()) if inspect.isclass(backend) else (lambda: backend)
    info = discover().get(backend)
    if info is None:
        checker.problem(_CASE, None, f"no backend named {backend!r} in the 'foundry_track' entry-point "
                        f"group (found: {', '.join(discover()) or 'none'}); is the distribution installed?")
        return None
    if info.plugin is None:
        checker.problem(_CASE, None, info.problem or "the entry point did not load")
        return None
    return lambda: instantiate(info)


def load(checker: Checker, backend: Any, raw_options: dict[str, Any]) -> Loaded | None:
    """Check the contract; return the loaded backend, or None (with the problems reported)."""
    from foundry_track.plugins import BackendHooks, PluginError, build_plugin_manager

    factory = _factory(checker, backend)
    if factory is None:
        return None
    try:
        pm = build_plugin_manager({checker.name: factory()}, trace=False)
    except PluginError as exc:
        checker.problem(_CASE, None, str(exc))
        return None
    except Exception as exc:  # noqa: BLE001 - a constructor that raises
        checker.problem(_CASE, None, f"making an instance failed: {type(exc).__name__}: {exc}",
                        traceback.format_exc())
        return None
    hooks = BackendHooks(pm, checker.name)
    checker.report.implemented = hooks.implemented
    for hook in sorted(hooks.implemented):
        for impl in getattr(pm.hook, hook).get_hookimpls():
            params = inspect.signature(impl.function).parameters.values()
            defaults = [p.name for p in params if p.default is not inspect.Parameter.empty]
            if defaults:
                checker.problem(_CASE, hook, f"hook arguments have defaults ({', '.join(defaults)}): pluggy may "
                                "not pass them (behaviour differs between pluggy versions); remove the defaults")
    if not any(hook.startswith("tracker_log_") or hook == "tracker_alert" for hook in hooks.implemented):
        checker.advise("the backend implements no tracker_log_* hook and no tracker_alert: it receives no events")
    if not _available(checker, hooks):
        return None
    options = _options(checker, hooks, raw_options)
    return None if options is None else Loaded(factory, options)


def _available(checker: Checker, hooks: BackendHooks) -> bool:
    """``tracker_unavailable`` returns None, or a reason (with the install command) that ends the check."""
    try:
        reason: object = hooks.unavailable()
    except Exception as exc:  # noqa: BLE001
        checker.problem(_CASE, "tracker_unavailable", f"raised {type(exc).__name__}: {exc}", traceback.format_exc())
        return False
    if reason is None:
        return True
    if not isinstance(reason, str):
        checker.problem(_CASE, "tracker_unavailable", f"must return None or a str, returned {reason!r}")
    else:
        if "pip install" not in reason:
            checker.advise("tracker_unavailable's reason should contain the exact install command, "
                           "e.g. pip install 'foundry-track[NAME]'")
        checker.problem(_CASE, "tracker_unavailable", f"the backend cannot run here: {reason}")
    return False


def _options(checker: Checker, hooks: BackendHooks, raw_options: dict[str, Any]) -> BaseModel | None:
    """``tracker_options_model`` returns a pydantic model (or None), and the kit's options validate."""
    from pydantic import BaseModel, ValidationError

    from foundry_track.plugins import NoOptions

    hook = "tracker_options_model"
    try:
        model: object = hooks.options_model()
    except Exception as exc:  # noqa: BLE001
        checker.problem(_CASE, hook, f"raised {type(exc).__name__}: {exc}", traceback.format_exc())
        return None
    if model is None:
        model = NoOptions  # declares no options: gets no advice either
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        checker.problem(_CASE, hook, f"must return a pydantic BaseModel subclass, returned {model!r}")
        return None
    undocumented = [n for n, f in model.model_fields.items() if not f.description]
    if undocumented:
        checker.advise(f"options without a description ({', '.join(undocumented)}): give every field "
                       "Field(description=...) so users can read what it does")
    if model.model_config.get("extra") != "forbid":
        checker.advise("the options model accepts unknown keys: declare "
                       "model_config = ConfigDict(extra='forbid') so a typo is reported")
    try:
        return model.model_validate(raw_options)
    except ValidationError as exc:
        checker.problem(_CASE, hook, f"the options given to the kit do not validate: {exc}")
        return None
