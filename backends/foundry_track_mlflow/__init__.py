"""MLflow backend: one MLflow run per foundry-track run, written through
``mlflow.MlflowClient`` only (metric points to a REST server: through its
store's REST call, see :func:`rest_log_batch`).

Why the client and never the fluent API (``mlflow.start_run``): the fluent API
keeps one active run in process-global state, so two foundry-track runs in one
process (or a user's own ``mlflow.start_run``) would write into each other.

Where the run goes
    Tracking URI: the ``tracking_uri`` option, else ``MLFLOW_TRACKING_URI``,
    else ``sqlite:///mlflow.db`` in the working directory (MLflow 3 refuses the
    old ``./mlruns`` file store). It is resolved once, at the run's first start
    (a relative SQLite path made absolute), and kept in ``<run dir>/mlflow.json``
    before any network call: a resume or ``foundry-track sync`` (from another
    directory, or a shell without ``MLFLOW_TRACKING_URI``) goes to the same
    place unless the option itself was changed. Experiment: the run's
    ``project`` (option ``experiment`` overrides), created when missing,
    and marked as model training (``mlflow.experimentKind``) unless it has a
    type already, so MLflow 3's UI shows its runs rather than a GenAI
    overview (where the UI reads the type). Run: named ``<run name>-<run id>``, as its TensorBoard folder
    and W&B run, so runs of one config stay apart in the runs list.

Network behaviour
    MLflow's HTTP client retries a failed request 7 times with exponential
    backoff and waits up to 120 s per request, so one call to a dead server
    blocks for minutes. foundry-track already retries every hook with capped
    backoff, so at start this backend sets ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``
    and ``MLFLOW_HTTP_REQUEST_TIMEOUT=30`` **in the process environment, only
    if you did not set them** (MLflow reads them at each request and has no
    per-client setting; they also apply to your own MLflow calls in the same
    process). A call to a stopped server then fails in milliseconds.
    Connection failures, timeouts, HTTP 5xx and 429 become
    :class:`foundry_track.TransientError` (retried until ``finish``'s
    deadline; the journal keeps everything meanwhile); other errors (HTTP 4xx,
    invalid data) are permanent. ``tracker_start`` raises the same way and
    does not retry itself: if the server cannot be reached the core switches
    on the fallback backend and retries the start in the background; once the
    server answers, the run catches up from the journal (``foundry-track
    sync`` delivers what it could not before the run finished).

Groups as parent runs
    With ``parent_run_per_group`` (on by default for the trials of a sweep:
    runs whose ``RunInfo.sweep``, from ``tracking.sweep``, names their group,
    as ``foundry-track sweep`` sets it), the runs of one ``group`` are nested
    under one parent MLflow run named after the group, as MLflow's UI shows a
    sweep: the parent is found by its ``foundry_track.sweep`` tag or created
    by the first run, and each child gets ``mlflow.parentRunId``. A child's
    finish marks the parent FINISHED (its end time is the last child's).

Exactly once
    Metric points carry the journal's timestamp, so a retried ``log_batch``
    resends identical ``(key, step, timestamp, value)`` rows, which MLflow's
    SQL store ignores. Runs are found again by the ``foundry_track.run_id`` tag
    when no MLflow run id was saved (a start that failed half-way).
"""

from __future__ import annotations

import contextlib
import getpass
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Final, Iterator, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

import foundry_track
from foundry_track import TransientError

if TYPE_CHECKING:
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

__all__ = ["MlflowBackend", "MlflowOptions", "MlflowBackendError"]

_log = logging.getLogger("foundry_track.mlflow")
INSTALL: Final = "pip install 'foundry-track[mlflow]'"
STATE_FILE: Final = "mlflow.json"  # in the run directory: the URI the run lives at

# MLflow's limits (mlflow/utils/validation.py, unchanged from 2.x to 3.17).
MAX_METRICS_PER_BATCH: Final = 1000
MAX_PARAMS_TAGS_PER_BATCH: Final = 100
MAX_PARAM_VAL_LENGTH: Final = 6000
MAX_TAG_VAL_LENGTH: Final = 8000
MAX_KEY_LENGTH: Final = 250
MAX_EXPERIMENT_NAME_LENGTH: Final = 500
# The server rejects a log_batch request body over 1e6 bytes; stay well below.
MAX_REQUEST_BYTES: Final = 800_000

