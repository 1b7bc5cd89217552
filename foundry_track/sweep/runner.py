"""``foundry-track sweep``: run a W&B sweep file without a W&B server.

The file is W&B's sweep format (``program``, ``method``, ``metric``,
``parameters``, ``early_terminate``, ``command``...); each trial runs the
program the way ``wandb agent`` does, ``python PROGRAM --name=value ...``, as a
separate process, and is a foundry-track run of its own (so it reaches every
configured backend), placed and grouped through the launcher variables::

    FOUNDRY_TRACK_DIR=<sweep dir>/runs      FOUNDRY_TRACK_GROUP=<sweep id>
    FOUNDRY_TRACK_RUN_NAME=<sweep id>-trial-<n>   FOUNDRY_TRACK_TAGS=...,sweep
    FOUNDRY_TRACK_SWEEP=<sweep id>           (MLflow nests the group under a parent run)

Group = W&B group; MLflow parent run with nested child runs; TensorBoard
``<log_dir>/<group>/<run>`` when ``log_dir`` is set, else each run's own
``tensorboard/`` folder under the sweep directory, so ``tensorboard --logdir
<sweep dir>`` shows exactly the sweep's trials.

The result of a trial is its metric's **last** logged value, read back from
the trial's journal (as W&B's controller uses the run summary, which is the
last value); the best value along the way is shown too. ``grid`` and
``random`` need nothing beyond the core; ``bayes`` (Optuna's TPE sampler) and
``early_terminate: hyperband`` (Optuna's successive-halving pruner fed by the
metric as the trial logs it) import Optuna, lazily.

Everything a sweep knows lives in its directory, so ``--resume`` can finish it::

    <sweep dir>/sweep.json     the spec, options and every trial (number, state, params, metric)
    <sweep dir>/optuna.db      Optuna's study (bayes, hyperband)
    <sweep dir>/runs/          the trials' run directories
    <sweep dir>/trials/        each trial's console output
    <sweep dir>/sweep.png      the metric of every trial, as ``foundry-track plot`` draws it
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import math
import os
import random
import re
import secrets
import signal
import sqlite3
import string
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Callable, Final, Iterator, Literal, Mapping, Sequence, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from foundry_track.config import ConfigError, read_yaml
from foundry_track.history import MissingDependency, RunDirError, is_run_dir, load_run
from foundry_track.journal import JOURNAL_FILE, Journal

if TYPE_CHECKING:
    import optuna

__all__ = [
    "SweepError",
    "SweepSpec",
    "ParamSpec",
    "Param",
    "Trial",
    "SweepResult",
    "load_spec",
    "parse_spec",
    "build_command",
    "grid_points",
    "sample_params",
    "run_sweep",
    "INSTALL",
    "STATE_FILE",
]

INSTALL: Final = "pip install 'foundry-track[sweep]'"
STATE_FILE: Final = "sweep.json"
OPTUNA_FILE: Final = "optuna.db"
PLOT_FILE: Final = "sweep.png"
SWEEP_ENV: Final = "FOUNDRY_TRACK_SWEEP"  # read by the MLflow backend: nest the group under a parent run
TRAINER_MODULE: Final = "model_foundry.cli"  # takes its experiment config as `train CONFIG`
DEFAULT_COMMAND: Final = ("${env}", "${interpreter}", "${program}", "${args}")
DONE: Final = ("finished", "failed", "pruned")  # a trial in these states is not run again
STOP_GRACE: Final = 30.0  # seconds a stopped trial gets to checkpoint and close its run before SIGKILL
START_WAIT: Final = 120.0  # the most the first trial runs alone while its trackers start
_ID_ALPHABET: Final = string.ascii_lowercase + string.digits


class SweepError(ConfigError):
    """The sweep file or the options are wrong, or a sweep cannot run; the message says how to fix it."""


# --------------------------------------------------------------------------- #
# The sweep file (W&B's format), validated
# --------------------------------------------------------------------------- #

Distribution = Literal[
    "constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform", "log_uniform_values",
    "q_log_uniform", "q_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal",
]
DISTRIBUTIONS: Final = get_args(Distribution)
# Which keys each distribution takes (W&B's meaning of each).
_KEYS: Final[dict[str, frozenset[str]]] = {
    "constant": frozenset({"value"}),
    "categorical": frozenset({"values", "probabilities"}),
    **{d: frozenset({"min", "max"}) for d in ("int_uniform", "uniform", "log_uniform", "log_uniform_values")},
    **{d: frozenset({"min", "max", "q"}) for d in ("q_uniform", "q_log_uniform", "q_log_uniform_values")},
    **{d: frozenset({"mu", "sigma"}) for d in ("normal", "log_normal")},
    **{d: frozenset({"mu", "sigma", "q"}) for d in ("q_normal", "q_log_normal")},
}
_NORMAL: Final = frozenset({"normal", "q_normal", "log_normal", "q_log_normal"})
_EXP: Final = frozenset({"log_uniform", "q_log_uniform", "log_normal", "q_log_normal"})  # value = exp(draw)
_LOG_VALUES: Final = frozenset({"log_uniform_values", "q_log_uniform_values"})  # log-uniform between min and max
_QUANTISED: Final = frozenset({"q_uniform", "q_log_uniform", "q_log_uniform_values", "q_normal", "q_log_normal"})
_NAME: Final = re.compile(r"[A-Za-z_][\w.\-]*")


def _number(key: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if isinstance(value, str):  # PyYAML reads `1e-5` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    return value


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of the sweep, resolved: a W&B distribution and its numbers.

    Every distribution is drawn through an *internal* value that Optuna can
    model too, then turned into the value the program gets (:meth:`value_of`):
    an index for ``categorical``, the uniform quantile for the normal family
    (so TPE searches a bounded space while the prior stays normal), the
    exponent for ``log_uniform``; ``q_*`` rounds the result to a multiple of q.
    """

    name: str
    distribution: str
    value: Any = None
    values: tuple[Any, ...] = ()
    probabilities: tuple[float, ...] | None = None
    min: float | int | None = None
    max: float | int | None = None
    mu: float = 0.0
    sigma: float = 1.0
    q: float | int = 1

    # -- drawing ------------------------------------------------------------ #

    def draw(self, rng: random.Random) -> Any:
        """An internal value (see the class docstring); None for a constant."""
        d = self.distribution
        if d == "constant":
            return None
        if d == "categorical":
            if self.probabilities:
                return rng.choices(range(len(self.values)), weights=self.probabilities)[0]
            return rng.randrange(len(self.values))
        if d == "int_uniform":
            return rng.randint(int(self.min), int(self.max))  # type: ignore[arg-type]
        if d in _NORMAL:
            return rng.random()
        if d in _LOG_VALUES:
            return math.exp(rng.uniform(math.log(self.min), math.log(self.max)))  # type: ignore[arg-type]
        return rng.uniform(self.min, self.max)  # type: ignore[arg-type]

    def value_of(self, internal: Any) -> Any:
        """The value the program gets for an internal value."""
        d = self.distribution
        if d == "constant":
            return self.value
        if d == "categorical":
            return self.values[int(internal)]
        if d == "int_uniform":
            return int(internal)
        x = float(internal)
        if d in _NORMAL:
            u = min(max(x, 1e-12), 1 - 1e-12)  # the quantile; 0 and 1 would be infinite
            x = self.mu + self.sigma * NormalDist().inv_cdf(u)
        if d in _EXP:
            x = math.exp(x)
        if d in _QUANTISED:
            return _quantise(x, self.q)
        return x

    def sample(self, rng: random.Random) -> Any:
        return self.value_of(self.draw(rng))

    def grid(self) -> list[Any]:
        """The values a grid search takes; only discrete parameters have them."""
        d = self.distribution
        if d == "constant":
            return [self.value]
        if d == "categorical":
            return list(self.values)
        if d == "int_uniform":
            return list(range(int(self.min), int(self.max) + 1))  # type: ignore[arg-type]
        if d == "q_uniform":
            lo, hi = float(self.min), float(self.max)  # type: ignore[arg-type]
            first, last = math.ceil(lo / self.q - 1e-9), math.floor(hi / self.q + 1e-9)
            return [_quantise(k * self.q, self.q) for k in range(first, last + 1)]
        raise SweepError(
            f"parameters.{self.name}: method grid needs a finite set of values, and distribution "
            f"{self.distribution} has none; give `values: [...]` (or int_uniform / q_uniform), or use method "
            f"random or bayes"
        )

    def optuna_distribution(self, optuna: Any) -> Any:
        """Optuna's distribution of the internal value (None for a constant)."""
        d, dists = self.distribution, optuna.distributions
        if d == "constant":
            return None
        if d == "categorical":
            return dists.CategoricalDistribution(list(range(len(self.values))))
        if d == "int_uniform":
            return dists.IntDistribution(int(self.min), int(self.max))  # type: ignore[arg-type]
        if d in _NORMAL:
            return dists.FloatDistribution(0.0, 1.0)
        return dists.FloatDistribution(float(self.min), float(self.max), log=d in _LOG_VALUES)  # type: ignore[arg-type]


