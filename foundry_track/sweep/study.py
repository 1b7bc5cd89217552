"""Optuna, for what W&B's controller does on its server: TPE for ``method:
bayes``, successive halving for ``early_terminate: hyperband``.

Optuna is imported only when a sweep needs it (``grid`` and ``random`` never
do); its study lives in ``<sweep dir>/optuna.db`` and survives ``--resume``.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from foundry_track.errors import MissingDependency
from foundry_track.sweep.sampling import Param
from foundry_track.sweep.spec import SweepSpec

__all__ = ["INSTALL", "OPTUNA_FILE", "Study", "import_optuna", "make_pruner", "needs_optuna", "require_optuna"]

INSTALL: Final = "pip install 'foundry-track[sweep]'"
OPTUNA_FILE: Final = "optuna.db"


def needs_optuna(spec: SweepSpec) -> bool:
    return spec.method == "bayes" or spec.early_terminate is not None


def _missing(spec: SweepSpec) -> MissingDependency:
    what = "method bayes" if spec.method == "bayes" else "early_terminate: hyperband"
    return MissingDependency(f"{what} needs Optuna, which is not installed: {INSTALL}")


def require_optuna(spec: SweepSpec) -> None:
    """Fail before the sweep starts when it needs Optuna and Optuna is not there (without importing it)."""
    if needs_optuna(spec) and importlib.util.find_spec("optuna") is None:
        raise _missing(spec)


def import_optuna(spec: SweepSpec | None = None) -> Any:
    """Optuna, quiet; a missing Optuna says what to install."""
    try:
        import optuna
    except ImportError:
        if spec is not None and needs_optuna(spec):
            raise _missing(spec) from None
        raise MissingDependency(f"a sweep in a shared storage needs Optuna, which is not installed: {INSTALL}") \
            from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def make_pruner(optuna: Any, spec: SweepSpec) -> Any:
    """W&B's hyperband as Optuna's successive halving (no pruning without ``early_terminate``)."""
    et = spec.early_terminate
    if et is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=et.first_band, reduction_factor=et.eta,
                                                  min_early_stopping_rate=0)


class Study:
    """The sweep's Optuna study in ``<sweep dir>/optuna.db`` (survives --resume)."""

    def __init__(self, directory: Path, study_name: str, spec: SweepSpec, seed: int, workers: int) -> None:
        optuna = self.optuna = import_optuna(spec)
        pruner = make_pruner(optuna, spec)
        goal = spec.metric.goal if spec.metric else "minimize"
        self.study = optuna.create_study(
            storage=f"sqlite:///{(directory / OPTUNA_FILE).resolve()}", study_name=study_name,
            direction=goal, pruner=pruner, load_if_exists=True,
            sampler=optuna.samplers.RandomSampler(seed=seed),  # never asked: grid/random choose themselves
        )
        if spec.method == "bayes":
            # The seed moves on with the trials already in the study: after --resume
            # the same seed would draw the first session's start-up points again.
            # constant_liar: parallel workers do not all get the same suggestion.
            seen = len(self.study.get_trials(deepcopy=False))
            self.study.sampler = optuna.samplers.TPESampler(seed=seed + seen, constant_liar=workers > 1)

    def ask(self, params: Sequence[Param] | None, internal: Mapping[str, Any] | None) -> Any:
        """A new Optuna trial; with ``params`` it suggests them (``internal``: these values again)."""
        if params is None:
            return self.study.ask()
        dists = {p.name: d for p in params if (d := p.optuna_distribution(self.optuna)) is not None}
        if internal:
            self.study.enqueue_trial(dict(internal))
        return self.study.ask(dists)

    def tell(self, trial: Any, state: str, value: float | None) -> None:
        states = self.optuna.trial.TrialState
        if state == "finished" and value is not None and math.isfinite(value):
            self.study.tell(trial, value)
        elif state == "pruned":
            self.study.tell(trial, state=states.PRUNED)
        else:
            self.study.tell(trial, state=states.FAIL)

    def fail_leftovers(self) -> None:
        """Trials left RUNNING by a controller that was killed: they will not report again."""
        for t in self.study.get_trials(deepcopy=False, states=(self.optuna.trial.TrialState.RUNNING,)):
            self.study.tell(t.number, state=self.optuna.trial.TrialState.FAIL)
