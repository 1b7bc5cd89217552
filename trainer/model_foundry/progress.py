"""A progress line for the training loop: loss, tokens/s, ETA.

On a terminal it redraws one line in place (at most ten times a second).
Elsewhere (a log file, CI, a pipe) it prints a plain line about every tenth of
the run, so logs stay readable: a line is printed only when a loss it has not
shown yet is known (losses arrive at logging steps), and always at the end.
Loss and tokens/s are left out until the first logging step gives them, so a
line never shows a placeholder or a zero throughput.

On a GPU the loss shown is the one handed over at the previous logging step:
reading a CUDA tensor right after the step that produced it would stall the
GPU queue, while reading it a logging interval later costs nothing. A plain
line whose loss is from an earlier step says so: ``loss 2.3456 (step 40)``.
"""

from __future__ import annotations

import sys
import time
import unicodedata
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import torch

__all__ = ["Progress", "printable"]

# Characters a terminal acts on instead of showing (controls, format and
# separator characters, surrogates, unassigned): shown escaped.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def printable(text: str, keep: str = "\n") -> str:
    """``text`` safe to print: control and other invisible characters escaped as
    ``\\x1b`` / ``\\u200e`` (the characters in ``keep`` are left as they are)."""
    out = []
    for ch in text:
        if ch in keep or unicodedata.category(ch) not in _UNPRINTABLE:
            out.append(ch)
        else:
            out.append(ascii(ch)[1:-1])  # '\x1b', '\u200e', '\U0001f600'
    return "".join(out)


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
        self.every = max(1, (total - start) // 10)  # plain mode: about ten lines per run
        self.loss: float | None = None
        self.loss_step: int | None = None  # the step self.loss was computed at
        self.tokens_per_sec: float | None = None
        self._pending: tuple[int, torch.Tensor] | None = None
        self._t0 = time.perf_counter()
        self._drawn = 0.0
        self._width = 0
        self._printed = start  # plain mode: the step of the last line
        self._shown_loss_step: int | None = None  # plain mode: the loss step the last line showed

    def update(self, step: int, loss: torch.Tensor | float | None = None, tokens_per_sec: float | None = None) -> None:
        """Called every step; ``loss`` (a tensor or float) only at logging steps."""
        self.step = step
        if loss is not None:
            if not isinstance(loss, (int, float)) and loss.is_cuda:
                if self._pending is not None:
                    self.loss_step, pending = self._pending
                    self.loss = float(pending)  # computed an interval ago: no stall
                self._pending = (step, loss)
            else:
                self.loss, self.loss_step = float(loss), step  # on the CPU the value already exists
        if tokens_per_sec is not None:
            self.tokens_per_sec = tokens_per_sec
        if not self.enabled:
            return
        if self.tty:
            now = time.perf_counter()
            if now - self._drawn >= 0.1 or step == self.total:
                self._drawn = now
                self._draw()
        elif step < self.total and step - self._printed >= self.every and self.loss_step != self._shown_loss_step:
            self._print_line()  # the last line is close()'s: it knows the last loss

    def close(self) -> None:
        """Read the last pending loss and end the live line (plain mode: print the last
        line if it was not printed, or if the pending loss was not shown yet)."""
        if self._pending is not None:
            self.loss_step, pending = self._pending
            self.loss = float(pending)
            self._pending = None
        if not self.enabled:
            return
        if self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
        elif self.step != self.start and (self.step != self._printed or self.loss_step != self._shown_loss_step):
            self._print_line()

    def _print_line(self) -> None:
        self._printed, self._shown_loss_step = self.step, self.loss_step
        self.stream.write(self._text(loss_step=True) + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Wipe the live line (before a log line is printed)."""
        if self.enabled and self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()

    def _text(self, loss_step: bool = False) -> str:
        """The line; with ``loss_step``, a loss from an earlier step names its step."""
        done = self.step - self.start
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / done * (self.total - self.step) if done else 0.0
        parts = [f"step {self.step:>{len(str(self.total))}}/{self.total}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}" + (f" (step {self.loss_step})" if loss_step and self.loss_step != self.step else ""))
        if self.tokens_per_sec is not None:
            parts.append(f"{self.tokens_per_sec:,.0f} tok/s")
        parts += [f"{_duration(elapsed)} elapsed", f"ETA {_duration(eta)}"]
        return " | ".join(parts)

    def _draw(self) -> None:
        frac = self.step / self.total if self.total else 1.0
        filled = int(20 * frac)
        text = f"[{'#' * filled}{'.' * (20 - filled)}] {frac:4.0%} " + self._text()
        self._width = max(self._width, len(text))
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
