"""Import TensorBoard logdirs: every folder that holds event files is one run.

Kept: scalars (``simple_value`` and the ``scalars`` plugin's tensors) with
their steps and wall times, images (the PNG bytes: legacy ``image`` values
and the ``images`` plugin), histograms (legacy ``histo`` and the
``histograms`` plugin), text (the ``text`` plugin) and hyperparameters (the
``hparams`` plugin's session start, what ``add_hparams`` and foundry-track's
own TensorBoard backend write: a params event, redacted). Consecutive scalars
with the same step and wall time become one metrics row. TensorBoard records
no run status or tags: an imported run is ``success``.

Each record is parsed with tensorboard's own ``Event`` protobuf class, in
file order. The TFRecord framing around it (``length: u64, masked crc32c of
the length: u32, data, masked crc32c of the data: u32``) is read here rather
than through tensorboard's ``LegacyEventFileLoader``: without TensorFlow that
reader computes CRC-32C in pure Python, which held an import to ~40,000
scalars/s. The checksums are still verified, with ``google_crc32c`` (C) when
it is installed, else with tensorboard's own ``masked_crc32c``. A torn last
record (a writer still running, or killed) ends the file quietly, as in
TensorBoard.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any, Callable, Final, Iterator

from foundry_track.errors import RunDirError
from foundry_track.importers._core import Event, SourceRun, check_exists

__all__ = ["runs", "event_files"]

_KIND = "tensorboard"
_HEAD: Final = struct.Struct("<QI")  # length, masked crc32c of the length
_CRC: Final = struct.Struct("<I")


def event_files(folder: Path) -> list[Path]:
    """The event files directly in ``folder``, in the order TensorBoard reads them."""
    return sorted(p for p in folder.iterdir() if p.is_file() and "tfevents" in p.name)


def runs(logdir: str | Path) -> list[SourceRun]:
    """One :class:`SourceRun` per folder under ``logdir`` (itself included) with event files."""
    root = check_exists(Path(logdir), "TensorBoard log folder (the one passed to `tensorboard --logdir`)")
    root = root.resolve()
    folders = [root] if root.is_dir() else []
    if root.is_file():
        raise RunDirError(f"{root} is a file; give the folder that holds it (each folder with event files is a run)")
    folders += sorted(p for p in root.rglob("*") if p.is_dir())
    found = []
    for folder in folders:
        files = event_files(folder)
        if not files:
            continue
        name = root.name if folder == root else str(folder.relative_to(root))
        found.append(SourceRun(kind=_KIND, id=str(folder), name=name, events=_reader(files), where=str(folder),
                               started=_first_wall_time(files[0])))
    if not found:
        raise RunDirError(f"no TensorBoard event files (*tfevents*) under {root}; give the --logdir folder")
    return found


def _first_wall_time(path: Path) -> float | None:
    """The wall time of a file's first event (its ``file_version`` event), read without reading the file."""
    from tensorboard.compat.proto.event_pb2 import Event

    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD.size)
            if len(head) < _HEAD.size:
                return None
            body = fh.read(_HEAD.unpack(head)[0])
        return float(Event.FromString(body).wall_time)
    except Exception:  # noqa: BLE001 - reading the whole file later says what is wrong with it
        return None


def _masked_crc() -> Callable[[bytes], int]:
    try:
        import google_crc32c
    except ImportError:
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

        return masked_crc32c  # type: ignore[no-any-return]

    def masked(data: bytes) -> int:
        crc = int(google_crc32c.value(data))
        return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF  # TFRecord's mask

    return masked


def _load(path: Path) -> Iterator[Any]:
    """The ``Event`` protos of one event file, in order."""
    from tensorboard.compat.proto.event_pb2 import Event

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RunDirError(f"cannot read the TensorBoard event file {path}: {exc}") from None
    masked, parse = _masked_crc(), Event.FromString
    pos, end = 0, len(data)
    while pos + _HEAD.size <= end:
        length, length_crc = _HEAD.unpack_from(data, pos)
        body = pos + _HEAD.size
        if body + length + _CRC.size > end:
            return  # a torn last record: the writer is still running, or was killed
        payload = data[body:body + length]
        if masked(data[pos:pos + 8]) != length_crc or masked(payload) != _CRC.unpack_from(data, body + length)[0]:
            raise RunDirError(f"the TensorBoard event file {path} is corrupt at byte {pos} (a checksum does not "
                              f"match); remove it or move it out of the log folder, and import again")
        try:
            yield parse(payload)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError
            raise RunDirError(f"cannot read the TensorBoard event file {path} at byte {pos}: {exc!r}") from None
        pos = body + length + _CRC.size


def _reader(files: list[Path]) -> Any:
    def events(media_dir: Path) -> Iterator[Event]:
        for path in files:
            yield from _file_events(path, media_dir)

    return events


