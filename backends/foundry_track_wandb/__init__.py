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
"""

from __future__ import annotations

import configparser
import importlib.util
import logging
import math
import netrc
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Final, Literal, Mapping, Sequence
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

import foundry_track

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

__all__ = ["WandbBackend", "WandbOptions", "WandbCredentialsError", "STEP_METRIC", "EXIT_CODES"]

_log = logging.getLogger("foundry_track.wandb")
INSTALL: Final = "pip install 'foundry-track[wandb]'"
#: The metric every other metric is plotted against (W&B's x-axis).
STEP_METRIC: Final = "trainer/step"
#: ``run.finish(exit_code=...)`` per foundry-track status; 255 is how W&B shows a killed run.
EXIT_CODES: Final[Mapping[str, int]] = {"success": 0, "failed": 1, "killed": 255}
_LEGACY_MODES: Final = {"dryrun": "offline", "run": "online"}
_FALLBACK_BASE_URL: Final = "https://api.wandb.ai"
_MAX_HIST_BINS: Final = 512  # wandb.Histogram refuses more
_MAX_TAG: Final = 64  # W&B refuses longer tags (wandb.init fails) and alert titles
_ALERT_LEVELS: Final = {"info": "INFO", "warn": "WARN", "error": "ERROR"}

Mode = Literal["online", "offline", "disabled"]


class WandbCredentialsError(RuntimeError):
    """Online mode was asked for but no W&B credentials are configured."""


class WandbOptions(BaseModel):
    """Options under ``tracking.backends.wandb``.

    Precedence, highest first: the ``WANDB_*`` environment variable named in a
    field's description, then the YAML option, then the ``tracking:`` block
    (project, entity), then W&B's own default. ``WANDB_API_KEY``,
    ``WANDB_SILENT``, ``WANDB_DISABLE_CODE`` and ``WANDB_DISABLE_GIT`` are read
    by the W&B SDK itself and have no option here.
    """

    model_config = ConfigDict(extra="forbid")

    project: str | None = Field(
        None,
        description="W&B project. Default: `tracking.project`. `WANDB_PROJECT`, when set, overrides both "
        "(as the Model Foundry W&B guide says).",
        examples=["spanish-subject-drop"],
    )
    entity: str | None = Field(
        None,
        description="W&B team or user. Default: `tracking.entity`, else your W&B default entity. "
        "`WANDB_ENTITY`, when set, overrides both.",
        examples=["my-team"],
    )
    mode: Mode | None = Field(
        None,
        description="`online` (needs an API key: `WANDB_API_KEY` or `wandb login`), `offline` (write "
        "`wandb/offline-run-*` to upload later with `wandb sync`) or `disabled` (no W&B files at all). "
        "`WANDB_MODE`, when set, overrides it. Default: online.",
        examples=["offline"],
    )
    dir: Path | None = Field(
        None,
        description="Folder under which W&B writes its `wandb/` folder. `WANDB_DIR`, when set, overrides it. "
        "Default: the foundry-track run directory, so W&B's files live next to the journal.",
        examples=["/scratch/wandb"],
    )
    base_url: str | None = Field(
        None,
        description="URL of a self-hosted W&B server. `WANDB_BASE_URL`, when set, overrides it. "
        "Default: the host of `wandb login --host`, else W&B's cloud.",
        examples=["https://wandb.example.com"],
    )
    job_type: str | None = Field(
        None,
        description="W&B job type (groups runs in the UI, e.g. train / eval). `WANDB_JOB_TYPE` overrides it.",
        examples=["train"],
    )
    init_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds `wandb.init` may take (W&B's own default is 90) before the run gives up on W&B "
        "and switches to the fallback backend. Keep it below `tracking.start_timeout`. "
        "`WANDB_INIT_TIMEOUT` overrides it.",
        examples=[30.0],
    )
    finish_timeout: float = Field(
        30.0,
        ge=0,
        description="Seconds `finish()` waits for W&B to upload what is left (0 = wait until done). "
        "Nothing is lost on timeout: the run's `.wandb` file stays in `dir` for `wandb sync`.",
        examples=[30.0],
    )


# --------------------------------------------------------------------------- #
# Resolving the environment (pure functions: no wandb import, easy to test)
# --------------------------------------------------------------------------- #


def _env(name: str) -> str | None:
    """An environment variable, with empty meaning unset (as W&B treats it)."""
    value = os.environ.get(name, "").strip()
    return value or None


def resolve_mode(options: WandbOptions) -> tuple[Mode, str]:
    """The W&B mode and where it came from: ``WANDB_MODE``, the option, or the default."""
    env = _env("WANDB_MODE")
    if env is not None:
        mode = _LEGACY_MODES.get(env.lower(), env.lower())
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(
                f"WANDB_MODE={env!r} is not a W&B mode this backend supports; "
                "set it to online, offline or disabled (or unset it)"
            )
        return mode, "WANDB_MODE"  # type: ignore[return-value]
    if options.mode is not None:
        return options.mode, "tracking.backends.wandb.mode"
    return "online", "the default"


def _settings_file_value(key: str) -> str | None:
    """A value from W&B's system settings file (written by ``wandb login --host``)."""
    config_dir = _env("WANDB_CONFIG_DIR")
    path = Path(config_dir).expanduser() if config_dir else Path("~/.config/wandb").expanduser()
    parser = configparser.ConfigParser()
    try:
        parser.read(path / "settings")
    except configparser.Error:
        return None
    return parser.get("default", key, fallback=None) or None


