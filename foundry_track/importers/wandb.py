"""Import W&B offline runs (``offline-run-*`` folders, one or many).

The ``run-<id>.wandb`` file is W&B's transaction log: a 7-byte header
(``:W&B``, magic ``0xBEE1``, version 0), then a LevelDB log of 32 KiB blocks
whose chunks (``crc32: u32, length: u16, type: u8`` + data) each carry a
``wandb_internal_pb2.Record``. wandb 0.31 ships no Python reader of its own
(``wandb.sdk.internal.datastore`` is gone), so the framing is read here and
each record is parsed with wandb's own protobuf class.

Kept: history rows (step ``trainer/step`` when foundry-track wrote the run,
else ``_step``; wall time ``_timestamp``; numbers as metrics, ``image-file``
and ``histogram`` values as images and histograms), the config (W&B's
``{"value": ...}`` wrappers and ``_wandb`` keys dropped), the display name,
tags, group, notes, alerts, and the status from the exit record (0: success,
other: failed, none: killed). Segments of a resumed run (several files with
one run id) are one run, in start-time order. Artifacts are not imported.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Iterator

from foundry_track.errors import RunDirError
from foundry_track.events import Status
from foundry_track.importers._core import Event, SourceRun, check_exists

__all__ = ["runs", "read_records"]

_KIND = "wandb"
_HEADER: Final = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
_CHUNK: Final = struct.Struct("<IHB")
_BLOCK: Final = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_TYPE_CRC: Final = {t: zlib.crc32(bytes([t])) for t in (_FULL, _FIRST, _MIDDLE, _LAST)}
_STEP_KEY: Final = "trainer/step"  # foundry-track's W&B backend logs the journal's step here


def _payloads(path: Path) -> Iterator[bytes]:
    """Each complete record payload; stops at a torn tail (a killed writer)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RunDirError(f"cannot read the W&B file {path}: {exc}") from None
    if data[:7] != _HEADER:
        raise RunDirError(f"{path} is not a W&B transaction log (no ':W&B' header); give an offline-run-* folder")
    pos, end, pending = 7, len(data), None
    while pos < end:
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:
            pos += left
            continue
        if pos + _CHUNK.size > end:
            return
        checksum, length, kind = _CHUNK.unpack_from(data, pos)
        body_end = pos + _CHUNK.size + length
        if kind not in _TYPE_CRC or length > left - _CHUNK.size or body_end > end:
            return
        body = data[pos + _CHUNK.size:body_end]
        if zlib.crc32(body, _TYPE_CRC[kind]) != checksum:
            return
        pos = body_end
        if kind == _FULL:
            yield body
        elif kind == _FIRST:
            pending = bytearray(body)
        elif pending is not None:
            pending += body
            if kind == _LAST:
                yield bytes(pending)
                pending = None


