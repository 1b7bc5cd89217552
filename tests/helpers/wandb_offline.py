"""Read what the real ``wandb`` SDK writes in offline mode, for test assertions.

With ``WANDB_MODE=offline`` the SDK (wandb-core) writes everything a run logs to
``<dir>/wandb/offline-run-<YYYYmmdd_HHMMSS>-<run_id>[-N]/run-<run_id>.wandb``.
That file is the exact stream ``wandb sync`` would upload, so asserting on it
checks what our W&B backend *really* sent, without a server and without mocks.

File format (checked against wandb 0.31.0; recent SDKs ship no Python reader,
the old ``wandb.sdk.internal.datastore`` is gone, so the framing is parsed here):

* a 7-byte file header: ``b":W&B"``, magic ``0xBEE1`` (uint16 LE), version ``0``;
* then a LevelDB-log stream: 32 KiB blocks; each chunk has a 7-byte header
  ``checksum: uint32 LE, length: uint16 LE, type: uint8`` followed by ``length``
  bytes. Types: FULL=1, FIRST=2, MIDDLE=3, LAST=4. A block tail shorter than a
  chunk header is zero padding. W&B's checksum is *zlib CRC-32 (IEEE)* of the
  data seeded with the CRC of the type byte (not LevelDB's masked CRC-32C);
  CRC-32C is accepted too, as a fallback, in case a future SDK switches.
* each reassembled payload is one serialized ``wandb_internal_pb2.Record``.

A file whose writer is still running, or was killed, simply ends early: the
reader stops at the first incomplete/garbled chunk and returns the records
before it, which is what a test polling a live run needs.

Importing this module does not import ``wandb`` (that takes ~1 s); the protobuf
classes are loaded on first use.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

#: A ``wandb.proto.wandb_internal_pb2.Record`` at runtime. wandb ships no type
#: stubs for its generated protobuf modules (and picks a v5/v6/v7 module by
#: protobuf version at import time), so static checkers can only see ``Any``.
Record: TypeAlias = Any

__all__ = [
    "OfflineRun",
    "Record",
    "find_run_files",
    "iter_record_payloads",
    "read_all_offline_runs",
    "read_offline_run",
    "read_records",
]

# --- LevelDB-log framing constants (W&B flavour) ---------------------------

_FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_FILE_IDENT = b":W&B"
_FILE_MAGIC = 0xBEE1  # zlib.crc32(b"Weights & Biases") & 0xFFFF
_FILE_VERSION = 0

_CHUNK_HEADER = struct.Struct("<IHB")  # checksum, length, type
_BLOCK_LEN = 32 * 1024

_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4

# W&B seeds the data CRC with the CRC of the (single) type byte.
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (_FULL, _FIRST, _MIDDLE, _LAST)}


def _crc32c(data: bytes) -> int:
    """Plain-Python CRC-32C (Castagnoli); only used when the IEEE check fails."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _make_crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _make_crc32c_table()


def _checksum_ok(checksum: int, chunk_type: int, data: bytes) -> bool:
    """Accept W&B's IEEE CRC, or LevelDB's CRC-32C (masked or not) as a fallback."""
    if zlib.crc32(data, _TYPE_CRC[chunk_type]) == checksum:
        return True
    crc = _crc32c(bytes([chunk_type]) + data)
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    return checksum in (crc, masked)


# --- Low-level reading -------------------------------------------------------


def find_run_files(root: Path) -> list[Path]:
    """All ``run-*.wandb`` files under ``root`` (recursive), sorted by path.

    Accepts the directory passed as ``wandb.init(dir=...)``, its ``wandb/``
    subfolder, a single ``offline-run-*`` folder, or a ``.wandb`` file itself.
    ``Path`` sorting is part-wise, so a resumed run's folders come out as
    ``offline-run-<ts>-<id>`` before ``offline-run-<ts>-<id>-1`` (wandb adds the
    ``-1`` when the resume starts in the same second); readers below order
    segments by the RunRecord start time anyway.
    """
    root = Path(root)
    if root.is_file():
        return [root] if root.suffix == ".wandb" else []
    return sorted(p for p in root.rglob("run-*.wandb") if p.is_file())


