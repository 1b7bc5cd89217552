"""Turning what users pass to ``log_image``/``log_histogram``/``log_table``/
``log_artifact`` into journal records.

Each ``capture_*`` function runs on the training thread and only takes a cheap,
private copy of the input (a GPU tensor is cloned asynchronously, never synced).
Each ``prepare_*`` function runs on the run's media thread and does the heavy
part (PNG encoding, ``.cpu()``, histogramming, hashing) off the training step.
numpy, PIL and torch are imported only when the user's data is of that kind.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

__all__ = [
    "capture_image",
    "capture_values",
    "prepare_histogram",
    "table_rows",
    "digest_path",
    "encode_png",
]

Prepared = Callable[[Path], dict[str, Any]]


# --------------------------------------------------------------------------- #
# images
# --------------------------------------------------------------------------- #


def encode_png(pixels: Any) -> bytes:
    """PNG bytes of a uint8 array shaped HxW, HxWx1, HxWx3 or HxWx4 (no PIL needed)."""
    import numpy as np

    arr = np.ascontiguousarray(pixels)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    height, width = arr.shape[:2]
    color_type = {2: 0, 3: {3: 2, 4: 6}.get(arr.shape[2] if arr.ndim == 3 else 0, -1)}[arr.ndim]
    if color_type < 0:
        raise ValueError(f"cannot encode an image of shape {arr.shape}")
    rows = arr.reshape(height, -1)
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(height))  # filter 0 per scanline

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _check_image(shape: tuple[int, ...], dtype: str, key: str) -> None:
    channels_ok = len(shape) == 2 or (len(shape) == 3 and (shape[0] in (1, 3, 4) or shape[2] in (1, 3, 4)))
    if not channels_ok:
        raise ValueError(
            f"log_image({key!r}): expected an HW, HWC or CHW array with 1, 3 or 4 channels, got shape {shape}"
        )
    if not ("uint8" in dtype or "float" in dtype or "bool" in dtype):
        raise ValueError(f"log_image({key!r}): pixels must be uint8 or float in [0, 1], got {dtype}")


def _to_uint8_hwc(array: Any, key: str) -> Any:
    import numpy as np

    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = np.transpose(arr, (1, 2, 0))  # CHW -> HWC
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(
            f"log_image({key!r}): expected an HW, HWC or CHW array with 1, 3 or 4 channels, got shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.bool_:
        return (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    raise ValueError(f"log_image({key!r}): pixels must be uint8 or float in [0, 1], got {arr.dtype}")


def capture_image(key: str, image: Any) -> Prepared:
    """Copy the image now; encode it later. Accepts numpy arrays, tensors, PIL
    images and matplotlib figures (rendered now: matplotlib is not thread-safe)."""
    if hasattr(image, "savefig"):  # a matplotlib Figure
        buf = io.BytesIO()
        image.savefig(buf, format="png")
        png = buf.getvalue()
        width, height = struct.unpack(">II", png[16:24])
        return lambda media_dir: _store_png(media_dir, key, png, width, height)
    if hasattr(image, "save") and hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image
        copy = image.copy()

        def prepare_pil(media_dir: Path) -> dict[str, Any]:
            buf = io.BytesIO()
            copy.save(buf, format="PNG")
            return _store_png(media_dir, key, buf.getvalue(), copy.size[0], copy.size[1])

        return prepare_pil
    if not (hasattr(image, "shape") or isinstance(image, (list, tuple))):
        raise TypeError(
            f"log_image({key!r}): expected a numpy array, a tensor, a PIL image or a matplotlib figure, "
            f"got {type(image).__name__}"
        )
    copy = capture_values(image)
    _check_image(tuple(copy.shape), str(copy.dtype), key)  # wrong input fails at the call site

    def prepare_array(media_dir: Path) -> dict[str, Any]:
        pixels = _to_uint8_hwc(_numpy(copy), key)
        return _store_png(media_dir, key, encode_png(pixels), pixels.shape[1], pixels.shape[0])

    return prepare_array


def _store_png(media_dir: Path, key: str, png: bytes, width: int, height: int) -> dict[str, Any]:
    digest = hashlib.sha256(png).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    path = media_dir / f"{safe}-{digest}.png"
    media_dir.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return {"key": key, "path": str(path), "width": int(width), "height": int(height)}


# --------------------------------------------------------------------------- #
# histograms
# --------------------------------------------------------------------------- #


def capture_values(values: Any) -> Any:
    """A private copy that later code may read; a GPU tensor is cloned without a sync."""
    detach = getattr(values, "detach", None)
    if detach is not None:  # a torch tensor: clone on its own device, asynchronously
        return detach().clone()
    import numpy as np

    return np.array(values, copy=True)


def _numpy(values: Any) -> Any:
    import numpy as np

    if hasattr(values, "cpu"):  # the media thread is where the GPU copy is waited for
        values = values.cpu()
        if str(values.dtype) in ("torch.bfloat16", "torch.float16"):  # numpy has no bfloat16
            values = values.float()
        values = values.numpy()
    return np.asarray(values)


def prepare_histogram(key: str, values: Any, bins: int) -> dict[str, Any]:
    import numpy as np

    arr = _numpy(values).astype(np.float64, copy=False).ravel()
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        counts, edges = np.zeros(1), np.array([0.0, 1.0])
        lo = hi = total = squares = 0.0
    else:
        counts, edges = np.histogram(finite, bins=bins)
        lo, hi = float(finite.min()), float(finite.max())
        total, squares = float(finite.sum()), float(np.dot(finite, finite))
    return {
        "key": key, "edges": [float(e) for e in edges], "counts": [float(c) for c in counts],
        "min": lo, "max": hi, "num": int(finite.size), "sum": total, "sum_squares": squares,
    }


# --------------------------------------------------------------------------- #
# tables
# --------------------------------------------------------------------------- #


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "ndim", 0) == 0:
        return _cell(item())
    return str(value)


def table_rows(key: str, columns: Sequence[str] | None, rows: Sequence[Sequence[Any]] | None,
               dataframe: Any) -> tuple[list[str], list[list[Any]]]:
    """Normalise a table (columns + rows, or a pandas DataFrame) to JSON-able cells."""
    if dataframe is not None:
        if not (hasattr(dataframe, "columns") and hasattr(dataframe, "itertuples")):
            raise TypeError(f"log_table({key!r}): dataframe must be a pandas DataFrame, got {type(dataframe).__name__}")
        columns = [str(c) for c in dataframe.columns]
        rows = [list(r) for r in dataframe.itertuples(index=False, name=None)]
    if columns is None or rows is None:
        raise TypeError(f"log_table({key!r}): pass columns= and rows=, or dataframe=")
    columns = [str(c) for c in columns]
    out = []
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(columns):
            raise ValueError(f"log_table({key!r}): row {i} has {len(row)} cells for {len(columns)} columns")
        out.append([_cell(c) for c in row])
    json.dumps(out)  # fail at the call site, not in a backend
    return columns, out


# --------------------------------------------------------------------------- #
# artifacts
# --------------------------------------------------------------------------- #


def digest_path(path: Path) -> str:
    """sha256 of a file, or of a directory's relative paths and contents, streamed."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            h.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def flat_mapping(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    return {str(k): _cell(v) for k, v in (mapping or {}).items()}
