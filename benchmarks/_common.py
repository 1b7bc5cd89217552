"""Shared pieces of the benchmark scripts: the metrics logged, the statistics,
the environment that keeps the trackers local, and the results page.

Benchmarks import nothing from ``tests/``: they are meant to be run by anyone
with ``pip install 'foundry-track[bench]'`` and a checkout of ``benchmarks/``.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Final, Sequence

#: Ten scalars per step, as in the issue ("10 scalars per step").
KEYS: Final = [f"train/metric_{i}" for i in range(10)]
ROOT: Final = Path(__file__).resolve().parent.parent
#: Where --write-docs writes; FOUNDRY_TRACK_BENCH_DOCS redirects it (the smoke test does).
DOCS: Final = Path(os.environ.get("FOUNDRY_TRACK_BENCH_DOCS") or ROOT / "docs").resolve()
DOC: Final = DOCS / "performance.md"
IMG_DIR: Final = DOCS / "img"


def step_metrics(step: int) -> dict[str, float]:
    """The 10 scalars of ``step``. Each value is unique (``step*10 + i``), so a
    read-back can tell exactly which (key, step) pairs arrived, whatever each
    tracker does with the step number itself."""
    base = step * 10
    return {key: float(base + i) for i, key in enumerate(KEYS)}


def expected_values(steps: int, first: int = 0) -> dict[str, set[float]]:
    return {key: {float(s * 10 + i) for s in range(first, first + steps)} for i, key in enumerate(KEYS)}


@dataclass(frozen=True)
class Stats:
    """Per-call cost in microseconds."""

    p50: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, samples_ns: Sequence[int]) -> Stats:
        ordered = sorted(samples_ns)
        n = len(ordered)
        return cls(
            p50=ordered[n // 2] / 1e3,
            p99=ordered[min(n - 1, int(n * 0.99))] / 1e3,
            mean=statistics.fmean(ordered) / 1e3,
            max=ordered[-1] / 1e3,
        )


def local_tracker_env(tmp: Path) -> None:
    """Keep every tracker offline and inside ``tmp`` (nothing in the home
    directory, no network): W&B offline, no MLflow telemetry. ``WANDB_DIR`` is
    unset because it would override the ``dir`` each case passes.

    W&B's own settings are left at their defaults otherwise (system stats,
    console capture...), and they are the same for every case that uses W&B.
    """
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_CACHE_DIR": str(tmp / ".wandb-cache"),
        "WANDB_DATA_DIR": str(tmp / ".wandb-data"),
        "WANDB_ARTIFACT_DIR": str(tmp / ".wandb-artifacts"),
        "WANDB_CONFIG_DIR": str(tmp / ".wandb-config"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        "DO_NOT_TRACK": "true",
    }
    for var in ("WANDB_DIR", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY", "MLFLOW_TRACKING_URI",
                "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        os.environ.pop(var, None)
    os.environ.update(env)
    os.chdir(tmp)  # whatever a tool writes to the working directory (./wandb, ./mlruns) lands in tmp


def wait_until(predicate, timeout: float, what: str, poll: float = 0.002) -> float:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true; return the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
    return time.perf_counter()


# --------------------------------------------------------------------------- #
# Describing the machine and writing the results page
# --------------------------------------------------------------------------- #


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> str:
    """One line: CPU, cores, Python, the tracker versions — printed with every result."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = ", ".join(
        f"{name} {_version(dist)}"
        for name, dist in (("foundry-track", "foundry-track"), ("wandb", "wandb"), ("mlflow", "mlflow"),
                           ("tensorboard", "tensorboard"), ("torch", "torch"),
                           ("pytorch-lightning", "pytorch-lightning"), ("accelerate", "accelerate"))
    )
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}; {versions}")


def load_average() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(ROOT))
    except ValueError:
        script_text = str(script)
    return " ".join(["python", script_text, *sys.argv[1:]])


def update_doc(section: str, body: str) -> Path:
    """Replace the generated block ``section`` of docs/performance.md.

    The page is hand-written prose around blocks that each script owns,
    between ``<!-- BEGIN section -->`` and ``<!-- END section -->``; a missing
    block is appended. Only the generated block changes, so rerunning one
    script does not touch the others' figures.
    """
    begin, end = f"<!-- BEGIN {section} (generated by {command_line().split()[1]}) -->", f"<!-- END {section} -->"
    text = DOC.read_text() if DOC.exists() else "# Performance\n"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(section)} [^\n]*-->.*?<!-- END {re.escape(section)} -->", re.S)
    block = f"{begin}\n{body.strip()}\n{end}"
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    return DOC


def provenance() -> str:
    """The italic line under each generated table: when, where, how."""
    return (f"*Measured {time.strftime('%Y-%m-%d')} on {machine()}; {load_average()} at the end of the run. "
            f"Command: `{command_line()}`.*")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda row: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def fmt_us(us: float) -> str:
    """Microseconds, readable from 1 us to seconds."""
    if us >= 100_000:
        return f"{us / 1e6:.2f} s"
    if us >= 1000:
        return f"{us / 1e3:.1f} ms"
    if us >= 10:
        return f"{us:.0f} us"
    return f"{us:.1f} us"


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_rate(per_s: float) -> str:
    return f"{per_s:,.0f}"
