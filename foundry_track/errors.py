"""Every error foundry-track raises on purpose, under one root.

``except foundry_track.FoundryTrackError`` catches them all; each class keeps
the built-in base it had before (a ``ConfigError`` is still a ``ValueError``),
so existing ``except ValueError`` code goes on working. Each carries the exit
code the command line returns for it, so the CLI maps errors to exit codes in
one line (``exc.exit_code``).

This module imports nothing heavy: pydantic is imported only when a
validation error is formatted.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, ClassVar, get_args, get_origin

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

__all__ = [
    "BackendError",
    "ConfigError",
    "FoundryTrackError",
    "MissingDependency",
    "PluginError",
    "RunDirError",
    "TransientError",
    "format_validation_error",
]


class FoundryTrackError(Exception):
    """The root of every error foundry-track raises on purpose."""

    #: What ``foundry-track`` exits with when this error ends a command.
    exit_code: ClassVar[int] = 1


class ConfigError(FoundryTrackError, ValueError):
    """The tracking configuration is wrong; the message says where and how to fix it."""

    exit_code = 2


class PluginError(FoundryTrackError, RuntimeError):
    """A backend plugin could not be loaded or does not follow the contract."""

    exit_code = 2


class BackendError(FoundryTrackError, RuntimeError):
    """A backend failed and the run is ``strict``."""


class TransientError(FoundryTrackError):
    """Raise from a hook for an error worth retrying (server busy, network down)."""


class RunDirError(FoundryTrackError, ValueError):
    """A path is not a usable run directory (missing, not a run, unreadable journal)."""

    exit_code = 2


class MissingDependency(FoundryTrackError, RuntimeError):
    """An optional package a command needs is not installed; the message has the pip command."""


# --------------------------------------------------------------------------- #
# pydantic's errors, as lines a user can act on
# --------------------------------------------------------------------------- #


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The model whose fields are valid at ``loc``, walking nested models,
    optional models (``X | None``) and dicts of models (``dict[str, X]``)."""
    from pydantic import BaseModel

    target: Any = model
    skip = False
    for part in loc:
        if skip:  # a key of a dict field: the model stays the dict's value type
            skip = False
            continue
        info = getattr(target, "model_fields", {}).get(part)
        if info is None:
            return None
        annotation = info.annotation
        if get_origin(annotation) is dict:
            target, skip = get_args(annotation)[1], True
            continue
        target = next((a for a in (annotation, *get_args(annotation))
                       if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return target if isinstance(target, type) and issubclass(target, BaseModel) else None


def format_validation_error(exc: ValidationError, model: type[BaseModel], prefix: str = "", *,
                            sep: str = "\n") -> str:
    """pydantic's errors as ``path: problem`` lines that name the value and the fix.

    ``prefix`` is put before each path (``tracking.backends.mlflow``); an
    unknown key gets the closest valid key ("did you mean") or the list of
    valid ones. The lines are joined with ``sep``. Used by the tracking
    config, the backends' options, the sweep file and the trainer's experiment
    file, so every config error in the project reads the same way.
    """
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        path = ".".join([prefix, *loc] if prefix else loc) or "config"
        kind = err["type"]
        if kind == "extra_forbidden":
            valid = list(getattr(_model_at(model, loc[:-1]), "model_fields", {}) or {})
            match = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
            hint = f"; did you mean {match[0]!r}?" if match else (
                f"; valid keys: {', '.join(sorted(valid))}" if valid else "")
            lines.append(f"{path}: unknown key{hint}")
        elif kind == "missing":
            lines.append(f"{path}: required, but missing")
        elif kind == "value_error":
            lines.append(f"{path}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{path}: {err['msg']} (got {err.get('input')!r})")
    return sep.join(lines)