def _quantise(x: float, q: float | int) -> float | int:
    """``round(x / q) * q`` as W&B does; an integer q gives ints (``q: 8`` -> 8, 16, 24),
    and a float q is rounded to 12 decimals so 0.1 steps read 0.3, not 0.30000000000000004."""
    k = round(x / q)
    return int(k * q) if isinstance(q, int) else round(k * q, 12)


class ParamSpec(BaseModel):
    """One entry under ``parameters:`` (W&B's keys). The distribution is inferred as
    W&B does when omitted: ``values`` -> categorical, ``value`` -> constant, integer
    ``min``/``max`` -> int_uniform, other ``min``/``max`` -> uniform, ``mu``/``sigma`` -> normal."""

    model_config = ConfigDict(extra="forbid")

    distribution: Distribution | None = Field(None, description="W&B distribution name.")
    value: Any = Field(None, description="The one value of a constant parameter.")
    values: list[Any] | None = Field(None, min_length=1, description="Choices of a categorical parameter.")
    probabilities: list[float] | None = Field(None, description="Probability of each of `values` (random search).")
    min: Any = Field(None, description="Lower bound (for log_uniform: of the natural log).")
    max: Any = Field(None, description="Upper bound (for log_uniform: of the natural log).")
    mu: Any = Field(None, description="Mean of a normal distribution (default 0).")
    sigma: Any = Field(None, description="Standard deviation of a normal distribution (default 1).")
    q: Any = Field(None, description="Quantisation step of the q_* distributions (default 1).")
    parameters: Any = Field(None, description="Nested parameters: not supported (use dotted names).")

    _param: Param | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _resolve(self) -> ParamSpec:
        given = self.model_fields_set - {"distribution"}
        if "parameters" in given:
            raise ValueError("nested `parameters` are not supported; give each field its own dotted name "
                             "(e.g. `optimizer.lr`), which model_foundry.cli and most programs accept")
        d = self.distribution
        if d is None:
            if "values" in given:
                d = "categorical"
            elif "value" in given:
                d = "constant"
            elif {"min", "max"} <= given:
                both_int = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.min, self.max))
                d = "int_uniform" if both_int else "uniform"
            elif given & {"mu", "sigma"}:
                d = "normal"
            else:
                raise ValueError("give `values: [...]`, `value: X`, `min`/`max` or a `distribution`")
        extra = sorted(given - _KEYS[d])
        if extra:
            raise ValueError(f"distribution {d} takes {', '.join(sorted(_KEYS[d]))}; "
                             f"{', '.join(f'`{k}`' for k in extra)} does not apply")
        numbers = {k: _number(k, getattr(self, k)) for k in ("min", "max", "mu", "sigma", "q") if k in given}
        if d == "categorical":
            if self.values is None:
                raise ValueError("distribution categorical needs `values: [...]`")
            if self.probabilities is not None:
                p = self.probabilities
                if len(p) != len(self.values) or any(x < 0 for x in p) or not math.isclose(sum(p), 1.0, abs_tol=1e-6):
                    raise ValueError(f"probabilities must be {len(self.values)} non-negative numbers (one per value) "
                                     f"that sum to 1, got {p}")
        elif "min" in _KEYS[d]:
            if "min" not in numbers or "max" not in numbers:
                raise ValueError(f"distribution {d} needs both `min` and `max`")
            lo, hi = numbers["min"], numbers["max"]
            if d == "int_uniform" and not (isinstance(lo, int) and isinstance(hi, int)):
                raise ValueError(f"int_uniform needs integer min and max, got {lo!r} and {hi!r}")
            if lo > hi or (lo == hi and d != "int_uniform"):
                raise ValueError(f"min ({lo}) must be below max ({hi})")
            if d in _LOG_VALUES and lo <= 0:
                raise ValueError(f"{d} needs min > 0 (the values themselves are log-uniform), got {lo}; "
                                 f"log_uniform takes the natural logs as bounds instead")
        if numbers.get("sigma", 1) <= 0 or numbers.get("q", 1) <= 0:
            raise ValueError("sigma and q must be > 0")
        self._param = Param(
            name="", distribution=d, value=self.value,
            values=tuple(self.values or ()), probabilities=tuple(self.probabilities) if self.probabilities else None,
            min=numbers.get("min"), max=numbers.get("max"), mu=float(numbers.get("mu", 0.0)),
            sigma=float(numbers.get("sigma", 1.0)), q=numbers.get("q", 1),
        )
        return self

    def resolve(self, name: str) -> Param:
        assert self._param is not None
        return Param(**{**{f.name: getattr(self._param, f.name) for f in fields(Param)}, "name": name})


