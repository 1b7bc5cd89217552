"""Rank awareness and cross-rank reductions, riding on ``torch.distributed``.

torch is never imported here at module level: it is looked up in
``sys.modules``, since a process that runs under torchrun has imported it
long before it logs anything. Without an initialised process group the rank
comes from ``RANK``/``WORLD_SIZE`` and no collective is possible.
"""

from __future__ import annotations

import os
import sys
import zlib
from typing import Any, Final, Mapping, Sequence

__all__ = ["rank_world", "collective", "broadcast", "all_gather", "reduce_metrics", "KeyMismatchError", "REDUCE_OPS"]

REDUCE_OPS: Final = ("mean", "sum", "max", "min")


class KeyMismatchError(ValueError):
    """Ranks passed different metric keys to a reducing ``run.log``: raised on every rank."""


def _dist() -> Any | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist


def rank_world() -> tuple[int, int]:
    """This process's rank and the world size (0, 1 outside distributed runs)."""
    dist = _dist()
    if dist is not None:
        return dist.get_rank(), dist.get_world_size()
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        return 0, 1


def collective() -> bool:
    """True when collectives are possible: an initialised group of more than one rank."""
    dist = _dist()
    return dist is not None and dist.get_world_size() > 1


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (identity without a process group)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_device(dist))
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _device(dist: Any) -> Any:
    torch = sys.modules["torch"]
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _keys_hash(keys: Sequence[str]) -> int:
    # crc32, not hash(): Python's str hash differs between processes.
    return zlib.crc32("\x00".join(keys).encode("utf-8"))


def _describe_mismatch(all_keys: list[list[str]]) -> str:
    reference = all_keys[0]
    lines = []
    for rank, keys in enumerate(all_keys[1:], start=1):
        if keys == reference:
            continue
        missing = [k for k in reference if k not in keys]
        extra = [k for k in keys if k not in reference]
        if missing or extra:
            lines.append(f"rank {rank} vs rank 0: missing {missing}, extra {extra}")
        else:
            lines.append(f"rank {rank} passes the same keys in another order: {keys} (rank 0: {reference})")
    return "; ".join(lines)


def reduce_metrics(values: Mapping[str, Any], op: str) -> dict[str, Any]:
    """All-reduce ``values`` across ranks; every rank must call it with the same keys
    in the same order. The key check runs first (one all-gather of a hash), so a
    mismatch raises the same :class:`KeyMismatchError` on every rank instead of
    hanging or averaging unrelated values."""
    if op not in REDUCE_OPS:
        raise ValueError(f"run.log: reduce must be one of {', '.join(REDUCE_OPS)}, got {op!r}")
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return {k: _item(v) for k, v in values.items()}
    torch = sys.modules["torch"]
    device = _device(dist)
    keys = list(values)
    mine = torch.tensor([_keys_hash(keys)], dtype=torch.int64, device=device)
    hashes = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(hashes, mine)
    if bool((torch.cat(hashes) != mine).any()):
        detail = _describe_mismatch(all_gather(keys))  # every rank takes this branch together
        raise KeyMismatchError(
            f"run.log(reduce={op!r}): ranks passed different metric keys; nothing was logged. {detail}. "
            f"Every rank must log the same keys in the same order when reducing."
        )
    parts = [v.detach().reshape(1).to(device=device, dtype=torch.float64) if hasattr(v, "detach")
             else torch.tensor([float(v)], dtype=torch.float64, device=device) for v in values.values()]
    stacked = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device)
    reduce_op = {"mean": dist.ReduceOp.SUM, "sum": dist.ReduceOp.SUM,
                 "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
    dist.all_reduce(stacked, op=reduce_op)
    if op == "mean":
        stacked /= dist.get_world_size()
    # 0-d tensors, not floats: on CUDA the journal thread reads them, so the
    # training step does not wait for the reduction to finish.
    return dict(zip(keys, stacked.unbind()))


def _item(value: Any) -> float:
    item = getattr(value, "item", None)
    return float(item() if item is not None else value)
