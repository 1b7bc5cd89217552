"""What ``foundry-track doctor`` reports for MLflow (the ``tracker_doctor``
hook): the tracking URI in effect and where it came from; for a server,
whether it answers and accepts the credentials in the environment (never
printed); for a local store, whether its folder is writable; and the MLflow
variables that change TLS. No ``mlflow`` import.
"""

from __future__ import annotations

import base64
import os
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from foundry_track import checks
from foundry_track.checks import FIREWALL, HANGS, SSL_ISSUE
from foundry_track.events import DoctorCheck

if TYPE_CHECKING:
    from foundry_track_mlflow import MlflowOptions

__all__ = ["doctor"]

SCOPE = "mlflow"
# MLflow's own CA settings: the server's CA bundle, and a client certificate.
_CA_VARIABLES = ("MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH")


def _auth() -> tuple[dict[str, str], str | None]:
    token = checks.env("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}, "token found in env (MLFLOW_TRACKING_TOKEN)"
    user, password = checks.env("MLFLOW_TRACKING_USERNAME"), checks.env("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}, "user and password found in env (MLFLOW_TRACKING_USERNAME/PASSWORD)"
    return {}, None


def _server(uri: str, source: str, timeout: float) -> list[DoctorCheck]:
    """An ``http(s)://`` tracking server: reachable, and does its REST API take our credentials?"""
    shown = checks.mask_url(uri)
    findings: list[DoctorCheck] = []
    headers, auth = _auth()
    if auth:
        findings.append(DoctorCheck(SCOPE, "credentials", "info", auth))
    insecure = checks.env_flag("MLFLOW_TRACKING_INSECURE_TLS")
    cafile = (checks.env("MLFLOW_TRACKING_SERVER_CERT_PATH") or checks.env("REQUESTS_CA_BUNDLE")
              or checks.env("CURL_CA_BUNDLE"))
    base = uri.rstrip("/")
    health = checks.probe(f"{base}/health", timeout, headers=headers, cafile=cafile, insecure=insecure)
    answers = (FIREWALL, SSL_ISSUE)
    via = f" via proxy {health.proxy}" if health.proxy else ""
    if not health.answered:
        fix = checks.NETWORK_FIX.get(health.kind, checks.NETWORK_FIX["error"])
        if health.kind == "refused":
            fix = (f"start it (`mlflow server --host {urllib.parse.urlsplit(uri).hostname} --port "
                   f"{urllib.parse.urlsplit(uri).port or 5000}`) or correct {source}")
        findings.append(DoctorCheck(
            SCOPE, "reachable", "error", f"{shown} is unreachable{checks.failure(health)}",
            f"{fix}; meanwhile runs keep every event in their journal (and the fallback backend logs locally): "
            f"`foundry-track sync RUN --backend mlflow` delivers them later",
            (SSL_ISSUE,) if health.kind == "ssl" else (FIREWALL, HANGS)))
        return findings
    # /health answers without auth; the REST API tells whether the credentials work.
    api = checks.probe(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", timeout, headers=headers,
                       cafile=cafile, insecure=insecure)
    if api.status in (401, 403):
        findings.append(DoctorCheck(
            SCOPE, "credentials", "error", f"{shown} refuses the API (HTTP {api.status}): "
            + ("the credentials in env are not accepted" if auth else "it needs credentials"),
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"))
    elif api.status == 200:
        findings.append(DoctorCheck(SCOPE, "reachable", "ok", f"{shown} answered{via} in "
                                    f"{health.seconds * 1e3:.0f} ms; its REST API works", answers=answers))
    else:
        findings.append(DoctorCheck(
            SCOPE, "reachable", "warn", f"{shown} answered{via} (health: HTTP {health.status}) but its REST "
            f"API did not: {api.error or api.status}",
            "check that the URI is an MLflow tracking server (and its path prefix)", answers))
    return findings


def _store(uri: str) -> list[DoctorCheck]:
    """A local store (SQLite, a file store): can its folder be written?"""
    shown = checks.mask_url(uri)
    if uri.startswith("sqlite:"):
        db = Path(uri.split(":///", 1)[1]) if ":///" in uri else None
        if db is None or str(db) in ("", ":memory:"):
            return [DoctorCheck(SCOPE, "store", "warn", f"{shown} keeps nothing after the process exits",
                                "use sqlite:///path/to/mlflow.db")]
        findings = [checks.folder_check(SCOPE, "MLflow database folder", db.parent if str(db.parent) else Path("."))]
        if db.exists() and not os.access(db, os.R_OK | os.W_OK):
            findings.append(DoctorCheck(SCOPE, "store", "error", f"{db} exists but is not readable and writable",
                                        f"chmod u+rw {db}"))
        return findings
    if uri.startswith("file:") or "://" not in uri:
        folder = Path(urllib.parse.urlsplit(uri).path if uri.startswith("file:") else uri)
        return [checks.folder_check(SCOPE, "MLflow file store", folder)]
    return [DoctorCheck(SCOPE, "reachable", "info", f"{urllib.parse.urlsplit(uri).scheme}: stores are not "
                        "checked by doctor")]


def _tls_settings() -> list[DoctorCheck]:
    """MLflow's own CA and TLS switches; they affect its connections only, but
    read like the general TLS settings (scope ``general``)."""
    found = checks.ca_bundle_checks("general", _CA_VARIABLES)
    if checks.env_flag("MLFLOW_TRACKING_INSECURE_TLS"):
        found.append(checks.tls_switched_off("general", ["MLFLOW_TRACKING_INSECURE_TLS"]))
    return found


def doctor(options: MlflowOptions, timeout: float) -> list[DoctorCheck]:
    """The MLflow backend's ``tracker_doctor``."""
    if options.tracking_uri:
        uri, source = str(options.tracking_uri), "tracking.backends.mlflow.tracking_uri"
    elif checks.env("MLFLOW_TRACKING_URI"):
        uri, source = str(checks.env("MLFLOW_TRACKING_URI")), "MLFLOW_TRACKING_URI"
    else:
        uri, source = "sqlite:///mlflow.db", "the default"
    findings = [DoctorCheck(SCOPE, "uri", "info", f"tracking URI {checks.mask_url(uri)} (from {source})")]
    findings.extend(_server(uri, source, timeout) if uri.startswith(("http://", "https://")) else _store(uri))
    return [*findings, *_tls_settings()]
