"""Read back what each tracker stored, with each tracker's own reader, and
count the (key, value) pairs of the benchmark that arrived.

Every logged value is unique (``step*10 + i``, see ``_common.step_metrics``),
so counting matching values checks "every backend received every step"
whatever each tool does with the step number (W&B's ``_step``, Lightning's
``trainer/global_step``, foundry-track's ``trainer/step``...).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from _common import KEYS


@dataclass(frozen=True)
class Received:
    """What one backend holds of what was logged."""

    matched: int  # distinct expected (key, value) pairs found
    expected: int
    points: int  # points of the benchmark's keys found, duplicates included

    @property
    def complete(self) -> bool:
        return self.matched == self.expected

    def __str__(self) -> str:
        if self.complete:
            text = "all"
            if self.points > self.expected:
                text += f" (+{self.points - self.expected} dup)"
            return text
        return f"{self.matched}/{self.expected} LOST {self.expected - self.matched}"


def compare(expected: Mapping[str, set[float]], got: Mapping[str, list[float]]) -> Received:
    matched = sum(len(expected[k] & set(got.get(k, ()))) for k in expected)
    points = sum(len(got.get(k, ())) for k in expected)
    return Received(matched, sum(map(len, expected.values())), points)


def tensorboard_values(root: Path) -> dict[str, list[float]]:
    """Every scalar of the benchmark's keys in every event file under ``root``."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    out: dict[str, list[float]] = defaultdict(list)
    for folder in sorted({p.parent for p in Path(root).rglob("*tfevents*")}):
        acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0})  # 0 = keep every event
        acc.Reload()
        for key in set(KEYS) & set(acc.Tags()["scalars"]):
            out[key] += [e.value for e in acc.Scalars(key)]
    return out


def mlflow_values(uri: str, experiment: str) -> dict[str, list[float]]:
    """Every point of the benchmark's keys in every run of ``experiment``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    out: dict[str, list[float]] = defaultdict(list)
    if found is None:
        return out
    for run in client.search_runs([found.experiment_id], max_results=100):
        for key in KEYS:
            out[key] += [m.value for m in client.get_metric_history(run.info.run_id, key)]
    return out


def wandb_values(root: Path) -> dict[str, list[float]]:
    """Every history value of the benchmark's keys in the W&B offline runs under ``root``."""
    from _wandb_offline import history_rows

    out: dict[str, list[float]] = defaultdict(list)
    for row in history_rows(root):
        for key in KEYS:
            if key in row:
                out[key].append(float(row[key]))
    return out
