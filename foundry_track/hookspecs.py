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
- **Delivered means durable.** A backend's position in the journal (what
  ``foundry-track sync`` resends from after a crash) moves only when the
  tracker holds the events durably. For a backend whose calls are durable when
  they return (a server answered), that is when the hook returned. A backend
  that buffers (a file writer, an SDK with a queue) implements
  :func:`tracker_flush`: its position moves only after ``tracker_flush``
  returned, and the checkpoint it returns comes back in ``resume_state``, so
  that after a crash it can drop what it wrote past the checkpoint before the
  same events are offered again. Either way, replay must not double an event:
  what a backend cannot roll back it must recognise (the
  :class:`~foundry_track.events.MetricRow` time and step identify a row).
- **Retries.** If a hook raises, the same events are offered again
  (with backoff for :class:`foundry_track.TransientError`, ``ConnectionError``,
  ``TimeoutError`` and network ``OSError``; three times for anything else).
  Events a backend still refuses after that are *set aside*: recorded in the
  journal, shown by ``foundry-track show``, offered again by
  ``foundry-track sync``, while the stream goes on (a refused batch of metrics
  is split so that only the bad rows are set aside). A hook that partially
  wrote a batch before raising should be idempotent where it can.
- **Isolation.** An exception never reaches the training loop or another
  backend; it is reported once with the backend's name and traceback.

What a backend must not do:

- give hook arguments default values (pluggy passes each implementation only
  the arguments it names; defaults behave differently between pluggy versions);
