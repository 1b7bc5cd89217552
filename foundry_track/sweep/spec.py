"""The sweep file: W&B's format, validated by pydantic models.

W&B's format is closed, so an unknown key is an error, reported the way every
config error of the project is (:func:`foundry_track.errors.format_validation_error`),
after the file's name: ``sweep.yaml: parameters.lr.distribtion: unknown key;
did you mean 'distribution'?``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from foundry_track.config import read_yaml
from foundry_track.errors import format_validation_error
from foundry_track.sweep.errors import SweepError
from foundry_track.sweep.sampling import KEYS, LOG_VALUES, Distribution, Param

__all__ = [
    "DEFAULT_COMMAND",
    "MACROS",
    "EarlyTerminateSpec",
    "MetricSpec",
    "ParamSpec",
    "SweepSpec",
    "load_spec",
    "parse_spec",
]

#: The trial's command line when the sweep file has no ``command:`` (W&B's default).
DEFAULT_COMMAND: Final = ("${env}", "${interpreter}", "${program}", "${args}")
#: W&B's macros a ``command:`` may use.
MACROS: Final = frozenset({"env", "interpreter", "program", "args", "args_no_hyphens", "args_no_boolean_flags",
                           "args_json", "args_json_file", "config"})
_NAME: Final = re.compile(r"[A-Za-z_][\w.\-]*")


def _number(key: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        # ValueError, not TypeError: pydantic reports a ValueError raised in a validator as the field's error
        raise ValueError(f"{key}: expected a number, got {value!r}")  # noqa: TRY004
    if isinstance(value, str):  # PyYAML reads `1e-5` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    return value


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
        d = self.distribution or self._inferred(given)
        extra = sorted(given - KEYS[d])
        if extra:
            raise ValueError(f"distribution {d} takes {', '.join(sorted(KEYS[d]))}; "
                             f"{', '.join(f'`{k}`' for k in extra)} does not apply")
        numbers: dict[str, float | int] = {
            k: _number(k, getattr(self, k)) for k in ("min", "max", "mu", "sigma", "q") if k in given}
        if d == "categorical":
            self._check_choices()
        elif "min" in KEYS[d]:
            _check_bounds(d, numbers)
        if numbers.get("sigma", 1) <= 0 or numbers.get("q", 1) <= 0:
            raise ValueError("sigma and q must be > 0")
        self._param = Param(
            name="", distribution=d, value=self.value,
            values=tuple(self.values or ()), probabilities=tuple(self.probabilities) if self.probabilities else None,
            min=numbers.get("min"), max=numbers.get("max"), mu=float(numbers.get("mu", 0.0)),
            sigma=float(numbers.get("sigma", 1.0)), q=numbers.get("q", 1),
        )
        return self

    def _inferred(self, given: set[str]) -> str:
        """The distribution W&B infers from the keys given."""
        if "values" in given:
            return "categorical"
        if "value" in given:
            return "constant"
        if {"min", "max"} <= given:
            both_int = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.min, self.max))
            return "int_uniform" if both_int else "uniform"
        if given & {"mu", "sigma"}:
            return "normal"
        raise ValueError("give `values: [...]`, `value: X`, `min`/`max` or a `distribution`")

    def _check_choices(self) -> None:
        if self.values is None:
            raise ValueError("distribution categorical needs `values: [...]`")
        p = self.probabilities
        if p is not None and (len(p) != len(self.values) or any(x < 0 for x in p)
                              or not math.isclose(sum(p), 1.0, abs_tol=1e-6)):
            raise ValueError(f"probabilities must be {len(self.values)} non-negative numbers (one per value) "
                             f"that sum to 1, got {p}")

    def resolve(self, name: str) -> Param:
        assert self._param is not None
        return Param(**{**{f.name: getattr(self._param, f.name) for f in fields(Param)}, "name": name})


def _check_bounds(d: str, numbers: Mapping[str, float | int]) -> None:
    if "min" not in numbers or "max" not in numbers:
        raise ValueError(f"distribution {d} needs both `min` and `max`")
    lo, hi = numbers["min"], numbers["max"]
    if d == "int_uniform" and not (isinstance(lo, int) and isinstance(hi, int)):
        raise ValueError(f"int_uniform needs integer min and max, got {lo!r} and {hi!r}")
    if lo > hi or (lo == hi and d != "int_uniform"):
        raise ValueError(f"min ({lo}) must be below max ({hi})")
    if d in LOG_VALUES and lo <= 0:
        raise ValueError(f"{d} needs min > 0 (the values themselves are log-uniform), got {lo}; "
                         f"log_uniform takes the natural logs as bounds instead")


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
        used = self.macros
        unknown = sorted(used - MACROS)
        if unknown:
            raise ValueError(f"command: unknown macro(s) {', '.join('${' + m + '}' for m in unknown)}; "
                             f"known: {', '.join('${' + m + '}' for m in sorted(MACROS))}")
        if "program" in used and not self.program:
            raise ValueError("`program` is missing: name what each trial runs, a script (`program: train.py`) "
                             "or a module run with python -m (`program: my_package.train`); or give a "
                             "`command:` without ${program}")
        return self

    @property
    def macros(self) -> set[str]:
        """The macros the trial's command line uses (``config`` for ``${config}``...)."""
        return {m for part in self.command or DEFAULT_COMMAND for m in re.findall(r"\$\{(\w+)\}", part)}

    @property
    def params(self) -> list[Param]:
        return [spec.resolve(name) for name, spec in self.parameters.items()]


def _format_errors(exc: ValidationError, origin: str) -> str:
    """pydantic's errors as ``origin: path: problem`` lines (the project's one format)."""
    lines = format_validation_error(exc, SweepSpec).split("\n")  # one line per error, in order
    # The formatter names an error of the whole file (a check across its keys)
    # `config`; here the file is named by the origin already.
    return "\n".join(f"{origin}: {line.removeprefix('config: ') if not err['loc'] else line}"
                     for err, line in zip(exc.errors(), lines))


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