def iter_record_payloads(path: Path) -> Iterator[bytes]:
    """Yield each complete, checksum-valid record payload of a ``.wandb`` file.

    Stops silently at a truncated or corrupt tail (live or killed writer): a
    partial chunk header, a short chunk body, a bad checksum, a zero/unknown
    chunk type, or a FIRST/MIDDLE sequence that never reaches LAST. Raises
    ``ValueError`` only when the file header says it is not a W&B log at all.
    """
    data = Path(path).read_bytes()
    if len(data) < _FILE_HEADER.size:
        return  # the writer has not even flushed the header yet
    ident, magic, version = _FILE_HEADER.unpack_from(data, 0)
    if ident != _FILE_IDENT or magic != _FILE_MAGIC or version != _FILE_VERSION:
        raise ValueError(
            f"{path}: not a W&B transaction log "
            f"(ident={ident!r} magic={magic:#x} version={version})"
        )

    pos = _FILE_HEADER.size
    pending: bytearray | None = None  # payload being assembled from FIRST/MIDDLE
    end = len(data)
    while pos < end:
        left_in_block = _BLOCK_LEN - pos % _BLOCK_LEN
        if left_in_block < _CHUNK_HEADER.size:
            pos += left_in_block  # zero trailer: next chunk starts a new block
            continue
        if pos + _CHUNK_HEADER.size > end:
            return  # partial chunk header
        checksum, length, chunk_type = _CHUNK_HEADER.unpack_from(data, pos)
        body_start = pos + _CHUNK_HEADER.size
        body_end = body_start + length
        if (
            chunk_type not in _TYPE_CRC
            or length > left_in_block - _CHUNK_HEADER.size
            or body_end > end
        ):
            return  # preallocated zeros, garbage, or a short tail
        body = data[body_start:body_end]
        if not _checksum_ok(checksum, chunk_type, body):
            return  # torn write
        pos = body_end

        if chunk_type == _FULL:
            if pending is not None:
                return  # FIRST without LAST followed by FULL: corrupt, stop
            yield body
        elif chunk_type == _FIRST:
            if pending is not None:
                return
            pending = bytearray(body)
        else:  # MIDDLE or LAST
            if pending is None:
                return
            pending += body
            if chunk_type == _LAST:
                yield bytes(pending)
                pending = None


def read_records(path: Path) -> list[Record]:
    """Every protobuf ``Record`` in a ``run-*.wandb`` file, in file order.

    A payload that passed its checksum but does not parse as a ``Record`` means
    a format change we do not understand, so that raises instead of hiding it.
    """
    from wandb.proto import wandb_internal_pb2

    record_cls: Any = getattr(wandb_internal_pb2, "Record")  # noqa: B009 (no stubs)
    records: list[Record] = []
    for i, payload in enumerate(iter_record_payloads(path)):
        record = record_cls()
        try:
            record.ParseFromString(payload)
        except Exception as exc:  # google.protobuf.message.DecodeError (no stubs)
            raise ValueError(f"{path}: record #{i} is not a wandb Record") from exc
        records.append(record)
    return records


# --- Decoding ------------------------------------------------------------------


