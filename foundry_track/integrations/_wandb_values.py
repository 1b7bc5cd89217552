"""What the W&B bridge makes of the objects users hand to ``wandb.log`` and
``wandb.log_artifact``: each W&B data type becomes the matching ``Run`` call.

``sdk`` is the imported ``wandb`` module (typed ``Any``: these functions read
a few attributes of its objects and nothing else of it).
"""

from __future__ import annotations

import logging
import numbers
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final, cast

from foundry_track.run import Run

__all__ = ["log_values", "log_wandb_artifact"]

_log = logging.getLogger("foundry_track")
#: Values a histogram given only as counts is rebuilt from (bin midpoints, repeated).
_MAX_HISTOGRAM_SAMPLES: Final = 1 << 20
_warned: set[str] = set()


def _warn_once(what: str, message: str, *args: Any) -> None:
    if what not in _warned:
        _warned.add(what)
        _log.warning(message + " (reported once per process)", *args)


def _flatten(data: Mapping[Any, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``("a.b", 1)``: W&B shows a nested dict's keys joined with dots."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def _is_number(value: Any) -> bool:
    """A value ``run.log`` takes: a Python/numpy number or a 0-d tensor."""
    if isinstance(value, numbers.Number):
        return True
    return getattr(value, "ndim", None) == 0 and hasattr(value, "dtype")


def log_values(run: Run, sdk: Any, data: Mapping[Any, Any], step: int | None) -> None:
    """One ``wandb.log(data, step=step)``: numbers in one ``run.log`` row, then each
    image, table, histogram or text at the step that row took."""
    if not isinstance(data, Mapping):
        raise TypeError(f"wandb.log must be passed a dictionary, got {type(data).__name__}")
    scalars: dict[str, Any] = {}
    rich: list[tuple[str, Any]] = []
    for key, value in _flatten(data):
        if _is_number(value):
            scalars[key] = value
        else:
            rich.append((key, value))
    if scalars:
        run.log(scalars, step=step)
    # step=None: run.log took the next step; media without a step go to the last step, that one.
    for key, value in rich:
        _log_rich(run, sdk, key, value, step)


def _log_rich(run: Run, sdk: Any, key: str, value: Any, step: int | None) -> None:
    if value is None:
        return
    if isinstance(value, sdk.Image):
        image = value.image  # a PIL image (None for an image given as a URL)
        if image is None:
            _warn_once("image-ref", "wandb.log(%r): an image referenced by URL is not sent to foundry-track", key)
            return
        run.log_image(key, image, step=step, caption=getattr(value, "_caption", None))
    elif isinstance(value, sdk.Table):
        run.log_table(key, [str(c) for c in value.columns], [list(row) for row in value.data], step=step)
    elif isinstance(value, sdk.Histogram):
        _log_histogram(run, key, value, step)
    elif isinstance(value, str):
        run.log_text(key, value, step=step)
    elif hasattr(value, "savefig"):  # a matplotlib figure, logged as it looks
        run.log_image(key, value, step=step)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, sdk.Image) for v in value):
        for i, item in enumerate(value):
            _log_rich(run, sdk, f"{key}/{i}", item, step)
    else:
        kind = type(value).__name__
        _warn_once(f"type-{kind}", "wandb.log(%r): a %s is not sent to foundry-track (it takes numbers, "
                   "wandb.Image, wandb.Table, wandb.Histogram, str and matplotlib figures); skipped", key, kind)


