"""Builders of TensorBoard protos; imported only when a TensorBoard run starts."""

from __future__ import annotations

import time
from typing import Any, Mapping

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata as hp_metadata, plugin_data_pb2

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


def _hparams_event(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Event:
    meta = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=hp_metadata.PLUGIN_NAME, content=data.SerializeToString())
    )
    return Event(wall_time=time.time(), step=0, summary=Summary(value=[_Value(tag=tag, metadata=meta)]))


def hparams_start(params: Mapping[str, Any]) -> Event:
    info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for key, value in params.items():
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
