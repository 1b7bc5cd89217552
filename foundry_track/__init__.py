"""foundry-track: log once from a training loop; every tracker gets every event.

>>> import foundry_track as ft
>>> with ft.init("configs/exp.yaml") as run:          # doctest: +SKIP
...     run.log({"train/loss": 0.5}, step=0)

Importing this package loads no tracker SDK and no torch; the public names are
imported on first use, so ``import foundry_track`` itself stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

from foundry_track.hookspecs import PROJECT_NAME

if TYPE_CHECKING:
    from foundry_track.config import ConfigError, TrackingConfig
    from foundry_track.dispatcher import BackendError, TransientError
    from foundry_track.plugins import PluginError
    from foundry_track.run import Run, init, sync

__all__ = [
    "init",
    "sync",
    "Run",
    "TrackingConfig",
    "ConfigError",
    "PluginError",
    "BackendError",
    "TransientError",
    "hookimpl",
    "__version__",
]

__version__ = "0.1.0"

#: Mark a backend's methods as hook implementations: ``@foundry_track.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

_LAZY = {
    "init": "foundry_track.run",
    "sync": "foundry_track.run",
    "Run": "foundry_track.run",
    "TrackingConfig": "foundry_track.config",
    "ConfigError": "foundry_track.config",
    "PluginError": "foundry_track.plugins",
    "BackendError": "foundry_track.dispatcher",
    "TransientError": "foundry_track.dispatcher",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'foundry_track' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
