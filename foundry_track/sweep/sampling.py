"""Choosing parameters: W&B's distributions, grid and random search.

Nothing here needs more than the standard library: ``grid`` and ``random``
sweeps run with the core alone. :class:`Param` also tells Optuna (``bayes``)
what to search, through :meth:`Param.optuna_distribution`, without importing it.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Final, Literal, get_args

from foundry_track.sweep.errors import SweepError

__all__ = [
    "DISTRIBUTIONS",
    "KEYS",
    "LOG_VALUES",
    "Distribution",
    "Param",
    "grid_points",
    "quantise",
    "sample_params",
    "slot_rng",
]

Distribution = Literal[
    "constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform", "log_uniform_values",
    "q_log_uniform", "q_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal",
]
DISTRIBUTIONS: Final = get_args(Distribution)
# Which keys each distribution takes (W&B's meaning of each).
KEYS: Final[dict[str, frozenset[str]]] = {
    "constant": frozenset({"value"}),
    "categorical": frozenset({"values", "probabilities"}),
    **{d: frozenset({"min", "max"}) for d in ("int_uniform", "uniform", "log_uniform", "log_uniform_values")},
    **{d: frozenset({"min", "max", "q"}) for d in ("q_uniform", "q_log_uniform", "q_log_uniform_values")},
    **{d: frozenset({"mu", "sigma"}) for d in ("normal", "log_normal")},
    **{d: frozenset({"mu", "sigma", "q"}) for d in ("q_normal", "q_log_normal")},
}
_NORMAL: Final = frozenset({"normal", "q_normal", "log_normal", "q_log_normal"})
_EXP: Final = frozenset({"log_uniform", "q_log_uniform", "log_normal", "q_log_normal"})  # value = exp(draw)
LOG_VALUES: Final = frozenset({"log_uniform_values", "q_log_uniform_values"})  # log-uniform between min and max
_QUANTISED: Final = frozenset({"q_uniform", "q_log_uniform", "q_log_uniform_values", "q_normal", "q_log_normal"})


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
        if d in LOG_VALUES:
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
            return quantise(x, self.q)
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
            return [quantise(k * self.q, self.q) for k in range(first, last + 1)]
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
        return dists.FloatDistribution(float(self.min), float(self.max), log=d in LOG_VALUES)  # type: ignore[arg-type]


def quantise(x: float, q: float) -> float | int:
    """``round(x / q) * q`` as W&B does; an integer q gives ints (``q: 8`` -> 8, 16, 24),
    and a float q is rounded to 12 decimals so 0.1 steps read 0.3, not 0.30000000000000004."""
    k = round(x / q)
    return int(k * q) if isinstance(q, int) else round(k * q, 12)


def grid_points(params: Sequence[Param]) -> list[dict[str, Any]]:
    """Every combination, the first parameter varying slowest (W&B's order)."""
    names = [p.name for p in params]
    return [dict(zip(names, combo)) for combo in itertools.product(*(p.grid() for p in params))]


def sample_params(params: Sequence[Param], rng: random.Random) -> dict[str, Any]:
    """One random draw of every parameter from its distribution."""
    return {p.name: p.sample(rng) for p in params}


def slot_rng(seed: int, slot: int) -> random.Random:
    """The generator of one slot's random draw."""
    # A trial's draw depends only on (seed, slot): a slot interrupted and run
    # again after --resume gets the same parameters.
    return random.Random(f"{seed}:{slot}")
