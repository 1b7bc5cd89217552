"""Read TensorBoard event files back with tensorboard's own reader."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing import event_accumulator


def accumulator(log_dir: Path | str) -> event_accumulator.EventAccumulator:
    # size_guidance 0 = keep every event (the default samples scalars down to 10,000).
    acc = event_accumulator.EventAccumulator(
        str(log_dir),
        size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0,
                       event_accumulator.IMAGES: 0, event_accumulator.HISTOGRAMS: 0},
    )
    acc.Reload()
    return acc


def scalars(log_dir: Path | str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value), ...] in file order."""
    acc = accumulator(log_dir)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
