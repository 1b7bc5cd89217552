"""``foundry-track doctor``: check the tracking setup before a run starts.

For every backend in the config's ``tracking:`` block: is its plugin and SDK
installed (which versions), are its options valid, are credentials present,
is its server reachable; plus the proxy and TLS settings in effect, free disk
and writable folders, and what earlier runs recorded (rate-limit errors,
undelivered events). Each problem comes with its fix, and each check says which
entry of the Model Foundry W&B guide's troubleshooting list it answers.

Nothing here imports a tracker SDK (versions come from ``importlib.metadata``)
and no secret is ever printed: credentials are reported only as where they
were found ("found in env (WANDB_API_KEY)", "found in ~/.netrc").

The checks for the built-in backends are keyed by their entry-point names in
:data:`_BACKEND_CHECKS`; any other backend gets the generic checks (plugin
loads, options valid). A ``tracker_doctor`` hook would let each backend own its
checks; until then this module is the one place in the core that knows them.
"""

from __future__ import annotations

import base64
import configparser
import importlib.metadata
import math
import netrc
import os
import re
import shutil
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Final, Literal, Mapping, Sequence

from foundry_track.history import mask_url

__all__ = ["Finding", "Report", "GUIDE_ISSUES", "run_doctor", "probe", "Probe", "mask_url"]

Level = Literal["ok", "info", "warn", "error"]
LEVELS: Final[tuple[Level, ...]] = ("ok", "info", "warn", "error")

# The troubleshooting entries of the Model Foundry W&B guide, in its order.
NOT_LOGGED_IN: Final = "Not logged in"
NO_API_KEY: Final = "API key not found"
HANGS: Final = "hangs at init"
RATE_LIMIT: Final = "rate limit"
DISK: Final = "disk space"
FIREWALL: Final = "firewall"
SSL_ISSUE: Final = "SSL"
GUIDE_ISSUES: Final = (NOT_LOGGED_IN, NO_API_KEY, HANGS, RATE_LIMIT, DISK, FIREWALL, SSL_ISSUE)

WANDB_DEFAULT_URL: Final = "https://api.wandb.ai"
_SDK_DISTRIBUTIONS: Final = {
    "wandb": ("wandb",),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "tensorboard": ("tensorboard",),
}
_TRUE: Final = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's outcome. ``answers`` names the guide entries it settles."""

    scope: str  # "general" or a backend name
    check: str  # short id: sdk, credentials, reachable, disk, proxy, tls...
    level: Level
    message: str
    fix: str | None = None
    answers: tuple[str, ...] = ()


@dataclass(slots=True)
class Report:
    source: str
    findings: list[Finding] = field(default_factory=list)

    def add(self, *findings: Finding) -> None:
        self.findings.extend(findings)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.level in ("warn", "error")]

    def guide(self) -> dict[str, list[Finding]]:
        """For each guide entry, the findings that answer it, worst first."""
        out: dict[str, list[Finding]] = {issue: [] for issue in GUIDE_ISSUES}
        for f in self.findings:
            for issue in f.answers:
                out[issue].append(f)
        for issue in out:
            out[issue].sort(key=lambda f: -LEVELS.index(f.level))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.source,
            "ok": not self.problems,
            "problems": len(self.problems),
            "findings": [{**asdict(f), "answers": list(f.answers)} for f in self.findings],
            "guide": {issue: [{"scope": f.scope, "check": f.check, "level": f.level, "message": f.message}
                              for f in found] for issue, found in self.guide().items()},
        }


# --------------------------------------------------------------------------- #
# Small helpers: env, URLs without secrets, folders
# --------------------------------------------------------------------------- #


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _env_any_case(name: str) -> tuple[str, str] | None:
    for var in (name.upper(), name.lower()):
        value = _env(var)
        if value is not None:
            return var, value
    return None


def _home(path: Path) -> str:
    """A path with the home directory written as ``~`` (shorter, and what the guide shows)."""
    try:
        return "~/" + str(path.expanduser().resolve().relative_to(Path.home().resolve()))
    except (ValueError, RuntimeError):
        return str(path)


