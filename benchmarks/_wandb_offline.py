"""Read back the history rows a W&B offline run wrote, to check nothing was lost.

``wandb.Api`` needs a server; offline, the truth is the run's
``run-<id>.wandb`` file: a 7-byte header (``:W&B``, magic 0xBEE1, version 0)
then a LevelDB-log stream of 32 KiB blocks, each chunk ``crc32: u32, length:
u16, type: u8`` (FULL=1, FIRST=2, MIDDLE=3, LAST=4) holding one serialized
``wandb_internal_pb2.Record``. Checked against wandb 0.31. This is the
smallest reader that counts history rows; the test suite has a complete one.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any, Iterator

_HEADER = struct.Struct("<4sHB")
_CHUNK = struct.Struct("<IHB")
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if len(data) < _HEADER.size or _HEADER.unpack_from(data, 0)[0] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = _HEADER.size, bytearray()
    while pos < len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:  # zero padding at the end of a block
            pos += left
            continue
        if pos + _CHUNK.size > len(data):
            return
        _crc, length, kind = _CHUNK.unpack_from(data, pos)
        body = data[pos + _CHUNK.size:pos + _CHUNK.size + length]
        if kind not in (_FULL, _FIRST, _MIDDLE, _LAST) or len(body) < length:
            return  # end of what was written
        pos += _CHUNK.size + length
        if kind == _FULL:
            yield bytes(body)
        elif kind == _FIRST:
            pending = bytearray(body)
        else:
            pending += body
            if kind == _LAST:
                yield bytes(pending)


def _records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    records = []
    for payload in _payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def history_rows(root: Path, wait_s: float = 30.0) -> list[dict[str, Any]]:
    """Every history row of every ``run-*.wandb`` file under ``root``, as flat dicts.

    ``run.finish()`` can return before W&B's service process has written the
    whole file (seen now and then with Lightning's logger), so each file is
    read again until it holds the run's exit record, for up to ``wait_s``.
    """
    rows: list[dict[str, Any]] = []
    for path in sorted(Path(root).rglob("run-*.wandb")):
        deadline = time.monotonic() + wait_s
        records = _records(path)
        while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.monotonic() < deadline:
            time.sleep(0.1)
            records = _records(path)
        for record in records:
            if record.WhichOneof("record_type") != "history":
                continue
            row = {}
            for item in record.history.item:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows
