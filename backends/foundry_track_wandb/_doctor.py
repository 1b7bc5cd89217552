"""What ``foundry-track doctor`` reports for W&B (the ``tracker_doctor`` hook):
the mode and server in effect, where ``wandb.init`` would find an API key
(never the key itself), how long a stuck ``wandb.init`` can delay the
fallback, whether the server answers, and the W&B settings that change TLS.

The mode, server and settings file are resolved by the backend's own
functions, so doctor sees exactly what a run will use. No ``wandb`` import.
"""

from __future__ import annotations

import math
import netrc
import os
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from foundry_track import checks
from foundry_track.checks import FIREWALL, HANGS, NO_API_KEY, NOT_LOGGED_IN, SSL_ISSUE
from foundry_track.events import DoctorCheck
from foundry_track_wandb import (
    _FALLBACK_BASE_URL,
    _LEGACY_MODES,
    _netrc_path,
    _settings_file_value,
    resolve_mode,
)
from foundry_track_wandb._options import wandb_root

if TYPE_CHECKING:
    from foundry_track_wandb import WandbOptions

__all__ = ["doctor"]

SCOPE = "wandb"


def _tls_settings() -> list[DoctorCheck]:
    """The W&B variables that change TLS: one that switches verification off, and
    the guide's WANDB_VERIFY_SSL, which the SDK never reads."""
    found = []
    if checks.env_flag("WANDB_INSECURE_DISABLE_SSL"):
        found.append(checks.tls_switched_off("general", ["WANDB_INSECURE_DISABLE_SSL"]))
    if checks.env("WANDB_VERIFY_SSL"):
        found.append(DoctorCheck("general", "tls", "warn", "WANDB_VERIFY_SSL is set, but the W&B SDK does not read "
                                 "it (the guide's SSL fix has no effect); its switch is WANDB_INSECURE_DISABLE_SSL",
                                 "unset WANDB_VERIFY_SSL; to trust a private CA, set REQUESTS_CA_BUNDLE and "
                                 "SSL_CERT_FILE to its bundle (better than disabling verification)",
                                 answers=(SSL_ISSUE,)))
    return found


def _netrc_key(path: Path, base_url: str) -> tuple[str | None, list[DoctorCheck]]:
    """Whether the netrc file at ``path`` holds a key for ``base_url``'s host."""
    home = checks.home_relative(path)
    host = urllib.parse.urlsplit(base_url).hostname or base_url
    netloc = urllib.parse.urlsplit(base_url).netloc
    try:
        entries = netrc.netrc(str(path))
    except netrc.NetrcParseError as exc:
        return None, [DoctorCheck(SCOPE, "credentials", "warn", f"{home} cannot be parsed (line {exc.lineno}); W&B "
                                  "ignores it", f"fix line {exc.lineno} of {home}, or run `wandb login --relogin`",
                                  (NOT_LOGGED_IN,))]
    except OSError as exc:
        return None, [DoctorCheck(SCOPE, "credentials", "warn", f"{home} cannot be read: {exc.strerror}",
                                  f"chmod 600 {home}", (NOT_LOGGED_IN,))]
    for machine in dict.fromkeys([netloc, host]):
        auth = entries.authenticators(machine)
        if auth is not None and auth[2]:
            notes = []
            if os.name == "posix" and path.stat().st_mode & 0o077:
                notes.append(DoctorCheck(SCOPE, "credentials", "warn",
                                         f"{home} is readable by other users and holds your API key",
                                         f"chmod 600 {home}", (NOT_LOGGED_IN,)))
            return f"found in {home} (machine {machine})", notes
    return None, []


def _credentials(base_url: str) -> tuple[str | None, list[DoctorCheck]]:
    """Where W&B would find an API key for ``base_url`` (``wandb.init``'s order), never the key."""
    notes: list[DoctorCheck] = []
    key = os.environ.get("WANDB_API_KEY")
    if key is not None and key.strip():
        if key != key.strip() or key.strip()[0] in "'\"" or key.strip()[-1] in "'\"":
            notes.append(DoctorCheck(SCOPE, "credentials", "warn", "WANDB_API_KEY has surrounding spaces or quotes "
                                     "(a copy-paste slip W&B rejects as an invalid key)",
                                     "export WANDB_API_KEY=<key> with nothing around the key", (NO_API_KEY,)))
        return "found in env (WANDB_API_KEY)", notes
    token_file = checks.env("WANDB_IDENTITY_TOKEN_FILE")
    if token_file:
        if Path(token_file).expanduser().is_file():
            return f"identity token file {token_file} (WANDB_IDENTITY_TOKEN_FILE)", notes
        notes.append(DoctorCheck(SCOPE, "credentials", "warn", f"WANDB_IDENTITY_TOKEN_FILE={token_file} does not "
                                 "exist", "point it at the token file, or unset it", (NO_API_KEY,)))
    path = _netrc_path()
    if path is not None and path.exists():
        where, more = _netrc_key(path, base_url)
        notes.extend(more)
        if where is not None:
            return where, notes
    if _settings_file_value("api_key"):
        return "found in W&B's settings file", notes
    return None, notes


