"""Bring your history: runs of TensorBoard, W&B and MLflow as foundry-track runs.

Each source module turns what a tracker wrote into :class:`SourceRun` objects
(read with that tracker's own reader); :func:`import_run` writes one as a run
directory and delivers it to the configured backends, exactly as ``foundry-track
sync`` delivers a live run's journal. The SDKs are imported only when their
source is read.

- :func:`foundry_track.importers.tensorboard.runs` (``LOGDIR``)
- :func:`foundry_track.importers.wandb.runs` (``offline-run-*`` folders)
- :func:`foundry_track.importers.mlflow.runs` (``tracking_uri``, ``experiment``, ``run_id``)

The sources are a fixed set rather than an entry-point group: each needs its
own arguments on the command line, and three readers did not justify a second
plugin contract.
"""

from __future__ import annotations

from foundry_track.importers._core import Event, ImportResult, Progress, SourceRun, import_run, run_id_for

__all__ = ["Event", "ImportResult", "Progress", "SourceRun", "SOURCES", "import_run", "run_id_for"]

#: The sources ``foundry-track import`` knows, each a module of this package with a ``runs(...)`` function.
SOURCES = ("tensorboard", "wandb", "mlflow")