@dataclass
class OfflineRun:
    """What one offline W&B run logged, decoded into plain Python values.

    For a resumed run (several ``.wandb`` files sharing one ``run_id``), the
    segments are merged in start-time order: lists are concatenated, dicts are
    updated (last wins), scalar run attributes come from the last segment that
    set them, and ``exit_code`` is the last segment's (``None`` if that segment
    never finished, e.g. the process was killed).
    """

    run_id: str = ""
    project: str = ""
    entity: str = ""
    #: Display name (``wandb.init(name=...)`` / ``run.name = ...``).
    name: str = ""
    tags: list[str] = field(default_factory=list)
    group: str = ""
    job_type: str = ""
    #: Decoded config; ``{"value": v, "desc": d}`` wrappers unwrapped,
    #: ``_wandb*`` keys dropped.
    config: dict[str, Any] = field(default_factory=dict)
    #: One flat dict per history row (``run.log`` commit); nested dicts logged
    #: as ``{"a": {"b": 1}}`` appear as key ``"a.b"``. Includes ``_step``,
    #: ``_runtime``, ``_timestamp``.
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Merged summary (last wins), nested like ``run.summary``; ``_wandb`` dropped.
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    #: ``{"title", "text", "level", "wait_duration"}`` per ``run.alert``.
    alerts: list[dict[str, Any]] = field(default_factory=list)
    #: ``{"name", "type", "aliases", "digest", "entries"}`` per logged artifact;
    #: ``entries`` are the manifest paths.
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    #: ``{"name", "glob_name", "step_metric", "step_sync", "hidden", "summary"}``
    #: per ``define_metric`` record.
    metric_definitions: list[dict[str, Any]] = field(default_factory=list)
    #: Paths from FilesRecords (e.g. ``requirements.txt``, ``run.save`` targets).
    files: list[str] = field(default_factory=list)
    #: ``Record.WhichOneof("record_type")`` -> count, summed over segments.
    records_by_type: dict[str, int] = field(default_factory=dict)
    #: The ``.wandb`` files this run was read from, in merge order.
    run_files: list[Path] = field(default_factory=list)


def _loads(value_json: str) -> Any:
    """Decode a ``value_json`` field; keep the raw string if it is not JSON."""
    try:
        return json.loads(value_json)
    except (TypeError, ValueError):
        return value_json


def _item_path(item: Any) -> list[str]:
    """Key path of a Config/Summary/History item: ``key`` or ``nested_key``."""
    return list(item.nested_key) if item.nested_key else [item.key]


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    target[path[-1]] = value