class MetricSpec(BaseModel):
    """``metric:``: what the sweep optimises, read from each trial's journal."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, description="Metric key as the program logs it, e.g. val/loss.")
    goal: Literal["minimize", "maximize"] = Field("minimize", description="Whether lower or higher is better.")
    target: float | None = Field(None, description="Stop starting trials once a trial's result reaches this.")


class EarlyTerminateSpec(BaseModel):
    """``early_terminate:``: W&B's hyperband. W&B stops a run at each band
    (``min_iter * eta**k`` values of the metric logged) unless it is in the best
    ``1/eta`` of the values seen there: asynchronous successive halving, which
    is Optuna's :class:`~optuna.pruners.SuccessiveHalvingPruner`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["hyperband"] = Field(..., description="The only early termination W&B has.")
    min_iter: int | None = Field(None, ge=1, description="Iteration (metric values logged) of the first band.")
    max_iter: int | None = Field(None, ge=1, description="With `s`: the first band is max_iter / eta**s.")
    s: int | None = Field(None, ge=1, description="Number of bands below max_iter.")
    eta: int = Field(3, ge=2, description="Band multiplier; the best 1/eta of the trials go on.")
    strict: bool = Field(False, description="W&B's stricter variant; not implemented, a warning says so.")

    @model_validator(mode="after")
    def _bands(self) -> EarlyTerminateSpec:
        if self.min_iter is None and (self.max_iter is None or self.s is None):
            raise ValueError("hyperband needs `min_iter`, or `max_iter` and `s`")
        return self

    @property
    def first_band(self) -> int:
        if self.min_iter is not None:
            return self.min_iter
        return max(1, int(self.max_iter / self.eta ** self.s))  # type: ignore[operator]


_MACROS: Final = frozenset({"env", "interpreter", "program", "args", "args_no_hyphens", "args_no_boolean_flags",
                            "args_json", "args_json_file", "config"})


class SweepSpec(BaseModel):
    """A W&B sweep file. Unknown keys are errors (W&B's format is closed)."""

    model_config = ConfigDict(extra="forbid")

    program: str | None = Field(None, description="Script path, or a module name (run with python -m).")
    method: Literal["grid", "random", "bayes"] = Field(..., description="How parameters are chosen.")
    metric: MetricSpec | None = Field(None, description="What to optimise; needed by bayes and hyperband.")
    parameters: dict[str, ParamSpec] = Field(..., min_length=1, description="Name -> values or distribution.")
    early_terminate: EarlyTerminateSpec | None = Field(None, description="Stop bad trials early (hyperband).")
    command: list[str] | None = Field(None, description="The trial's command line with W&B's macros.")
    name: str | None = Field(None, description="Display name of the sweep.")
    description: str | None = Field(None, description="What the sweep is for.")
    project: str | None = Field(None, description="Project of the trials' runs (FOUNDRY_TRACK_PROJECT).")
    entity: str | None = Field(None, description="W&B entity of the trials' runs (WANDB_ENTITY).")
    run_cap: int | None = Field(None, ge=1, description="Number of trials when --count is not given.")

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        for name in self.parameters:
            if not _NAME.fullmatch(name):
                raise ValueError(f"parameter name {name!r} cannot be passed as --{name}=VALUE; use letters, "
                                 f"digits, '_', '-' and '.'")
        if self.metric is None and self.method == "bayes":
            raise ValueError("method bayes needs a `metric` (name and goal) to optimise")
        if self.metric is None and self.early_terminate is not None:
            raise ValueError("early_terminate needs a `metric` to compare trials by")
        command = self.command or list(DEFAULT_COMMAND)
        used = {m for part in command for m in re.findall(r"\$\{(\w+)\}", part)}
        unknown = sorted(used - _MACROS)
        if unknown:
            raise ValueError(f"command: unknown macro(s) {', '.join('${' + m + '}' for m in unknown)}; "
                             f"known: {', '.join('${' + m + '}' for m in sorted(_MACROS))}")
        if "program" in used and not self.program:
            raise ValueError("`program` is missing: name the script or module to run (or give a `command:` "
                             "without ${program})")
        return self

    @property
    def params(self) -> list[Param]:
        return [spec.resolve(name) for name, spec in self.parameters.items()]