def resolve_base_url(options: WandbOptions) -> str:
    """The server W&B will talk to: env, option, ``wandb login --host``, W&B's default."""
    found = _env("WANDB_BASE_URL") or options.base_url or _settings_file_value("base_url")
    if found:
        return found.rstrip("/")
    try:
        from wandb.sdk.lib import urls

        return str(urls.DEFAULT_BASE_URL)
    except (ImportError, AttributeError):  # older SDKs: the classic cloud host
        return _FALLBACK_BASE_URL


def _init_timeout(options: WandbOptions) -> float:
    env = _env("WANDB_INIT_TIMEOUT")
    if env is None:
        return options.init_timeout
    try:
        return float(env)
    except ValueError:
        raise ValueError(f"WANDB_INIT_TIMEOUT={env!r} is not a number of seconds; set it to e.g. 30 or unset it") from None


def _netrc_path() -> Path | None:
    if _env("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    for name in ("~/.netrc", "~/_netrc"):
        path = Path(name).expanduser()
        if path.exists():
            return path
    return None


def _hosts(base_url: str) -> list[str]:
    """Netrc machine names W&B accepts for ``base_url`` (a CoreWeave Forge URL also
    accepts the W&B API host behind it, e.g. ``api.wandb.ai``)."""
    urls = [base_url]
    try:
        from wandb.sdk.lib import urls as wandb_urls

        urls.append(wandb_urls.forge_upstream_url(base_url))
    except (ImportError, AttributeError):
        pass
    return list(dict.fromkeys(urlsplit(u).netloc for u in urls if urlsplit(u).netloc))


def has_credentials(base_url: str) -> bool:
    """Whether W&B would find credentials for ``base_url`` without prompting.

    The sources ``wandb.init`` reads, in its order: ``WANDB_API_KEY``,
    ``WANDB_IDENTITY_TOKEN_FILE``, the netrc file (``NETRC``, ``~/.netrc``,
    ``~/_netrc``) for the server's host, and ``api_key`` in W&B's settings file.
    """
    if _env("WANDB_API_KEY") or _env("WANDB_IDENTITY_TOKEN_FILE") or _settings_file_value("api_key"):
        return True
    path = _netrc_path()
    if path is None:
        return False
    try:
        entries = netrc.netrc(str(path))
    except (OSError, netrc.NetrcParseError):
        return False
    return any((auth := entries.authenticators(host)) is not None and auth[2] for host in _hosts(base_url))


def _tags(tags: Sequence[str]) -> list[str]:
    """Tags W&B accepts (1 to 64 characters): a longer tag would fail ``wandb.init``."""
    kept = [tag[:_MAX_TAG] for tag in tags if tag]
    if any(len(tag) > _MAX_TAG for tag in tags):
        _log.warning("W&B tags are at most %d characters; longer tags were cut", _MAX_TAG)
    return kept


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
        self._max_step = -1
        self._conflicts = 0
        # (rows, n): the first n steps of `rows` reached W&B before a hook raised,
        # so a retry of the same batch does not send them twice.
        self._partial: tuple[Sequence[MetricRow], int] | None = None
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

        import wandb

        self._wandb = wandb
        settings: dict[str, Any] = {
            "init_timeout": _init_timeout(options),
            "finish_timeout": options.finish_timeout,
        }
        if options.base_url and not _env("WANDB_BASE_URL"):
            settings["base_url"] = options.base_url
        root = Path(_first(_env("WANDB_DIR"), options.dir, run.dir)).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self._run = wandb.init(
            project=_first(_env("WANDB_PROJECT"), options.project, run.project),
            entity=_first(_env("WANDB_ENTITY"), options.entity, run.entity),
            name=run.name,
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
        self._run.define_metric(STEP_METRIC)
        self._run.define_metric("*", step_metric=STEP_METRIC)
        identity = {"run_id": str(self._run.id), "mode": mode, "dir": str(self._run.settings.sync_dir)}
        if mode == "online" and self._run.url:
            identity["url"] = str(self._run.url)
        return identity

    # -- log --------------------------------------------------------------- #

    @foundry_track.hookimpl
    def tracker_log_metrics(self, rows: Sequence[MetricRow]) -> None:
        if self._run is None:
            return
        done = self._partial[1] if self._partial is not None and self._partial[0] is rows else 0
        i, n, sent = 0, len(rows), 0
        while i < n:
            # Rows of one step become one W&B history row; the step travels as a
            # metric (never `step=`), so W&B keeps it whatever its order.
            step, wall = rows[i].step, rows[i].time
            data: dict[str, Any] = {}
            while i < n and rows[i].step == step:
                data.update(rows[i].values)
                i += 1
            sent += 1
            if sent <= done:
                continue  # delivered before this batch was offered again
            self._check_order(step)
            data[STEP_METRIC] = step
            data["_timestamp"] = wall  # when it was logged, also for events replayed by `sync`
            self._partial = (rows, sent - 1)
            self._run.log(data)
        self._partial = None

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

    def _log_media(self, key: str, step: int, make: Any, kind: str) -> None:
        """Build a W&B media object and log it at ``step``; skip what W&B refuses."""
        if self._run is None:
            return
        try:
            value = make()
        except (ValueError, TypeError, OSError) as exc:
            if kind not in self._skipped:
                self._skipped.add(kind)
                _log.warning("W&B cannot show %s %r (%s); skipping it. Reported once per kind.", kind, key, exc)
            return
        self._run.log({key: value, STEP_METRIC: step})

    @foundry_track.hookimpl
    def tracker_log_image(self, image: ImageEvent) -> None:
        wandb = self._wandb
        self._log_media(image.key, image.step, lambda: wandb.Image(str(image.path), caption=image.caption), "image")

    @foundry_track.hookimpl
    def tracker_log_histogram(self, histogram: HistogramEvent) -> None:
        wandb = self._wandb
        counts, edges = _rebin(list(histogram.counts), list(histogram.edges), _MAX_HIST_BINS)
        self._log_media(histogram.key, histogram.step, lambda: wandb.Histogram(np_histogram=(counts, edges)),
                        "histogram")

    @foundry_track.hookimpl
    def tracker_log_table(self, table: TableEvent) -> None:
        wandb = self._wandb
        self._log_media(
            table.key, table.step,
            lambda: wandb.Table(columns=list(table.columns), data=[list(row) for row in table.rows]), "table",
        )

    @foundry_track.hookimpl
    def tracker_log_text(self, text: TextEvent) -> None:
        # A one-row table: W&B renders a string cell as text (markdown too) with a
        # step slider across the key's versions, where wandb.Html would show raw HTML.
        wandb = self._wandb
        self._log_media(text.key, text.step,
                        lambda: wandb.Table(columns=["step", "text"], data=[[text.step, text.text]]), "text")

    @foundry_track.hookimpl
    def tracker_log_artifact(self, artifact: ArtifactEvent) -> None:
        if self._run is None:
            return
        path = Path(artifact.path)
        if not path.exists():
            _log.warning("W&B artifact %r: %s does not exist any more; skipping it", artifact.name, path)
            return
        metadata = {**dict(artifact.metadata), "foundry_track_digest": artifact.digest, "step": artifact.step}
        art = self._wandb.Artifact(_name(artifact.name), type=_name(artifact.type),
                                   description=artifact.description, metadata=metadata)
        # W&B stores files by content hash, so an unchanged artifact makes no new version.
        if path.is_dir():
            art.add_dir(str(path))
        else:
            art.add_file(str(path))
        self._run.log_artifact(art)

    @foundry_track.hookimpl
    def tracker_alert(self, alert: AlertEvent) -> None:
        # Offline runs record alerts in the .wandb file too; `wandb sync` sends them.
        if self._run is None:
            return
        level = getattr(self._wandb.AlertLevel, _ALERT_LEVELS.get(alert.level, "INFO"))
        self._run.alert(title=alert.title[:_MAX_TAG], text=alert.text, level=level)

    # -- finish ------------------------------------------------------------ #

    @foundry_track.hookimpl
    def tracker_finish(self, status: Status) -> None:
        run, self._run = self._run, None  # a second call, or one without start, does nothing
        if run is None:
            return
        if self._conflicts:
            _log.info("W&B run %s: %d steps arrived after a higher step; all were kept", run.id, self._conflicts)
        run.finish(exit_code=EXIT_CODES.get(status, 1))


def _rebin(counts: list[float], edges: list[float], limit: int) -> tuple[list[float], list[float]]:
    """Merge neighbouring buckets until there are at most ``limit`` (W&B's maximum)."""
    if len(counts) <= limit:
        return counts, edges
    k = math.ceil(len(counts) / limit)
    merged = [sum(counts[i:i + k]) for i in range(0, len(counts), k)]
    return merged, [*edges[:-1:k], edges[-1]]
