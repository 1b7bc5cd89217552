"""Weights & Biases backend: every event goes through the real ``wandb`` SDK.

Choices that follow from W&B's behaviour (each one is a user complaint on
GitHub):

- **Steps are data, not W&B's ``step=``.** ``wandb.log(..., step=n)`` silently
  drops a row whose step is lower than W&B's internal step (wandb #9449,
  #5913), which loses steps logged out of order or replayed after a resume. So
  each row carries its step as the metric :data:`STEP_METRIC` (``trainer/step``)
  and every other metric is plotted against it (``define_metric``); ``step=`` is
  never passed. A step lower than one already seen is kept and reported once.
- **Never hang the trainer.** Online mode without credentials fails at once in
  :meth:`WandbBackend.tracker_start` (instead of prompting for a key, or
  retrying for 90 s); ``wandb.init`` gets an ``init_timeout``; the core then
  switches on the fallback backend and prints the ``foundry-track sync`` command.
- **The environment wins.** The variables of the Model Foundry W&B guide
  (``WANDB_MODE``, ``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_BASE_URL``,
  ``WANDB_DIR``, ...) override the YAML options, so ``WANDB_MODE=disabled`` is
  an emergency switch that needs no config change. ``WANDB_API_KEY``,
  ``WANDB_SILENT``, ``WANDB_DISABLE_CODE`` and ``WANDB_DISABLE_GIT`` are read
  by the SDK itself and never overridden.
- **One W&B run per foundry-track run.** The W&B run id is the foundry-track
  run id (8 characters of ``[a-z0-9]``), opened with ``resume="allow"``, so a
  resumed run or a ``foundry-track sync`` continues the same W&B run. Runs are
  created with ``reinit="create_new"`` and used only through their own object,
  so several runs in one process do not share W&B's global run.
- **Exactly once after a crash.** W&B's service writes the ``.wandb`` file in
  whole 32 KiB blocks and, when the training process is killed, quits without
  writing its last, partial block (wandb 0.31: ``exitWhenParentIsGone``), so a
  row W&B had received can still be lost. :meth:`WandbBackend.tracker_flush`
  therefore reads back the blocks W&B completed and writes every event they do
  not hold yet to ``foundry-track-unsaved-{0,1}.json`` next to the ``.wandb``
  file (fsynced) before the journal's position moves. After a crash
  (``sync``, resume), :mod:`._ledger` reads what the run's files hold past the
  checkpoint, resends the unsaved events they lack and recognises every event
  offered again that they hold: a row by its ``trainer/step`` and
  ``_timestamp`` (the journal's time of the row; a W&B row that merges several
  journal rows of one step says how many in the hidden metric
  ``_foundry_track/rows``), an image, histogram, table or text by its key,
  step and time, an alert by its title, text and level, an artifact by its
  name, step and digest. Params are config updates: resending them is
  harmless. Online, the server is what counts, and it is known only by its
  number of rows (the resumed run's ``starting_step``): the rows it holds past
  the checkpoint are recognised as far as the local file shows them; rows it
  got from W&B's last, unwritten block are sent again (at most one block);
  rows W&B wrote locally before the checkpoint but never uploaded are reported,
  not resent (``wandb sync`` of the crashed run's folder would double the rest).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Final, Mapping, Sequence

from pydantic import BaseModel

import foundry_track
from foundry_track_wandb._ledger import Entry, Key, Ledger, Recovery, Skipper, recover, server_holds
from foundry_track_wandb._options import _FALLBACK_BASE_URL as _FALLBACK_BASE_URL
from foundry_track_wandb._options import _LEGACY_MODES as _LEGACY_MODES
from foundry_track_wandb._options import (
    Mode,
    WandbCredentialsError,
    WandbOptions,
    _env,
    _hosts,
    _init_timeout,
    has_credentials,
    resolve_base_url,
    resolve_mode,
    wandb_root,
)
from foundry_track_wandb._options import _netrc_path as _netrc_path
from foundry_track_wandb._options import _settings_file_value as _settings_file_value
from foundry_track_wandb._readback import ROWS_KEY, STEP_METRIC

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

__all__ = ["WandbBackend", "WandbOptions", "WandbCredentialsError", "STEP_METRIC", "EXIT_CODES", "INSTALL",
           "has_credentials", "resolve_base_url", "resolve_mode"]

_log = logging.getLogger("foundry_track.wandb")
INSTALL: Final = "pip install 'foundry-track[wandb]'"
#: ``run.finish(exit_code=...)`` per foundry-track status; 255 is how W&B shows a killed run.
EXIT_CODES: Final[Mapping[str, int]] = {"success": 0, "failed": 1, "killed": 255}
_MAX_HIST_BINS: Final = 512  # wandb.Histogram refuses more
_MAX_TAG: Final = 64  # W&B refuses longer tags (wandb.init fails) and alert titles
_ALERT_LEVELS: Final = {"info": "INFO", "warn": "WARN", "error": "ERROR"}
_HOOKS: Final = {"image": "tracker_log_image", "histogram": "tracker_log_histogram", "table": "tracker_log_table",
                 "text": "tracker_log_text", "artifact": "tracker_log_artifact", "alert": "tracker_alert"}

def _tags(tags: Sequence[str]) -> list[str]:
    """Tags W&B accepts (1 to 64 characters): a longer tag would fail ``wandb.init``."""
    kept = [tag[:_MAX_TAG] for tag in tags if tag]
    if any(len(tag) > _MAX_TAG for tag in tags):
        _log.warning("W&B tags are at most %d characters; longer tags were cut", _MAX_TAG)
    return kept


def _run_name(run: RunInfo) -> str:
    """The W&B run's name: the run's name and id, as its TensorBoard folder and
    MLflow run are named, so repeated runs of one config stay apart in W&B's
    tables and legends (the id alone when the run has no name of its own)."""
    return run.id if run.name == run.id else f"{run.name}-{run.id}"


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _name(text: str) -> str:
    """W&B artifact names and types allow ``[A-Za-z0-9._-]`` only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "artifact"


