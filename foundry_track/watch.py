"""``run.watch(model)``: histograms of parameters and gradients for every backend.

Implemented once here with torch hooks rather than per tracker (``wandb.watch``)
so TensorBoard and MLflow get the same data. Between captures the model carries
one forward pre-hook that counts calls; gradient hooks exist only for the one
backward pass that is captured, and tensors are cloned on their device without
a sync (``Run.log_histogram`` does the rest off the training thread).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from foundry_track.run import Run

__all__ = ["watch", "WatchHandle"]

_MODES: Final = ("gradients", "parameters", "all")


@dataclass
class WatchHandle:
    forward: Any
    grads: list[Any] = field(default_factory=list)
    calls: int = 0

    def drop_grad_hooks(self) -> None:
        for handle in self.grads:
            handle.remove()
        self.grads.clear()

    def remove(self) -> None:
        self.drop_grad_hooks()
        self.forward.remove()


def watch(run: Run, model: Any, *, log: str, log_freq: int) -> WatchHandle:
    if log not in _MODES:
        raise ValueError(f"watch: log must be one of {', '.join(_MODES)}, got {log!r}")
    if not isinstance(log_freq, int) or log_freq < 1:
        raise ValueError(f"watch: log_freq must be a positive int, got {log_freq!r}")
    if not hasattr(model, "named_parameters") or not hasattr(model, "register_forward_pre_hook"):
        raise TypeError(f"watch: expected a torch.nn.Module, got {type(model).__name__}")
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    handle = WatchHandle(forward=None)

    def grad_hook(name: str) -> Any:
        def hook(grad: Any) -> None:
            run.log_histogram(f"gradients/{name}", grad)

        return hook

    def pre_forward(module: Any, args: Any) -> None:
        handle.drop_grad_hooks()  # last capture's backward is over
        capture = handle.calls % log_freq == 0
        handle.calls += 1
        if not capture:
            return
        if log in ("parameters", "all"):
            for name, p in params:
                run.log_histogram(f"parameters/{name}", p)
        if log in ("gradients", "all"):
            handle.grads = [p.register_hook(grad_hook(name)) for name, p in params]

    handle.forward = model.register_forward_pre_hook(pre_forward)
    return handle