def _del_path(target: dict[str, Any], path: list[str]) -> None:
    for part in path[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            return
        target = child
    target.pop(path[-1], None)


def _unwrap_config_value(value: Any) -> Any:
    """Strip W&B's ``{"value": v, "desc": d}`` wrapper (config.yaml style)."""
    if isinstance(value, dict) and "value" in value and set(value) <= {"value", "desc"}:
        return value["value"]
    return value


def _apply_config(config: dict[str, Any], config_record: Any) -> None:
    for item in config_record.update:
        _set_path(config, _item_path(item), _loads(item.value_json))
    for item in config_record.remove:
        _del_path(config, _item_path(item))


def _decode_segment(path: Path) -> tuple[OfflineRun, float]:
    """Decode one ``.wandb`` file; also return its run start time for ordering."""
    run = OfflineRun(run_files=[Path(path)])
    raw_config: dict[str, Any] = {}
    counts: Counter[str] = Counter()
    start_time = float("inf")

    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        counts[kind or "<none>"] += 1
        if kind == "run":
            # Every RunRecord is a full snapshot (run.name=/run.tags= re-send
            # it), so the last one wins for scalar attributes.
            r = record.run
            run.run_id = r.run_id or run.run_id
            run.project = r.project or run.project
            run.entity = r.entity or run.entity
            run.name = r.display_name or run.name
            run.group = r.run_group or run.group
            run.job_type = r.job_type or run.job_type
            run.tags = list(r.tags)
            _apply_config(raw_config, r.config)
            if r.HasField("start_time") and start_time == float("inf"):
                start_time = r.start_time.seconds + r.start_time.nanos / 1e9
        elif kind == "config":
            _apply_config(raw_config, record.config)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                row[".".join(_item_path(item))] = _loads(item.value_json)
            row.setdefault("_step", record.history.step.num)
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _set_path(run.summary, _item_path(item), _loads(item.value_json))
            for item in record.summary.remove:
                _del_path(run.summary, _item_path(item))
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
        elif kind == "alert":
            a = record.alert
            run.alerts.append(
                {
                    "title": a.title,
                    "text": a.text,
                    "level": a.level,
                    "wait_duration": a.wait_duration,
                }
            )
        elif kind == "artifact":
            a = record.artifact
            run.artifacts.append(
                {
                    "name": a.name,
                    "type": a.type,
                    "aliases": list(a.aliases),
                    "digest": a.digest,
                    "entries": [e.path for e in a.manifest.contents],
                }
            )
        elif kind == "metric":
            m = record.metric
            summary_aggs = [
                agg
                for agg in (
                    "min",
                    "max",
                    "mean",
                    "best",
                    "last",
                    "none",
                    "copy",
                    "first",
                )
                if getattr(m.summary, agg)
            ]
            run.metric_definitions.append(
                {
                    "name": m.name,
                    "glob_name": m.glob_name,
                    "step_metric": m.step_metric,
                    "step_sync": m.options.step_sync,
                    "hidden": m.options.hidden,
                    "summary": summary_aggs,
                }
            )
        elif kind == "files":
            run.files.extend(f.path for f in record.files.files)

    run.config = {
        k: _unwrap_config_value(v)
        for k, v in raw_config.items()
        if not k.startswith("_wandb")
    }
    run.summary.pop("_wandb", None)
    run.records_by_type = dict(counts)
    return run, start_time


def _merge(segments: list[OfflineRun]) -> OfflineRun:
    """Merge segments of one resumed run (already in chronological order)."""
    merged = OfflineRun()
    for seg in segments:
        for attr in ("run_id", "project", "entity", "name", "group", "job_type"):
            setattr(merged, attr, getattr(seg, attr) or getattr(merged, attr))
        merged.tags = seg.tags or merged.tags
        merged.config.update(seg.config)
        merged.summary.update(seg.summary)
        merged.exit_code = seg.exit_code  # last segment decides
        merged.history += seg.history
        merged.alerts += seg.alerts
        merged.artifacts += seg.artifacts
        merged.metric_definitions += seg.metric_definitions
        merged.files += seg.files
        merged.run_files += seg.run_files
        for k, n in seg.records_by_type.items():
            merged.records_by_type[k] = merged.records_by_type.get(k, 0) + n
    return merged


def _read_grouped(root: Path) -> dict[str, list[OfflineRun]]:
    decoded = [_decode_segment(p) for p in find_run_files(root)]
    if any(seg.run_id for seg, _ in decoded):
        # A file without a run record holds nothing: its process was killed before
        # W&B wrote its first block (W&B writes the log in whole 32 KiB blocks).
        decoded = [(seg, start) for seg, start in decoded if seg.run_id]
    decoded.sort(key=lambda seg: (seg[1], str(seg[0].run_files[0])))
    groups: dict[str, list[OfflineRun]] = {}
    for seg, _ in decoded:
        groups.setdefault(seg.run_id, []).append(seg)
    return groups


def read_offline_run(run_dir_or_file: Path) -> OfflineRun:
    """Read one run from a ``.wandb`` file or any directory above it.

    All ``.wandb`` files found must belong to the same ``run_id`` (several
    files = a resumed run, merged); otherwise this raises ``ValueError`` so a
    test cannot silently assert on the wrong run. Use
    :func:`read_all_offline_runs` for directories holding several runs.
    """
    groups = _read_grouped(Path(run_dir_or_file))
    if not groups:
        raise FileNotFoundError(f"no run-*.wandb file under {run_dir_or_file}")
    if len(groups) > 1:
        raise ValueError(
            f"{run_dir_or_file} holds several runs {sorted(groups)}; "
            "use read_all_offline_runs()"
        )
    (segments,) = groups.values()
    return _merge(segments)


def read_all_offline_runs(root: Path) -> list[OfflineRun]:
    """Every run under ``root``, one :class:`OfflineRun` per ``run_id``.

    Files of the same ``run_id`` (resumes) are merged; runs are returned in
    order of their first start time.
    """
    return [_merge(segments) for segments in _read_grouped(Path(root)).values()]


def finished_runs(root: Path, timeout: float = 10.0) -> list[OfflineRun]:
    """Every W&B run under ``root``, once each of its files holds the exit record.

    ``run.finish()`` returns when wandb-core has the exit record, but wandb-core
    writes the file's last 32 KiB block moments later (seen: a read right after
    ``finish()`` missed the last ~60 history rows). The log is sequential, so a
    file with its exit record is complete.
    """
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = find_run_files(root)
        if files and all(read_offline_run(f).exit_code is not None for f in files):
            break
        time.sleep(0.05)
    return read_all_offline_runs(root)
