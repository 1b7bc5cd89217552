"""The docs a user copies from: code blocks that fit the page, config files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
#: Widest code line the site shows without cutting it (mkdocs-material, both sidebars open).
CODE_WIDTH = 76
#: Files the docs ask the reader to write (the quickstart's and the plugin tutorial's own).
WRITTEN_BY_THE_READER = {"configs/demo.yaml"}


def code_lines(text: str) -> list[str]:
    lines, inside = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def test_the_home_pages_code_is_not_cut_at_the_right() -> None:
    wide = [line for line in code_lines((ROOT / "docs" / "index.md").read_text()) if len(line) > CODE_WIDTH]
    assert wide == [], f"wrap these code lines of docs/index.md to {CODE_WIDTH} characters: {wide}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_file_the_docs_cite_exists(page: Path) -> None:
    cited = set(re.findall(r"\bconfigs/[\w.-]+\.ya?ml\b", page.read_text())) - WRITTEN_BY_THE_READER
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert missing == [], f"{page.relative_to(ROOT)} cites {missing}; the shipped configs: " \
                          f"{sorted(p.name for p in (ROOT / 'configs').glob('*.yaml'))}"