def _existing_parent(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _folder(scope: str, what: str, path: Path) -> Finding:
    """Can we create files in ``path`` (or create it)?"""
    target = path.expanduser().absolute()
    parent = _existing_parent(target)
    if not parent.is_dir():
        return Finding(scope, "folder", "error", f"{what} {target}: {parent} is a file, not a folder",
                       f"choose another path for the {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        return Finding(scope, "folder", "error", f"{what} {target} is not writable ({parent} belongs to "
                       f"uid {parent.stat().st_uid})", f"choose a folder you can write, or fix its permissions")
    state = "writable" if parent == target else f"will be created (in {parent}, writable)"
    return Finding(scope, "folder", "ok", f"{what} {target} {state}")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- #
# Reaching a server, bounded in time
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class Probe:
    url: str  # masked
    status: int | None  # the HTTP status when a server answered
    kind: str  # answered, refused, timeout, dns, ssl, error
    error: str | None
    seconds: float
    proxy: str | None  # the proxy the request went through (masked), if any

    @property
    def answered(self) -> bool:
        return self.status is not None


def _proxy_for(url: str) -> str | None:
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxy = urllib.request.getproxies().get(parts.scheme)
    return mask_url(proxy) if proxy else None


def _ssl_context(cafile: str | None, insecure: bool) -> ssl.SSLContext:
    if insecure:
        return ssl._create_unverified_context()  # noqa: SLF001 - mirrors what the SDK will do
    if cafile and Path(cafile).is_file():
        return ssl.create_default_context(cafile=cafile)
    if cafile and Path(cafile).is_dir():
        return ssl.create_default_context(capath=cafile)
    return ssl.create_default_context()


def probe(url: str, timeout: float, *, headers: Mapping[str, str] | None = None, cafile: str | None = None,
          insecure: bool = False) -> Probe:
    """GET ``url`` once; classify what happened. Never takes much longer than ``timeout``.

    Uses the proxy variables in effect (as the SDKs do). The request runs on a
    daemon thread with a deadline because name resolution is not bounded by the
    socket timeout, and a node without DNS must not make ``doctor`` hang: the
    very thing it diagnoses.
    """
    masked = mask_url(url)
    headers = dict(headers or {})
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None:
        # urllib does not take credentials from the URL; the SDKs send them as Basic auth.
        if "Authorization" not in headers:
            pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        host = parts.hostname or ""
        url = urllib.parse.urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))
    proxy = _proxy_for(url)
    result: list[Probe] = []
    started = time.perf_counter()

    def attempt() -> None:
        request = urllib.request.Request(url, headers={"User-Agent": "foundry-track-doctor", **headers})
        context = _ssl_context(cafile, insecure) if url.startswith("https://") else None
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                result.append(Probe(masked, response.status, "answered", None, time.perf_counter() - started, proxy))
        except urllib.error.HTTPError as exc:
            result.append(Probe(masked, exc.code, "answered", f"HTTP {exc.code} {exc.reason}",
                                time.perf_counter() - started, proxy))
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            result.append(Probe(masked, None, _kind(reason), _describe(reason), time.perf_counter() - started, proxy))
        except Exception as exc:  # noqa: BLE001 - a probe reports, it never raises
            result.append(Probe(masked, None, "error", f"{type(exc).__name__}: {exc}",
                                time.perf_counter() - started, proxy))

    thread = threading.Thread(target=attempt, name="foundry-track-doctor-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if result:
        return result[0]
    return Probe(masked, None, "timeout", f"no answer within {timeout:g} s (name resolution or connect hangs)",
                 time.perf_counter() - started, proxy)


def _kind(reason: object) -> str:
    if isinstance(reason, ssl.SSLError):
        return "ssl"
    if isinstance(reason, ConnectionRefusedError):
        return "refused"
    if isinstance(reason, socket.gaierror):
        return "dns"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timeout"
    return "error"


def _describe(reason: object) -> str:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {reason.verify_message or reason}"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(reason, socket.gaierror):
        return f"host name not resolved ({reason.strerror or reason})"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    return f"{type(reason).__name__}: {reason}"


def _through(p: Probe) -> str:
    """Where the failure happened: with a proxy in effect, connection errors are the proxy's."""
    if p.proxy and p.kind in ("refused", "dns", "timeout"):
        return f": the proxy {p.proxy} failed: {p.error} (check HTTPS_PROXY/HTTP_PROXY, or add the host to NO_PROXY)"
    return f"{' via proxy ' + p.proxy if p.proxy else ''}: {p.error}"


_NETWORK_FIX: Final = {
    "refused": "start the server, or correct the host/port",
    "dns": "check the host name; a node without DNS or internet cannot reach it (use a local store, or sync later)",
    "timeout": "a firewall may drop the traffic: allow the host and port, or set HTTPS_PROXY; or work offline and sync later",
    "ssl": "point REQUESTS_CA_BUNDLE (and SSL_CERT_FILE) at the CA bundle that signed the server's certificate",
    "error": "check the URL and the network",
}


# --------------------------------------------------------------------------- #
# General checks: network settings, disk, what earlier runs recorded
# --------------------------------------------------------------------------- #


def _network_settings() -> list[Finding]:
    findings: list[Finding] = []
    proxies = [(var, mask_url(value)) for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
               if (found := _env_any_case(name)) for var, value in [found]]
    no_proxy = _env_any_case("NO_PROXY")
    if proxies:
        text = ", ".join(f"{var}={value}" for var, value in proxies)
        text += f"; {no_proxy[0]}={no_proxy[1]}" if no_proxy else "; NO_PROXY not set"
        findings.append(Finding("general", "proxy", "info", f"proxy in effect: {text}", answers=(FIREWALL,)))
    else:
        findings.append(Finding("general", "proxy", "info",
                                "no proxy variables set: connections go direct (behind a firewall, set HTTPS_PROXY)",
                                answers=(FIREWALL,)))
    bundles = [(var, value) for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR",
                                        "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH")
               if (value := _env(var))]
    for var, value in bundles:
        if not Path(value).expanduser().exists():
            findings.append(Finding("general", "tls", "error", f"{var}={value} does not exist: every TLS "
                                    f"connection that uses it fails with a certificate error",
                                    f"point {var} at an existing CA bundle, or unset it", answers=(SSL_ISSUE,)))
    if bundles:
        good = [f"{var}={value}" for var, value in bundles if Path(value).expanduser().exists()]
        if good:
            findings.append(Finding("general", "tls", "info", "CA settings in effect: " + ", ".join(good),
                                    answers=(SSL_ISSUE,)))
    else:
        findings.append(Finding("general", "tls", "ok", "no CA overrides: the system CA store is used",
                                answers=(SSL_ISSUE,)))
    insecure = [var for var in ("WANDB_INSECURE_DISABLE_SSL", "MLFLOW_TRACKING_INSECURE_TLS")
                if (_env(var) or "").lower() in _TRUE]
    if (_env("PYTHONHTTPSVERIFY") or "1") == "0":
        insecure.append("PYTHONHTTPSVERIFY=0")
    if insecure:
        findings.append(Finding("general", "tls", "warn", f"TLS verification is switched off by {', '.join(insecure)}: "
                                "anyone on the path can read the API key and the data",
                                "unset it and point REQUESTS_CA_BUNDLE / SSL_CERT_FILE at your organisation's CA "
                                "bundle instead", answers=(SSL_ISSUE,)))
    if _env("WANDB_VERIFY_SSL"):
        findings.append(Finding("general", "tls", "warn", "WANDB_VERIFY_SSL is set, but the W&B SDK does not read "
                                "it (the guide's SSL fix has no effect); its switch is WANDB_INSECURE_DISABLE_SSL",
                                "unset WANDB_VERIFY_SSL; to trust a private CA, set REQUESTS_CA_BUNDLE and "
                                "SSL_CERT_FILE to its bundle (better than disabling verification)",
                                answers=(SSL_ISSUE,)))
    return findings


