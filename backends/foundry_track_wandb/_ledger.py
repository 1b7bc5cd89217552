"""What the W&B backend handed to the SDK that the run's ``.wandb`` file does
not hold yet, kept in a file of its own so that a crash cannot lose it.

W&B's service writes its transaction log in 32 KiB blocks and a service whose
training process was killed never writes the last, partial one: its rows are
lost although the service had received them (measured with wandb 0.31: a
round trip to the service before the SIGKILL does not save them). So at every
``tracker_flush`` the :class:`Ledger` reads the blocks W&B completed since the
last flush (:mod:`._readback`), settles the events they hold, and writes the
others to ``foundry-track-unsaved-{0,1}.json`` next to the ``.wandb`` file
(fsynced, the two in turn so that the file the journal's last checkpoint names
is never overwritten). The checkpoint names the ``.wandb`` file, the
offset its settled records end at and that file.

After a crash, :func:`recover` reads what the run's files hold past the
checkpoint: the ``.wandb`` file from the offset, any later file of the same W&B
run (a resume that died before its first checkpoint) and the events the
checkpoint's file lists. The backend resends the unsaved events the files do
not hold, and a :class:`Skipper` recognises each event the dispatcher offers
again that they do hold, by its key. Keys, not positions: the dispatcher may
offer events set aside earlier first, or split a batch that failed.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final, Mapping

from foundry_track.events import (
    AlertEvent,
    ArtifactEvent,
    HistogramEvent,
    ImageEvent,
    MetricRow,
    TableEvent,
    TextEvent,
)
from foundry_track_wandb._readback import Held, later_segments, scan, wait_quiet

__all__ = ["Entry", "Key", "Ledger", "Recovery", "Skipper", "recover", "server_holds"]

_log = logging.getLogger("foundry_track.wandb")
_EVENTS: Final[dict[str, type]] = {
    "image": ImageEvent, "histogram": HistogramEvent, "table": TableEvent, "text": TextEvent,
    "artifact": ArtifactEvent, "alert": AlertEvent,
}
_TUPLES: Final = ("edges", "counts", "columns")
#: How the ``.wandb`` file shows an event (see :class:`._readback.Held`).
Key = tuple[str, tuple[Any, ...]]


@dataclass(slots=True)
class Entry:
    """One event as the backend sent it (``rows``: the journal rows merged into one W&B row)."""

    kind: str  # "rows", "params", or an event kind of _EVENTS
    payload: Any  # list[MetricRow], the params mapping, or the event
    key: Key | None  # None: the file cannot show it (params: resending them is harmless)
    rows: int = 1


# --------------------------------------------------------------------------- #
# The unsaved events as JSON
# --------------------------------------------------------------------------- #


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _dump(entry: Entry) -> dict[str, Any]:
    if entry.kind == "rows":
        payload: Any = [[row.step, row.time, dict(row.values)] for row in entry.payload]
    elif entry.kind == "params":
        payload = _jsonable(entry.payload)
    else:
        payload = {f.name: _jsonable(getattr(entry.payload, f.name)) for f in fields(entry.payload)}
    key = None if entry.key is None else [entry.key[0], list(entry.key[1])]
    return {"kind": entry.kind, "payload": payload, "key": key, "rows": entry.rows}


def _load(data: Mapping[str, Any]) -> Entry:
    kind, payload = data["kind"], data["payload"]
    if kind == "rows":
        payload = [MetricRow(int(step), wall, values) for step, wall, values in payload]
    elif kind != "params":
        payload = dict(payload)
        if "path" in payload:
            payload["path"] = Path(payload["path"])
        for name in _TUPLES:
            if name in payload:
                payload[name] = tuple(payload[name])
        if "rows" in payload:
            payload["rows"] = tuple(tuple(row) for row in payload["rows"])
        payload = _EVENTS[kind](**payload)
    key = None if data["key"] is None else (data["key"][0], tuple(data["key"][1]))
    return Entry(kind, payload, key, int(data["rows"]))


def _write_durably(path: Path, text: str) -> None:
    new = not path.exists()
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    if new:
        _fsync(path.parent)  # its name too


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- #
# What a crashed run's files hold, recognised by key
# --------------------------------------------------------------------------- #


class Skipper:
    """The records a crashed run's files hold past its checkpoint: each event
    the dispatcher offers again whose key is among them is taken off once and
    not resent."""

    def __init__(self, held: list[Held]) -> None:
        self._rows: dict[Key, list[int]] = {}
        for record in held:
            self._rows.setdefault((record.kind, record.key), []).append(record.rows)

    def __bool__(self) -> bool:
        return bool(self._rows)

    def __len__(self) -> int:
        return sum(len(v) for v in self._rows.values())

    def take(self, key: Key, rows: int | None = 1) -> int | None:
        """How many journal rows the record of the event with ``key`` merges,
        taking it off; ``None`` if there is none (``rows=None``: any number)."""
        found = self._rows.get(key)
        if not found or (rows is not None and rows not in found):
            return None
        taken = found.pop(0 if rows is None else found.index(rows))
        if not found:
            del self._rows[key]
        return taken

    def remaining(self) -> list[Held]:
        return [Held(kind, key, rows) for (kind, key), counts in self._rows.items() for rows in counts]


def _held_json(held: list[Held]) -> list[Any]:
    return [[h.kind, _jsonable(h.key), h.rows] for h in held]


def _held_load(data: list[Any]) -> list[Held]:
    return [Held(kind, tuple(key), int(rows)) for kind, key, rows in data]


# --------------------------------------------------------------------------- #
# The ledger of a running W&B run
# --------------------------------------------------------------------------- #


class Ledger:
    """The events sent to one ``.wandb`` file that it does not hold yet."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.offset = 0  # where the records the ledger has read end
        self.history = 0  # W&B rows of this backend before `offset`
        self.pending: list[Entry] = []
        self._saved = ""  # the unsaved-events file the last checkpoint names
        self._dirty = True
        self._fsynced = 0  # `offset` when the .wandb file was last fsynced

    def add(self, entry: Entry) -> None:
        self.pending.append(entry)
        self._dirty = True

    def sync(self) -> None:
        """Settle the events W&B wrote in complete blocks since the last call.

        W&B writes in the order it is given (checked with wandb 0.31, across
        kinds), so the events sent before the last one found are settled too:
        params, and what never reaches the file (an online run's artifact is
        a request to the service, not a record)."""
        held, self.offset = scan(self.file, self.offset)
        if not held:
            return
        found = Counter((h.kind, h.key, h.rows) for h in held)
        self.history += sum(h.kind == "history" for h in held)
        last = -1
        for j, entry in enumerate(self.pending):  # in order: two alerts alike are two records
            if entry.key is not None and found[(entry.key[0], entry.key[1], entry.rows)] > 0:
                found[(entry.key[0], entry.key[1], entry.rows)] -= 1
                last = j
        if last >= 0:
            del self.pending[:last + 1]
            self._dirty = True

    def save(self, held: list[Held]) -> str:
        """Make the ``.wandb`` file's complete blocks and the unsaved events (with
        ``held``, the crashed run's records not offered again yet) durable;
        return the name of the file that holds the events ("": none)."""
        if self.offset != self._fsynced:
            _fsync(self.file)
            self._fsynced = self.offset
        if not self._dirty and not held:
            return self._saved
        self._dirty = False
        if not self.pending and not held:
            self._saved = ""
            return ""
        # Two files in turn: the one the journal's last checkpoint names is never
        # overwritten (this flush's checkpoint may not reach the journal).
        path = self.file.parent / f"foundry-track-unsaved-{int(self._saved.endswith('-0.json'))}.json"
        _write_durably(path, json.dumps({"version": 1, "entries": [_dump(e) for e in self.pending],
                                         "held": _held_json(held)}))
        self._saved = str(path)
        return self._saved