def _model_at(loc: Sequence[str]) -> type[BaseModel] | None:
    """The model whose fields are valid at ``loc`` (for 'did you mean')."""
    target: Any = SweepSpec
    skip = False
    for part in loc:
        if skip:  # a key of a dict field: the model stays the dict's value type
            skip = False
            continue
        info = getattr(target, "model_fields", {}).get(part)
        if info is None:
            return None
        annotation = info.annotation
        if get_origin(annotation) is dict:
            target, skip = get_args(annotation)[1], True
            continue
        target = next((a for a in (annotation, *get_args(annotation))
                       if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return target if isinstance(target, type) and issubclass(target, BaseModel) else None


def _format_errors(exc: ValidationError, origin: str) -> str:
    import difflib

    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        where = f"{origin}: {'.'.join(loc)}" if loc else origin
        if err["type"] == "extra_forbidden":
            valid = list(getattr(_model_at(loc[:-1]), "model_fields", {}))
            match = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
            hint = f"; did you mean {match[0]!r}?" if match else (f"; valid keys: {', '.join(valid)}" if valid else "")
            lines.append(f"{where}: unknown key{hint}")
        elif err["type"] == "missing":
            lines.append(f"{where}: required, but missing")
        elif err["type"] == "value_error":
            lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def parse_spec(data: Any, origin: str = "sweep") -> SweepSpec:
    """Validate a sweep config (the dict of a sweep YAML)."""
    if not isinstance(data, Mapping):
        raise SweepError(f"{origin}: expected a mapping (program, method, metric, parameters...), "
                         f"got {type(data).__name__}")
    try:
        return SweepSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise SweepError(_format_errors(exc, origin)) from None


def load_spec(path: str | os.PathLike[str]) -> tuple[SweepSpec, dict[str, Any]]:
    """The validated sweep file and its raw mapping (kept in sweep.json)."""
    data = read_yaml(path, "sweep file", SweepError)
    return parse_spec(data, str(path)), data


# --------------------------------------------------------------------------- #
# Choosing parameters: grid and random need nothing beyond this
# --------------------------------------------------------------------------- #


def grid_points(params: Sequence[Param]) -> list[dict[str, Any]]:
    """Every combination, the first parameter varying slowest (W&B's order)."""
    names = [p.name for p in params]
    return [dict(zip(names, combo)) for combo in itertools.product(*(p.grid() for p in params))]


def sample_params(params: Sequence[Param], rng: random.Random) -> dict[str, Any]:
    """One random draw of every parameter from its distribution."""
    return {p.name: p.sample(rng) for p in params}


def _slot_rng(seed: int, slot: int) -> random.Random:
    # A trial's draw depends only on (seed, slot): a slot interrupted and run
    # again after --resume gets the same parameters.
    return random.Random(f"{seed}:{slot}")


# --------------------------------------------------------------------------- #
# Trials and the state file
# --------------------------------------------------------------------------- #


@dataclass
class Trial:
    """One run of the program. ``slot`` is the trial's place among the
    ``count`` the sweep runs: a slot interrupted by Ctrl-C is run again (same
    parameters) as a new trial after ``--resume``."""

    number: int
    slot: int
    params: dict[str, Any]
    state: str = "running"  # running -> finished | failed | pruned | interrupted
    run_name: str = ""
    run_dir: str | None = None
    log_file: str | None = None
    command: list[str] = field(default_factory=list)
    pid: int | None = None
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    metric: float | None = None  # the last value logged: the trial's result
    best: float | None = None  # the best value along the way (per the goal)
    iterations: int = 0  # values of the metric logged (hyperband's iterations)
    reason: str | None = None  # why it failed, was pruned or interrupted
    internal: dict[str, Any] | None = None  # Optuna's values of the parameters (bayes)
    optuna_number: int | None = None

    @property
    def duration(self) -> float | None:
        return None if self.started is None or self.ended is None else self.ended - self.started

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "duration_s": self.duration}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Trial:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SweepResult:
    """What ``foundry-track sweep`` prints at the end."""

    id: str
    dir: Path
    name: str | None
    method: str
    metric: str | None
    goal: str
    count: int
    trials: list[Trial]
    interrupted: bool
    target_reached: bool
    wall_s: float
    plot: Path | None = None
    plot_note: str | None = None
    log_dir: Path | None = None  # where the trials' event files are: `tensorboard --logdir` this

    @property
    def best(self) -> Trial | None:
        """The finished trial with the best result (pruned trials stopped early, so they never win)."""
        done = [t for t in self.trials if t.state == "finished" and _finite(t.metric)]
        if not done:
            return None
        pick = max if self.goal == "maximize" else min
        return pick(done, key=lambda t: t.metric)  # type: ignore[arg-type, return-value]

    @property
    def remaining(self) -> int:
        done = {t.slot for t in self.trials if t.state in DONE}
        return 0 if self.target_reached else max(0, self.count - len(done))

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "id": self.id, "dir": str(self.dir), "name": self.name, "method": self.method, "metric": self.metric,
            "goal": self.goal, "count": self.count, "remaining": self.remaining, "states": self.counts,
            "interrupted": self.interrupted, "target_reached": self.target_reached, "wall_s": self.wall_s,
            "best": best.to_json() if best else None, "plot": str(self.plot) if self.plot else None,
            "plot_note": self.plot_note, "log_dir": str(self.log_dir) if self.log_dir else None,
            "trials": [t.to_json() for t in self.trials],
        }


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)  # atomic: a crash leaves the old or the new state, never half


# --------------------------------------------------------------------------- #
# Reading a trial's metric from its journal while it runs
# --------------------------------------------------------------------------- #


class _MetricWatch:
    """Follows one trial's run: finds its directory (by run name) and reads the
    sweep's metric from the journal, read-only, as the trial commits it."""

    def __init__(self, runs_dir: Path, run_name: str, metric: str | None) -> None:
        self.runs_dir, self.run_name, self.metric = runs_dir, run_name, metric
        self.run_dir: Path | None = None
        self.values: list[float] = []
        self._journal: Journal | None = None
        self._seq = 0

    def find(self) -> Path | None:
        if self.run_dir is None and self.runs_dir.is_dir():
            for candidate in sorted(self.runs_dir.glob(f"{self.run_name}-*")):
                with contextlib.suppress(OSError, ValueError):
                    if json.loads((candidate / "run.json").read_text()).get("name") == self.run_name:
                        self.run_dir = candidate
                        break
        return self.run_dir

    def poll(self) -> list[float]:
        """The metric values committed since the last call."""
        if self.metric is None or self.find() is None:
            return []
        new: list[float] = []
        try:
            if self._journal is None:
                if not (self.run_dir / JOURNAL_FILE).is_file():  # type: ignore[operator]
                    return []
                self._journal = Journal(self.run_dir / JOURNAL_FILE, readonly=True)  # type: ignore[operator]
            while True:
                records = self._journal.read_after(self._seq, 1000)
                if not records:
                    break
                for record in records:
                    self._seq = record.seq
                    if record.kind == "metrics" and self.metric in record.data:
                        new.append(float(record.data[self.metric]))
        except sqlite3.Error:
            # The journal is being created (no tables yet) or is busy: next poll.
            self.close()
        self.values.extend(new)
        return new

    def close(self) -> None:
        if self._journal is not None:
            with contextlib.suppress(sqlite3.Error):
                self._journal.close()
            self._journal = None