def _disk(paths: Sequence[tuple[str, Path]], min_free: float) -> list[Finding]:
    findings: list[Finding] = []
    seen: set[int] = set()
    for what, path in paths:
        target = _existing_parent(path)
        try:
            usage = shutil.disk_usage(target)
            device = target.stat().st_dev
        except OSError as exc:
            findings.append(Finding("general", "disk", "warn", f"cannot read free space of {target}: {exc}",
                                    answers=(DISK,)))
            continue
        if device in seen:
            continue
        seen.add(device)
        free_gb = usage.free / 1e9
        text = f"{free_gb:,.1f} GB free for the {what} ({path}; {usage.free / usage.total:.0%} of the disk)"
        if usage.free < min_free * 1e9:
            findings.append(Finding(
                "general", "disk", "warn" if usage.free > 0.1e9 else "error", text + f", under {min_free:g} GB",
                "free space, or remove runs every backend has: `foundry-track clean --synced-only "
                "--older-than 7d` (W&B offline runs already uploaded: `wandb sync --clean`)", answers=(DISK,)))
        else:
            findings.append(Finding("general", "disk", "ok", text, answers=(DISK,)))
    return findings


_RATE_LIMIT: Final = re.compile(r"\b429\b|rate.?limit|too many requests", re.IGNORECASE)
_RECENT_RUNS: Final = 200


