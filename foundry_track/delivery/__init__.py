"""Delivery: how the journal's events reach the backends.

Two ways, chosen by ``tracking.delivery``:

- ``thread`` (:mod:`.threads`): a worker thread per backend in the training
  process (:class:`foundry_track.dispatcher.Dispatcher`);
- ``process`` (:mod:`.process`, :mod:`.child`): the same workers in a
  delivery process that follows the journal on disk, so the trackers' SDKs
  never share the training process's interpreter.

Either way the run holds a :class:`Delivery`: it learns of a strict-mode
failure through ``error``/``on_error`` and ends delivery with ``finish``.
This package's ``__init__`` imports nothing, so ``Run`` can name the type
without importing the dispatcher or the process machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from foundry_track.events import Status

__all__ = ["Delivery"]


class Delivery(Protocol):
    """What a run needs of its delivery, in-process or in a delivery process."""

    #: The first backend error of a strict run (then ``run.log`` raises it).
    error: BaseException | None
    #: Called when ``error`` is set, so the run leaves its short path.
    on_error: Callable[[], None] | None

    def finish(self, status: Status, timeout: float) -> dict[str, int]:
        """Deliver what is left within ``timeout`` seconds, close the backends
        with ``status``; return each backend's count of undelivered events."""
        ...
