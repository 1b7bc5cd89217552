"""TensorBoard protos and the event file; imported only when a TensorBoard run starts."""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, Final, Mapping

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.compat.proto.types_pb2 import DT_STRING
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata

_Value = Summary.Value
_END_STATUS = {
    "success": api_pb2.Status.STATUS_SUCCESS,
    "failed": api_pb2.Status.STATUS_FAILURE,
    "killed": api_pb2.Status.STATUS_FAILURE,  # the HParams plugin has no "aborted"
}


def scalar(tag: str, value: float) -> Any:
    return _Value(tag=tag, simple_value=value)


def event(step: int, wall_time: float, values: list[Any]) -> Event:
    return Event(wall_time=wall_time, step=step, summary=Summary(value=values))


def image(tag: str, png: bytes, width: int, height: int) -> Any:
    # colorspace is informational for TensorBoard; the PNG header carries the truth.
    return _Value(tag=tag, image=Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png))


def histogram(tag: str, edges: Any, counts: Any, lo: float, hi: float, num: int, total: float, squares: float) -> Any:
    histo = HistogramProto(min=lo, max=hi, num=num, sum=total, sum_squares=squares,
                           bucket_limit=list(edges[1:]), bucket=list(counts))
    return _Value(tag=tag, histo=histo)


_TEXT_META = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))


def text(tag: str, body: str) -> Any:
    tensor = TensorProto(dtype=DT_STRING, string_val=[body.encode("utf-8")],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    return _Value(tag=tag, metadata=_TEXT_META, tensor=tensor)


def markdown_table(columns: Any, rows: Any) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _hparams_event(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Event:
    meta = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=hp_metadata.PLUGIN_NAME, content=data.SerializeToString())
    )
    return Event(wall_time=time.time(), step=0, summary=Summary(value=[_Value(tag=tag, metadata=meta)]))


# The HParams table. TensorBoard (2.13+) orders its columns itself: those whose
# values differ between the runs shown first, then by name, and it shows the
# first five (a protobuf map keeps no order, so the order written is not what
# the table shows). What the backend controls is what counts as a hyperparameter:
# settings of how a run is logged (the Model Foundry trainer's `logging:` block
# and the tracking settings in effect) differ between runs without being what
# was trained, and pushed lr, batch size and model size out of the first
# columns. They stay in the run's params everywhere else (`foundry-track show`,
# W&B config, MLflow params). Among the rest, what is trained comes first.
HPARAMS_LEFT_OUT: Final = ("logging/", "tracking/")
HPARAMS_FIRST: Final = ("training/", "optimizer/", "model/")


def hparams(params: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The params that go to the HParams table, training/optimizer/model keys first."""
    kept = [(k, v) for k, v in params.items() if not k.startswith(HPARAMS_LEFT_OUT)]
    return sorted(kept, key=lambda item: next((i for i, p in enumerate(HPARAMS_FIRST) if item[0].startswith(p)),
                                              len(HPARAMS_FIRST)))


def hparams_start(params: Mapping[str, Any]) -> Event:
    """A session start with :func:`hparams` of ``params``; strings are written as they are."""
    info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for key, value in hparams(params):
        # bool before int/float: bool is an int in Python.
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[key].number_value = float(value)
        else:
            info.hparams[key].string_value = str(value)
    data = plugin_data_pb2.HParamsPluginData(session_start_info=info, version=hp_metadata.PLUGIN_DATA_VERSION)
    return _hparams_event(hp_metadata.SESSION_START_INFO_TAG, data)


def hparams_end(status: str) -> Event:
    info = plugin_data_pb2.SessionEndInfo(status=_END_STATUS.get(status, api_pb2.Status.STATUS_UNKNOWN), end_time_secs=time.time())
    data = plugin_data_pb2.HParamsPluginData(session_end_info=info, version=hp_metadata.PLUGIN_DATA_VERSION)
    return _hparams_event(hp_metadata.SESSION_END_INFO_TAG, data)


# Imported at module level, not in a function: this module is loaded through
# import_sdk (the lock backends share), and no tracker SDK is imported later.
try:
    import google_crc32c
except ImportError:  # correct but slow: tensorboard's pure-Python CRC32C
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as _masked_crc
else:
    _crc = google_crc32c.value

    def _masked_crc(data: bytes) -> int:
        x = int(_crc(data))
        return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF
_file_counter = itertools.count()


class EventFile:
    """An ``events.out.tfevents.*`` file in TFRecord framing.

    Why not tensorboard's EventFileWriter: its RecordWriter computes CRC32C in
    pure Python (~50 us for a 10-scalar event, most of the cost per step), and
    it runs a second writer thread that competes with ours for the GIL. We
    already write from the backend's own worker thread, so a plain buffered
    file with a C CRC (google-crc32c, installed with the extra) is enough;
    without it we fall back to tensorboard's CRC and stay correct.
    """

    def __init__(self, log_dir: Path, flush_secs: float) -> None:
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_file_counter)}.foundry-track")
        self.path = log_dir / name
        self._fh = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        self._flush_secs = flush_secs
        self._flushed = time.monotonic()
        self.write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write(self, ev: Event) -> None:
        data = ev.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._fh.write(b"".join((header, struct.pack("<I", _masked_crc(header)), data,
                                 struct.pack("<I", _masked_crc(data)))))
        if time.monotonic() - self._flushed > self._flush_secs:
            self.flush()

    def flush(self) -> None:
        self._fh.flush()
        self._flushed = time.monotonic()

    def sync(self) -> tuple[str, int]:
        """Flush and fsync: what was written is on disk. Returns (file name, length)."""
        self.flush()
        os.fsync(self._fh.fileno())
        return self.path.name, self._fh.tell()

    def close(self) -> None:
        self._fh.close()


def truncate(path: Path, length: int) -> None:
    """Cut an event file back to ``length`` bytes (a checkpoint), if it is longer."""
    try:
        with open(path, "r+b") as fh:
            if fh.seek(0, os.SEEK_END) > length:
                fh.truncate(length)
                os.fsync(fh.fileno())
    except FileNotFoundError:
        return