def _trackers_started(run_dir: Path | None) -> bool:
    """Every backend of the run has started, or failed to: shared stores (a new
    SQLite MLflow database, the sweep's parent run) exist from here on."""
    if run_dir is None or not is_run_dir(run_dir):
        return False
    try:
        run = load_run(run_dir)
    except RunDirError:
        return False
    return all(b.identity or b.errors for b in run.backends.values())


# --------------------------------------------------------------------------- #
# Optuna: TPE for bayes, successive halving for hyperband (imported lazily)
# --------------------------------------------------------------------------- #


class _Optuna:
    """The sweep's Optuna study in ``<sweep dir>/optuna.db`` (survives --resume)."""

    def __init__(self, directory: Path, study_name: str, spec: SweepSpec, seed: int, workers: int) -> None:
        try:
            import optuna
        except ImportError:
            what = "method bayes" if spec.method == "bayes" else "early_terminate: hyperband"
            raise MissingDependency(f"{what} needs Optuna, which is not installed: {INSTALL}") from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        et = spec.early_terminate
        pruner: Any = (optuna.pruners.SuccessiveHalvingPruner(min_resource=et.first_band, reduction_factor=et.eta,
                                                              min_early_stopping_rate=0)
                       if et is not None else optuna.pruners.NopPruner())
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
        if state == "finished" and _finite(value):
            self.study.tell(trial, value)
        elif state == "pruned":
            self.study.tell(trial, state=states.PRUNED)
        else:
            self.study.tell(trial, state=states.FAIL)

    def fail_leftovers(self) -> None:
        """Trials left RUNNING by a controller that was killed: they will not report again."""
        for t in self.study.get_trials(deepcopy=False, states=(self.optuna.trial.TrialState.RUNNING,)):
            self.study.tell(t.number, state=self.optuna.trial.TrialState.FAIL)


# --------------------------------------------------------------------------- #
# The controller
# --------------------------------------------------------------------------- #


@dataclass
class _Running:
    trial: Trial
    proc: subprocess.Popen[bytes]
    watch: _MetricWatch
    otrial: Any = None  # Optuna's trial (bayes, hyperband)
    stop_reason: str | None = None  # "pruned" or "interrupted" once we signalled it
    signalled: float | None = None


def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def _resolve_program(program: str, spec_dir: Path) -> list[str]:
    """``train.py`` -> [path]; ``model_foundry.cli`` -> ["-m", "model_foundry.cli"]."""
    for base in (Path.cwd(), spec_dir):
        candidate = base / program
        if candidate.is_file():
            return [str(candidate.resolve())]
    if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", program):
        with contextlib.suppress(ImportError, ValueError):
            if importlib.util.find_spec(program) is not None:
                return ["-m", program]
    raise SweepError(f"program {program!r}: no such file (looked in {Path.cwd()} and {spec_dir}) and no "
                     f"importable module of that name")


def _format_arg(value: Any) -> str:
    return str(value)  # what `wandb agent` passes: --lr=0.001, --flag=True, --layers=[1, 2]


def build_command(spec: SweepSpec, program: list[str], params: Mapping[str, Any], *, config: str | None,
                  args_file: Path) -> list[str]:
    """The trial's argv from the sweep's ``command`` (default ``${env} ${interpreter}
    ${program} ${args}``) and W&B's macros. With a base ``config``, the default
    command passes it right after the program: ``train CONFIG`` to
    model_foundry.cli, ``CONFIG`` to any other; a ``command:`` places ``${config}``."""
    args = [f"--{k}={_format_arg(v)}" for k, v in params.items()]
    program_argv = list(program)
    if config is not None and spec.command is None:
        program_argv += ["train", config] if program[-1:] == [TRAINER_MODULE] else [config]
    lists: dict[str, list[str]] = {
        "env": [],  # `/usr/bin/env` in W&B; not needed without a shell
        "interpreter": [sys.executable],
        "program": program_argv,
        "args": args,
        "args_no_hyphens": [f"{k}={_format_arg(v)}" for k, v in params.items()],
        "args_no_boolean_flags": [f"--{k}" if v is True else f"--{k}={_format_arg(v)}"
                                  for k, v in params.items() if v is not False],
    }
    scalars = {"args_json": json.dumps(dict(params)), "config": config or ""}
    if any("${args_json_file}" in part for part in spec.command or ()):
        args_file.write_text(json.dumps(dict(params)))
        scalars["args_json_file"] = str(args_file)
    argv: list[str] = []
    for part in spec.command or DEFAULT_COMMAND:
        whole = re.fullmatch(r"\$\{(\w+)\}", part)
        if whole and whole.group(1) in lists:
            argv += lists[whole.group(1)]
            continue
        text = part
        for name, items in lists.items():
            text = text.replace("${" + name + "}", " ".join(items))
        for name, value in scalars.items():
            text = text.replace("${" + name + "}", value)
        argv.append(text)
    return argv


