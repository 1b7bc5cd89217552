"""Helpers for :func:`~foundry_track.hookspecs.tracker_doctor`: what a backend's
checks have in common, so each backend says only what is its own.

``foundry-track doctor`` runs the general checks (proxy and TLS settings,
folders, free disk, what earlier runs recorded) and then asks every configured
backend for its own through ``tracker_doctor``. A backend builds its
:class:`~foundry_track.events.DoctorCheck` results with these helpers::

    from foundry_track import checks
    from foundry_track.events import DoctorCheck

    p = checks.probe("https://tracker.example.com/health", timeout)
    if not p.answered:
        return [DoctorCheck("mytracker", "reachable", "error", f"{p.url} is unreachable{checks.failure(p)}",
                            checks.NETWORK_FIX[p.kind], (checks.FIREWALL,))]

Nothing here imports a tracker SDK, and importing this module is cheap: the
network modules are imported by :func:`probe` when it runs. No helper ever
returns a secret: URLs are shown through :func:`mask_url`.
"""

from __future__ import annotations

import base64
import os
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Mapping, Sequence

from foundry_track.events import DoctorCheck

if TYPE_CHECKING:
    import ssl

__all__ = [
    "DISK",
    "FIREWALL",
    "GUIDE_ISSUES",
    "HANGS",
    "NETWORK_FIX",
    "NOT_LOGGED_IN",
    "NO_API_KEY",
    "RATE_LIMIT",
    "SSL_ISSUE",
    "Probe",
    "ca_bundle_checks",
    "env",
    "env_flag",
    "existing_parent",
    "failure",
    "folder_check",
    "home_relative",
    "mask_url",
    "probe",
    "tls_switched_off",
]

# The troubleshooting entries of the Model Foundry W&B guide, in its order. A
# check names the ones it settles in ``DoctorCheck.answers``; doctor prints,
# for each entry, the worst check that answers it.
NOT_LOGGED_IN: Final = "Not logged in"
NO_API_KEY: Final = "API key not found"
HANGS: Final = "hangs at init"
RATE_LIMIT: Final = "rate limit"
DISK: Final = "disk space"
FIREWALL: Final = "firewall"
SSL_ISSUE: Final = "SSL"
GUIDE_ISSUES: Final = (NOT_LOGGED_IN, NO_API_KEY, HANGS, RATE_LIMIT, DISK, FIREWALL, SSL_ISSUE)

_TRUE: Final = frozenset({"1", "true", "yes", "on"})


# --------------------------------------------------------------------------- #
# Environment, paths, URLs without secrets
# --------------------------------------------------------------------------- #


def env(name: str) -> str | None:
    """An environment variable, stripped; empty means unset (as the SDKs treat it)."""
    value = os.environ.get(name, "").strip()
    return value or None


def env_flag(name: str) -> bool:
    """Whether a switch variable is on (``1``, ``true``, ``yes``, ``on``)."""
    return (env(name) or "").lower() in _TRUE


