"""The W&B backend's options and how the environment resolves them: pure
functions, no ``wandb`` import at module level (``foundry-track doctor`` uses them too, so it
sees exactly what a run will use)."""

from __future__ import annotations

import configparser
import netrc
import os
from pathlib import Path
from typing import Final, Literal, Mapping
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

import foundry_track

__all__ = ["Mode", "WandbCredentialsError", "WandbOptions", "has_credentials", "resolve_base_url", "resolve_mode",
           "wandb_root"]

_LEGACY_MODES: Final = {"dryrun": "offline", "run": "online"}
_FALLBACK_BASE_URL: Final = "https://api.wandb.ai"

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
        "`wandb/offline-run-*` under `dir` to upload later with `wandb sync`) or `disabled` (no W&B files at "
        "all). `WANDB_MODE`, when set, overrides it. Default: online.",
        examples=["offline"],
    )
    dir: Path | None = Field(
        None,
        description="Folder under which W&B writes its `wandb/` folder (`<dir>/wandb/offline-run-*`). "
        "`WANDB_DIR`, when set, overrides it. Default: W&B's own, the working directory (`./wandb`); a resumed "
        "or synced run keeps the folder its first start used, from whatever directory it runs.",
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


def wandb_root(options: WandbOptions, resume_state: Mapping[str, str]) -> Path:
    """The absolute folder W&B makes its ``wandb/`` folder in (``wandb.init(dir=...)``).

    ``WANDB_DIR``, then the ``dir`` option, then the folder the run's earlier
    start used (its identity's ``dir`` is ``<root>/wandb/<run folder>``; a
    resume or ``foundry-track sync`` from another working directory then adds
    to the same ``wandb/`` folder), else W&B's default: the working directory.
    Absolute, so the identity and checkpoints name files any directory finds.
    """
    chosen = _env("WANDB_DIR") or options.dir
    if chosen is not None:
        return Path(chosen).expanduser().absolute()
    previous = resume_state.get("dir")
    if previous:
        return Path(previous).parent.parent
    return Path.cwd()


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
        # Through import_sdk: this is the first W&B import in tracker_start, on
        # the backend's own thread; a bare `from wandb...` that failed (another
        # backend's import at the same moment) left half a package behind.
        urls = foundry_track.import_sdk("wandb.sdk.lib.urls")
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
        wandb_urls = foundry_track.import_sdk("wandb.sdk.lib.urls")
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
