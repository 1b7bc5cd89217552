"""The tracker contract: every hook a foundry-track backend may implement.

A backend is a class (or a module) exposed in the ``foundry_track`` entry-point
group. For each run, foundry-track makes one instance of the class and calls
its hooks, marked with :data:`foundry_track.hookimpl`::

    import foundry_track

    class MyBackend:
        @foundry_track.hookimpl
        def tracker_start(self, run, options, resume_state):
            ...

        @foundry_track.hookimpl
        def tracker_log_metrics(self, rows):
            ...

What the dispatcher guarantees to every hook below:

- **One thread per backend.** After :func:`tracker_start` every hook of a
  backend instance is called from that backend's own worker thread, never from
  the training thread and never concurrently with another hook of the same
  instance. A backend needs no locks of its own.
- **Journal order.** Events arrive in the order ``run.log`` and friends were
  called. Consecutive metric rows are batched into one
  :func:`tracker_log_metrics` call.
- **At least once, exactly once in practice.** An event counts as delivered only
  when the hook returned. If the hook raises, the same events are offered again
  (with backoff for :class:`foundry_track.TransientError`, ``ConnectionError``,
  ``TimeoutError`` and other ``OSError``; a few times for anything else), and
  ``foundry-track sync`` offers them again in a later process. A hook that
  partially wrote a batch before raising should be idempotent where it can.
- **Isolation.** An exception never reaches the training loop or another
  backend; it is reported once with the backend's name and traceback.

What a backend must not do:

- give hook arguments default values (pluggy passes each implementation only
  the arguments it names; defaults behave differently between pluggy versions);
- block forever (use timeouts on network calls; the dispatcher abandons a
  backend that does not return within the run's ``flush_timeout`` at finish);
- raise for data it cannot show: skip it (say so once with ``warnings`` or
  ``logging``) instead.

Hooks are grouped in lifecycle order: discovery, start, log, finish.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pluggy

if TYPE_CHECKING:
    from pydantic import BaseModel

    from foundry_track.events import (
        AlertEvent,
        ArtifactEvent,
        HistogramEvent,
        ImageEvent,
        MetricRow,
        ParamValue,
        RunInfo,
        Status,
        TableEvent,
        TextEvent,
    )

__all__ = [
    "tracker_options_model",
    "tracker_unavailable",
    "tracker_start",
    "tracker_log_metrics",
    "tracker_log_params",
    "tracker_log_image",
    "tracker_log_histogram",
    "tracker_log_table",
    "tracker_log_text",
    "tracker_log_artifact",
    "tracker_alert",
    "tracker_finish",
]

PROJECT_NAME = "foundry_track"
_hookspec = pluggy.HookspecMarker(PROJECT_NAME)

# --------------------------------------------------------------------------- #
# Discovery: called on the training thread while the run is configured, and by
# `foundry-track backends`. They must be cheap and must not import the SDK.
# --------------------------------------------------------------------------- #


@_hookspec(firstresult=True)
def tracker_options_model() -> type[BaseModel] | None:  # type: ignore[empty-body]
    """Return the pydantic model that validates this backend's options.

    The options are the mapping under ``tracking.backends.<name>`` in the YAML.
    foundry-track validates them with this model before the run starts, so a
    typo is reported with its path (``tracking.backends.<name>.<field>``).
    Declare ``model_config = ConfigDict(extra="forbid")`` to reject unknown
    keys. Not implementing the hook means the backend takes no options (any
    key given is an error).
    """


@_hookspec(firstresult=True)
def tracker_unavailable() -> str | None:  # type: ignore[empty-body]
    """Return ``None`` if the backend can run here, else the reason and the fix.

    Check for the SDK with ``importlib.util.find_spec`` rather than importing
    it. The reason must contain the exact install command, for example
    ``"the 'mlflow' package is not installed: pip install 'foundry-track[mlflow]'"``.
    It is shown by ``foundry-track backends`` and raised when a run selects
    an unavailable backend.
    """


# --------------------------------------------------------------------------- #
# Start: called once per run, on the backend's worker thread.
# --------------------------------------------------------------------------- #


@_hookspec(firstresult=True)
def tracker_start(  # type: ignore[empty-body]
    run: RunInfo, options: BaseModel, resume_state: Mapping[str, str]
) -> Mapping[str, str] | None:
    """Open the backend's run: connect, create the remote run, open files.

    :param run: the run's identity, tags, redacted config and run directory.
    :param options: this backend's options, an instance of the model returned
        by :func:`tracker_options_model` (an empty ``BaseModel`` when there is
        none).
    :param resume_state: what this hook returned the last time the same run
        was started (empty for a new run). Use it to reopen the same remote run
        when the user resumes or when ``foundry-track sync`` replays events.

    Return the identity of the backend's run as short strings (for example
    ``{"run_id": "3f2a..", "url": "http://.."}``). It is saved in the run
    directory, shown as ``run.backend_ids[<name>]`` and handed back as
    ``resume_state`` later.

    Runs on the backend's worker thread, bounded by the run's
    ``start_timeout``. If it raises or times out, the backend's events stay in
    the journal for ``foundry-track sync`` and the run's ``fallback`` backend
    is switched on.
    """


# --------------------------------------------------------------------------- #
# Log: called on the backend's worker thread, in journal order.
# --------------------------------------------------------------------------- #


@_hookspec
def tracker_log_metrics(rows: Sequence[MetricRow]) -> None:
    """Record a batch of scalar rows.

    :param rows: one :class:`~foundry_track.events.MetricRow` per ``run.log``
        call, in call order. Each has ``step`` (int), ``time`` (Unix seconds)
        and ``values`` (key -> int or float; NaN and inf can occur). Several
        rows may share a step (merge them if the backend wants one record per
        step); a step can be lower than one already seen (after a resume from
        an earlier checkpoint, or a user logging out of order). Keys are
        ``/``-separated and may contain any unicode.

    A batch can hold thousands of rows when the backend falls behind: split it
    to the backend's own request limits.
    """


@_hookspec
def tracker_log_params(params: Mapping[str, ParamValue]) -> None:
    """Record hyperparameters / configuration values.

    :param params: flat mapping, nested keys joined with ``/``, secrets already
        replaced by ``***``. Values are str, int, float, bool or None. May be
        called more than once per run; later values for a key replace earlier
        ones where the backend allows it.
    """


@_hookspec
def tracker_log_image(image: ImageEvent) -> None:
    """Record an image.

    :param image: a PNG file in the run directory (``image.path``) with its
        key, step, caption and size. Read the file; do not move or delete it.
    """


@_hookspec
def tracker_log_histogram(histogram: HistogramEvent) -> None:
    """Record a histogram of values (weights, gradients, activations).

    :param histogram: bucket ``edges`` and ``counts`` plus min, max, count,
        sum and sum of squares of the raw values.
    """


@_hookspec
def tracker_log_table(table: TableEvent) -> None:
    """Record a table.

    :param table: ``columns`` names and ``rows`` (tuples of JSON-able values).
    """


@_hookspec
def tracker_log_text(text: TextEvent) -> None:
    """Record a piece of text (markdown allowed) under a key and step.

    :param text: the key, step and text.
    """


@_hookspec
def tracker_log_artifact(artifact: ArtifactEvent) -> None:
    """Upload a file or a directory (a checkpoint, a dataset, a report).

    :param artifact: ``path`` to read from, its ``type`` (``"model"``,
        ``"dataset"``, ...), ``name``, ``description`` and ``digest`` (a
        content hash: skip the upload if the backend already holds it).

    The artifact can be large: stream it from disk, never load it whole.
    """


@_hookspec
def tracker_alert(alert: AlertEvent) -> None:
    """Send an alert (a run diverged, a checkpoint failed, training finished).

    :param alert: ``title``, ``text`` and ``level`` (``"info"``, ``"warn"``
        or ``"error"``).
    """


# --------------------------------------------------------------------------- #
# Finish: called once, on the backend's worker thread, after every event of
# the run was offered.
# --------------------------------------------------------------------------- #


@_hookspec
def tracker_finish(status: Status) -> None:
    """Flush and close the backend's run.

    :param status: ``"success"``, ``"failed"`` (an exception ended the run) or
        ``"killed"`` (interrupted, or the process died and the run was
        closed later by ``sync`` or a resume).

    Must return within the run's ``flush_timeout``; the dispatcher does not
    wait longer. May be called again for a run that was closed before (by
    ``foundry-track sync``); make it harmless.
    """