def _file_events(path: Path, media_dir: Path) -> Iterator[Event]:
    """The journal records of one event file; scalars of one step and wall time are one row."""
    row: dict[str, Any] = {}
    row_at = (-1, -1.0)
    for event in _load(path):
        if not event.HasField("summary"):
            continue
        step, wall = int(event.step), float(event.wall_time)
        for value in event.summary.value:
            scalar = _scalar(value)
            if scalar is not None:
                if (step, wall) != row_at or value.tag in row:
                    if row:
                        yield ("metrics", row_at[0], row_at[1], row)
                    row, row_at = {}, (step, wall)
                row[value.tag] = scalar
                continue
            other = _other(value, media_dir)
            if other is not None:
                if row:
                    yield ("metrics", row_at[0], row_at[1], row)
                    row = {}
                yield (other[0], step, wall, other[1])
    if row:
        yield ("metrics", row_at[0], row_at[1], row)


def _plugin(value: Any) -> str:
    return str(value.metadata.plugin_data.plugin_name) if value.HasField("metadata") else ""


def _scalar(value: Any) -> float | None:
    if value.HasField("simple_value"):
        return float(value.simple_value)
    if value.HasField("tensor") and _plugin(value) == "scalars":
        from tensorboard.util import tensor_util

        return float(tensor_util.make_ndarray(value.tensor).item())
    return None


def _other(value: Any, media_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """An image, histogram or text value as (kind, data); None for what is not kept."""
    if value.HasField("image"):
        img = value.image
        return "image", _store_png(media_dir, value.tag, img.encoded_image_string, img.width, img.height)
    if value.HasField("histo"):
        return "histogram", _legacy_histogram(value.tag, value.histo)
    plugin = _plugin(value)
    if plugin == "hparams":
        return _hparams(value.metadata.plugin_data.content)
    if not value.HasField("tensor"):
        return None
    from tensorboard.util import tensor_util

    if plugin == "text":
        array = tensor_util.make_ndarray(value.tensor)
        cells = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in array.ravel()]
        return "text", {"key": value.tag.removesuffix("/text_summary"), "text": "\n".join(cells)}
    if plugin == "images" and len(value.tensor.string_val) > 2:
        width, height = (int(v) for v in value.tensor.string_val[:2])
        return "image", _store_png(media_dir, value.tag, value.tensor.string_val[2], width, height)
    if plugin == "histograms":
        return "histogram", _tensor_histogram(value.tag, tensor_util.make_ndarray(value.tensor))
    return None


def _hparams(content: bytes) -> tuple[str, dict[str, Any]] | None:
    """The HParams plugin's session start (what ``add_hparams`` and foundry-track's
    TensorBoard backend write) as params, redacted as a live run's."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    from foundry_track.params import redact

    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    if not data.HasField("session_start_info"):
        return None
    params: dict[str, Any] = {}
    for key, hp in data.session_start_info.hparams.items():
        kind = hp.WhichOneof("kind")
        params[key] = None if kind in (None, "null_value") else getattr(hp, kind)
    return ("params", redact(params)) if params else None


def _store_png(media_dir: Path, key: str, png: bytes, width: int, height: int) -> dict[str, Any]:
    digest = hashlib.sha256(png).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    path = media_dir / f"{safe}-{digest}.png"
    if not path.exists():
        media_dir.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    return {"key": key, "path": str(path), "width": int(width), "height": int(height), "caption": None}


def _legacy_histogram(key: str, histo: Any) -> dict[str, Any]:
    limits = [float(x) for x in histo.bucket_limit]
    counts = [float(c) for c in histo.bucket]
    lo, hi = float(histo.min), float(histo.max)
    if limits and abs(limits[-1]) > 1e300:  # TensorFlow's last bucket ends at DBL_MAX
        limits[-1] = max(hi, limits[-2] if len(limits) > 1 else hi)
    if len(limits) > 1 and counts[0] == 0 and limits[0] <= lo:
        # torch's writer pads an empty bucket whose right limit is the leftmost edge: the edges are the limits.
        edges, counts = limits, counts[1:]
    else:
        edges = [min(lo, limits[0]) if limits else lo, *limits]
    return {"key": key, "edges": edges, "counts": counts, "min": lo, "max": hi, "num": int(histo.num),
            "sum": float(histo.sum), "sum_squares": float(histo.sum_squares)}


def _tensor_histogram(key: str, array: Any) -> dict[str, Any]:
    """The ``histograms`` plugin's k x 3 tensor ([left, right, count] per bucket)."""
    rows = array.reshape(-1, 3) if array.size else array.reshape(0, 3)
    edges = [float(r[0]) for r in rows] + ([float(rows[-1][1])] if len(rows) else [0.0])
    counts = [float(r[2]) for r in rows]
    centers = [(float(r[0]) + float(r[1])) / 2 for r in rows]
    num = sum(counts)
    total = sum(c * m for c, m in zip(counts, centers))
    return {"key": key, "edges": edges if len(edges) > 1 else [0.0, 1.0], "counts": counts or [0.0],
            "min": edges[0], "max": edges[-1], "num": int(num), "sum": total,
            "sum_squares": sum(c * m * m for c, m in zip(counts, centers))}
