"""Read what the fault-injection backends (tests/plugins/data) recorded."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any


def records(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def metric_steps(out: Path) -> Counter[int]:
    """How many times each step arrived (a correct delivery has every count == 1)."""
    return Counter(r["step"] for r in records(out) if r["hook"] == "metrics")