# --------------------------------------------------------------------------- #
# The backend
# --------------------------------------------------------------------------- #


class WandbBackend:
    """One instance per run; every hook runs on this backend's worker thread."""

    def __init__(self) -> None:
        self._wandb: Any = None  # the module, imported in tracker_start
        self._run: Any = None  # the wandb Run; None before start, when disabled and after finish
        self._online = False
        self._max_step = -1
        self._conflicts = 0
        self._ledger: Ledger | None = None  # what W&B's file does not hold yet
        self._skipper: Skipper | None = None  # what a crashed run's files hold past its checkpoint
        self._skip_rows = 0  # journal rows merged into a W&B row already held, still to pass
        self._rows_base = 0  # W&B rows of the run before this segment (online: the server's count)
        # Rows sent by a call that then raised: the dispatcher offers them again
        # (the same batch, or its halves), and they must not be sent twice.
        self._sent_before_error: set[tuple[int, float]] = set()
        self._skipped: set[str] = set()

    # -- discovery --------------------------------------------------------- #

    @foundry_track.hookimpl
    def tracker_options_model(self) -> type[BaseModel]:
        return WandbOptions

    @foundry_track.hookimpl
    def tracker_unavailable(self) -> str | None:
        if importlib.util.find_spec("wandb") is None:
            return f"the 'wandb' package is not installed: {INSTALL}"
        return None

    @foundry_track.hookimpl
    def tracker_doctor(self, options: WandbOptions, fallback: str | None, start_timeout: float, timeout: float,
                       check_disk: Callable[[str, Path], None]) -> list[DoctorCheck]:
        from foundry_track_wandb._doctor import doctor

        return doctor(options, fallback, start_timeout, timeout, check_disk)

    # -- start ------------------------------------------------------------- #

    @foundry_track.hookimpl
    def tracker_start(self, run: RunInfo, options: WandbOptions, resume_state: Mapping[str, str]) -> dict[str, str]:
        run_id = resume_state.get("run_id") or run.id
        mode, mode_source = resolve_mode(options)
        if mode == "disabled":
            # Not even an import: disabled means no W&B files, threads or processes.
            return {"run_id": run_id, "mode": "disabled"}
        base_url = resolve_base_url(options)
        if mode == "online" and not has_credentials(base_url):
            raise WandbCredentialsError(
                f"W&B is online (mode from {mode_source}) but no API key is configured for {base_url}: "
                f"set WANDB_API_KEY, run `wandb login`, or add a netrc entry for "
                f"{' or '.join(_hosts(base_url)) or base_url}. "
                "To log locally and upload later, set WANDB_MODE=offline."
            )

        self._wandb = foundry_track.import_sdk("wandb")
        # What the run already holds, read before wandb.init opens a new file for it.
        recovery = recover(resume_state, run_id)
        self._run = self._init(run, options, mode, run_id, resume_state)
        self._online = mode == "online"
        self._ledger = Ledger(Path(self._run.settings.sync_file))
        self._rows_base = int(self._run.starting_step or 0)
        if recovery is not None:
            self._recover(recovery)
        identity = {"run_id": str(self._run.id), "mode": mode, "dir": str(self._run.settings.sync_dir)}
        if mode == "online" and self._run.url:
            identity["url"] = str(self._run.url)
        return identity

    def _init(self, run: RunInfo, options: WandbOptions, mode: Mode, run_id: str,
              resume_state: Mapping[str, str]) -> Any:
        wandb = self._wandb
        settings: dict[str, Any] = {
            "init_timeout": _init_timeout(options),
            "finish_timeout": options.finish_timeout,
        }
        if options.base_url and not _env("WANDB_BASE_URL"):
            settings["base_url"] = options.base_url
        root = wandb_root(options, resume_state)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        wb_run = wandb.init(
            project=_first(_env("WANDB_PROJECT"), options.project, run.project),
            entity=_first(_env("WANDB_ENTITY"), options.entity, run.entity),
            name=_run_name(run),
            tags=_tags(run.tags),
            notes=run.notes,
            group=run.group,
            job_type=_first(_env("WANDB_JOB_TYPE"), options.job_type),
            config=dict(run.config),
            id=run_id,
            resume="allow",
            dir=str(root),
            mode=mode,
            reinit="create_new",
            settings=wandb.Settings(**settings),
        )
        _log.debug("wandb.init (%s) took %.2f s", mode, time.perf_counter() - started)
        wb_run.define_metric(STEP_METRIC)
        wb_run.define_metric("*", step_metric=STEP_METRIC)
        wb_run.define_metric(ROWS_KEY, hidden=True)
        return wb_run

    def _recover(self, recovery: Recovery) -> None:
        """After a crash: resend the events unsaved at the last checkpoint that the
        run's files lack; the rest of what they hold is recognised when offered again."""
        held = recovery.held
        if self._online and recovery.rows is not None:
            # The server, not the local file, is what an online run holds.
            count = self._rows_base - recovery.rows
            if count < 0:
                _log.warning("W&B run %s: the server holds %d rows fewer than W&B had written locally before the "
                             "crash; those rows stay only in the crashed run's .wandb file", self._run.id, -count)
            held = server_holds(held, max(count, 0))
        self._skipper = Skipper(held)
        resend = [e for e in recovery.unsaved if e.key is None or self._skipper.take(e.key, e.rows) is None]
        for entry in resend:
            if entry.kind == "rows":
                self._send_rows(entry.payload)
            elif entry.kind == "params":
                self.tracker_log_params(entry.payload)
            else:
                getattr(self, _HOOKS[entry.kind])(entry.payload)
        _log.info("W&B run %s: its files hold %d events past the last checkpoint; %d of the %d events W&B had "
                  "not written then are sent again", self._run.id, len(held), len(resend), len(recovery.unsaved))
        if not self._skipper:
            self._skipper = None

    # -- log --------------------------------------------------------------- #

    @foundry_track.hookimpl
    def tracker_log_metrics(self, rows: Sequence[MetricRow]) -> None:
        if self._run is None:
            return
        sent: list[tuple[int, float]] = []
        try:
            i, n = 0, len(rows)
            while i < n:
                if self._held_row(rows[i]):
                    i += 1
                    continue
                # Rows of one step become one W&B row; the step travels as a
                # metric (never `step=`), so W&B keeps it whatever its order.
                j = i + 1
                while j < n and rows[j].step == rows[i].step:
                    j += 1
                self._send_rows(rows[i:j])
                sent.extend((row.step, row.time) for row in rows[i:j])
                i = j
        except BaseException:
            self._sent_before_error.update(sent)
            raise

    def _held_row(self, row: MetricRow) -> bool:
        """Whether W&B holds ``row`` already: the crashed run's files do, or a call
        that raised sent it."""
        if self._skip_rows:
            self._skip_rows -= 1  # merged into the held W&B row just passed
            return True
        if (row.step, row.time) in self._sent_before_error:
            return True
        if self._skipper is None:
            return False
        merged = self._skipper.take(("history", (row.step, row.time, None)), None)
        if not self._skipper:
            self._skipper = None
        if merged is None:
            return False
        self._skip_rows = merged - 1
        return True

    def _send_rows(self, rows: Sequence[MetricRow]) -> None:
        first = rows[0]
        data: dict[str, Any] = {}
        for row in rows:
            data.update(row.values)
        self._check_order(first.step)
        data[STEP_METRIC] = first.step
        # The journal's time of the row, also for events replayed by `sync`: with
        # the step, the key a replay recognises the row by.
        data["_timestamp"] = first.time
        if len(rows) > 1:
            data[ROWS_KEY] = len(rows)
        self._run.log(data)
        self._add(Entry("rows", list(rows), ("history", (first.step, first.time, None)), len(rows)))

    def _add(self, entry: Entry) -> None:
        if self._ledger is not None:
            self._ledger.add(entry)

    def _already_held(self, key: Key) -> bool:
        """Whether the crashed run's files hold the event with ``key`` (taken off once)."""
        if self._skipper is None:
            return False
        found = self._skipper.take(key) is not None
        if not self._skipper:
            self._skipper = None
        return found

    def _check_order(self, step: int) -> None:
        if step < self._max_step:
            self._conflicts += 1
            if self._conflicts == 1:
                _log.warning(
                    "W&B run %s: step %d arrived after step %d; it is kept as its own row (W&B plots every "
                    "metric against %r, so nothing is dropped). Reported once per run.",
                    self._run.id, step, self._max_step, STEP_METRIC,
                )
        else:
            self._max_step = step

    @foundry_track.hookimpl
    def tracker_log_params(self, params: Mapping[str, ParamValue]) -> None:
        if self._run is None:
            return
        self._run.config.update(dict(params), allow_val_change=True)
        self._add(Entry("params", dict(params), None))  # config updates are idempotent: resent, not recognised

    def _log_media(self, event: ImageEvent | HistogramEvent | TableEvent | TextEvent, make: Any, kind: str) -> None:
        """Build a W&B media object and log it at the event's step; skip what W&B refuses."""
        key: Key = ("history", (event.step, event.time, event.key))
        if self._run is None or self._already_held(key):
            return
        try:
            value = make()
        except (ValueError, TypeError, OSError) as exc:
            if kind not in self._skipped:
                self._skipped.add(kind)
                _log.warning("W&B cannot show %s %r (%s); skipping it. Reported once per kind.", kind, event.key, exc)
            return
        self._run.log({event.key: value, STEP_METRIC: event.step, "_timestamp": event.time})
        self._add(Entry(kind, event, key))

    @foundry_track.hookimpl
    def tracker_log_image(self, image: ImageEvent) -> None:
        wandb = self._wandb
        self._log_media(image, lambda: wandb.Image(str(image.path), caption=image.caption), "image")

    @foundry_track.hookimpl
    def tracker_log_histogram(self, histogram: HistogramEvent) -> None:
        wandb = self._wandb
        counts, edges = _rebin(list(histogram.counts), list(histogram.edges), _MAX_HIST_BINS)
        self._log_media(histogram, lambda: wandb.Histogram(np_histogram=(counts, edges)), "histogram")

    @foundry_track.hookimpl
    def tracker_log_table(self, table: TableEvent) -> None:
        wandb = self._wandb
        self._log_media(table, lambda: wandb.Table(columns=list(table.columns), data=[list(row) for row in table.rows]),
                        "table")

    @foundry_track.hookimpl
    def tracker_log_text(self, text: TextEvent) -> None:
        # A one-row table: W&B renders a string cell as text (markdown too) with a
        # step slider across the key's versions, where wandb.Html would show raw HTML.
        wandb = self._wandb
        self._log_media(text, lambda: wandb.Table(columns=["step", "text"], data=[[text.step, text.text]]), "text")

    @foundry_track.hookimpl
    def tracker_log_artifact(self, artifact: ArtifactEvent) -> None:
        name = _name(artifact.name)
        key: Key = ("artifact", (name, artifact.step, artifact.digest))
        if self._run is None or self._already_held(key):
            return
        path = Path(artifact.path)
        if not path.exists():
            _log.warning("W&B artifact %r: %s does not exist any more; skipping it", artifact.name, path)
            return
        metadata = {**dict(artifact.metadata), "foundry_track_digest": artifact.digest, "step": artifact.step}
        art = self._wandb.Artifact(name, type=_name(artifact.type), description=artifact.description,
                                   metadata=metadata)
        # W&B stores files by content hash, so an unchanged artifact makes no new version.
        if path.is_dir():
            art.add_dir(str(path))
        else:
            art.add_file(str(path))
        self._run.log_artifact(art)
        self._add(Entry("artifact", artifact, key))

    @foundry_track.hookimpl
    def tracker_alert(self, alert: AlertEvent) -> None:
        # Offline runs record alerts in the .wandb file too; `wandb sync` sends them.
        level = _ALERT_LEVELS.get(alert.level, "INFO")
        key: Key = ("alert", (alert.title[:_MAX_TAG], alert.text, level))
        if self._run is None or self._already_held(key):
            return
        self._run.alert(title=alert.title[:_MAX_TAG], text=alert.text, level=getattr(self._wandb.AlertLevel, level))
        self._add(Entry("alert", alert, key))

    # -- flush and finish -------------------------------------------------- #

    @foundry_track.hookimpl
    def tracker_flush(self) -> dict[str, str] | None:
        # W&B's service writes its file in whole 32 KiB blocks, and the last one
        # is lost with a killed process: the events its complete blocks do not
        # hold go to a file of ours first (_ledger), then the position may move.
        ledger = self._ledger
        if self._run is None or ledger is None:
            return None
        ledger.sync()
        held = self._skipper.remaining() if self._skipper is not None else []
        checkpoint = {"wandb_file": str(ledger.file), "wandb_offset": str(ledger.offset),
                      "wandb_unsaved": ledger.save(held)}
        if self._online:
            checkpoint["wandb_rows"] = str(self._rows_base + ledger.history)
        return checkpoint

    @foundry_track.hookimpl
    def tracker_finish(self, status: Status, complete: bool) -> None:
        run, self._run = self._run, None  # a second call, or one without start, does nothing
        if run is None:
            return
        if self._conflicts:
            _log.info("W&B run %s: %d steps arrived after a higher step; all were kept", run.id, self._conflicts)
        code = EXIT_CODES.get(status, 1)
        # A run with a gap (events the backend gave up on, or finish's deadline
        # came first) must not read as finished successfully; sync finishes it again.
        run.finish(exit_code=code if complete or code else 1)


def _rebin(counts: list[float], edges: list[float], limit: int) -> tuple[list[float], list[float]]:
    """Merge neighbouring buckets until there are at most ``limit`` (W&B's maximum)."""
    if len(counts) <= limit:
        return counts, edges
    k = math.ceil(len(counts) / limit)
    merged = [sum(counts[i:i + k]) for i in range(0, len(counts), k)]
    return merged, [*edges[:-1:k], edges[-1]]
