""":class:`~foundry_track.integrations.lightning.FoundryTrackLogger` for the
``pytorch_lightning`` package (``import pytorch_lightning as pl``)::

    from foundry_track.integrations.pytorch_lightning import FoundryTrackLogger

    trainer = pl.Trainer(logger=FoundryTrackLogger("configs/exp.yaml"))
"""

from __future__ import annotations

try:
    from pytorch_lightning.loggers import Logger as _Logger
except ImportError:
    raise ImportError("foundry_track.integrations.pytorch_lightning needs pytorch_lightning: "
                      "pip install pytorch-lightning (or use foundry_track.integrations.lightning with lightning)") from None

from foundry_track.integrations.lightning import LoggerMixin

__all__ = ["FoundryTrackLogger"]


class FoundryTrackLogger(LoggerMixin, _Logger):
    """pytorch_lightning logger: one foundry-track run, every backend."""
