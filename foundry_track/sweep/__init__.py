"""``foundry-track sweep``: run a W&B sweep file without a W&B server.

The file is W&B's sweep format (``program``, ``method``, ``metric``,
``parameters``, ``early_terminate``, ``command``...). Each trial runs the
program the sweep file names, the way ``wandb agent`` does (``python PROGRAM
--name=value ...``, or the file's ``command:``), as a separate process, and is
a foundry-track run of its own in the sweep's group (``tracking.group`` and
``tracking.sweep`` are the sweep id): a W&B group, an MLflow parent run with
nested child runs, TensorBoard's ``<log_dir>/<group>/<run>`` when ``log_dir``
is set, else each run's own ``tensorboard/`` folder under the sweep
directory, so ``tensorboard --logdir <sweep dir>`` shows exactly the sweep's trials.

``grid`` and ``random`` need nothing beyond the core; ``bayes`` (Optuna's TPE
sampler) and ``early_terminate: hyperband`` (Optuna's successive-halving
pruner fed by the metric as the trial logs it) import Optuna, lazily.

The modules, one job each:

- :mod:`~foundry_track.sweep.spec`: the sweep file, validated (``parse_spec``, ``load_spec``)
- :mod:`~foundry_track.sweep.sampling`: W&B's distributions, grid and random search
- :mod:`~foundry_track.sweep.study`: Optuna (bayes, hyperband)
- :mod:`~foundry_track.sweep.command`: a trial's command line, as ``wandb agent`` builds it
- :mod:`~foundry_track.sweep.watch`: following a running trial's run directory and metric
- :mod:`~foundry_track.sweep.storage`: the sweep directory, its state file, the result
- :mod:`~foundry_track.sweep.process`: a trial's process: launcher variables, process group, signals
- :mod:`~foundry_track.sweep.runner`: the processes, and ``run_sweep``
- :mod:`~foundry_track.sweep.shared`: a sweep in a shared Optuna storage (``create_sweep``, ``sweep_status``)
- :mod:`~foundry_track.sweep.agent`: ``foundry-track agent``, running a shared sweep's trials (``run_agent``)

The package imports nothing of the command line and draws nothing: the
result's ``plot_request`` tells the caller what ``foundry-track plot`` should draw.
"""

from __future__ import annotations

from foundry_track.sweep.agent import AgentResult, AgentTrial, run_agent
from foundry_track.sweep.command import build_command
from foundry_track.sweep.errors import SweepError
from foundry_track.sweep.runner import Sweep, run_sweep
from foundry_track.sweep.sampling import Param, grid_points, sample_params
from foundry_track.sweep.shared import create_sweep, display_url, sweep_status
from foundry_track.sweep.spec import ParamSpec, SweepSpec, load_spec, parse_spec
from foundry_track.sweep.storage import (
    PLOT_FILE,
    STATE_FILE,
    PlotRequest,
    SweepResult,
    Trial,
)
from foundry_track.sweep.study import INSTALL

__all__ = [
    "INSTALL",
    "AgentResult",
    "AgentTrial",
    "PLOT_FILE",
    "STATE_FILE",
    "Param",
    "ParamSpec",
    "PlotRequest",
    "Sweep",
    "SweepError",
    "SweepResult",
    "SweepSpec",
    "Trial",
    "build_command",
    "create_sweep",
    "display_url",
    "grid_points",
    "load_spec",
    "parse_spec",
    "run_agent",
    "run_sweep",
    "sample_params",
    "sweep_status",
]
