"""A progress line for the training loop: loss, tokens/s, ETA.

On a terminal it redraws one line in place (at most ten times a second).
Elsewhere (a log file, CI, a pipe) it prints a plain line every tenth of the
run, so logs stay readable.

On a GPU the loss shown is the one handed over at the previous logging step:
reading a CUDA tensor right after the step that produced it would stall the
GPU queue, while reading it a logging interval later costs nothing.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import torch

__all__ = ["Progress"]


def _duration(seconds: float) -> str:
    """``seconds`` as H:MM:SS."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """The progress line of a run from ``start`` to ``total`` steps."""

    def __init__(self, total: int, start: int = 0, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.start, self.step = total, start, start
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.every = max(1, (total - start) // 10)  # plain mode: ten lines per run
        self.loss: float | None = None
        self.tokens_per_sec = 0.0
        self._pending: torch.Tensor | None = None
        self._t0 = time.perf_counter()
        self._drawn = 0.0
        self._width = 0
        self._printed = -1

    def update(self, step: int, loss: torch.Tensor | float | None = None, tokens_per_sec: float | None = None) -> None:
        """Called every step; ``loss`` (a tensor or float) only at logging steps."""
        self.step = step
        if loss is not None:
            if not isinstance(loss, (int, float)) and loss.is_cuda:
                if self._pending is not None:
                    self.loss = float(self._pending)  # computed an interval ago: no stall
                self._pending = loss
            else:
                self.loss = float(loss)  # on the CPU the value already exists
        if tokens_per_sec is not None:
            self.tokens_per_sec = tokens_per_sec
        if not self.enabled:
            return
        if self.tty:
            now = time.perf_counter()
            if now - self._drawn >= 0.1 or step == self.total:
                self._drawn = now
                self._draw()
        elif step != self._printed and ((step - self.start) % self.every == 0 or step == self.total):
            self._printed = step
            self.stream.write(self._text() + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Read the last pending loss and end the live line."""
        if self._pending is not None:
            self.loss = float(self._pending)
            self._pending = None
        if self.enabled and self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def clear(self) -> None:
        """Wipe the live line (before a log line is printed)."""
        if self.enabled and self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()

    def _text(self) -> str:
        done = self.step - self.start
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / done * (self.total - self.step) if done else 0.0
        loss = f"{self.loss:.4f}" if self.loss is not None else "  -   "
        return (f"step {self.step:>{len(str(self.total))}}/{self.total} | loss {loss} | "
                f"{self.tokens_per_sec:,.0f} tok/s | {_duration(elapsed)} elapsed | ETA {_duration(eta)}")

    def _draw(self) -> None:
        frac = self.step / self.total if self.total else 1.0
        filled = int(20 * frac)
        text = f"[{'#' * filled}{'.' * (20 - filled)}] {frac:4.0%} " + self._text()
        self._width = max(self._width, len(text))
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
