"""In-process delivery: one worker thread per backend, fed from the journal.

This is ``delivery: thread`` (the workers run in the training process) and
also what the delivery process runs (:mod:`foundry_track.delivery.child`):
both build the backends' workers with :func:`start_dispatcher`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Mapping

from pydantic import BaseModel, ValidationError

from foundry_track.dispatcher import Dispatcher, Worker
from foundry_track.errors import ConfigError, format_validation_error
from foundry_track.events import RunInfo
from foundry_track.journal import Journal
from foundry_track.plugins import BackendHooks, BackendInfo, build_plugin_manager, discover, instantiate, options_model
from foundry_track.rundir import add_backend, save_identity

__all__ = ["start_dispatcher", "validate_options", "hooks_for"]

_log = logging.getLogger("foundry_track")


def validate_options(info: BackendInfo, raw: Mapping[str, Any]) -> BaseModel:
    model = options_model(info)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"tracking.backends.{info.name}: expected a mapping of options, got {raw!r}")
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, f"tracking.backends.{info.name}")) from None


def hooks_for(info: BackendInfo) -> BackendHooks:
    """The backend's typed hooks. Each backend gets a PluginManager of its own:
    a fallback added mid-run then never shows up in another backend's calls,
    and one backend's hook-call monitoring (``FOUNDRY_TRACK_TRACE``) stays its own."""
    plugin = instantiate(info)
    pm = build_plugin_manager({info.name: plugin})
    return BackendHooks(pm, info.name)


def start_dispatcher(journal: Journal, info: RunInfo, options: Mapping[str, BaseModel],
                     backend_ids: Mapping[str, Mapping[str, str]], *, fallback: str | None, start_timeout: float,
                     strict: bool, interval: float = 0.0) -> Dispatcher:
    """Start one worker per backend (and the fallback when one cannot start),
    in this process: what ``init`` does, and the delivery process."""
    run_dir = info.dir
    found = discover()
    fallback_lock = threading.Lock()

    def start_fallback(failed: str) -> Worker | None:
        name_ = fallback
        if name_ is None or name_ == failed:
            return None
        with fallback_lock:
            existing = dispatcher.workers.get(name_)
            if existing is not None:  # configured too, or switched on already
                return existing if existing.state != "start_failed" else None
            fb = found.get(name_)
            if fb is None or not fb.available:
                _log.warning("fallback backend %r is not available: %s", name_, fb.problem if fb else "not found")
                return None
            fb_options = validate_options(fb, {})
            add_backend(run_dir, name_, {})
            return dispatcher.add(name_, hooks_for(fb), fb_options, backend_ids.get(name_, {}))

    dispatcher = Dispatcher(
        journal, info, start_timeout=start_timeout, strict=strict, fallback=start_fallback,
        on_identity=lambda n, ident: save_identity(run_dir, n, ident), retry_start=True, interval=interval,
    )
    hooks = {name_: hooks_for(found[name_]) for name_ in options}
    for name_, opts in options.items():
        dispatcher.add(name_, hooks[name_], opts, backend_ids.get(name_, {}))
    return dispatcher
