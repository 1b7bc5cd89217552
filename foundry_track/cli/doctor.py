"""``foundry-track doctor``: check the tracking setup before a run starts.

The general checks are here: the config, the proxy and TLS settings in
effect, writable folders and free disk, and what earlier runs recorded
(rate-limit errors, undelivered events). Then, for every backend in the
config's ``tracking:`` block (an experiment file is read as the trainer reads
it: the W&B guide's ``logging.use_wandb`` adds ``wandb``): is its plugin installed and loadable (with its
SDK's version), are its options valid, and what the backend itself reports
through its ``tracker_doctor`` hook (credentials, a reachable server, its
folders). Each problem comes with its fix, and each check says which entry of
the Model Foundry W&B guide's troubleshooting list it answers.

Nothing here knows a particular backend, imports a tracker SDK (versions come
from ``importlib.metadata``) or prints a secret.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Mapping, Sequence

import foundry_track.cli._common as ui
from foundry_track import checks
from foundry_track.checks import DISK, FIREWALL, GUIDE_ISSUES, HANGS, RATE_LIMIT, SSL_ISSUE, mask_url
from foundry_track.events import CheckLevel, DoctorCheck

if TYPE_CHECKING:
    from foundry_track.config import TrackingConfig
    from foundry_track.plugins import BackendInfo

__all__ = ["GUIDE_ISSUES", "Report", "add_parser", "run", "run_doctor"]

LEVELS: Final[tuple[CheckLevel, ...]] = ("ok", "info", "warn", "error")
_MARK: Final = {"ok": "ok", "info": "info", "warn": "WARN", "error": "ERROR"}
# CA bundles every HTTPS client here honours; a backend reports its own.
_CA_VARIABLES: Final = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


@dataclass(slots=True)
class Report:
    source: str
    findings: list[DoctorCheck] = field(default_factory=list)

    def add(self, *findings: DoctorCheck) -> None:
        self.findings.extend(findings)

    @property
    def problems(self) -> list[DoctorCheck]:
        return [f for f in self.findings if f.level in ("warn", "error")]

    def guide(self) -> dict[str, list[DoctorCheck]]:
        """For each guide entry, the findings that answer it, worst first."""
        out: dict[str, list[DoctorCheck]] = {issue: [] for issue in GUIDE_ISSUES}
        for f in self.findings:
            for issue in f.answers:
                if issue in out:  # a plugin may name an entry the guide does not have
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
# General checks: network settings, disk, what earlier runs recorded
# --------------------------------------------------------------------------- #


def _env_any_case(name: str) -> tuple[str, str] | None:
    for var in (name.upper(), name.lower()):
        value = checks.env(var)
        if value is not None:
            return var, value
    return None


def _network_settings() -> list[DoctorCheck]:
    findings: list[DoctorCheck] = []
    proxies = [(var, mask_url(value)) for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
               if (found := _env_any_case(name)) for var, value in [found]]
    no_proxy = _env_any_case("NO_PROXY")
    if proxies:
        text = ", ".join(f"{var}={value}" for var, value in proxies)
        text += f"; {no_proxy[0]}={no_proxy[1]}" if no_proxy else "; NO_PROXY not set"
        findings.append(DoctorCheck("general", "proxy", "info", f"proxy in effect: {text}", answers=(FIREWALL,)))
    else:
        findings.append(DoctorCheck("general", "proxy", "info",
                                    "no proxy variables set: connections go direct "
                                    "(behind a firewall, set HTTPS_PROXY)",
                                    answers=(FIREWALL,)))
    bundles = checks.ca_bundle_checks("general", _CA_VARIABLES)
    if bundles:
        findings.extend(bundles)
    else:
        findings.append(DoctorCheck("general", "tls", "ok", "no CA overrides: the system CA store is used",
                                    answers=(SSL_ISSUE,)))
    if (checks.env("PYTHONHTTPSVERIFY") or "1") == "0":
        findings.append(checks.tls_switched_off("general", ["PYTHONHTTPSVERIFY=0"]))
    return findings


def _disk(paths: Sequence[tuple[str, Path]], min_free: float) -> list[DoctorCheck]:
    findings: list[DoctorCheck] = []
    seen: set[int] = set()
    for what, path in paths:
        target = checks.existing_parent(path)
        try:
            usage = shutil.disk_usage(target)
            device = target.stat().st_dev
        except OSError as exc:
            findings.append(DoctorCheck("general", "disk", "warn", f"cannot read free space of {target}: {exc}",
                                        answers=(DISK,)))
            continue
        if device in seen:
            continue
        seen.add(device)
        free_gb = usage.free / 1e9
        text = f"{free_gb:,.1f} GB free for the {what} ({path}; {usage.free / usage.total:.0%} of the disk)"
        if usage.free < min_free * 1e9:
            findings.append(DoctorCheck(
                "general", "disk", "warn" if usage.free > 0.1e9 else "error", text + f", under {min_free:g} GB",
                "free space, or remove runs every backend has: `foundry-track clean --synced-only "
                "--older-than 7d` (W&B offline runs already uploaded: `wandb sync --clean`)", answers=(DISK,)))
        else:
            findings.append(DoctorCheck("general", "disk", "ok", text, answers=(DISK,)))
    return findings


_RATE_LIMIT: Final = re.compile(r"\b429\b|rate.?limit|too many requests", re.IGNORECASE)
_RECENT_RUNS: Final = 200


def _earlier_runs(root: Path, every_n_steps: int) -> list[DoctorCheck]:
    """Rate-limit errors and undelivered events that runs under ``root`` recorded."""
    from foundry_track.errors import RunDirError
    from foundry_track.history import load_run
    from foundry_track.rundir import RUN_FILE, find_runs

    if not root.is_dir():
        return [DoctorCheck("general", "rate-limit", "ok", f"no runs under {root} yet: no rate-limit errors "
                            f"recorded; metrics are sent in batches (every_n_steps={every_n_steps})",
                            answers=(RATE_LIMIT,))]
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
    findings: list[DoctorCheck] = []
    if limited:
        findings.append(DoctorCheck(
            "general", "rate-limit", "warn",
            f"{len(limited)} earlier run(s) hit a rate limit: {', '.join(limited[:5])}",
            f"log less often: tracking.every_n_steps: {max(10, every_n_steps * 10)} (now {every_n_steps}); "
            "nothing was lost: retried events stay in the journal (`foundry-track sync RUN`)", answers=(RATE_LIMIT,)))
    else:
        findings.append(DoctorCheck("general", "rate-limit", "ok", f"no rate-limit errors recorded by the "
                                    f"{len(runs)} newest run(s) under {root}; metrics are sent in batches "
                                    f"(every_n_steps={every_n_steps})", answers=(RATE_LIMIT,)))
    if pending:
        findings.append(DoctorCheck("general", "undelivered", "info",
                                    f"{len(pending)} run(s) under {root} have undelivered events or offline copies "
                                    f"not uploaded: {', '.join(pending[:5])}",
                                    f"`foundry-track runs {root}` shows the sync command for each"))
    return findings


# --------------------------------------------------------------------------- #
# Each backend: plugin, SDK, options, then its own checks
# --------------------------------------------------------------------------- #


def _sdk_distributions(info: BackendInfo) -> list[str]:
    """The distributions the backend's install command adds (``pip install
    '<its distribution>[<name>]'``): the requirements of that extra, in order."""
    import importlib.metadata

    if not info.distribution:
        return []
    try:
        requires = importlib.metadata.requires(info.distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    extra = re.compile(rf"""\bextra\s*==\s*["']{re.escape(info.name)}["']""")
    names = []
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if match and extra.search(marker):
            names.append(match.group(1))
    return names


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _plugin(name: str, raw: Mapping[str, Any], info: BackendInfo | None,
            known: Sequence[str]) -> tuple[list[DoctorCheck], Any]:
    """Plugin found and loadable, SDK version, options valid. Returns (findings, options or None)."""
    from pydantic import ValidationError

    from foundry_track.errors import format_validation_error
    from foundry_track.plugins import options_model

    if info is None:
        return [DoctorCheck(name, "plugin", "error", f"no backend {name!r} is installed (discovered: "
                            f"{', '.join(known) or 'none'})", f"pip install 'foundry-track[{name}]' "
                            "(a third-party backend: pip install its package)")], None
    plugin = f"plugin {info.distribution or '?'} {info.version or '?'}"
    if not info.available:
        problem = (info.problem or "unavailable").strip().splitlines()
        return [DoctorCheck(name, "sdk", "error", f"{plugin}: {problem[0]}" + (" (see `foundry-track backends`)"
                                                                            if len(problem) > 1 else ""),
                            f"pip install 'foundry-track[{name}]'")], None
    sdks = _sdk_distributions(info)
    versions = [(d, v) for d in sdks if (v := _version(d))]
    if sdks:
        sdk = f"{versions[0][0]} {versions[0][1]}" if versions else "SDK found (version unknown)"
        findings = [DoctorCheck(name, "sdk", "ok", f"{sdk} installed; {plugin}")]
    else:
        findings = [DoctorCheck(name, "sdk", "ok", f"{plugin} loads")]
    try:
        model = options_model(info)
        options = model.model_validate(dict(raw or {}))
    except ValidationError as exc:
        findings.append(DoctorCheck(name, "options", "error",
                                    format_validation_error(exc, model, f"tracking.backends.{name}"),
                                    "fix the option named above"))
        return findings, None
    except Exception as exc:  # noqa: BLE001 - a broken plugin is a finding, not a crash
        findings.append(DoctorCheck(name, "options", "error", f"the plugin failed to describe its options: {exc!r}",
                                    "report it to the plugin's authors"))
        return findings, None
    return findings, options


def _backend_checks(name: str, info: BackendInfo, options: Any, cfg: TrackingConfig, timeout: float,
                    disks: list[tuple[str, Path]]) -> list[DoctorCheck]:
    """What the backend's ``tracker_doctor`` reports, on a fresh instance of it."""
    from foundry_track.plugins import BackendHooks, build_plugin_manager, instantiate

    def check_disk(what: str, folder: Path) -> None:
        disks.append((str(what), Path(folder)))

    broken = "report it to the plugin's authors"
    try:
        hooks = BackendHooks(build_plugin_manager({name: instantiate(info)}, trace=False), name)
        if "tracker_doctor" not in hooks.implemented:
            return [DoctorCheck(name, "checks", "info", "the backend reports no checks of its own "
                                "(it does not implement tracker_doctor)")]
        found = hooks.doctor(options, Path(cfg.dir), cfg.fallback if cfg.fallback != name else None,
                             float(cfg.start_timeout), timeout, check_disk)
    except Exception as exc:  # noqa: BLE001 - a broken plugin is a finding, not a crash
        return [DoctorCheck(name, "checks", "error", f"the backend's checks failed: {type(exc).__name__}: {exc}",
                            broken)]
    if not all(isinstance(f, DoctorCheck) for f in found):
        return [DoctorCheck(name, "checks", "error", "tracker_doctor returned something other than a list of "
                            "foundry_track.DoctorCheck", broken)]
    return found


# --------------------------------------------------------------------------- #
# The doctor
# --------------------------------------------------------------------------- #


def _load(config: str | os.PathLike[str] | None) -> tuple[TrackingConfig, str | None]:
    """The tracking block a run of ``config`` starts with, and how an experiment file gave it.

    ``load_config`` reads an experiment file (the trainer's: ``experiment_name``,
    ``logging:`` or ``training:`` at the top) as the trainer reads it: its
    ``logging:`` shortcuts (``use_wandb``, ``wandb_project``...) count.
    """
    from foundry_track.config import GUIDE_SHORTCUTS, is_experiment, load_config, read_yaml

    cfg = load_config(config)
    data = read_yaml(config) if config is not None else None
    if not isinstance(data, Mapping) or not is_experiment(data):
        return cfg, None
    logging = data.get("logging") or {}
    mapped = [f"logging.{key}: {str(logging[key]).lower() if isinstance(logging[key], bool) else logging[key]}"
              for key in GUIDE_SHORTCUTS if logging.get(key) is not None]
    return cfg, (f"experiment file, read as the trainer reads it: its tracking block plus the W&B guide's logging "
                 f"shortcuts ({', '.join(mapped) or 'none set'}); project {cfg.project!r}, run name {cfg.run_name!r}")


def run_doctor(config: str | os.PathLike[str] | None, *, timeout: float = 3.0, min_free_gb: float = 1.0) -> Report:
    """Check the tracking setup of ``config`` (a YAML path; default: the built-in
    defaults plus environment overrides). Raises ConfigError for a bad config."""
    from foundry_track.plugins import discover

    cfg, how = _load(config)
    report = Report(str(config) if config is not None else "(no config: defaults and FOUNDRY_TRACK_* env)")
    if how:
        report.add(DoctorCheck("general", "config", "info", how))
    names = list(cfg.backends)
    report.add(DoctorCheck("general", "config", "info", f"backends: {', '.join(names) or 'none'}; fallback: "
                           f"{cfg.fallback or 'none'}; run folder: {cfg.dir}; mode: {cfg.mode}"))
    if cfg.mode == "disabled":
        report.add(DoctorCheck("general", "config", "info", "tracking is disabled (FOUNDRY_TRACK_MODE or mode: "
                               "disabled): runs log nothing"))
    fallback_text = (f"the fallback {cfg.fallback!r} takes over" if cfg.fallback else
                     "its events wait in the journal for `foundry-track sync` (no fallback)")
    report.add(DoctorCheck("general", "start", "ok", f"a backend that cannot start does not block training: each "
                           f"starts on its own thread; after start_timeout {cfg.start_timeout:g} s {fallback_text}",
                           answers=(HANGS,)))
    found = discover()
    disks: list[tuple[str, Path]] = [("run folder", Path(cfg.dir))]
    for name in names:
        findings, options = _plugin(name, cfg.backends.get(name) or {}, found.get(name), list(found))
        report.add(*findings)
        if options is not None:
            report.add(*_backend_checks(name, found[name], options, cfg, timeout, disks))
    if cfg.fallback and cfg.fallback not in names:
        info = found.get(cfg.fallback)
        if info is None or not info.available:
            why = "not installed" if info is None else (info.problem or "").splitlines()[0]
            report.add(DoctorCheck("general", "fallback", "warn", f"fallback backend {cfg.fallback!r} cannot run: "
                                   f"{why}", f"pip install 'foundry-track[{cfg.fallback}]', or set tracking.fallback: "
                                   "null"))
        else:
            report.add(DoctorCheck("general", "fallback", "ok", f"fallback {cfg.fallback!r} is available"))
    report.add(*_network_settings())
    report.add(checks.folder_check("general", "run folder", Path(cfg.dir)))
    report.add(*_disk(disks, min_free_gb))
    report.add(*_earlier_runs(Path(cfg.dir), cfg.every_n_steps))
    return report


# --------------------------------------------------------------------------- #
# The command
# --------------------------------------------------------------------------- #


def add_parser(sub: Any) -> None:
    p = ui.add_command(
        sub, "doctor", "check backends, credentials, servers, proxies/TLS and disk before a run",
        "For every backend in CONFIG's tracking block: plugin and SDK installed (versions), options valid, "
        "credentials present (W&B: WANDB_API_KEY or a netrc entry; never printed), server reachable "
        "(MLflow tracking URI, W&B base URL in online mode), plus proxy and TLS settings in effect, writable "
        "folders, free disk, and rate-limit errors earlier runs recorded. Each problem comes with its fix, "
        "and the summary answers the W&B guide's troubleshooting list (Not logged in, API key not found, "
        "hangs at init, rate limit, disk space, firewall, SSL). Exit 0: all fine; 1: problems found; "
        "2: bad config.",
        "examples:\n  foundry-track doctor configs/exp0_baseline.yaml\n  foundry-track doctor --json --timeout 1",
        run)
    p.add_argument("config", nargs="?", metavar="CONFIG", help="a tracking block, or an experiment YAML read as the "
                   "trainer reads it (tracking: plus the logging: shortcuts use_wandb, wandb_project, wandb_entity; "
                   "default: the defaults plus FOUNDRY_TRACK_* env)")
    p.add_argument("--timeout", type=float, default=3.0, metavar="S", help="seconds per network check (default 3)")
    p.add_argument("--min-free", type=float, default=1.0, metavar="GB", help="warn under this free disk (default 1)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _print_findings(report: Report) -> None:
    rows = []
    for f in report.findings:
        fix = f"\n  fix: {f.fix}" if f.fix and f.level != "ok" else ""
        rows.append([f.scope, f.check, _MARK[f.level], f.message + fix])
    if ui.use_rich():
        ui.print_table(["scope", "check", "level", "finding"], rows)
    else:
        for scope, check, level, text in rows:
            lines = text.splitlines()
            print(f"{level:<5}  {scope:<11} {check:<12} {lines[0]}")
            for line in lines[1:]:
                print(f"{'':<32}{line}")


def run(args: argparse.Namespace) -> int:
    if args.config is not None and not Path(args.config).is_file():
        raise ui.CliError(f"config file {args.config} does not exist")
    if not args.timeout > 0:
        raise ui.CliError(f"--timeout {args.timeout}: give a positive number of seconds, e.g. 3")
    report = run_doctor(args.config, timeout=args.timeout, min_free_gb=args.min_free)
    if args.json:
        ui.dump(report.to_json())
        return 1 if report.problems else 0
    print(f"foundry-track doctor: {report.source}")
    _print_findings(report)
    print("\nthe W&B guide's troubleshooting list")
    guide = report.guide()
    for issue in GUIDE_ISSUES:
        found = guide[issue]
        if found:
            worst = found[0]
            print(f"  {_MARK[worst.level]:<5}  {issue!r}: {worst.scope}: {worst.message.splitlines()[0]}")
        else:
            print(f"  {'-':<5}  {issue!r}: not applicable: W&B is not in this config's backends")
    problems = report.problems
    errors = sum(1 for f in problems if f.level == "error")
    print(f"\n{len(problems)} problem(s): {errors} error(s), {len(problems) - errors} warning(s)" if problems
          else "\nno problems found")
    return 1 if problems else 0