def _earlier_runs(root: Path, every_n_steps: int) -> list[Finding]:
    """Rate-limit errors and undelivered events that runs under ``root`` recorded."""
    from foundry_track.history import RUN_FILE, RunDirError, find_runs, load_run

    if not root.is_dir():
        return [Finding("general", "rate-limit", "ok", f"no runs under {root} yet: no rate-limit errors recorded; "
                        f"metrics are sent in batches (every_n_steps={every_n_steps})", answers=(RATE_LIMIT,))]
    # The newest runs only: enough to see a pattern, and cheap on a folder of thousands.
    newest = sorted(find_runs(root), key=lambda p: (p / RUN_FILE).stat().st_mtime)[-_RECENT_RUNS:]
    runs = []
    for path in newest:
        try:
            runs.append(load_run(path))
        except RunDirError:
            continue
    limited: list[str] = []
    pending: list[str] = []
    for run in runs:
        for name, b in run.backends.items():
            if b.last_error and _RATE_LIMIT.search(b.last_error):
                limited.append(f"{run.name} ({name})")
        if (run.pending or any(b.awaiting_upload for b in run.backends.values())) and not run.live:
            pending.append(run.name)
    findings: list[Finding] = []
    if limited:
        findings.append(Finding(
            "general", "rate-limit", "warn", f"{len(limited)} earlier run(s) hit a rate limit: {', '.join(limited[:5])}",
            f"log less often: tracking.every_n_steps: {max(10, every_n_steps * 10)} (now {every_n_steps}); "
            "nothing was lost: retried events stay in the journal (`foundry-track sync RUN`)", answers=(RATE_LIMIT,)))
    else:
        findings.append(Finding("general", "rate-limit", "ok", f"no rate-limit errors recorded by the {len(runs)} newest run(s) "
                                f"under {root}; metrics are sent in batches (every_n_steps={every_n_steps})",
                                answers=(RATE_LIMIT,)))
    if pending:
        findings.append(Finding("general", "undelivered", "info",
                                f"{len(pending)} run(s) under {root} have undelivered events or offline copies not "
                                f"uploaded: {', '.join(pending[:5])}",
                                f"`foundry-track runs {root}` shows the sync command for each"))
    return findings


# --------------------------------------------------------------------------- #
# W&B
# --------------------------------------------------------------------------- #


def _wandb_settings_value(key: str) -> str | None:
    """A value from W&B's settings file (written by ``wandb login --host``)."""
    config_dir = _env("WANDB_CONFIG_DIR")
    path = Path(config_dir).expanduser() if config_dir else Path("~/.config/wandb").expanduser()
    parser = configparser.ConfigParser()
    try:
        parser.read(path / "settings")
    except configparser.Error:
        return None
    return parser.get("default", key, fallback=None) or None