class Sweep:
    """One sweep directory and the loop that runs its trials."""

    def __init__(self, directory: Path, state: dict[str, Any], spec: SweepSpec,
                 out: Callable[[str], None]) -> None:
        self.dir = directory
        self.state = state
        self.spec = spec
        self.params = spec.params
        self.trials = [Trial.from_json(t) for t in state.get("trials", [])]
        self.out = out
        self.runs_dir = directory / "runs"
        self.logs_dir = directory / "trials"
        self._running: list[_Running] = []
        self._optuna: _Optuna | None = None
        self._grid: list[dict[str, Any]] | None = None
        self._stop = False
        self._force = False
        # The first trial of a sweep starts alone until its trackers have
        # started, so shared stores (a new SQLite MLflow database, the MLflow
        # parent run) are created by one process, not raced by K.
        self._warm = any(t.run_dir for t in self.trials)
        self._warm_deadline: float | None = None

    # -- creating and resuming --------------------------------------------- #

    @classmethod
    def create(cls, sweep_file: str | os.PathLike[str], *, root: str | os.PathLike[str], count: int | None,
               config: str | None, seed: int | None, out: Callable[[str], None]) -> Sweep:
        spec, raw = load_spec(sweep_file)
        spec_dir = Path(sweep_file).resolve().parent
        program = _resolve_program(spec.program, spec_dir) if spec.program else []
        if config is not None:
            if not Path(config).is_file():
                raise SweepError(f"--config {config}: no such file")
            config = str(Path(config).resolve())
            if spec.command is not None and not any("${config}" in part for part in spec.command):
                raise SweepError("--config is given but the sweep's `command:` has no ${config}; put ${config} "
                                 "where the program expects its config")
        elif spec.command is not None and any("${config}" in part for part in spec.command):
            raise SweepError("the sweep's `command:` uses ${config}: give --config CONFIG")
        elif program[-1:] == [TRAINER_MODULE] and spec.command is None and not os.environ.get("MODEL_FOUNDRY_CONFIG"):
            raise SweepError(f"{TRAINER_MODULE} trains from an experiment config: give --config CONFIG "
                             f"(e.g. --config configs/quickstart.yaml)")
        total = cls._total(spec, count)
        if (spec.method == "bayes" or spec.early_terminate is not None) and importlib.util.find_spec("optuna") is None:
            what = "method bayes" if spec.method == "bayes" else "early_terminate: hyperband"
            raise MissingDependency(f"{what} needs Optuna, which is not installed: {INSTALL}")
        sweep_id = f"sweep-{_new_id()}"
        directory = Path(root).resolve() / sweep_id
        directory.mkdir(parents=True)
        state = {
            "version": 1, "id": sweep_id, "created": time.time(), "spec_file": str(Path(sweep_file).resolve()),
            "spec": raw, "count": total, "seed": seed if seed is not None else random.SystemRandom().randrange(2**31),
            "cwd": str(Path.cwd()), "program": program, "config": config, "trials": [],
        }
        _write_json(directory / STATE_FILE, state)
        return cls(directory, state, spec, out)

    @staticmethod
    def _total(spec: SweepSpec, count: int | None) -> int:
        if count is not None and count < 1:
            raise SweepError(f"--count {count}: give a number of trials >= 1")
        if spec.method == "grid":
            size = len(grid_points(spec.params))
            return min(size, count or spec.run_cap or size)
        total = count or spec.run_cap
        if total is None:
            raise SweepError(f"method {spec.method} never runs out of parameters: give --count N (the number of "
                             f"trials), or run_cap in the sweep file")
        return total

    @classmethod
    def resume(cls, directory: str | os.PathLike[str], *, count: int | None, out: Callable[[str], None]) -> Sweep:
        path = Path(directory).resolve()
        try:
            state = json.loads((path / STATE_FILE).read_text())
        except FileNotFoundError:
            raise SweepError(f"--resume {directory}: not a sweep directory (no {STATE_FILE}); give the folder "
                             f"`foundry-track sweep` printed, e.g. runs/sweep-ab12cd34") from None
        except (OSError, ValueError) as exc:
            raise SweepError(f"--resume {directory}: cannot read {STATE_FILE}: {exc}") from None
        spec = parse_spec(state["spec"], f"{path / STATE_FILE}: spec")
        if count is not None:
            state["count"] = cls._total(spec, count)
        return cls(path, state, spec, out)

    # -- the loop ------------------------------------------------------------ #

    def run(self, workers: int, poll_interval: float = 0.25) -> SweepResult:
        if workers < 1:
            raise SweepError(f"--workers {workers}: give a number of parallel trials >= 1")
        started = time.monotonic()
        self.runs_dir.mkdir(exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        with self._lock(), self._signals():
            if self.spec.method == "bayes" or self.spec.early_terminate is not None:
                self._optuna = _Optuna(self.dir, self.state["id"], self.spec, self.state["seed"], workers)
                self._optuna.fail_leftovers()
            self._recover()
            self._announce(workers)
            if self.spec.early_terminate is not None and self.spec.early_terminate.strict:
                self.out("early_terminate.strict is not implemented; pruning as without it")
            try:
                while True:
                    self._reap()
                    if self._stop:
                        self._stop_all()
                        break
                    self._poll()
                    self._launch(workers)
                    if not self._running:
                        break
                    time.sleep(poll_interval)
            except BaseException:
                self._abort()  # trials run in their own sessions: never leave them orphaned
                raise
        result = self._result(time.monotonic() - started)
        if not result.interrupted:
            self._plot(result)
        return result

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One controller per sweep directory (a second would run every trial twice)."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here; the state file still guards most
            yield
            return
        with open(self.dir / ".lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise SweepError(f"{self.dir} is being run by another `foundry-track sweep`; wait for it or "
                                 f"stop it (Ctrl-C) first") from None
            yield

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """First Ctrl-C / SIGTERM: stop the trials cleanly, keep what finished. Second: kill them."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            # Only flags here: the loop reports it (printing inside a handler can
            # re-enter a print the loop was in the middle of).
            if self._stop:
                self._force = True
            self._stop = True

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _announce(self, workers: int) -> None:
        spec, done = self.spec, sum(1 for t in self.trials if t.state in DONE)
        names = ", ".join(p.name for p in self.params)
        metric = f"; metric {spec.metric.name} ({spec.metric.goal})" if spec.metric else ""
        again = f", {done} done before" if done else ""
        self.out(f"sweep {self.state['id']}: {spec.method} over {names}; {self.state['count']} trials{again}, "
                 f"{workers} at a time{metric}")
        self.out(f"sweep dir: {self.dir}")

    def _recover(self) -> None:
        """Trials a killed controller left ``running`` are interrupted: their slots run again."""
        for trial in self.trials:
            if trial.state == "running":
                trial.state, trial.reason = "interrupted", "the sweep process ended while it ran"
                trial.ended = trial.ended or time.time()
        self._save()

    # -- launching ----------------------------------------------------------- #

    def _target_reached(self) -> bool:
        metric = self.spec.metric
        if metric is None or metric.target is None:
            return False
        target = metric.target
        results = [t.metric for t in self.trials if t.state == "finished" and t.metric is not None]
        return any(v <= target if metric.goal == "minimize" else v >= target for v in results)

    def _next_slot(self) -> int | None:
        done = {t.slot for t in self.trials if t.state in DONE}
        busy = {r.trial.slot for r in self._running}
        return next((s for s in range(self.state["count"]) if s not in done and s not in busy), None)

    def _launch(self, workers: int) -> None:
        while len(self._running) < workers and not self._stop and not self._target_reached():
            if self._running and not self._warm:
                first = self._running[0]
                if self._warm_deadline is None:
                    self._warm_deadline = time.monotonic() + START_WAIT
                if not (_trackers_started(first.watch.find()) or time.monotonic() > self._warm_deadline):
                    return
                self._warm = True
            slot = self._next_slot()
            if slot is None:
                return
            self._start(slot)

    def _choose(self, slot: int) -> tuple[dict[str, Any], dict[str, Any] | None, Any]:
        """(parameters, Optuna's internal values, Optuna trial) for a slot."""
        method = self.spec.method
        if method == "grid":
            if self._grid is None:
                self._grid = grid_points(self.params)
            params, internal = dict(self._grid[slot]), None
        elif method == "random":
            params, internal = sample_params(self.params, _slot_rng(self.state["seed"], slot)), None
        else:
            assert self._optuna is not None
            again = next((t.internal for t in reversed(self.trials) if t.slot == slot and t.internal), None)
            otrial = self._optuna.ask(self.params, again)
            internal = dict(otrial.params)
            params = {p.name: p.value_of(internal.get(p.name)) for p in self.params}
            otrial.set_user_attr("params", params)
            return params, internal, otrial
        otrial = self._optuna.ask(None, None) if self._optuna is not None else None
        if otrial is not None:
            otrial.set_user_attr("params", params)
        return params, internal, otrial

    def _start(self, slot: int) -> None:
        number = len(self.trials)
        params, internal, otrial = self._choose(slot)
        sweep_id = self.state["id"]
        name = f"{sweep_id}-trial-{number}"
        log_file = self.logs_dir / f"trial-{number}.log"
        argv = build_command(self.spec, self.state["program"], params, config=self.state.get("config"),
                             args_file=self.logs_dir / f"trial-{number}.args.json")
        trial = Trial(number=number, slot=slot, params=params, run_name=name, log_file=str(log_file), command=argv,
                      started=time.time(), internal=internal,
                      optuna_number=otrial.number if otrial is not None else None)
        if otrial is not None:
            otrial.set_user_attr("foundry_track.trial", number)
        cwd = self.state.get("cwd") if Path(self.state.get("cwd") or ".").is_dir() else None
        try:
            with open(log_file, "ab") as log:
                proc = subprocess.Popen(argv, cwd=cwd, env=self._env(name), stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, **_new_process_group())
        except OSError as exc:  # the program cannot even start: this trial fails, the sweep goes on
            trial.state, trial.ended, trial.reason = "failed", time.time(), f"cannot start {argv[0]}: {exc.strerror}"
            self.trials.append(trial)
            if otrial is not None:
                self._optuna.tell(otrial, "failed", None)  # type: ignore[union-attr]
            self.out(f"trial {number} failed: {trial.reason}")
            self._save()
            return
        trial.pid = proc.pid
        self.trials.append(trial)
        metric = self.spec.metric.name if self.spec.metric else None
        self._running.append(_Running(trial, proc, _MetricWatch(self.runs_dir, name, metric), otrial))
        self._save()
        shown = " ".join(f"{k}={_show(v)}" for k, v in params.items())
        self.out(f"trial {number} started: {shown}")

    def _env(self, run_name: str) -> dict[str, str]:
        env = dict(os.environ)
        tags = [t.strip() for t in env.get("FOUNDRY_TRACK_TAGS", "").split(",") if t.strip()]
        env.update({
            "FOUNDRY_TRACK_DIR": str(self.runs_dir), "FOUNDRY_TRACK_GROUP": self.state["id"],
            "FOUNDRY_TRACK_RUN_NAME": run_name, "FOUNDRY_TRACK_TAGS": ",".join([*tags, "sweep"]),
            SWEEP_ENV: self.state["id"], "PYTHONUNBUFFERED": "1",
        })
        if self.spec.project:
            env["FOUNDRY_TRACK_PROJECT"] = self.spec.project
        if self.spec.entity:
            env["WANDB_ENTITY"] = self.spec.entity
        return env

    # -- watching ------------------------------------------------------------ #

    def _poll(self) -> None:
        """Read new metric values; feed them to the pruner; stop a trial it prunes."""
        pruning = self.spec.early_terminate is not None
        for r in self._running:
            new = r.watch.poll()
            if not pruning or r.stop_reason is not None or r.otrial is None:
                continue
            metric, eta = self.spec.metric.name, self.spec.early_terminate.eta  # type: ignore[union-attr]
            first = len(r.watch.values) - len(new)
            for i, value in enumerate(new, start=first):
                r.otrial.report(value, i)  # the iteration is the value's index, as W&B counts bands
                if r.otrial.should_prune():
                    r.trial.reason = (f"pruned at iteration {i + 1} ({metric}={_show(value)}): "
                                      f"not in the best 1/{eta} there")
                    self._signal(r, "pruned")
                    self.out(f"trial {r.trial.number} {r.trial.reason}")
                    break

    def _signal(self, r: _Running, reason: str) -> None:
        """Ask the trial to stop (SIGINT to its process group: the trainer checkpoints
        and closes its run as killed; a Python script gets KeyboardInterrupt)."""
        r.stop_reason, r.signalled = reason, time.monotonic()
        _send(r.proc, signal.SIGINT)

    def _reap(self) -> None:
        for r in list(self._running):
            if r.proc.poll() is None:
                if r.signalled is not None and (self._force or time.monotonic() - r.signalled > STOP_GRACE):
                    _send(r.proc, signal.SIGKILL)
                continue
            self._running.remove(r)
            self._finish(r)

    def _finish(self, r: _Running) -> None:
        trial, code = r.trial, r.proc.returncode
        r.watch.poll()  # what it logged last
        r.watch.close()
        trial.ended, trial.exit_code = time.time(), code
        trial.run_dir = str(r.watch.run_dir) if r.watch.run_dir else None
        values = r.watch.values
        trial.iterations = len(values)
        if values:
            trial.metric = values[-1]
            finite = [v for v in values if math.isfinite(v)]
            if finite:
                maximize = self.spec.metric is not None and self.spec.metric.goal == "maximize"
                trial.best = max(finite) if maximize else min(finite)
        metric = self.spec.metric.name if self.spec.metric else None
        if r.stop_reason == "pruned":
            trial.state = "pruned"
        elif r.stop_reason == "interrupted":
            trial.state, trial.reason = "interrupted", "stopped by Ctrl-C; run again by --resume"
        elif code != 0:
            trial.state, trial.reason = "failed", f"{_exit(code)}; see {trial.log_file}{_last_line(trial.log_file)}"
        elif trial.run_dir is None:
            trial.state = "failed"
            trial.reason = (f"exited 0 but no foundry-track run named {trial.run_name} appeared under {self.runs_dir} "
                            f"(does the program call foundry_track.init?)")
        elif metric is not None and not values:
            trial.state, trial.reason = "failed", f"exited 0 but logged no {metric!r}"
        else:
            trial.state = "finished"
        if r.otrial is not None:
            self._optuna.tell(r.otrial, trial.state, trial.metric)  # type: ignore[union-attr]
        self._save()
        took = f" in {trial.duration:.1f}s" if trial.duration is not None else ""
        if trial.state == "finished":
            self._warm = True
            result = f": {metric}={_show(trial.metric)}" if metric else ""
            self.out(f"trial {trial.number} finished{took}{result}")
        elif trial.state != "pruned":
            self.out(f"trial {trial.number} {trial.state}{took}: {trial.reason}")

    def _stop_all(self) -> None:
        """Ctrl-C: stop every running trial, wait for them (killing after the grace), record them."""
        self.out(f"\nstopping the running trials (Ctrl-C again to kill them at once); "
                 f"finish later with: foundry-track sweep --resume {self.dir}")
        for r in self._running:
            if r.stop_reason is None:
                self._signal(r, "interrupted")
        while self._running:
            self._reap()
            time.sleep(0.05)

    def _abort(self) -> None:
        """The loop itself failed: kill the trials and record them as interrupted (--resume reruns them)."""
        for r in self._running:
            _send(r.proc, signal.SIGKILL)
            with contextlib.suppress(Exception):
                r.proc.wait(10)
            r.watch.close()
            r.trial.state, r.trial.ended = "interrupted", time.time()
            r.trial.reason = "the sweep process failed while it ran"
        self._running.clear()
        with contextlib.suppress(Exception):
            self._save()

    # -- results --------------------------------------------------------------- #

    def _save(self) -> None:
        self.state["trials"] = [asdict(t) for t in self.trials]
        _write_json(self.dir / STATE_FILE, self.state)

    def _result(self, wall_s: float) -> SweepResult:
        metric = self.spec.metric
        return SweepResult(
            id=self.state["id"], dir=self.dir, name=self.spec.name, method=self.spec.method,
            metric=metric.name if metric else None, goal=metric.goal if metric else "minimize",
            count=self.state["count"], trials=list(self.trials), interrupted=self._stop,
            target_reached=self._target_reached(), wall_s=wall_s, log_dir=self._log_dir(),
        )

    def _log_dir(self) -> Path | None:
        """The folder holding every trial's ``log_dir`` (a backend identity key: TensorBoard's
        event files): the sweep directory by default, ``<log_dir>/<sweep id>`` when the config sets one."""
        found: list[str] = []
        for t in self.trials:
            if not t.run_dir:
                continue
            with contextlib.suppress(OSError, ValueError):
                ids = json.loads((Path(t.run_dir) / "run.json").read_text()).get("backend_ids", {})
                found += [str(i["log_dir"]) for i in ids.values() if isinstance(i, dict) and i.get("log_dir")]
        if not found:
            return None
        common = Path(os.path.commonpath(found))
        return self.dir if common.is_relative_to(self.dir) else common

    def _plot(self, result: SweepResult) -> None:
        """``foundry-track plot`` of the metric of every trial, in the sweep directory."""
        if result.metric is None:
            return
        from foundry_track.plot import PlotError, plot_runs, save_figure

        runs = [Path(t.run_dir) for t in result.trials if t.run_dir and is_run_dir(Path(t.run_dir))]
        if not runs:
            result.plot_note = "no trial has a run to plot"
            return
        best = result.best
        title = f"{result.id} ({result.method}): {result.metric}" + (f", best trial {best.number}" if best else "")
        try:
            fig, _ = plot_runs(runs, [result.metric], title=title)
            result.plot = save_figure(fig, self.dir / PLOT_FILE)
        except (PlotError, MissingDependency, RunDirError) as exc:
            result.plot_note = f"no plot: {exc}"


def _new_process_group() -> dict[str, Any]:
    """Trials get their own process group: a terminal's Ctrl-C reaches only the
    controller, which stops them in order (and their own children with them)."""
    if os.name == "posix":
        return {"start_new_session": True}
    return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}


def _send(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.name == "posix":
            os.killpg(proc.pid, sig)
        elif sig == signal.SIGINT:
            proc.send_signal(getattr(signal, "CTRL_C_EVENT", sig))
        else:
            proc.kill()


def _exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _last_line(log_file: str | None) -> str:
    """The log's last non-empty line (usually the exception), for the console."""
    if not log_file:
        return ""
    try:
        with open(log_file, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" ({lines[-1][:200]})" if lines else ""


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def run_sweep(
    sweep_file: str | os.PathLike[str] | None = None,
    *,
    resume: str | os.PathLike[str] | None = None,
    count: int | None = None,
    workers: int = 1,
    root: str | os.PathLike[str] = "runs",
    config: str | None = None,
    seed: int | None = None,
    out: Callable[[str], None] = print,
    poll_interval: float = 0.25,
) -> SweepResult:
    """Run a sweep file (a new sweep under ``root``), or finish the sweep in ``resume``.

    ``count``: trials in all (default: the grid's size, or ``run_cap``);
    ``workers``: trials at a time; ``config``: the experiment config each trial
    starts from. Progress lines go to ``out``. Ctrl-C stops the running trials
    and returns with ``interrupted`` set; ``resume`` runs only what is left.
    """
    if (sweep_file is None) == (resume is None):
        raise SweepError("give a sweep file, or --resume SWEEP_DIR to finish an earlier sweep (not both)")
    if resume is not None:
        if config is not None or seed is not None:
            raise SweepError("--config and --seed are fixed when a sweep starts; --resume keeps them")
        sweep = Sweep.resume(resume, count=count, out=out)
    else:
        assert sweep_file is not None
        sweep = Sweep.create(sweep_file, root=root, count=count, config=config, seed=seed, out=out)
    return sweep.run(workers, poll_interval=poll_interval)