- block forever (use timeouts on network calls; the dispatcher abandons a
  backend that does not return within the run's ``flush_timeout`` at finish);
- raise for data it cannot show: skip it (say so once with ``warnings`` or
  ``logging``) instead.

Hooks are grouped in lifecycle order: discovery, doctor, start, log, finish.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from pydantic import BaseModel

    from foundry_track.events import (
        AlertEvent,
        ArtifactEvent,
        DoctorCheck,
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
    "tracker_doctor",
    "tracker_start",
    "tracker_log_metrics",
    "tracker_log_params",
    "tracker_log_image",
    "tracker_log_histogram",
    "tracker_log_table",
    "tracker_log_text",
    "tracker_log_artifact",
    "tracker_alert",
    "tracker_flush",
    "tracker_finish",
]

PROJECT_NAME = "foundry_track"
_hookspec = pluggy.HookspecMarker(PROJECT_NAME)

# --------------------------------------------------------------------------- #
# Discovery: called on the training thread while the run is configured, and by
# `foundry-track backends`. They must be cheap and must not import the SDK.
# --------------------------------------------------------------------------- #


@_hookspec(firstresult=True)
def tracker_options_model() -> type[BaseModel] | None:
    """Return the pydantic model that validates this backend's options.

    The options are the mapping under ``tracking.backends.<name>`` in the YAML.
    foundry-track validates them with this model before the run starts, so a
    typo is reported with its path (``tracking.backends.<name>.<field>``).
    Declare ``model_config = ConfigDict(extra="forbid")`` to reject unknown
    keys. Not implementing the hook means the backend takes no options (any
    key given is an error).
    """


@_hookspec(firstresult=True)
def tracker_unavailable() -> str | None:
    """Return ``None`` if the backend can run here, else the reason and the fix.

    Check for the SDK with ``importlib.util.find_spec`` rather than importing
    it. The reason must contain the exact install command, for example
    ``"the 'mlflow' package is not installed: pip install 'foundry-track[mlflow]'"``.
    It is shown by ``foundry-track backends`` and raised when a run selects
    an unavailable backend.
    """


# --------------------------------------------------------------------------- #
# Doctor: called by `foundry-track doctor` before any run, never during one.
# --------------------------------------------------------------------------- #


@_hookspec
def tracker_doctor(  # type: ignore[empty-body]
    options: BaseModel,
    runs_dir: Path,
    fallback: str | None,
    start_timeout: float,
    timeout: float,
    check_disk: Callable[[str, Path], None],
) -> list[DoctorCheck]:
    """Check that this backend can work here, before a run starts.

    :param options: this backend's options from the user's config, an
        instance of the model returned by :func:`tracker_options_model`
        (already validated: doctor reports invalid options itself and then
        does not call this hook).
    :param runs_dir: the folder run directories are made in
        (``tracking.dir``).
    :param fallback: the backend that takes over when this one cannot start,
        or ``None`` (no fallback, or this backend is the fallback).
    :param start_timeout: seconds :func:`tracker_start` may take before the
        fallback takes over (``tracking.start_timeout``).
    :param timeout: seconds each network check may take; bound every
        request by it (``foundry_track.checks.probe`` does).
    :param check_disk: call ``check_disk(what, folder)`` for a folder outside
        the run directory that the backend writes to (``what`` names it, e.g.
        ``"TensorBoard log_dir"``): doctor reports its free disk space together
        with the run folder's, once per disk.

    Return one :class:`~foundry_track.events.DoctorCheck` per thing checked,
    with your backend's name as ``scope``: the SDK and its settings,
    credentials (say where they were found, never print them), whether the
    server answers, folders the backend writes. Give each problem
    (``"warn"`` or ``"error"``) a ``fix`` the user can act on, and name the
    troubleshooting entries a check settles in ``answers``. The module
    ``foundry_track.checks`` has the common parts: a bounded HTTP probe that
    honours the user's proxy, folder and TLS checks, URL masking.

    Called on a fresh instance, on the calling thread, by ``foundry-track
    doctor`` only; :func:`tracker_start` is never called on that instance.
    Must not raise for what it finds (that is a check with level
    ``"error"``); an exception is reported as a failed check of the backend.
    A backend that does not implement it is listed as reporting no checks.

    .. versionadded:: 0.2
    """


# --------------------------------------------------------------------------- #
# Start: called once per run, on the backend's worker thread.
# --------------------------------------------------------------------------- #


@_hookspec(firstresult=True)
def tracker_start(
    run: RunInfo, options: BaseModel, resume_state: Mapping[str, str]
) -> Mapping[str, str] | None:
    """Open the backend's run: connect, create the remote run, open files.

    :param run: the run's identity, tags, redacted config and run directory.
    :param options: this backend's options, an instance of the model returned
        by :func:`tracker_options_model` (an empty ``BaseModel`` when there is
        none).
    :param resume_state: what this hook returned the last time the same run
        was started (empty for a new run), updated with the checkpoint the
        last durable :func:`tracker_flush` returned. Use it to reopen the same
        remote run when the user resumes or when ``foundry-track sync``
        replays events, and to drop what was written past the checkpoint.

    Return the identity of the backend's run as short strings (for example
    ``{"run_id": "3f2a..", "url": "http://.."}``). It is saved in the run
    directory, shown as ``run.backend_ids[<name>]`` and handed back as
    ``resume_state`` later.

    Runs on the backend's worker thread, bounded by the run's
    ``start_timeout``. If it raises or times out, the run's ``fallback``
    backend is switched on and the backend's events stay in the journal. A
    transient failure (:class:`foundry_track.TransientError`, a connection
    refused or reset, a timeout, a server error) is retried on the same
    instance with backoff until ``finish()``; when the tracker answers, the
    backend catches up from the journal and goes on live. So make a start
    safe to call again after it raised: reuse what an earlier attempt created
    (the remote run), rather than create another. Raise anything else (bad
    credentials, invalid options) for a failure that waiting will not heal:
    it is reported once and not retried; ``foundry-track sync`` delivers later.
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


@_hookspec(firstresult=True)
def tracker_flush() -> Mapping[str, str] | None:
    """Make every event the hooks received so far durable; return a checkpoint.

    Implement it if the backend buffers: a file writer that flushes now and
    then, an SDK that queues what it is given. Then the dispatcher moves this
    backend's journal position only after this hook returned, so an event is
    never counted as delivered while it sits in a buffer a crash would lose.
    It is called after each round of batches that caught up with the journal
    (once per ``tracking.delivery_interval``, 1 s by default, while events
    flow), about once a second while a backlog is worked through, and before
    :func:`tracker_finish`; right after
    :func:`tracker_start` too, so there is a checkpoint from the beginning.

    Return a checkpoint: short strings that say where the durable data ends
    (for a file, its name and length). It is stored in the journal in the same
    transaction as the position and merged into ``resume_state`` at the next
    :func:`tracker_start` of the same run (after a crash, by a resume or by
    ``foundry-track sync``): drop anything written past the checkpoint there,
    because the dispatcher offers those events again.

    A backend whose calls are durable when they return does not implement it.

    .. versionadded:: 0.2
    """


# --------------------------------------------------------------------------- #
# Finish: called once, on the backend's worker thread, after every event of
# the run was offered.
# --------------------------------------------------------------------------- #


@_hookspec
def tracker_finish(status: Status, complete: bool) -> None:
    """Flush and close the backend's run.

    :param status: ``"success"``, ``"failed"`` (an exception ended the run) or
        ``"killed"`` (interrupted, or the process died and the run was
        closed later by ``sync`` or a resume).
    :param complete: ``False`` when this backend does not hold every event of
        the run: it gave up on an event, or ``finish()`` reached its
        ``flush_timeout`` first. The rest stays in the journal, and a later
        ``foundry-track sync`` delivers it and calls this hook again with
        ``complete=True``. Do not mark an incomplete run as finished
        successfully (MLflow: ``KILLED``; W&B: a non-zero exit code).

    .. versionchanged:: 0.2 ``complete`` (implementations that do not name it
       keep working: pluggy passes only the arguments a hook names).

    Must return within the run's ``flush_timeout``; the dispatcher does not
    wait longer. May be called again for a run that was closed before (by
    ``foundry-track sync``); make it harmless.
    """