def _login(mode: str, base_url: str) -> list[DoctorCheck]:
    where, findings = _credentials(base_url)
    host = urllib.parse.urlsplit(base_url).hostname or base_url
    if where is not None:
        findings.append(DoctorCheck(SCOPE, "credentials", "ok", f"API key {where}",
                                    answers=(NOT_LOGGED_IN, NO_API_KEY)))
    elif mode == "online":
        findings.append(DoctorCheck(
            SCOPE, "credentials", "error", f"no W&B API key for {host}: not in WANDB_API_KEY, "
            f"not in {checks.home_relative(_netrc_path() or Path('~/.netrc'))}, not in W&B's settings file",
            "run `wandb login` (stores the key in ~/.netrc), or export WANDB_API_KEY=<key from "
            "https://wandb.ai/authorize>; or WANDB_MODE=offline now and `foundry-track sync RUN --backend wandb` "
            "once logged in", (NOT_LOGGED_IN, NO_API_KEY)))
    else:
        findings.append(DoctorCheck(SCOPE, "credentials", "info", f"offline: no API key needed now (none found for "
                                    f"{host}); `wandb login` before uploading with `wandb sync`",
                                    answers=(NOT_LOGGED_IN, NO_API_KEY)))
    return findings


def _reachable(base_url: str, timeout: float, bound: float, fallback: str) -> DoctorCheck:
    host = urllib.parse.urlsplit(base_url).hostname or base_url
    p = checks.probe(base_url, timeout, cafile=checks.env("REQUESTS_CA_BUNDLE") or checks.env("CURL_CA_BUNDLE"),
                     insecure=checks.env_flag("WANDB_INSECURE_DISABLE_SSL"))
    via = f" via proxy {p.proxy}" if p.proxy else ""
    if p.answered:
        return DoctorCheck(SCOPE, "reachable", "ok", f"{p.url} answered{via} in {p.seconds * 1e3:.0f} ms "
                           f"(HTTP {p.status})", answers=(FIREWALL, HANGS, SSL_ISSUE))
    if p.kind == "ssl":
        return DoctorCheck(SCOPE, "reachable", "error", f"{p.url}{via}: {p.error}",
                           checks.NETWORK_FIX["ssl"] + " (not WANDB_INSECURE_DISABLE_SSL)", (SSL_ISSUE, FIREWALL))
    return DoctorCheck(
        SCOPE, "reachable", "warn", f"{p.url} is unreachable{checks.failure(p)}; wandb.init would wait up to "
        f"{bound:g} s, then {fallback}",
        f"on a node without internet: WANDB_MODE=offline, then `foundry-track sync RUN --backend wandb` "
        f"(or `wandb sync`) from a connected machine; behind a firewall allow {host}:443 and *.wandb.ai:443 "
        f"or set HTTPS_PROXY", (FIREWALL, HANGS))


def _checks(options: WandbOptions, fallback: str | None, start_timeout: float, timeout: float) -> list[DoctorCheck]:
    env_mode = checks.env("WANDB_MODE")
    named = _LEGACY_MODES.get(env_mode.lower(), env_mode.lower()) if env_mode is not None else None
    if named is not None and named not in ("online", "offline", "disabled"):
        return [DoctorCheck(SCOPE, "mode", "error", f"W&B mode {named!r} (from WANDB_MODE) is not online, offline "
                            "or disabled", "set WANDB_MODE to online, offline or disabled")]
    mode, source = resolve_mode(options)
    if mode == "disabled":
        return [DoctorCheck(SCOPE, "mode", "info", f"W&B is disabled (from {source}): no W&B files, nothing "
                            "uploaded", answers=(NOT_LOGGED_IN, NO_API_KEY, HANGS))]
    base_url = (checks.env("WANDB_BASE_URL") or options.base_url or _settings_file_value("base_url")
                or _FALLBACK_BASE_URL).rstrip("/")
    findings = [DoctorCheck(SCOPE, "mode", "info", f"mode {mode} (from {source}), server {checks.mask_url(base_url)}")]
    findings.extend(_login(mode, base_url))
    # wandb.init runs on the backend's own thread, so it cannot stop the training
    # loop; what is worth knowing is how long until the fallback takes over.
    init_timeout = checks.env("WANDB_INIT_TIMEOUT") or options.init_timeout
    try:
        init_s = float(init_timeout)
    except ValueError:
        findings.append(DoctorCheck(SCOPE, "init", "error", f"WANDB_INIT_TIMEOUT={init_timeout!r} is not a number",
                                    "set it to seconds, e.g. 30, or unset it", (HANGS,)))
        init_s = math.inf
    then = f"the fallback {fallback!r} takes over" if fallback else \
        "events wait in the journal for `foundry-track sync` (no fallback)"
    bound = min(init_s, float(start_timeout))
    findings.append(DoctorCheck(SCOPE, "init", "ok", f"wandb.init cannot block training: it runs on the backend's "
                                f"thread; after {bound:g} s {then}", answers=(HANGS,)))
    if mode == "online":
        findings.append(_reachable(base_url, timeout, bound, then))
    return findings


def doctor(options: WandbOptions, fallback: str | None, start_timeout: float, timeout: float,
           check_disk: Callable[[str, Path], None]) -> list[DoctorCheck]:
    """The W&B backend's ``tracker_doctor``: its own checks, then the W&B
    settings that change TLS for every connection (scope ``general``)."""
    check_disk("W&B dir", wandb_root(options, {}))
    return [*_checks(options, fallback, start_timeout, timeout), *_tls_settings()]
