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
    from foundry_track.config import TrackingConfig
    from foundry_track.errors import (
        BackendError,
        ConfigError,
        FoundryTrackError,
        MissingDependency,
        PluginError,
        RunDirError,
        TransientError,
    )
    from foundry_track.events import DoctorCheck
    from foundry_track.plugins import import_sdk
    from foundry_track.run import Run
    from foundry_track.start import init, sync

__all__ = [
    "init",
    "sync",
    "Run",
    "TrackingConfig",
    "FoundryTrackError",
    "ConfigError",
    "PluginError",
    "BackendError",
    "TransientError",
    "RunDirError",
    "MissingDependency",
    "DoctorCheck",
    "hookimpl",
    "import_sdk",
    "__version__",
]

__version__ = "0.1.0"

#: Mark a backend's methods as hook implementations: ``@foundry_track.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

_LAZY = {
    "init": "foundry_track.start",
    "sync": "foundry_track.start",
    "Run": "foundry_track.run",
    "TrackingConfig": "foundry_track.config",
    "FoundryTrackError": "foundry_track.errors",
    "ConfigError": "foundry_track.errors",
    "PluginError": "foundry_track.errors",
    "BackendError": "foundry_track.errors",
    "TransientError": "foundry_track.errors",
    "RunDirError": "foundry_track.errors",
    "MissingDependency": "foundry_track.errors",
    "DoctorCheck": "foundry_track.events",
    "import_sdk": "foundry_track.plugins",
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