# --------------------------------------------------------------------------- #
# After a crash
# --------------------------------------------------------------------------- #


@dataclass(slots=True)
class Recovery:
    """What the run's files hold past the last checkpoint, and what was unsaved there."""

    held: list[Held]  # recognisable records past the checkpoint, in file order
    unsaved: list[Entry]  # the events the checkpoint's file did not hold yet
    rows: int | None  # W&B rows before the checkpoint (online runs)


def recover(state: Mapping[str, str], run_id: str) -> Recovery | None:
    """Read back what the W&B run holds past the checkpoint in ``state``
    (``None``: no checkpoint, so nothing was sent before it)."""
    name = state.get("wandb_file")
    if not name:
        return None
    path, offset = Path(name), int(state.get("wandb_offset") or 0)
    files = [path, *later_segments(path, run_id)]
    wait_quiet(files)
    held, _ = scan(path, offset)
    for later in files[1:]:
        held += scan(later, 0)[0]
    unsaved: list[Entry] = []
    if state.get("wandb_unsaved"):
        try:
            data = json.loads(Path(state["wandb_unsaved"]).read_text(encoding="utf-8"))
            unsaved = [_load(entry) for entry in data["entries"]]
            held += _held_load(data.get("held", []))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _log.warning("W&B run %s: cannot read %s (%s); events W&B had not written at the crash are lost",
                         run_id, state["wandb_unsaved"], exc)
    rows = int(state["wandb_rows"]) if state.get("wandb_rows") else None
    return Recovery(held, unsaved, rows)


def server_holds(held: list[Held], count: int) -> list[Held]:
    """``held`` cut to its first ``count`` W&B rows: what an online run's server
    holds past the checkpoint (it uploads what W&B wrote, in order)."""
    kept: list[Held] = []
    rows = 0
    for record in held:
        if record.kind == "history":
            if rows >= count:
                break
            rows += 1
        kept.append(record)
    return kept
