"""foundry-track: log once from a training loop; every tracker gets every event.

>>> import foundry_track as ft
>>> with ft.init("configs/exp.yaml") as run:          # doctest: +SKIP
...     run.log({"train/loss": 0.5}, step=0)

Importing this package loads no tracker SDK and no torch.
"""

from __future__ import annotations

import pluggy

from foundry_track.config import ConfigError, TrackingConfig
from foundry_track.dispatcher import BackendError, TransientError
from foundry_track.hookspecs import PROJECT_NAME
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
