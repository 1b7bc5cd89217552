"""Read back what a W&B run's ``.wandb`` file holds, from a byte offset on.

The file is W&B's transaction log (offline mode: the whole run; online mode:
W&B's local copy of what it uploads): a 7-byte header (``:W&B``, magic
``0xBEE1``, version 0), then a LevelDB log of 32 KiB blocks whose chunks
(``crc32: u32, length: u16, type: u8`` + data; FULL, FIRST, MIDDLE, LAST)
carry one ``wandb_internal_pb2.Record`` each. W&B's checksum is zlib's CRC-32
of the data seeded with the CRC of the type byte. Checked against wandb 0.31;
recent SDKs ship no Python reader of their own.

W&B's service writes a block only when it is full (or when the run finishes),
and a service whose process was killed never writes its last, partial block.
So what this reader returns are the records in complete blocks: what a crash
can no longer take away. A reader stops at the first incomplete or garbled
chunk.

Only the records the backend can recognise are decoded into :class:`Held`:
history rows (by ``trainer/step`` and ``_timestamp``, the journal's time of
the row, and a media row by its key too), alerts (by title, text and level)
and artifacts (by name, step and digest, from their metadata). Importing this
module does not import ``wandb``; the protobuf class is loaded on first use.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import foundry_track

__all__ = ["Held", "STEP_METRIC", "ROWS_KEY", "scan", "later_segments", "wait_quiet"]

#: The metric every other metric is plotted against (W&B's x-axis).
STEP_METRIC: Final = "trainer/step"
#: A hidden metric on a W&B row that merges several rows of one step: how many.
ROWS_KEY: Final = "_foundry_track/rows"

_HEADER: Final = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
_CHUNK: Final = struct.Struct("<IHB")  # checksum, length, type
_BLOCK: Final = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_TYPE_CRC: Final = {t: zlib.crc32(bytes([t])) for t in (_FULL, _FIRST, _MIDDLE, _LAST)}


@dataclass(frozen=True, slots=True)
class Held:
    """One record of the file that an event of the backend made.

    ``kind`` is ``"history"``, ``"alert"`` or ``"artifact"``; ``key`` what
    identifies the event: ``(step, time, media key or None)`` for a history
    row, ``(title, text, level)`` for an alert, ``(name, step, digest)`` for an
    artifact. ``rows`` is how many journal rows a history row merges.
    """

    kind: str
    key: tuple[Any, ...]
    rows: int = 1


def _payloads(path: Path, offset: int) -> tuple[list[bytes], int]:
    """The complete record payloads from ``offset`` (a record boundary) on, and
    the offset where the last one ends."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    if offset == 0:
        if data[:len(_HEADER)] != _HEADER:
            return [], 0  # not written yet (or not a W&B log: then nothing is recognised)
        data, offset = data[len(_HEADER):], len(_HEADER)
    found: list[bytes] = []
    pos, end, pending, open_ = 0, offset, bytearray(), False
    while pos < len(data):
        left = _BLOCK - (offset + pos) % _BLOCK
        if left < _CHUNK.size:
            pos += left  # a block's zero trailer
            continue
        if pos + _CHUNK.size > len(data):
            break
        checksum, length, kind = _CHUNK.unpack_from(data, pos)
        body = data[pos + _CHUNK.size:pos + _CHUNK.size + length]
        if (kind not in _TYPE_CRC or length > left - _CHUNK.size or len(body) < length
                or zlib.crc32(body, _TYPE_CRC[kind]) != checksum or open_ != (kind in (_MIDDLE, _LAST))):
            break  # the end of what is on disk, or a torn write
        pos += _CHUNK.size + length
        pending = bytearray(body) if kind in (_FULL, _FIRST) else pending + body
        open_ = kind in (_FIRST, _MIDDLE)
        if not open_:
            end = offset + pos
            found.append(bytes(pending))
    return found, end


def _history(record: Any) -> Held | None:
    step: Any = None
    wall: Any = None
    media: str | None = None
    rows = 1
    for item in record.history.item:
        path = item.nested_key
        name = path[0] if path else item.key
        if name == STEP_METRIC:
            step = json.loads(item.value_json)
        elif name == "_timestamp":
            wall = json.loads(item.value_json)
        elif name == ROWS_KEY:
            rows = int(json.loads(item.value_json))
        elif len(path) == 2 and path[1] == "_type":
            media = name  # a media object (image, histogram, table), flattened: a media event's row
    if step is None:
        return None  # not a row of this backend
    return Held("history", (step, wall, media), rows)


def _artifact(record: Any) -> Held:
    try:
        meta = json.loads(record.artifact.metadata or "{}")
    except ValueError:
        meta = {}
    return Held("artifact", (record.artifact.name, meta.get("step"), meta.get("foundry_track_digest")))


def scan(path: Path, offset: int) -> tuple[list[Held], int]:
    """What the file holds past ``offset`` that the backend can recognise, in
    file order, and the offset where its complete records end."""
    # Through import_sdk: it may run while another backend imports its SDK.
    record_cls: Any = foundry_track.import_sdk("wandb.proto.wandb_internal_pb2").Record
    payloads, end = _payloads(path, offset)
    held: list[Held] = []
    for payload in payloads:
        record = record_cls.FromString(payload)
        kind = record.WhichOneof("record_type")
        found: Held | None = None
        if kind == "history":
            found = _history(record)
        elif kind == "alert":
            found = Held("alert", (record.alert.title, record.alert.text, record.alert.level))
        elif kind == "artifact":
            found = _artifact(record)
        if found is not None:
            held.append(found)
    return held, end


def _segment_order(folder: Path, run_id: str) -> tuple[str, int] | None:
    """``offline-run-<YYYYmmdd_HHMMSS>-<run id>[-N]`` (W&B adds ``-N`` to a
    resume in the same second) as something to sort by."""
    match = re.fullmatch(rf"(?:offline-)?run-(\d{{8}}_\d{{6}})-{re.escape(run_id)}(?:-(\d+))?", folder.name)
    return None if match is None else (match.group(1), int(match.group(2) or 0))


def later_segments(path: Path, run_id: str) -> list[Path]:
    """The ``.wandb`` files of the same W&B run started after ``path``'s (a
    resume that died before its first checkpoint), oldest first."""
    this = _segment_order(path.parent, run_id)
    if this is None:
        return []
    later: list[tuple[tuple[str, int], Path]] = []
    for folder in path.parent.parent.glob(f"*run-*-{run_id}*"):
        order = _segment_order(folder, run_id)
        candidate = folder / path.name
        if order is not None and order > this and candidate.is_file():
            later.append((order, candidate))
    return [p for _, p in sorted(later)]


def wait_quiet(paths: list[Path], *, quiet: float = 0.5, limit: float = 5.0) -> None:
    """Wait (at most ``limit`` s) until no file in ``paths`` changed for ``quiet`` s.

    The W&B service of a process that was just killed can still be writing
    when ``foundry-track sync`` starts; what it writes after the read-back
    would be sent a second time.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        newest = max((os.stat(p).st_mtime for p in paths if p.exists()), default=0.0)
        if time.time() - newest >= quiet:
            return
        time.sleep(0.05)