_JSON: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def log_batch_json(run_id: str, metrics: Sequence[tuple[str, float, int, int]]) -> str:
    """The body of MLflow's REST ``runs/log-batch`` for ``(key, value, timestamp, step)`` points:
    what ``MlflowClient.log_batch`` sends, written directly (protobuf's JSON
    names NaN and the infinities as strings)."""
    return _JSON.encode({"run_id": run_id, "metrics": [
        {"key": k, "value": v if math.isfinite(v) else ("NaN" if v != v else "Infinity" if v > 0 else "-Infinity"),
         "timestamp": t, "step": s} for k, v, t, s in metrics]})


def rest_log_batch(client: Any) -> Callable[[str], object] | None:
    """MLflow's own REST call for ``log-batch`` (its auth, TLS, timeouts,
    workspaces and errors), taking a body :func:`log_batch_json` wrote; None
    unless the client's store is MLflow's REST store with MLflow's own
    ``log_batch`` (a plugin store that overrides it keeps it), no active model
    id to add to each point, and the body MLflow's encoder writes for a sample
    batch is the body written here.

    Why: ``MlflowClient.log_batch`` builds a ``Metric`` object, a protobuf
    message and pretty-printed JSON through protobuf's pure-Python printer
    for each point, 17 us per point here; at a 1 ms step with 10 scalars that
    was 0.17 ms of CPU per step in the delivery process. Written directly,
    1.6 us. What it skips besides: MLflow's usage telemetry for the call.
    """
    try:
        # Through import_sdk: another backend may be importing its SDK on its own thread.
        Metric = foundry_track.import_sdk("mlflow.entities").Metric
        LogBatch = foundry_track.import_sdk("mlflow.protos.service_pb2").LogBatch
        RestStore = foundry_track.import_sdk("mlflow.store.tracking.rest_store").RestStore
        get_active_model_id = foundry_track.import_sdk("mlflow.tracking.fluent").get_active_model_id
        message_to_json = foundry_track.import_sdk("mlflow.utils.proto_json_utils").message_to_json

        store = client._tracking_client.store
        call = store._call_endpoint
        if (not isinstance(store, RestStore) or type(store).log_batch is not RestStore.log_batch
                or get_active_model_id() is not None):
            return None
        sample = [("a/b é", -0.0, 1_765_000_000_123, 2**40), ("nan", math.nan, 1, 0), ("inf", -math.inf, 1, 0)]
        theirs = message_to_json(LogBatch(run_id="r", metrics=[Metric(*m).to_proto() for m in sample]))
        if json.dumps(json.loads(theirs), sort_keys=True) != json.dumps(json.loads(log_batch_json("r", sample)),
                                                                          sort_keys=True):
            return None
    except Exception:  # noqa: BLE001 - MLflow's internals moved: its public path does the same, slower
        return None
    return lambda body: call(LogBatch, body)


# Set with os.environ.setdefault at start (see the module docstring).
HTTP_ENV_DEFAULTS: Final = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}

RUN_ID_TAG: Final = "foundry_track.run_id"
TAGS_TAG: Final = "foundry_track.tags"
GROUP_TAG: Final = "foundry_track.group"
PARAM_UPDATE_TAG: Final = "foundry_track.params/"  # + key: a param's later value
ARTIFACT_TAG: Final = "foundry_track.artifact/"  # + type/name: digest of the uploaded content
LAST_ALERT_TAG: Final = "foundry_track.last_alert"
LOGGED_ARTIFACTS_TAG: Final = "mlflow.loggedArtifacts"  # lets MLflow's UI list the tables
NOTE_TAG: Final = "mlflow.note.content"
PARENT_RUN_TAG: Final = "mlflow.parentRunId"  # MLflow's own nesting
GROUP_PARENT_TAG: Final = "foundry_track.sweep"  # on the parent run of a group: the group's name
# MLflow 3's experiment type (the UI's "GenAI apps & agents" / "Machine learning"): the UIs
# that read it open an experiment without one on its GenAI overview, one marked as model
# training on its runs. (Later UIs, 3.17's, follow a per-browser sidebar switch instead.)
EXPERIMENT_KIND_TAG: Final = "mlflow.experimentKind"
TRAINING_KIND: Final = "custom_model_development"

