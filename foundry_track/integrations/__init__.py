"""Integrations: other libraries' APIs, sent to a foundry-track run.

Each module here imports the library it integrates only when it is used, so
importing :mod:`foundry_track` (or this package) never loads a tracker's SDK.

- :mod:`foundry_track.integrations.wandb`: the ``wandb`` module's own calls
  (``wandb.log``, ``wandb.log_artifact``, ``wandb.alert``, ``wandb.watch``)
  made inside a foundry-track run go to that run, and so to every backend.
"""

from __future__ import annotations

__all__: list[str] = []
