"""The sweep's one error class (its own module: every other sweep module raises it)."""

from __future__ import annotations

from foundry_track.errors import ConfigError

__all__ = ["SweepError"]


class SweepError(ConfigError):
    """The sweep file or the options are wrong, or a sweep cannot run; the message says how to fix it."""
