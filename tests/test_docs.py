"""The docs stay honest (datasette style): the site builds with
`mkdocs build --strict`, the reference parts committed into the Markdown are
what the code generates (`python docs/hooks.py --write`), every hook is in the
plugin guide with its exact signature and has a test named after it, every
public member of `Run` is in the API reference, every configuration field has
a description and appears in the generated reference, every YAML example is a
valid configuration, and the Model Foundry W&B guide's troubleshooting list is
answered."""

from __future__ import annotations

import ast
import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from foundry_track import hookspecs
from foundry_track.config import TrackingConfig
from foundry_track.plugins import discover, options_model

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TESTS = ROOT / "tests"


def _load_docs_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("foundry_track_docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docs_hooks = _load_docs_hooks()


def _builtin_backends() -> dict[str, Any]:
    return {name: info for name, info in discover().items() if info.distribution == "foundry-track"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once with `mkdocs build --strict` (any warning fails it)."""
    out = tmp_path_factory.mktemp("site")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_TRACK_")}
    env["NO_MKDOCS_2_WARNING"] = "1"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "WARNING" not in result.stderr, result.stderr[-5000:]
    return out


def _visible_text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def _headings(page: Path, level: str = "h3") -> dict[str, str]:
    """id -> visible text of every heading of one level in a built page."""
    found = re.findall(rf'<{level} id="([^"]+)">(.*?)</{level}>', page.read_text(), flags=re.S)
    return {hid: html.unescape(re.sub(r"<[^>]+>", "", body)).replace("¶", "").strip() for hid, body in found}


# --------------------------------------------------------------------------- #
# The build
# --------------------------------------------------------------------------- #


def test_mkdocs_build_strict_passes(site: Path) -> None:
    for page in ("index.html", "quickstart/index.html", "configuration/index.html", "api/index.html",
                 "backends/tensorboard/index.html",
                 "reliability/index.html", "distributed/index.html", "performance/index.html",
                 "migrating/index.html", "troubleshooting/index.html", "plugins/tutorial/index.html",
                 "plugins/reference/index.html", "plugins/testing/index.html", "cli/index.html",
                 "examples/foundry-track-jsonl/index.html"):
        assert (site / page).is_file(), page
    leftover = [p for p in site.rglob("*.html") if "<!-- generated:" in p.read_text()]
    assert not leftover, f"markers not replaced in {leftover}"


def test_an_unknown_marker_fails_the_build() -> None:
    with pytest.raises(docs_hooks.DocsError, match="unknown marker 'generated: nope'"):
        docs_hooks.render("text\n<!-- generated: nope -->\n", "page.md")
    with pytest.raises(docs_hooks.DocsError, match="unknown marker 'generated: nope'"):
        docs_hooks.render("<!-- BEGIN generated: nope -->\nold\n<!-- END generated: nope -->\n", "page.md")


# --------------------------------------------------------------------------- #
# The reference is committed, readable without a build, and cannot drift
# --------------------------------------------------------------------------- #


def test_the_committed_reference_is_what_the_code_generates() -> None:
    """Change a docstring, a config field, a hook or a command's help and this
    fails until `python docs/hooks.py --write` is run (and its diff committed)."""
    drifted = docs_hooks.drift(docs_hooks.pages())
    assert not drifted, (
        f"generated parts of {', '.join(str(p.relative_to(ROOT)) for p in drifted)} differ from the code: "
        f"run `python docs/hooks.py --write` and commit the result\n\n" + "".join(drifted.values())[:6000])


def test_every_generated_part_is_committed_and_every_generator_is_used() -> None:
    used: set[str] = set()
    for page in docs_hooks.pages():
        text = page.read_text()
        assert not docs_hooks.MARKER.search(text), (
            f"{page.relative_to(ROOT)} asks for a part that is not committed: run `python docs/hooks.py --write`")
        for match in docs_hooks.BLOCK.finditer(text):
            used.add(match.group("spec").split(" ")[0])
            assert match.group("body").strip(), (page, match.group("spec"))
    assert used == set(docs_hooks.GENERATORS)
    # What a reader on a code host now sees, without a build:
    assert "### `tracker_log_metrics(rows: Sequence[MetricRow]) -> None`" in (DOCS / "plugins" / "reference.md").read_text()
    assert "$ foundry-track sync --help" in (DOCS / "cli.md").read_text()
    assert "run.log_image(" in (DOCS / "api.md").read_text()


def test_write_expands_a_marker_restores_a_hand_edit_and_check_reports_drift(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n<!-- generated: tracking-defaults -->\n\nAfter.\n")
    script = [sys.executable, str(DOCS / "hooks.py")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*script, *args, str(page)], capture_output=True, text=True, timeout=120, cwd=ROOT)

    checked = run("--check")
    assert checked.returncode == 1 and "run `python docs/hooks.py --write`" in checked.stderr
    assert run("--write").returncode == 0
    written = page.read_text()
    assert written.startswith("# Page\n\n<!-- BEGIN generated: tracking-defaults (from the code: "
                              "python docs/hooks.py --write) -->\n\n```yaml\ntracking:\n")
    assert written.endswith("```\n\n<!-- END generated: tracking-defaults -->\n\nAfter.\n")
    assert run("--check").returncode == 0 and docs_hooks.render(written) == written  # idempotent

    page.write_text(written.replace("project:", "projekt:"))  # a hand edit inside the block
    checked = run("--check")
    assert checked.returncode == 1 and "-  projekt:" in checked.stdout and "+  project:" in checked.stdout
    run("--write")
    assert page.read_text() == written


def test_unpaired_markers_fail() -> None:
    with pytest.raises(docs_hooks.DocsError, match="do not pair up"):
        docs_hooks.render("<!-- BEGIN generated: backends -->\nno end\n", "page.md")


def test_help_in_the_cli_reference_is_the_same_on_every_python() -> None:
    """Python 3.13 changed how an option's metavar is shown, and the width
    follows the terminal: the committed help must not depend on either."""
    reference = docs_hooks.cli_reference()
    assert "-o, --output FILE" in reference and "-o FILE, --output FILE" not in reference
    env_wide = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, 'docs'); import hooks; print(hooks.cli_reference())"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    assert env_wide.stdout.rstrip("\n") == reference.rstrip("\n")


def test_a_pipe_in_a_table_cell_is_escaped_for_code_hosts_and_shown_plain_on_the_site(site: Path) -> None:
    configuration = (DOCS / "configuration.md").read_text()
    assert "| [`entity`](#entity) | `str \\| None` | `null` |" in configuration
    page = (site / "configuration" / "index.html").read_text()
    assert "<code>str | None</code>" in page and "\\|" not in _visible_text(site / "configuration" / "index.html")


# --------------------------------------------------------------------------- #
# Hooks: in the guide with their exact signature, and tested by name
# --------------------------------------------------------------------------- #


def _signatures_from_source() -> dict[str, str]:
    """Each hook's signature read from hookspecs.py's source text (not via inspect,
    which the docs generator uses), so the two are checked against each other."""
    tree = ast.parse((ROOT / "foundry_track" / "hookspecs.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in hookspecs.__all__:
            args = ", ".join(f"{a.arg}: {ast.unparse(a.annotation)}" for a in node.args.args if a.annotation)
            found[node.name] = f"{node.name}({args}) -> {ast.unparse(node.returns)}" if node.returns else node.name
    return found


def test_every_hook_is_in_the_plugin_guide_with_its_exact_signature(site: Path) -> None:
    expected = _signatures_from_source()
    assert set(expected) == set(hookspecs.__all__)
    headings = _headings(site / "plugins" / "reference" / "index.html")
    in_guide = [hid for hid in headings if hid in expected]
    assert in_guide == list(hookspecs.__all__), "one section per hook, in lifecycle order"
    for name, signature in expected.items():
        assert headings[name] == signature
    # Each section carries the hook's docstring, not only its heading.
    text = _visible_text(site / "plugins" / "reference" / "index.html")
    for name in hookspecs.__all__:
        summary = (getattr(hookspecs, name).__doc__ or "").strip().splitlines()[0]
        assert re.sub(r"``?", "", summary) in text, (name, summary)


# --------------------------------------------------------------------------- #
# The Python API: every public member of Run, with its signature and docstring
# --------------------------------------------------------------------------- #


def test_the_api_reference_documents_init_sync_and_every_public_member_of_run(site: Path) -> None:
    import inspect

    from foundry_track import start
    from foundry_track.run import Run

    nav = (ROOT / "mkdocs.yml").read_text()
    assert "api.md" in nav
    page = site / "api" / "index.html"
    members = docs_hooks.run_members(Run)
    names = {name for name, _ in members}
    assert {"log", "log_params", "log_image", "log_histogram", "log_table", "log_text", "log_artifact", "alert",
            "watch", "log_system_metrics", "finish"} <= names
    h2, h3 = _headings(page, "h2"), _headings(page, "h3")
    assert (h2.get("init"), h2.get("sync"), h2.get("run")) == ("foundry_track.init()", "foundry_track.sync()", "Run")
    expected = [f"run.{name}" if isinstance(member, property) else f"run.{name}()" for name, member in members]
    assert [text for hid, text in h3.items() if hid.startswith("run-")] == expected, "source order"
    text = " ".join(_visible_text(page).split())
    for name, member in members:
        if isinstance(member, property):
            continue
        for parameter in list(inspect.signature(member).parameters)[1:]:
            assert parameter in text, (name, parameter)
        assert " ".join(docs_hooks.python_signature(f"run.{name}", member, skip_self=True).split()) in text
    for function in (start.init, start.sync, *(m for _, m in members)):
        doc = inspect.getdoc(function)
        if doc:
            summary = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], doc.splitlines()[0])
            summary = re.sub(r"``?", "", summary)
            assert " ".join(summary.split())[:40] in text, (function, summary)


def test_the_python_signature_is_the_sources() -> None:
    def f(a: int, b: str = "x", *args: object, c: float | None = None, **kw: object) -> None:
        pass

    def g(self: object, key: str, *, step: int | None = None) -> dict[str, int]:
        return {}

    assert docs_hooks.python_signature("f", f) == ('f(a: int, b: str = "x", *args: object, c: float | None = None, '
                                                    '**kw: object) -> None')
    assert docs_hooks.python_signature("run.g", g, skip_self=True) == "run.g(key: str, *, step: int | None = None) -> dict[str, int]"


def _test_names() -> set[str]:
    names = set()
    for path in TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                names.add(node.name)
    return names


def test_every_hook_has_a_test_named_after_it() -> None:
    names = _test_names()
    missing = [hook for hook in hookspecs.__all__ if not any(hook in name for name in names)]
    assert not missing, f"hooks without a test named after them: {missing}"


def test_the_tutorial_covers_every_event_hook() -> None:
    tutorial = (DOCS / "plugins" / "tutorial.md").read_text()
    for hook in hookspecs.__all__:
        if hook not in ("tracker_unavailable",):  # shown in a tip: the JSON-lines backend needs no SDK
            assert f"def {hook}(" in tutorial, hook
    assert "def tracker_unavailable(" in tutorial


# --------------------------------------------------------------------------- #
# Configuration: generated, described, valid
# --------------------------------------------------------------------------- #


def _config_models() -> list[tuple[str, type[BaseModel], list[str]]]:
    models = [("tracking", TrackingConfig, ["tracking"])]
    for name, info in _builtin_backends().items():
        models.append((name, options_model(info), ["tracking", "backends", name]))
    return models


def test_every_config_field_has_a_description() -> None:
    models = _config_models()
    assert {"tracking", "tensorboard"} <= {name for name, _, _ in models}
    for name, model, _ in models:
        docs_hooks.check_descriptions(model, name)  # raises DocsError naming the fields


def test_a_config_field_without_a_description_fails_the_docs() -> None:
    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        documented: int = Field(1, description="Has one.")
        silent: int = 2
        blank: str = Field("", description="  ")

    with pytest.raises(docs_hooks.DocsError, match=r"backend 'demo': Options has fields without a description: "
                                                   r"silent, blank"):
        docs_hooks.options_reference(Options, ["tracking", "backends", "demo"], where="backend 'demo'")


def test_the_configuration_reference_lists_every_key_type_and_default(site: Path) -> None:
    pages = {"tracking": site / "configuration" / "index.html"}
    pages.update({name: site / "backends" / name / "index.html" for name in _builtin_backends()})
    for name, model, _ in _config_models():
        page = pages[name]
        assert page.is_file(), f"no page for the {name} backend: add docs/backends/{name}.md and put it in the nav"
        headings = _headings(page)
        text = _visible_text(page)
        prefix = "" if name == "tracking" else f"{name}-"
        for field_name, field in model.model_fields.items():
            assert headings.get(prefix + field_name) == field_name, (name, field_name)
            assert docs_hooks.type_name(field.annotation) in text, (name, field_name)
            first_words = re.sub(r"[`*]", "", field.description or "")[:25]
            assert first_words in text, (name, field_name, first_words)


def _yaml_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", markdown, flags=re.S | re.M)


def test_every_yaml_example_in_the_docs_is_a_valid_configuration() -> None:
    builtins = _builtin_backends()
    checked = 0
    for page in sorted(DOCS.rglob("*.md")):
        markdown = docs_hooks.render(page.read_text(), str(page))  # the generated examples too
        for block in _yaml_blocks(markdown):
            data = yaml.safe_load(block)
            if not isinstance(data, dict) or "tracking" not in data:
                continue
            block_cfg = TrackingConfig.model_validate(data["tracking"] or {})
            for name, options in block_cfg.backends.items():
                if name in builtins:
                    options_model(builtins[name]).model_validate(options or {})
            checked += 1
    assert checked >= 30  # the generated reference alone has one per key


def test_every_environment_variable_of_the_core_is_documented() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "foundry_track").glob("*.py"))
    variables = set(re.findall(r"\bFOUNDRY_TRACK_[A-Z_]+\b", source))
    assert {"FOUNDRY_TRACK_MODE", "FOUNDRY_TRACK_TRACE", "FOUNDRY_TRACK_DISABLE_PLUGINS"} <= variables
    documented = (DOCS / "configuration.md").read_text()
    missing = sorted(v for v in variables if f"`{v}`" not in documented)
    assert not missing, f"undocumented in docs/configuration.md: {missing}"


def test_the_figures_in_the_prose_match_the_code() -> None:
    """Numbers the pages state by hand: retries, batch sizes, defaults."""
    from foundry_track import dispatcher, journal

    def words(path: Path) -> str:
        return " ".join(path.read_text().split())

    fields = TrackingConfig.model_fields
    reliability, reference = words(DOCS / "reliability.md"), words(DOCS / "plugins" / "reference.md")
    give_up = {1: "1st", 2: "2nd", 3: "3rd"}.get(dispatcher._MAX_PERMANENT_ATTEMPTS,
                                                 f"{dispatcher._MAX_PERMANENT_ATTEMPTS}th")
    for text in (reliability, reference):
        assert f"capped at {dispatcher._BACKOFF_CAP:g} s" in text
        assert f"{dispatcher.BATCH_LIMIT:,}" in text
        assert f"the {give_up} such failure" in text
    assert f"({journal._TAIL_RECORDS:,} records)" in reliability
    for name in ("journal_flush_interval", "start_timeout", "flush_timeout"):
        assert f"`{name}` seconds ({fields[name].default:g} by default)" in reliability, name
    assert f"`start_timeout` ({fields['start_timeout'].default:g} s by default)" in reference
    assert f"`flush_timeout` seconds ({fields['flush_timeout'].default:g} by default)" in reference


def test_every_builtin_backend_has_a_page_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for name in _builtin_backends():
        assert (DOCS / "backends" / f"{name}.md").is_file(), name
        assert f"backends/{name}.md" in nav, name
        assert f"<!-- BEGIN generated: backend-options {name} " in (DOCS / "backends" / f"{name}.md").read_text()


# --------------------------------------------------------------------------- #
# Troubleshooting: the Model Foundry W&B guide's list, answered
# --------------------------------------------------------------------------- #

# The "### Issue:" headings of the guide's Troubleshooting section
# (model-foundry-wandb-guide.md), verbatim.
GUIDE_TROUBLESHOOTING = [
    '"wandb: ERROR Not logged in"',
    '"wandb: ERROR API key not found"',
    "Training hangs at wandb.init()",
    '"Rate limit exceeded"',
    "WandB using too much disk space",
    "Want to disable WandB without changing config",
    "Firewall blocking WandB",
    "SSL Certificate errors",
]


def test_troubleshooting_answers_every_problem_of_the_wandb_guide() -> None:
    markdown = (DOCS / "troubleshooting.md").read_text()
    sections = re.split(r"^### ", markdown, flags=re.M)[1:]
    answers = {s.splitlines()[0].strip(): s for s in sections}
    for issue in GUIDE_TROUBLESHOOTING:
        body = answers.get(f"Issue: {issue}")
        assert body is not None, f"no section for the guide's issue {issue}"
        assert len(body.split()) > 40, f"the answer to {issue} is too short"
        assert "foundry-track" in body or "FOUNDRY_TRACK" in body or "fallback" in body, issue