def mask_url(url: str) -> str:
    """``https://user:secret@host/x`` -> ``https://user:***@host/x``; anything else unchanged.

    ``redact`` hides values under secret-looking keys; a password inside a URL
    (a tracking URI, a proxy) needs this as well before it is printed.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        password, port = parts.password, parts.port
    except ValueError:
        return url
    if password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{port}" if port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def home_relative(path: Path) -> str:
    """A path with the home directory written as ``~`` (shorter, and what guides show)."""
    try:
        return "~/" + str(path.expanduser().resolve().relative_to(Path.home().resolve()))
    except (ValueError, RuntimeError):
        return str(path)


def existing_parent(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent (absolute)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def folder_check(scope: str, what: str, path: Path) -> DoctorCheck:
    """Can files be created in ``path`` (or can it be created)? A check named ``folder``."""
    target = path.expanduser().absolute()
    parent = existing_parent(target)
    if not parent.is_dir():
        return DoctorCheck(scope, "folder", "error", f"{what} {target}: {parent} is a file, not a folder",
                           f"choose another path for the {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        return DoctorCheck(scope, "folder", "error", f"{what} {target} is not writable ({parent} belongs to "
                           f"uid {parent.stat().st_uid})", "choose a folder you can write, or fix its permissions")
    state = "writable" if parent == target else f"will be created (in {parent}, writable)"
    return DoctorCheck(scope, "folder", "ok", f"{what} {target} {state}")


# --------------------------------------------------------------------------- #
# TLS settings
# --------------------------------------------------------------------------- #


def ca_bundle_checks(scope: str, variables: Sequence[str]) -> list[DoctorCheck]:
    """The CA-bundle variables among ``variables`` that are set: an error for each
    that points nowhere, one ``info`` naming those in effect; empty if none is set."""
    found = [(var, value) for var in variables if (value := env(var))]
    checks = [DoctorCheck(scope, "tls", "error", f"{var}={value} does not exist: every TLS connection that "
                          f"uses it fails with a certificate error",
                          f"point {var} at an existing CA bundle, or unset it", (SSL_ISSUE,))
              for var, value in found if not Path(value).expanduser().exists()]
    good = [f"{var}={value}" for var, value in found if Path(value).expanduser().exists()]
    if good:
        checks.append(DoctorCheck(scope, "tls", "info", "CA settings in effect: " + ", ".join(good),
                                  answers=(SSL_ISSUE,)))
    return checks


def tls_switched_off(scope: str, switches: Sequence[str]) -> DoctorCheck:
    """The warning for settings that switch TLS verification off (``switches``
    names them as the user wrote them, e.g. ``PYTHONHTTPSVERIFY=0``)."""
    return DoctorCheck(scope, "tls", "warn", f"TLS verification is switched off by {', '.join(switches)}: "
                       "anyone on the path can read the API key and the data",
                       "unset it and point REQUESTS_CA_BUNDLE / SSL_CERT_FILE at your organisation's CA "
                       "bundle instead", (SSL_ISSUE,))


# --------------------------------------------------------------------------- #
# Reaching a server, bounded in time
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class Probe:
    """What one :func:`probe` request found."""

    url: str  # masked
    status: int | None  # the HTTP status when a server answered
    kind: str  # answered, refused, timeout, dns, ssl, error
    error: str | None
    seconds: float
    proxy: str | None  # the proxy the request went through (masked), if any

    @property
    def answered(self) -> bool:
        return self.status is not None


#: The fix for each kind of :class:`Probe` failure.
NETWORK_FIX: Final[Mapping[str, str]] = {
    "refused": "start the server, or correct the host/port",
    "dns": "check the host name; a node without DNS or internet cannot reach it (use a local store, or sync later)",
    "timeout": "a firewall may drop the traffic: allow the host and port, or set HTTPS_PROXY; "
               "or work offline and sync later",
    "ssl": "point REQUESTS_CA_BUNDLE (and SSL_CERT_FILE) at the CA bundle that signed the server's certificate",
    "error": "check the URL and the network",
}


def failure(p: Probe) -> str:
    """Where a failed probe failed, to append to ``"<url> is unreachable"``: with a
    proxy in effect, connection errors are the proxy's."""
    if p.proxy and p.kind in ("refused", "dns", "timeout"):
        return f": the proxy {p.proxy} failed: {p.error} (check HTTPS_PROXY/HTTP_PROXY, or add the host to NO_PROXY)"
    return f"{' via proxy ' + p.proxy if p.proxy else ''}: {p.error}"


def _proxy_for(url: str) -> str | None:
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxy = urllib.request.getproxies().get(parts.scheme)
    return mask_url(proxy) if proxy else None


def _ssl_context(cafile: str | None, insecure: bool) -> ssl.SSLContext:
    import ssl

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

    Uses the proxy variables in effect (as the SDKs do); credentials in the URL
    are sent as Basic auth. ``cafile`` is a CA bundle file or folder to trust;
    ``insecure`` skips certificate verification (what the SDK does when the
    user switched it off). The request runs on a daemon thread with a deadline
    because name resolution is not bounded by the socket timeout, and a node
    without DNS must not make ``doctor`` hang: the very thing it diagnoses.
    """
    import threading
    import urllib.error
    import urllib.request

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
    import socket
    import ssl

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
    import socket
    import ssl

    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {reason.verify_message or reason}"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(reason, socket.gaierror):
        return f"host name not resolved ({reason.strerror or reason})"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    return f"{type(reason).__name__}: {reason}"