def _log_histogram(run: Run, key: str, histogram: Any, step: int | None) -> None:
    """A ``wandb.Histogram`` holds counts and edges, not values: the values are
    rebuilt as each bin's midpoint repeated ``count`` times (counts rounded, and
    scaled down past 2**20 values), then binned on the same edges, so every
    backend shows the same bars."""
    import numpy as np

    counts = np.asarray(histogram.histogram, dtype=np.float64)
    edges = np.asarray(histogram.bins, dtype=np.float64)
    total = float(counts.sum())
    scale = min(1.0, _MAX_HISTOGRAM_SAMPLES / total) if total > 0 else 1.0
    repeats = np.rint(counts * scale).astype(np.int64)
    values = np.repeat((edges[:-1] + edges[1:]) / 2, repeats)
    # numpy's histogram takes the edges themselves as `bins`.
    run.log_histogram(key, values, step=step, bins=cast(int, edges.tolist()))


# --------------------------------------------------------------------------- #
# Artifacts
# --------------------------------------------------------------------------- #


def log_wandb_artifact(run: Run, sdk: Any, artifact: Any, name: str | None) -> None:
    """``wandb.log_artifact(artifact)``: the files the artifact was given, as one
    ``run.log_artifact`` path.

    An artifact made of one directory (``add_dir(path)``) or one file is logged
    from where it is; any other layout is assembled under the run directory
    (``artifacts/``, hard links where the disk allows) first. W&B's staging
    copies of the files (``add_file``'s ``policy="mutable"``) are removed, as
    W&B does once it has uploaded them: the run's backends read the originals.
    """
    files = _artifact_files(artifact)
    if not files:
        raise ValueError(f"wandb.log_artifact: artifact {artifact.name!r} has no local files "
                         "(foundry-track artifacts are files: use add_dir or add_file)")
    path = _single_root(files) or _assemble(run, artifact.name, files)
    run.log_artifact(path, type=artifact.type, name=name or artifact.name, description=artifact.description,
                     metadata=dict(artifact.metadata or {}))
    _drop_staging_copies(sdk, artifact, {str(p) for p in files.values()})


def _artifact_files(artifact: Any) -> dict[str, Path]:
    """Path inside the artifact -> the file it was added from."""
    added = getattr(artifact, "_added_local_paths", None)  # wandb >= 0.16: original path -> manifest entry
    files: dict[str, Path] = {}
    if isinstance(added, Mapping):
        files = {str(entry.path): Path(os.path.abspath(original)) for original, entry in added.items()}
    for logical, entry in artifact.manifest.entries.items():
        if str(logical) in files:
            continue
        local = getattr(entry, "local_path", None)
        if local:
            files[str(logical)] = Path(local)
        else:
            _warn_once("artifact-ref", "wandb.log_artifact: %r is a reference (%s), not a local file; "
                       "foundry-track artifacts hold local files only, so it is left out", logical, entry.ref)
    return files


def _single_root(files: Mapping[str, Path]) -> Path | None:
    """The directory the artifact mirrors exactly (one ``add_dir``), or its only file."""
    roots = set()
    for logical, source in files.items():
        parts = Path(logical).parts
        if source.parts[-len(parts):] != parts:
            return None
        roots.add(Path(*source.parts[:-len(parts)]))
    if len(roots) != 1:
        return None
    (root,) = roots
    if root.is_dir() and {p for p in root.rglob("*") if p.is_file()} == set(files.values()):
        return root
    if len(files) == 1:
        (source,) = files.values()
        return source
    return None


def _assemble(run: Run, name: str, files: Mapping[str, Path]) -> Path:
    """The artifact's layout under ``<run dir>/artifacts/<name>-XXXX``."""
    base = (run.dir or Path(tempfile.gettempdir())) / "artifacts"
    base.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    root = Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=base))
    for logical, source in files.items():
        target = root / logical
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(source, target)
    return root


def _drop_staging_copies(sdk: Any, artifact: Any, originals: set[str]) -> None:
    try:
        staging = Path(sdk.sdk.artifacts.staging.get_staging_dir()).resolve()
    except (AttributeError, OSError):
        return
    for entry in artifact.manifest.entries.values():
        local = getattr(entry, "local_path", None)
        if local and local not in originals and Path(local).resolve().parent == staging:
            try:
                os.remove(local)
            except OSError:
                pass