_STATUS: Final = {"success": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
# MLflow's name rule (validate_param_and_metric_name); ':' is refused on Windows servers.
_BAD_NAME_CHARS: Final = re.compile(r"[^/\w.\- :]" if sys.platform != "win32" else r"[^/\w.\- ]")
_BAD_PATH_CHARS: Final = re.compile(r"[^\w.\- ]")  # one artifact path component
_TRANSIENT_HTTP: Final = frozenset({408, 429, 500, 502, 503, 504})


class MlflowOptions(BaseModel):
    """Options under ``tracking.backends.mlflow``."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(
        None,
        description="Where runs go: `http://host:5000` for an `mlflow server`, `sqlite:///path.db` for a local "
        "database. Default: `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in the working directory.",
        examples=["http://127.0.0.1:5000"],
    )
    experiment: str | None = Field(
        None,
        description="MLflow experiment name; created if missing. Default: the run's `project`.",
        examples=["spanish-subject-drop"],
    )
    artifact_location: str | None = Field(
        None,
        description="Artifact root of the experiment when this backend creates it (ignored for an existing "
        "experiment). Default: the server's `--default-artifact-root`.",
        examples=["s3://bucket/mlflow"],
    )
    parent_run_per_group: bool | None = Field(
        None,
        description="Nest the runs of one `group` under a parent MLflow run named after the group (tag "
        "`foundry_track.sweep`). Default: on for the trials of a sweep (`tracking.sweep`, which `foundry-track "
        "sweep` sets, names the group), off otherwise.",
        examples=[True],
    )


class MlflowBackendError(RuntimeError):
    """A permanent MLflow failure (retrying cannot help); the message says what to fix."""


# --------------------------------------------------------------------------- #
# Names, URIs, errors: small pure helpers
# --------------------------------------------------------------------------- #


def clean_name(key: str) -> str:
    """A metric/param/tag name MLflow accepts, as close to ``key`` as possible.

    MLflow allows letters, digits, ``_ - . / :`` and spaces, and the name must
    be a normalised relative path (no empty, ``.`` or ``..`` parts), at most 250
    characters. Other characters become ``_``.
    """
    name = _BAD_NAME_CHARS.sub("_", key)[:MAX_KEY_LENGTH]
    name = "/".join({".": "_", "..": "__"}.get(p, p) for p in name.split("/") if p)
    if name.startswith(".."):  # MLflow refuses any name that starts with ".."
        name = "__" + name[2:]
    return name or "_"


def artifact_dir(*parts: str) -> str:
    """A safe relative artifact directory from user-given parts (keys, names, types)."""
    out: list[str] = []
    for part in parts:
        for piece in part.split("/"):
            piece = _BAD_PATH_CHARS.sub("_", piece).strip()
            if piece and piece not in (".", ".."):
                out.append(piece)
            elif piece:
                out.append(piece.replace(".", "_"))
    return "/".join(out) or "_"


def _run_name(run: RunInfo) -> str:
    """The MLflow run's name: the run's name and id (``quickstart-a1b2c3d4``), as its
    TensorBoard folder and W&B run are named, so runs of one config (``quickstart``
    twice, the trials of a sweep) stay apart in the runs list; the id alone when the
    run has no name of its own."""
    return run.id if run.name == run.id else f"{run.name}-{run.id}"


def _json_len(text: str) -> int:
    # requests sends JSON with ensure_ascii: a non-ASCII character costs 6 bytes.
    return len(text) + 5 * sum(1 for c in text if ord(c) > 127) + 2


def masked_uri(uri: str) -> str:
    """The URI without a password, for run.json and messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def absolute_uri(uri: str) -> str:
    """``sqlite:///rel.db`` is relative to the working directory: pin it, so a later
    ``foundry-track sync`` from another directory finds the same database."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        return prefix + str((Path.cwd() / uri[len(prefix):]).resolve())
    return uri


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        # MLflow wraps requests errors with `raise MlflowException(...)` inside an
        # `except`, so the original is often only the implicit __context__.
        todo += [e.__cause__, e.__context__]


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    get = getattr(exc, "get_http_status_code", None)  # MlflowException / RestException
    if callable(get):
        try:
            return int(get())
        except Exception:  # noqa: BLE001
            return None
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying later can succeed: network down, timeout, server busy (5xx, 429)."""
    names = {type(e).__name__ for e in _chain(exc)}
    if names & {"ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "ChunkedEncodingError",
                "RetryError", "MaxRetryError", "NewConnectionError", "ProtocolError", "RemoteDisconnected",
                "ConnectionRefusedError", "ConnectionResetError", "TimeoutError", "OperationalError"}:
        return True  # OperationalError: SQLAlchemy's "database is locked" on a shared SQLite file
    for e in _chain(exc):
        status = _http_status(e)
        if status is not None:
            return status in _TRANSIENT_HTTP
    return False


def _reason(exc: BaseException) -> str:
    """One short line for an error whose MLflow message can run to 600 characters."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno:
        return errno.group(1).strip()
    if "timed out" in text or "timeout" in text.lower():
        return "request timed out"
    return text if len(text) <= 300 else text[:300] + "..."


# --------------------------------------------------------------------------- #
# The backend
# --------------------------------------------------------------------------- #


class MlflowBackend:
    """One instance per run; every hook runs on this backend's worker thread.

    Policies (also in the docs):

    - **Params** are immutable in MLflow. A value logged again unchanged is
      skipped; a *changed* value (a second ``log_params``, a resume with a new
      config) is recorded as the tag ``foundry_track.params/<key>`` (the latest
      value), with one warning naming the keys; the param keeps its first value.
      Values longer than 6000 characters are truncated, with one warning per
      call naming the keys.
    - **Metrics** go through ``log_batch`` (<= 1000 points and < 1 MB per
      request). Names MLflow refuses are cleaned (other characters become
      ``_``), with one warning per key. NaN is stored as NaN; MLflow stores
      +-inf as +-1.797e308. A step logged again (after resuming from an earlier
      checkpoint) becomes a second point at that step: MLflow keeps both, the
      core reports the repeated step once.
    - **Media** are artifacts: ``images/<key>/step_<step>.png`` (the PNG as
      is), ``tables/<key>_<step>.json`` (pandas "split" layout, listed in
      ``mlflow.loggedArtifacts`` as MLflow's ``log_table`` does),
      ``text/<key>/step_<step>.txt``, ``histograms/<key>/step_<step>.json``.
      Fixed names make a retried upload overwrite, never duplicate.
    - **Artifacts** go under ``<type>/<name>``; the digest is kept in the tag
      ``foundry_track.artifact/<type>/<name>`` and an unchanged digest is not
      uploaded again (a replay by ``sync``).
    - **Alerts**: MLflow has none. Each becomes ``alerts/<UTC time>_<level>.txt``
      and the tag ``foundry_track.last_alert``.
    """

    def __init__(self) -> None:
        self._client: Any = None
        self._post_log_batch: Callable[[str], object] | None = None
        self._mlflow: Any = None  # the mlflow.entities module: Metric, Param, RunTag
        self.run_id: str | None = None
        self.tracking_uri: str | None = None
        self._params: dict[str, str] = {}  # what MLflow holds, to skip or divert re-logged params
        self._tags: dict[str, str] = {}
        self._names: dict[str, str] = {}  # user key -> MLflow name (cache, and warn once per key)
        self._json_lens: dict[str, int] = {}
        self._parent_id: str | None = None  # the group's parent run (parent_run_per_group)

    # -- discovery --------------------------------------------------------- #

    @foundry_track.hookimpl
    def tracker_options_model(self) -> type[BaseModel]:
        return MlflowOptions

    @foundry_track.hookimpl
    def tracker_unavailable(self) -> str | None:
        if importlib.util.find_spec("mlflow") is None:
            return f"the 'mlflow' package is not installed: {INSTALL}"
        return None

    @foundry_track.hookimpl
    def tracker_doctor(self, options: MlflowOptions, timeout: float) -> list[DoctorCheck]:
        from foundry_track_mlflow._doctor import doctor

        return doctor(options, timeout)

    # -- start ------------------------------------------------------------- #

    @foundry_track.hookimpl
    def tracker_start(self, run: RunInfo, options: MlflowOptions, resume_state: Mapping[str, str]) -> dict[str, str]:
        for var, value in HTTP_ENV_DEFAULTS.items():
            os.environ.setdefault(var, value)
        mlflow = foundry_track.import_sdk("mlflow")
        self._mlflow = foundry_track.import_sdk("mlflow.entities")
        uri = self._resolve_uri(run, options, resume_state)
        self.tracking_uri = uri
        experiment_name = (options.experiment or run.project)[:MAX_EXPERIMENT_NAME_LENGTH]
        with self._errors("start"):
            self._client = mlflow.MlflowClient(tracking_uri=uri)
            self._post_log_batch = rest_log_batch(self._client)
            found = self._saved_run(run, resume_state.get("run_id"))
            if found is None:
                experiment_id, created = self._experiment_id(experiment_name, options.artifact_location)
                found = None if created else self._tagged_run(run, experiment_id)
            else:
                self._mark_training(self._client.get_experiment(found.info.experiment_id))
            nest = bool(run.group) and (options.parent_run_per_group if options.parent_run_per_group is not None
                                        else run.sweep == run.group)
            if found is None:
                tags = {**self._label_tags(run), **self._source_tags()}
                if nest:
                    tags[PARENT_RUN_TAG] = self._group_parent(run, experiment_id)
                new = self._client.create_run(experiment_id, run_name=_run_name(run), tags=tags)
                self.run_id, self._tags = new.info.run_id, dict(new.data.tags)
            else:
                self._reopen(found, run)
                experiment_id = found.info.experiment_id
            # A run made before keeps the nesting it was made with (its tag),
            # whatever the environment of this start (a resume, a later sync).
            self._parent_id = self._tags.get(PARENT_RUN_TAG) if nest or found is not None else None
        identity = {"run_id": self.run_id or "", "experiment_id": experiment_id, "tracking_uri": masked_uri(uri)}
        if uri.startswith(("http://", "https://")):
            identity["url"] = f"{masked_uri(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{self.run_id}"
        return identity

    def _resolve_uri(self, run: RunInfo, options: MlflowOptions, resume_state: Mapping[str, str]) -> str:
        """The run's tracking URI; fixed at its first start unless the option changes.

        What is saved in the run directory has its password masked; the real
        one comes from the option or ``MLFLOW_TRACKING_URI`` given now (sync
        passes the config file's options; run.json's copies are redacted)."""
        state_path = Path(run.dir) / STATE_FILE
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = {}
        given = [u for u in (options.tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")) if u and "***" not in u]
        saved = state.get("tracking_uri")
        option = None if options.tracking_uri is None else masked_uri(options.tracking_uri)
        if saved and option in (None, state.get("option")):
            # Same run, same (or no) option: the URI resolved the first time, even
            # from another directory or a shell without MLFLOW_TRACKING_URI.
            return self._unmasked(str(saved), given)
        uri = absolute_uri(next(iter(given), None) or resume_state.get("tracking_uri") or "sqlite:///mlflow.db")
        # Written before any network call: a start that fails still tells a
        # later `foundry-track sync` where the run belongs. Never a password.
        state_path.write_text(json.dumps({"tracking_uri": masked_uri(uri), "option": option}, indent=2))
        return self._unmasked(uri, given)

    @staticmethod
    def _unmasked(uri: str, given: list[str]) -> str:
        if "***" not in uri:
            return uri
        for candidate in given:
            full = absolute_uri(candidate)
            if masked_uri(full) == uri:
                return full
        raise MlflowBackendError(
            f"the run's MLflow tracking URI {uri} has a password, which foundry-track does not store; pass the "
            f"run's config (foundry-track sync RUN_DIR --config CONFIG) or set MLFLOW_TRACKING_URI to the full URI")

    def _saved_run(self, run: RunInfo, run_id: str | None) -> Any:
        """The MLflow run saved in run.json (resume, sync), if it still exists."""
        if not run_id:
            return None
        try:
            found = self._client.get_run(run_id)
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                raise
            found = None
        if found is not None and found.info.lifecycle_stage == "active":
            return found
        _log.warning("MLflow run %s of foundry-track run %s is gone (deleted, or another tracking server: %s); "
                     "starting a new MLflow run", run_id, run.id, masked_uri(self.tracking_uri or ""))
        return None

    def _tagged_run(self, run: RunInfo, experiment_id: str) -> Any:
        """An MLflow run already made for this foundry-track run but never saved in
        run.json (a start that reached the server, then failed or timed out; the
        same ``run_id`` started again): found by its ``foundry_track.run_id`` tag,
        so a later start or ``sync`` does not make a second run."""
        quoted = run.id.replace("\\", "\\\\").replace("'", "\\'")
        runs = self._client.search_runs([experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{quoted}'",
                                        max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def _group_parent(self, run: RunInfo, experiment_id: str) -> str:
        """The id of the group's parent run, created if there is none yet.

        Two runs starting at once could each create one: after creating, the
        earliest parent wins and a later duplicate is deleted, so every child
        of the group ends up under the same parent.
        """
        def earliest() -> Any:
            quoted = str(run.group).replace("\\", "\\\\").replace("'", "\\'")
            found = self._client.search_runs([experiment_id], filter_string=f"tags.`{GROUP_PARENT_TAG}` = '{quoted}'",
                                             max_results=1, order_by=["attributes.start_time ASC"])
            return found[0].info.run_id if found else None

        parent = earliest()
        if parent is None:
            group = str(run.group)[:MAX_TAG_VAL_LENGTH]
            tags = {GROUP_PARENT_TAG: group, GROUP_TAG: group, **self._source_tags()}
            mine = self._client.create_run(experiment_id, run_name=str(run.group), tags=tags).info.run_id
            parent = earliest() or mine
            if parent != mine:
                self._client.delete_run(mine)
        return str(parent)

    def _experiment_id(self, name: str, artifact_location: str | None) -> tuple[str, bool]:
        """The experiment's id, created if missing; and whether this call created it."""
        client = self._client
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return str(client.create_experiment(name, artifact_location=artifact_location,
                                                    tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})), True
            except Exception as exc:  # noqa: BLE001
                if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = client.get_experiment_by_name(name)  # created meanwhile by another process
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise MlflowBackendError(
                f"MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted. Restore it "
                f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or set "
                f"tracking.backends.mlflow.experiment to another name"
            )
        self._mark_training(experiment)
        return str(experiment.experiment_id), False

    def _mark_training(self, experiment: Any) -> None:
        """Mark an experiment this backend logs to as model training, unless it has a type.

        A type set already (by the user in the UI, or ``genai_development`` on an
        experiment that also holds traces) is left as it is. The tag only changes
        what the UI shows first, so a server that refuses it (permissions) does
        not stop the run."""
        if experiment is None or EXPERIMENT_KIND_TAG in (experiment.tags or {}):
            return
        try:
            self._client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        except Exception as exc:  # noqa: BLE001
            if is_transient(exc):
                raise
            _log.warning("cannot mark MLflow experiment %r as model training (%s); MLflow's UI may open it on "
                         "its GenAI overview", experiment.name, _reason(exc))

    def _label_tags(self, run: RunInfo) -> dict[str, str]:
        """Tags from the run's identity. A foundry-track tag is a bare label, so it
        becomes an MLflow tag with an empty value (a chip in the UI); the list as
        typed is kept in ``foundry_track.tags`` for search."""
        tags: dict[str, str] = {}
        for label in run.tags:
            name = clean_name(label)
            if not name.startswith(("mlflow.", "foundry_track.")):  # never clobber a system tag
                tags[name] = ""
        if run.tags:
            tags[TAGS_TAG] = ", ".join(run.tags)[:MAX_TAG_VAL_LENGTH]
        tags[RUN_ID_TAG] = run.id
        tags["foundry_track.run_dir"] = str(run.dir)[:MAX_TAG_VAL_LENGTH]  # where `foundry-track sync` runs
        if run.notes:
            tags[NOTE_TAG] = run.notes[:MAX_TAG_VAL_LENGTH]
        if run.group:
            tags[GROUP_TAG] = run.group[:MAX_TAG_VAL_LENGTH]
        if run.entity:
            tags["foundry_track.entity"] = run.entity[:MAX_TAG_VAL_LENGTH]
        return tags

    @staticmethod
    def _source_tags() -> dict[str, str]:
        """What MLflow's UI shows as User and Source; set once, at creation (a later
        ``sync`` runs from the CLI, which is not the source of the run)."""
        tags = {"mlflow.source.type": "LOCAL"}
        if sys.argv and sys.argv[0] not in ("", "-c"):
            tags["mlflow.source.name"] = Path(sys.argv[0]).name
        with contextlib.suppress(Exception):
            tags["mlflow.user"] = getpass.getuser()
        return tags

    def _reopen(self, found: Any, run: RunInfo) -> None:
        """Continue an MLflow run: RUNNING again, tags refreshed, what it holds remembered."""
        self.run_id = found.info.run_id
        self._params = dict(found.data.params)
        self._tags = dict(found.data.tags)
        if found.info.status != "RUNNING":
            self._client.update_run(self.run_id, status="RUNNING")
        wanted = {k: v for k, v in self._label_tags(run).items() if self._tags.get(k) != v}
        if wanted:  # tags or notes changed on resume
            self._set_tags(wanted)

    # -- log --------------------------------------------------------------- #

    @foundry_track.hookimpl
    def tracker_log_metrics(self, rows: Sequence[MetricRow]) -> None:
        names, lens = self._names, self._json_lens
        batch: list[tuple[str, float, int, int]] = []
        size = 0
        with self._errors("log_metrics"):
            for row in rows:
                # The journal's time, not now: a retry resends identical points,
                # which MLflow's SQL store ignores.
                ts, step = int(row.time * 1000), row.step
                for key, value in row.values.items():
                    name = names.get(key) or self._name(key)
                    try:
                        value = float(value)
                    except OverflowError:  # an int beyond a double: MLflow's stand-in for inf
                        value = math.copysign(sys.float_info.max, value)
                    batch.append((name, value, ts, step))
                    size += lens[name]
                    if len(batch) >= MAX_METRICS_PER_BATCH or size >= MAX_REQUEST_BYTES:
                        self._send_metrics(batch)
                        batch, size = [], 0
            if batch:
                self._send_metrics(batch)

    def _send_metrics(self, batch: list[tuple[str, float, int, int]]) -> None:
        post = self._post_log_batch
        if post is not None and self.run_id is not None:
            try:
                post(log_batch_json(self.run_id, batch))
                return
            except TypeError:  # a later MLflow's _call_endpoint takes something else: its public path from now on
                self._post_log_batch = None
        metric = self._mlflow.Metric
        self._client.log_batch(self.run_id, metrics=[metric(*m) for m in batch], synchronous=True)

    def _name(self, key: str) -> str:
        """MLflow name of a user key, cached; warns once per key that had to change."""
        name = clean_name(key)
        if name != key:
            _log.warning("MLflow does not accept the name %r; logging it as %r (MLflow allows letters, digits, "
                         "'_', '-', '.', '/', ':' and spaces, at most %d characters)", key, name, MAX_KEY_LENGTH)
        self._names[key] = name
        self._json_lens[name] = _json_len(name) + 80  # value, timestamp, step and JSON punctuation
        return name

    @foundry_track.hookimpl
    def tracker_log_params(self, params: Mapping[str, ParamValue]) -> None:
        values: dict[str, str] = {}
        truncated: list[str] = []
        for key, raw in params.items():
            value = str(raw)
            if len(value) > MAX_PARAM_VAL_LENGTH:
                truncated.append(key)
                value = value[:MAX_PARAM_VAL_LENGTH]
            values[self._names.get(key) or self._name(key)] = value
        if truncated:
            _log.warning("MLflow keeps at most %d characters of a param value; truncated: %s",
                         MAX_PARAM_VAL_LENGTH, ", ".join(truncated))
        with self._errors("log_params"):
            try:
                self._log_new_params(values)
            except Exception as exc:  # noqa: BLE001
                if "Changing param values is not allowed" not in str(exc):
                    raise
                # Someone else (another process, a half-applied batch) logged
                # params meanwhile: learn what the run holds and sort again.
                self._params = dict(self._client.get_run(self.run_id).data.params)
                self._log_new_params(values)

    def _log_new_params(self, values: Mapping[str, str]) -> None:
        param = self._mlflow.Param
        new = [(k, v) for k, v in values.items() if k not in self._params]
        changed = {k: v for k, v in values.items() if k in self._params and self._params[k] != v}
        batch: list[tuple[str, str]] = []
        size = 0
        for i, (key, value) in enumerate(new):
            batch.append((key, value))
            size += _json_len(key) + _json_len(value) + 30
            if len(batch) >= MAX_PARAMS_TAGS_PER_BATCH or size >= MAX_REQUEST_BYTES or i == len(new) - 1:
                self._client.log_batch(self.run_id, params=[param(k, v) for k, v in batch], synchronous=True)
                self._params.update(batch)
                batch, size = [], 0
        if changed:
            _log.warning(
                "MLflow cannot change a param once logged; the new values of %s are in the tags %s<key> "
                "(the params keep their first values)", ", ".join(sorted(changed)), PARAM_UPDATE_TAG)
            self._set_tags({clean_name(PARAM_UPDATE_TAG + k): v[:MAX_TAG_VAL_LENGTH] for k, v in changed.items()})

    def _set_tags(self, tags: Mapping[str, str]) -> None:
        run_tag = self._mlflow.RunTag
        items = list(tags.items())
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = items[i:i + MAX_PARAMS_TAGS_PER_BATCH]
            self._client.log_batch(self.run_id, tags=[run_tag(k, v) for k, v in chunk], synchronous=True)
            self._tags.update(chunk)

    # -- media, artifacts, alerts ------------------------------------------ #

    @foundry_track.hookimpl
    def tracker_log_image(self, image: ImageEvent) -> None:
        if not Path(image.path).is_file():
            _log.warning("image %r at step %d: %s no longer exists; skipped", image.key, image.step, image.path)
            return
        with self._errors("log_image"), tempfile.TemporaryDirectory(prefix="foundry-track-mlflow-") as tmp:
            # log_artifact names the file after its basename: copy to step_<n>.png.
            # (MLflow's own log_image re-encodes through PIL and adds a random
            # uuid to the name, so a retried upload would appear twice.)
            target = Path(tmp) / f"step_{image.step}.png"
            shutil.copyfile(image.path, target)
            self._client.log_artifact(self.run_id, str(target), artifact_path=f"images/{artifact_dir(image.key)}")

    @foundry_track.hookimpl
    def tracker_log_histogram(self, histogram: HistogramEvent) -> None:
        h = histogram
        data = {"key": h.key, "step": h.step, "time": h.time, "edges": list(h.edges), "counts": list(h.counts),
                "min": h.min, "max": h.max, "num": h.num, "sum": h.sum, "sum_squares": h.sum_squares}
        self._log_text(_to_json(data), f"histograms/{artifact_dir(h.key)}/step_{h.step}.json", "log_histogram")

    @foundry_track.hookimpl
    def tracker_log_table(self, table: TableEvent) -> None:
        # The layout pandas writes for MLflow's log_table (orient="split"), written
        # here so a retry overwrites the file (log_table appends to an existing one).
        path = f"tables/{artifact_dir(table.key)}_{table.step}.json"
        self._log_text(_to_json({"columns": list(table.columns), "data": [list(r) for r in table.rows]}),
                       path, "log_table")
        listed = json.loads(self._tags.get(LOGGED_ARTIFACTS_TAG, "[]") or "[]")
        entry = {"path": path, "type": "table"}
        if entry not in listed:
            value = json.dumps([*listed, entry])
            if len(value) <= MAX_TAG_VAL_LENGTH:  # a longer list would be cut into invalid JSON
                with self._errors("log_table"):
                    self._set_tags({LOGGED_ARTIFACTS_TAG: value})

    @foundry_track.hookimpl
    def tracker_log_text(self, text: TextEvent) -> None:
        self._log_text(text.text, f"text/{artifact_dir(text.key)}/step_{text.step}.txt", "log_text")

    @foundry_track.hookimpl
    def tracker_log_artifact(self, artifact: ArtifactEvent) -> None:
        path = Path(artifact.path)
        where = artifact_dir(artifact.type, artifact.name)
        tag = clean_name(ARTIFACT_TAG + where)
        if artifact.digest and self._tags.get(tag) == artifact.digest:
            return  # already uploaded, unchanged (a replay by sync or a resume)
        if not path.exists():
            _log.warning("artifact %s/%s: %s no longer exists; skipped", artifact.type, artifact.name, path)
            return
        with self._errors("log_artifact"):
            if path.is_dir():
                self._client.log_artifacts(self.run_id, str(path), artifact_path=where)
            else:
                self._client.log_artifact(self.run_id, str(path), artifact_path=where)
            if artifact.digest:
                self._set_tags({tag: artifact.digest[:MAX_TAG_VAL_LENGTH]})

    @foundry_track.hookimpl
    def tracker_alert(self, alert: AlertEvent) -> None:
        """MLflow has no alerts: keep each as a text artifact and the last one as a tag."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(alert.time)) + f".{int(alert.time * 1000) % 1000:03d}Z"
        body = f"[{alert.level}] {alert.title}\nstep {alert.step}\n\n{alert.text}\n"
        self._log_text(body, f"alerts/{stamp}_{artifact_dir(alert.level)}.txt", "alert")
        with self._errors("alert"):
            self._set_tags({LAST_ALERT_TAG: f"[{alert.level}] {alert.title}: {alert.text}"[:MAX_TAG_VAL_LENGTH]})

    def _log_text(self, text: str, artifact_file: str, what: str) -> None:
        with self._errors(what):
            self._client.log_text(self.run_id, text, artifact_file)

    # -- finish ------------------------------------------------------------ #

    @foundry_track.hookimpl
    def tracker_finish(self, status: Status, complete: bool) -> None:
        if self._client is None or self.run_id is None:
            return
        # A run missing events (left in the journal, or set aside) is not
        # FINISHED: KILLED until the `foundry-track sync` that completes it.
        ended = _STATUS.get(status, "FAILED") if complete or status == "failed" else "KILLED"
        with self._errors("finish"):
            # Setting the same terminal status twice is harmless (sync may call again).
            self._client.set_terminated(self.run_id, status=ended)
            if self._parent_id:  # the group's parent ends with its latest child
                self._client.set_terminated(self._parent_id, status="FINISHED")

    # -- errors ------------------------------------------------------------ #

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Sort MLflow's exceptions for the core: transient ones are retried with
        backoff until finish's deadline, permanent ones a few times at most."""
        try:
            yield
        except TransientError:
            raise
        except Exception as exc:
            uri = masked_uri(self.tracking_uri or "")
            if is_transient(exc):
                raise TransientError(
                    f"MLflow {what}: cannot reach the tracking server at {uri} ({_reason(exc)}). "
                    f"Is the server running?"
                ) from exc
            if isinstance(exc, OSError):
                # requests' HTTPError is an OSError: a 4xx would be retried forever.
                raise MlflowBackendError(f"MLflow {what} failed at {uri}: {_reason(exc)}") from exc
            raise


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null (as pandas does)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _to_json(data: Any) -> str:
    return json.dumps(_finite(data), default=str, allow_nan=False)