def _netrc_file() -> Path | None:
    if _env("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    for name in ("~/.netrc", "~/_netrc"):
        path = Path(name).expanduser()
        if path.exists():
            return path
    return None


def _wandb_credentials(base_url: str) -> tuple[str | None, list[Finding]]:
    """Where W&B would find an API key for ``base_url`` (``wandb.init``'s order), never the key."""
    notes: list[Finding] = []
    key = os.environ.get("WANDB_API_KEY")
    if key is not None and key.strip():
        if key != key.strip() or key.strip()[0] in "'\"" or key.strip()[-1] in "'\"":
            notes.append(Finding("wandb", "credentials", "warn", "WANDB_API_KEY has surrounding spaces or quotes "
                                 "(a copy-paste slip W&B rejects as an invalid key)",
                                 "export WANDB_API_KEY=<key> with nothing around the key", (NO_API_KEY,)))
        return "found in env (WANDB_API_KEY)", notes
    token_file = _env("WANDB_IDENTITY_TOKEN_FILE")
    if token_file:
        if Path(token_file).expanduser().is_file():
            return f"identity token file {token_file} (WANDB_IDENTITY_TOKEN_FILE)", notes
        notes.append(Finding("wandb", "credentials", "warn", f"WANDB_IDENTITY_TOKEN_FILE={token_file} does not exist",
                             "point it at the token file, or unset it", (NO_API_KEY,)))
    path = _netrc_file()
    if path is not None and path.exists():
        host = urllib.parse.urlsplit(base_url).hostname or base_url
        netloc = urllib.parse.urlsplit(base_url).netloc
        try:
            entries = netrc.netrc(str(path))
        except netrc.NetrcParseError as exc:
            notes.append(Finding("wandb", "credentials", "warn",
                                 f"{_home(path)} cannot be parsed (line {exc.lineno}); W&B ignores it",
                                 f"fix line {exc.lineno} of {_home(path)}, or run `wandb login --relogin`",
                                 (NOT_LOGGED_IN,)))
        except OSError as exc:
            notes.append(Finding("wandb", "credentials", "warn", f"{_home(path)} cannot be read: {exc.strerror}",
                                 f"chmod 600 {_home(path)}", (NOT_LOGGED_IN,)))
        else:
            for machine in dict.fromkeys([netloc, host]):
                auth = entries.authenticators(machine)
                if auth is not None and auth[2]:
                    if os.name == "posix" and path.stat().st_mode & 0o077:
                        notes.append(Finding("wandb", "credentials", "warn",
                                             f"{_home(path)} is readable by other users and holds your API key",
                                             f"chmod 600 {_home(path)}", (NOT_LOGGED_IN,)))
                    return f"found in {_home(path)} (machine {machine})", notes
    if _wandb_settings_value("api_key"):
        return "found in W&B's settings file", notes
    return None, notes


def _wandb_mode(options: Mapping[str, Any]) -> tuple[str, str]:
    env = _env("WANDB_MODE")
    if env is not None:
        mode = {"dryrun": "offline", "run": "online"}.get(env.lower(), env.lower())
        return mode, "WANDB_MODE"
    if options.get("mode"):
        return str(options["mode"]), "tracking.backends.wandb.mode"
    return "online", "the default"


def _check_wandb(options: Mapping[str, Any], cfg: Any, timeout: float) -> list[Finding]:
    mode, source = _wandb_mode(options)
    if mode not in ("online", "offline", "disabled"):
        return [Finding("wandb", "mode", "error", f"W&B mode {mode!r} (from {source}) is not online, offline "
                        "or disabled", f"set {source} to online, offline or disabled")]
    if mode == "disabled":
        return [Finding("wandb", "mode", "info", f"W&B is disabled (from {source}): no W&B files, nothing "
                        "uploaded", answers=(NOT_LOGGED_IN, NO_API_KEY, HANGS))]
    base_url = (_env("WANDB_BASE_URL") or options.get("base_url") or _wandb_settings_value("base_url")
                or WANDB_DEFAULT_URL).rstrip("/")
    findings = [Finding("wandb", "mode", "info", f"mode {mode} (from {source}), server {mask_url(base_url)}")]
    where, notes = _wandb_credentials(base_url)
    findings.extend(notes)
    host = urllib.parse.urlsplit(base_url).hostname or base_url
    if where is not None:
        findings.append(Finding("wandb", "credentials", "ok", f"API key {where}", answers=(NOT_LOGGED_IN, NO_API_KEY)))
    elif mode == "online":
        findings.append(Finding(
            "wandb", "credentials", "error", f"no W&B API key for {host}: not in WANDB_API_KEY, "
            f"not in {_home(_netrc_file() or Path('~/.netrc'))}, not in W&B's settings file",
            f"run `wandb login` (stores the key in ~/.netrc), or export WANDB_API_KEY=<key from "
            f"https://wandb.ai/authorize>; or WANDB_MODE=offline now and `foundry-track sync RUN --backend wandb` "
            f"once logged in", (NOT_LOGGED_IN, NO_API_KEY)))
    else:
        findings.append(Finding("wandb", "credentials", "info", f"offline: no API key needed now (none found for "
                                f"{host}); `wandb login` before uploading with `wandb sync`",
                                answers=(NOT_LOGGED_IN, NO_API_KEY)))
    # wandb.init runs on the backend's own thread, so it cannot stop the training
    # loop; what is worth knowing is how long until the fallback takes over.
    init_timeout = _env("WANDB_INIT_TIMEOUT") or options.get("init_timeout") or 30.0
    try:
        init_s = float(init_timeout)
    except ValueError:
        findings.append(Finding("wandb", "init", "error", f"WANDB_INIT_TIMEOUT={init_timeout!r} is not a number",
                                "set it to seconds, e.g. 30, or unset it", (HANGS,)))
        init_s = math.inf
    fallback = f"the fallback {cfg.fallback!r} takes over" if cfg.fallback and cfg.fallback != "wandb" else \
        "events wait in the journal for `foundry-track sync` (no fallback)"
    bound = min(init_s, float(cfg.start_timeout))
    findings.append(Finding("wandb", "init", "ok", f"wandb.init cannot block training: it runs on the backend's "
                            f"thread; after {bound:g} s {fallback}", answers=(HANGS,)))
    if mode == "online":
        p = probe(base_url, timeout, cafile=_env("REQUESTS_CA_BUNDLE") or _env("CURL_CA_BUNDLE"),
                  insecure=(_env("WANDB_INSECURE_DISABLE_SSL") or "").lower() in _TRUE)
        via = f" via proxy {p.proxy}" if p.proxy else ""
        if p.answered:
            findings.append(Finding("wandb", "reachable", "ok", f"{p.url} answered{via} in {p.seconds * 1e3:.0f} ms "
                                    f"(HTTP {p.status})", answers=(FIREWALL, HANGS, SSL_ISSUE)))
        elif p.kind == "ssl":
            findings.append(Finding("wandb", "reachable", "error", f"{p.url}{via}: {p.error}",
                                    _NETWORK_FIX["ssl"] + " (not WANDB_INSECURE_DISABLE_SSL)", (SSL_ISSUE, FIREWALL)))
        else:
            findings.append(Finding(
                "wandb", "reachable", "warn", f"{p.url} is unreachable{_through(p)}; wandb.init would wait up to "
                f"{bound:g} s, then {fallback}",
                f"on a node without internet: WANDB_MODE=offline, then `foundry-track sync RUN --backend wandb` "
                f"(or `wandb sync`) from a connected machine; behind a firewall allow {host}:443 and *.wandb.ai:443 "
                f"or set HTTPS_PROXY", (FIREWALL, HANGS)))
    return findings


# --------------------------------------------------------------------------- #
# MLflow
# --------------------------------------------------------------------------- #


def _mlflow_auth() -> tuple[dict[str, str], str | None]:
    token = _env("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}, "token found in env (MLFLOW_TRACKING_TOKEN)"
    user, password = _env("MLFLOW_TRACKING_USERNAME"), _env("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}, "user and password found in env (MLFLOW_TRACKING_USERNAME/PASSWORD)"
    return {}, None


def _check_mlflow(options: Mapping[str, Any], cfg: Any, timeout: float) -> list[Finding]:
    if options.get("tracking_uri"):
        uri, source = str(options["tracking_uri"]), "tracking.backends.mlflow.tracking_uri"
    elif _env("MLFLOW_TRACKING_URI"):
        uri, source = str(_env("MLFLOW_TRACKING_URI")), "MLFLOW_TRACKING_URI"
    else:
        uri, source = "sqlite:///mlflow.db", "the default"
    shown = mask_url(uri)
    findings = [Finding("mlflow", "uri", "info", f"tracking URI {shown} (from {source})")]
    if uri.startswith(("http://", "https://")):
        headers, auth = _mlflow_auth()
        if auth:
            findings.append(Finding("mlflow", "credentials", "info", auth))
        insecure = (_env("MLFLOW_TRACKING_INSECURE_TLS") or "").lower() in _TRUE
        cafile = _env("MLFLOW_TRACKING_SERVER_CERT_PATH") or _env("REQUESTS_CA_BUNDLE") or _env("CURL_CA_BUNDLE")
        base = uri.rstrip("/")
        health = probe(f"{base}/health", timeout, headers=headers, cafile=cafile, insecure=insecure)
        answers = (FIREWALL, SSL_ISSUE)
        via = f" via proxy {health.proxy}" if health.proxy else ""
        if not health.answered:
            fix = _NETWORK_FIX.get(health.kind, _NETWORK_FIX["error"])
            if health.kind == "refused":
                fix = (f"start it (`mlflow server --host {urllib.parse.urlsplit(uri).hostname} --port "
                       f"{urllib.parse.urlsplit(uri).port or 5000}`) or correct {source}")
            findings.append(Finding(
                "mlflow", "reachable", "error", f"{shown} is unreachable{_through(health)}",
                f"{fix}; meanwhile runs keep every event in their journal (and the fallback backend logs locally): "
                f"`foundry-track sync RUN --backend mlflow` delivers them later",
                (SSL_ISSUE,) if health.kind == "ssl" else (FIREWALL, HANGS)))
            return findings
        # /health answers without auth; the REST API tells whether the credentials work.
        api = probe(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", timeout, headers=headers,
                    cafile=cafile, insecure=insecure)
        if api.status in (401, 403):
            findings.append(Finding(
                "mlflow", "credentials", "error", f"{shown} refuses the API (HTTP {api.status}): "
                + ("the credentials in env are not accepted" if auth else "it needs credentials"),
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"))
        elif api.status == 200:
            findings.append(Finding("mlflow", "reachable", "ok", f"{shown} answered{via} in "
                                    f"{health.seconds * 1e3:.0f} ms; its REST API works", answers=answers))
        else:
            findings.append(Finding(
                "mlflow", "reachable", "warn", f"{shown} answered{via} (health: HTTP {health.status}) but its REST "
                f"API did not: {api.error or api.status}",
                "check that the URI is an MLflow tracking server (and its path prefix)", answers))
        return findings
    if uri.startswith("sqlite:"):
        db = Path(uri.split(":///", 1)[1]) if ":///" in uri else None
        if db is None or str(db) in ("", ":memory:"):
            findings.append(Finding("mlflow", "store", "warn", f"{shown} keeps nothing after the process exits",
                                    "use sqlite:///path/to/mlflow.db"))
            return findings
        folder = _folder("mlflow", "MLflow database folder", db.parent if str(db.parent) else Path("."))
        findings.append(folder)
        if db.exists() and not os.access(db, os.R_OK | os.W_OK):
            findings.append(Finding("mlflow", "store", "error", f"{db} exists but is not readable and writable",
                                    f"chmod u+rw {db}"))
        return findings
    if uri.startswith("file:") or "://" not in uri:
        folder = Path(urllib.parse.urlsplit(uri).path if uri.startswith("file:") else uri)
        findings.append(_folder("mlflow", "MLflow file store", folder))
        return findings
    findings.append(Finding("mlflow", "reachable", "info", f"{urllib.parse.urlsplit(uri).scheme}: stores are not "
                            "checked by doctor"))
    return findings


# --------------------------------------------------------------------------- #
# TensorBoard
# --------------------------------------------------------------------------- #


def _check_tensorboard(options: Mapping[str, Any], cfg: Any, timeout: float) -> list[Finding]:
    if options.get("log_dir"):
        return [_folder("tensorboard", "TensorBoard log_dir", Path(str(options["log_dir"])))]
    return [Finding("tensorboard", "folder", "info", f"event files go to <run dir>/tensorboard under {cfg.dir}")]


_BACKEND_CHECKS: Final[dict[str, Callable[[Mapping[str, Any], Any, float], list[Finding]]]] = {
    "wandb": _check_wandb,
    "mlflow": _check_mlflow,
    "tensorboard": _check_tensorboard,
}


# --------------------------------------------------------------------------- #
# The doctor
# --------------------------------------------------------------------------- #


def _backend(name: str, raw: Mapping[str, Any], found: Mapping[str, Any]) -> tuple[list[Finding], bool]:
    """Plugin found and loadable, SDK version, options valid. Returns (findings, usable)."""
    from pydantic import ValidationError

    from foundry_track.config import format_validation_error
    from foundry_track.plugins import options_model

    info = found.get(name)
    if info is None:
        known = ", ".join(found) or "none"
        return [Finding(name, "plugin", "error", f"no backend {name!r} is installed (discovered: {known})",
                        f"pip install 'foundry-track[{name}]' (a third-party backend: pip install its package)")], False
    plugin = f"plugin {info.distribution or '?'} {info.version or '?'}"
    findings: list[Finding] = []
    sdks = _SDK_DISTRIBUTIONS.get(name, ())
    versions = [(d, v) for d in sdks if (v := _version(d))]
    if not info.available:
        problem = (info.problem or "unavailable").strip().splitlines()
        return [Finding(name, "sdk", "error", f"{plugin}: {problem[0]}" + (" (see `foundry-track backends`)"
                                                                        if len(problem) > 1 else ""),
                        f"pip install 'foundry-track[{name}]'")], False
    if sdks:
        sdk = f"{versions[0][0]} {versions[0][1]}" if versions else "SDK found (version unknown)"
        findings.append(Finding(name, "sdk", "ok", f"{sdk} installed; {plugin}"))
    else:
        findings.append(Finding(name, "sdk", "ok", f"{plugin} loads"))
    try:
        options_model(info).model_validate(dict(raw or {}))
    except ValidationError as exc:
        model = options_model(info)
        findings.append(Finding(name, "options", "error", format_validation_error(exc, model, f"tracking.backends.{name}"),
                                "fix the option named above"))
        return findings, False
    except Exception as exc:  # noqa: BLE001 - a broken plugin is a finding, not a crash
        findings.append(Finding(name, "options", "error", f"the plugin failed to describe its options: {exc!r}",
                                "report it to the plugin's authors"))
        return findings, False
    return findings, True


def _run_log_implementation() -> Finding:
    """Which run.log this install has: the C common call, or Python only."""
    from foundry_track.run import _FastLog

    if _FastLog is not None:
        return Finding("general", "run.log", "ok", "run.log: its common call runs in C (foundry_track._speedups)")
    try:
        import foundry_track._speedups  # noqa: F401
    except ImportError:
        return Finding("general", "run.log", "info",
                       "run.log: Python only; the optional C version was not built (no C compiler or Python headers "
                       "at install), so each call costs a few us more right after a training step",
                       "install a C compiler and the Python headers (e.g. build-essential python3-dev), then reinstall: "
                       "pip install --force-reinstall --no-deps foundry-track (pip install -e . in a checkout)")
    return Finding("general", "run.log", "info", "run.log: Python only, because FOUNDRY_TRACK_NO_SPEEDUPS is set")


def run_doctor(config: str | os.PathLike[str] | None, *, timeout: float = 3.0, min_free_gb: float = 1.0) -> Report:
    """Check the tracking setup of ``config`` (a YAML path; default: the built-in
    defaults plus environment overrides). Raises ConfigError for a bad config."""
    from foundry_track.config import load_config
    from foundry_track.plugins import discover

    cfg = load_config(config)
    report = Report(str(config) if config is not None else "(no config: defaults and FOUNDRY_TRACK_* env)")
    names = list(cfg.backends)
    report.add(Finding("general", "config", "info", f"backends: {', '.join(names) or 'none'}; fallback: "
                       f"{cfg.fallback or 'none'}; run folder: {cfg.dir}; mode: {cfg.mode}"))
    if cfg.mode == "disabled":
        report.add(Finding("general", "config", "info", "tracking is disabled (FOUNDRY_TRACK_MODE or mode: disabled): "
                           "runs log nothing"))
    fallback_text = (f"the fallback {cfg.fallback!r} takes over" if cfg.fallback else
                     "its events wait in the journal for `foundry-track sync` (no fallback)")
    report.add(Finding("general", "start", "ok", f"a backend that cannot start does not block training: each "
                       f"starts on its own thread; after start_timeout {cfg.start_timeout:g} s {fallback_text}",
                       answers=(HANGS,)))
    report.add(_run_log_implementation())
    found = discover()
    for name in names:
        raw = cfg.backends.get(name) or {}
        findings, usable = _backend(name, raw, found)
        report.add(*findings)
        check = _BACKEND_CHECKS.get(name)
        if usable and check is not None:
            report.add(*check(raw, cfg, timeout))
    if cfg.fallback and cfg.fallback not in names:
        info = found.get(cfg.fallback)
        if info is None or not info.available:
            why = "not installed" if info is None else (info.problem or "").splitlines()[0]
            report.add(Finding("general", "fallback", "warn", f"fallback backend {cfg.fallback!r} cannot run: {why}",
                               f"pip install 'foundry-track[{cfg.fallback}]', or set tracking.fallback: null"))
        else:
            report.add(Finding("general", "fallback", "ok", f"fallback {cfg.fallback!r} is available"))
    report.add(*_network_settings())
    report.add(_folder("general", "run folder", Path(cfg.dir)))
    disk_paths: list[tuple[str, Path]] = [("run folder", Path(cfg.dir))]
    if "wandb" in names and (_env("WANDB_DIR") or (cfg.backends.get("wandb") or {}).get("dir")):
        disk_paths.append(("W&B dir", Path(str(_env("WANDB_DIR") or cfg.backends["wandb"]["dir"]))))
    tb_dir = (cfg.backends.get("tensorboard") or {}).get("log_dir") if "tensorboard" in names else None
    if tb_dir:
        disk_paths.append(("TensorBoard log_dir", Path(str(tb_dir))))
    report.add(*_disk(disk_paths, min_free_gb))
    report.add(*_earlier_runs(Path(cfg.dir), cfg.every_n_steps))
    return report