def read_records(path: Path) -> Iterator[Any]:
    """Every ``wandb_internal_pb2.Record`` of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    cls: Any = getattr(wandb_internal_pb2, "Record")  # noqa: B009 - no stubs
    for payload in _payloads(path):
        record = cls()
        try:
            record.ParseFromString(payload)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError
            raise RunDirError(f"{path}: a record is not a W&B Record ({exc!r}); a newer wandb format?") from None
        yield record


@dataclass
class _Segment:
    path: Path
    records: list[Any] = field(default_factory=list)
    run: Any = None
    exit_code: int | None = None
    start: float = float("inf")


def _segment(path: Path) -> _Segment:
    seg = _Segment(path)
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            seg.run = record.run
            if record.run.HasField("start_time") and seg.start == float("inf"):
                seg.start = record.run.start_time.seconds + record.run.start_time.nanos / 1e9
        elif kind == "exit":
            seg.exit_code = int(record.exit.exit_code)
        if kind in ("run", "config", "history", "alert"):
            seg.records.append(record)
    return seg


def runs(path: str | Path) -> list[SourceRun]:
    """One :class:`SourceRun` per W&B run id found under ``path`` (a ``.wandb``
    file, an ``offline-run-*`` folder, or a folder holding many)."""
    root = check_exists(Path(path), "W&B offline run folder (offline-run-*) or the wandb/ folder holding them")
    files = [root] if root.is_file() else sorted(root.rglob("run-*.wandb"))
    if not files:
        raise RunDirError(f"no W&B run file (run-*.wandb) under {root}; give an offline-run-* folder")
    groups: dict[str, list[_Segment]] = {}
    for seg in sorted((_segment(f) for f in files), key=lambda s: (s.start, str(s.path))):
        if seg.run is not None:  # a file without a run record holds nothing
            groups.setdefault(f"{seg.run.project}/{seg.run.run_id}", []).append(seg)
    return [_source(ident, segs) for ident, segs in groups.items()]


def _source(ident: str, segs: list[_Segment]) -> SourceRun:
    last = segs[-1].run
    config: dict[str, Any] = {}
    for seg in segs:
        for record in seg.records:
            kind = record.WhichOneof("record_type")
            if kind in ("run", "config"):
                _apply_config(config, record.run.config if kind == "run" else record.config)
    config = {k: _unwrap(v) for k, v in config.items() if not k.startswith("_wandb")}
    code = segs[-1].exit_code
    status: Status = "killed" if code is None else "success" if code == 0 else "failed"
    total = sum(1 for seg in segs for r in seg.records if r.WhichOneof("record_type") == "history")
    return SourceRun(kind=_KIND, id=ident, name=last.display_name or last.run_id, events=_reader(segs),
                     project=last.project or None, tags=tuple(last.tags), status=status, config=config,
                     notes=last.notes or None, group=last.run_group or None,
                     started=segs[0].start if segs[0].start != float("inf") else None, total=total,
                     where=str(segs[0].path.parent))


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _apply_config(config: dict[str, Any], record: Any) -> None:
    for item in record.update:
        path = list(item.nested_key) or [item.key]
        target = config
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = _loads(item.value_json)
    for item in record.remove:
        config.pop(item.key, None)


def _unwrap(value: Any) -> Any:
    if isinstance(value, dict) and "value" in value and set(value) <= {"value", "desc"}:
        return value["value"]
    return value


def _reader(segs: list[_Segment]) -> Any:
    def events(media_dir: Path) -> Iterator[Event]:
        for seg in segs:
            files_dir = seg.path.parent / "files"
            for record in seg.records:
                kind = record.WhichOneof("record_type")
                if kind == "history":
                    yield from _history(record.history, files_dir, media_dir)
                elif kind == "alert":
                    a = record.alert
                    level = str(a.level).lower() if str(a.level).lower() in ("info", "warn", "error") else "info"
                    yield ("alert", 0, seg.start if seg.start != float("inf") else 0.0,
                           {"title": a.title, "text": a.text, "level": level})

    return events


def _history_row(history: Any) -> dict[str, Any]:
    """A history record as ``key -> value``; the SDK writes a media value as one
    item per field (``nested_key`` ``[key, field]``): those are put back together."""
    row: dict[str, Any] = {}
    for item in history.item:
        parts = list(item.nested_key) or [item.key]
        if len(parts) == 1:
            row[parts[0]] = _loads(item.value_json)
            continue
        group = row.setdefault(".".join(parts[:-1]), {})
        if isinstance(group, dict):
            group[parts[-1]] = _loads(item.value_json)
    return row


def _history(history: Any, files_dir: Path, media_dir: Path) -> Iterator[Event]:
    row = _history_row(history)
    stamp = float(row.get("_timestamp", 0))
    step_value = row.get(_STEP_KEY, row.get("_step"))
    step = int(step_value) if isinstance(step_value, (int, float)) else int(history.step.num)
    for key, value in list(row.items()):
        if isinstance(value, dict) and "_type" not in value:  # a nested dict of numbers: key.field
            del row[key]
            row.update({f"{key}.{k}": v for k, v in value.items()})
    metrics: dict[str, float | int] = {}
    for key, value in row.items():
        if key.startswith("_") or key == _STEP_KEY:
            continue
        if isinstance(value, bool):
            metrics[key] = int(value)
        elif isinstance(value, (int, float)):
            metrics[key] = value
        elif isinstance(value, dict):
            media = _media(key, value, files_dir, media_dir)
            if media is not None:
                yield (media[0], step, stamp, media[1])
        elif value in ("NaN", "Infinity", "-Infinity"):
            metrics[key] = float(value.replace("Infinity", "inf"))
    if metrics:
        yield ("metrics", step, stamp, metrics)


def _media(key: str, value: dict[str, Any], files_dir: Path, media_dir: Path) -> tuple[str, dict[str, Any]] | None:
    kind = value.get("_type")
    if kind == "histogram" and "bins" in value:
        edges = [float(e) for e in value["bins"]]
        counts = [float(c) for c in value.get("values", [])]
        centers = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
        return "histogram", {"key": key, "edges": edges, "counts": counts, "min": edges[0], "max": edges[-1],
                             "num": int(sum(counts)), "sum": sum(c * m for c, m in zip(counts, centers)),
                             "sum_squares": sum(c * m * m for c, m in zip(counts, centers))}
    if kind == "image-file" and "path" in value:
        source = files_dir / value["path"]
        if not source.is_file():
            return None  # W&B keeps media files only where the run saved them
        target = media_dir / source.name
        if not target.exists():
            media_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        return "image", {"key": key, "path": str(target), "width": int(value.get("width", 0)),
                         "height": int(value.get("height", 0)), "caption": value.get("caption")}
    return None
