"""The reference parts of the docs, generated from the code and committed into
the Markdown, so they read the same on a code host as on the built site.

A generated part sits between two markers, each on a line of its own::

    <!-- BEGIN generated: hook-reference (...) -->
    ...generated Markdown: edit the code, not this text...
    <!-- END generated: hook-reference -->

The parts:

    tracking-config          every key of the `tracking:` block
    tracking-defaults        the whole block with its defaults, as YAML
    backend-options NAME     a built-in backend's options
    backends                 the backends found through the entry points
    hook-reference           one section per hook; its heading is the exact signature
    event-types              the dataclasses the hooks receive
    conformance-cases        the cases of foundry_track.testing
    cli-reference            every `foundry-track` command's --help
    api-reference            foundry_track.init, foundry_track.sync and every public member of Run

After changing the code they come from, regenerate the committed text::

    python docs/hooks.py --write      # rewrite every docs/**/*.md whose parts changed
    python docs/hooks.py --check      # exit 1, with a diff, if one would change

A new part can be asked for with a one-line marker, ``<!-- generated: NAME -->``;
``--write`` turns it into a BEGIN/END block. ``tests/test_docs.py`` fails when
the committed text differs from what the code generates. MkDocs runs this file
as a hook too (``on_page_markdown``), so a built site is always current.

An unknown marker, or a configuration field without a description, fails the
build and the tests. The functions are plain, so the tests import this file
and call them too.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import re
import sys
import tempfile
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

_SPEC = r"[a-z-]+(?: [A-Za-z0-9_.-]+)?"
# A part asked for but not generated yet (`--write` expands it into a block).
MARKER = re.compile(rf"^<!-- generated: ({_SPEC}) -->$", re.MULTILINE)
# A generated part, committed: the markers and the text between them.
BLOCK = re.compile(rf"^<!-- BEGIN generated: (?P<spec>{_SPEC})(?: \([^)\n]*\))? -->\n"
                   rf"(?P<body>.*?)^<!-- END generated: (?P=spec) -->$", re.MULTILINE | re.DOTALL)
EDGE = re.compile(r"^<!-- (?:BEGIN|END) generated: .*$", re.MULTILINE)  # either marker of a block
REGENERATE = "python docs/hooks.py --write"
BUILTIN_DISTRIBUTION = "foundry-track"
DOCS = Path(__file__).resolve().parent


class DocsError(RuntimeError):
    """The code cannot be documented as it is (for example a field without a description)."""


# --------------------------------------------------------------------------- #
# Types, defaults and examples of pydantic fields
# --------------------------------------------------------------------------- #


def type_name(annotation: Any) -> str:
    """A Python type as a reader writes it: ``str | None``, ``dict[str, Any]``, ``'a' | 'b'``."""
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "Any"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    return getattr(annotation, "__name__", str(annotation))


def yaml_value(value: Any) -> str:
    """One value in YAML flow style: ``null``, ``true``, ``{tensorboard: {}}``, ``runs``."""
    text = yaml.safe_dump(to_jsonable_python(value), default_flow_style=True, allow_unicode=True, width=10_000)
    return text.removesuffix("\n...\n").strip()


def cell(text: str) -> str:
    """Code in a table cell. A code host (GitHub) splits a row at every ``|``,
    inside code too, unless it is escaped; the site's Markdown keeps the
    backslash in code, so :func:`on_page_markdown` removes it again."""
    return f"`{text.replace('|', chr(92) + '|')}`"


_TABLE_CODE = re.compile(r"`[^`\n]*`")


def unescape_table_code(markdown: str) -> str:
    """``\\|`` back to ``|`` inside code spans of table rows (Python-Markdown
    does not split a row at a pipe in code, and would show the backslash)."""
    def row(line: str) -> str:
        if not line.startswith("|"):
            return line
        return _TABLE_CODE.sub(lambda m: m.group(0).replace(chr(92) + "|", "|"), line)

    return "\n".join(row(line) for line in markdown.split("\n"))


def _constraints(field: Any) -> list[str]:
    found = []
    for item in field.metadata:
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >="),
                             ("max_length", "length <=")):
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{symbol} {value}")
    return found


def _default(field: Any) -> Any:
    value = field.get_default(call_default_factory=True)
    return PydanticUndefined if value is PydanticUndefined else value


def _nested(path: list[str], leaf: dict[str, Any]) -> dict[str, Any]:
    for part in reversed(path):
        leaf = {part: leaf}
    return leaf


def check_descriptions(model: type[BaseModel], where: str) -> None:
    """Raise :class:`DocsError` naming every field of ``model`` without a description."""
    missing = [name for name, field in model.model_fields.items() if not (field.description or "").strip()]
    if missing:
        raise DocsError(
            f"{where}: {model.__name__} has fields without a description: {', '.join(missing)}. "
            f"Add Field(..., description=\"...\") so the configuration reference can say what they do."
        )


def options_reference(model: type[BaseModel], path: list[str], *, where: str, level: int = 3,
                      anchor_prefix: str = "") -> str:
    """A summary table, then one section per field: type, default, constraints,
    description and a YAML example nested under ``path``."""
    check_descriptions(model, where)
    dotted = ".".join(path)
    out = ["| key | type | default |", "| --- | --- | --- |"]
    for name, field in model.model_fields.items():
        default = _default(field)
        shown = "required" if default is PydanticUndefined else cell(yaml_value(default))
        out.append(f"| [`{name}`](#{anchor_prefix}{name}) | {cell(type_name(field.annotation))} | {shown} |")
    out.append("")
    for name, field in model.model_fields.items():
        default = _default(field)
        facts = [f"**type** `{type_name(field.annotation)}`",
                 "**required**" if default is PydanticUndefined else f"**default** `{yaml_value(default)}`"]
        facts += [f"`{c}`" for c in _constraints(field)]
        example = field.examples[0] if field.examples else (None if default is PydanticUndefined else default)
        snippet = yaml.safe_dump(_nested(path, {name: to_jsonable_python(example)}), sort_keys=False,
                                 allow_unicode=True, default_flow_style=False).rstrip()
        out += [
            f"{'#' * level} `{name}` {{ #{anchor_prefix}{name} }}",
            "",
            f"`{dotted}.{name}` · " + " · ".join(facts),
            "",
            field.description.strip(),
            "",
            "```yaml",
            snippet,
            "```",
            "",
        ]
    return "\n".join(out)


# --------------------------------------------------------------------------- #
# The `tracking:` block and the backends
# --------------------------------------------------------------------------- #


def tracking_config() -> str:
    from foundry_track.config import TrackingConfig

    return options_reference(TrackingConfig, ["tracking"], where="foundry_track.config")


def tracking_defaults() -> str:
    from foundry_track.config import TrackingConfig

    block = yaml.safe_dump({"tracking": TrackingConfig().model_dump(mode="json")}, sort_keys=False,
                           allow_unicode=True, default_flow_style=False).rstrip()
    return f"```yaml\n{block}\n```\n"


def builtin_backends() -> dict[str, Any]:
    """The backends the foundry-track distribution itself registers, by name."""
    from foundry_track.plugins import discover

    return {name: info for name, info in discover().items() if info.distribution == BUILTIN_DISTRIBUTION}


def backend_options(name: str) -> str:
    from foundry_track.plugins import options_model

    info = builtin_backends().get(name)
    if info is None or info.plugin is None:
        # Not an error: the docs then say plainly that this build could not see it.
        return (f"!!! warning \"Not generated\"\n    The `{name}` backend was not found where these docs were "
                f"built, so its options are not listed here. Install it with "
                f"`pip install 'foundry-track[{name}]'` and see `foundry-track backends`.\n")
    model = options_model(info)
    # Nothing that depends on the machine (whether the SDK is installed here): the text is committed.
    head = (f"Entry point `{name} = {info.value}` in the `foundry_track` group of the `{info.distribution}` "
            f"distribution.\n\n")
    if not model.model_fields:
        return head + f"The `{name}` backend takes no options: write `{name}: {{}}`.\n"
    return head + options_reference(model, ["tracking", "backends", name], where=f"backend {name!r}",
                                    anchor_prefix=f"{name}-")


def backends_table() -> str:
    rows = ["| name | entry point | install | page |", "| --- | --- | --- | --- |"]
    for name, info in builtin_backends().items():
        rows.append(f"| `{name}` | `{info.value}` | `pip install 'foundry-track[{name}]'` | "
                    f"[{name}](backends/{name}.md) |")
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------- #
# The hook reference
# --------------------------------------------------------------------------- #

_STAGES = {
    "tracker_options_model": "discovery", "tracker_unavailable": "discovery", "tracker_doctor": "doctor",
    "tracker_start": "start", "tracker_finish": "finish",
}
_STAGE_TEXT = {
    "discovery": "Called on a fresh instance when the backend is listed or a run is configured, on the "
                 "calling thread. Must be cheap and must not import the tracker's SDK.",
    "doctor": "Called by `foundry-track doctor` on a fresh instance, on the calling thread, never during a run.",
    "start": "Called once per run on the backend's worker thread, bounded by `start_timeout`.",
    "log": "Called on the backend's worker thread, in journal order, only after `tracker_start` returned.",
    "finish": "Called once on the backend's worker thread after every event was offered, bounded by "
              "`flush_timeout`.",
}


def hook_signature(name: str) -> str:
    """``tracker_x(arg: Type, ...) -> Return`` exactly as written in hookspecs.py."""
    from foundry_track import hookspecs

    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {_annotation(p.annotation)}" for p in sig.parameters.values())
    return f"{name}({params}) -> {_annotation(sig.return_annotation)}"


def _annotation(annotation: Any) -> str:
    # `from __future__ import annotations` keeps them as the source text.
    return annotation if isinstance(annotation, str) else type_name(annotation)


def rst_to_markdown(text: str, hooks: set[str], *, links: Mapping[str, str] | None = None) -> str:
    """The subset of reStructuredText the hookspec and API docstrings use, as
    Markdown. ``links`` maps a role's target (``foundry_track.init`` or ``init``)
    to an anchor."""
    text = inspect.cleandoc(text)

    from foundry_track import events

    event_names = set(events.__all__)
    links = links or {}

    def role(match: re.Match[str]) -> str:
        kind, target = match.group(1), match.group(2).lstrip("~")
        short = target.rsplit(".", 1)[-1]
        for name in (target, short):
            if name in links:
                shown = f"{short}()" if kind in ("func", "meth") else short
                return f"[`{shown}`]({links[name]})"
        if kind == "func" and short in hooks:
            return f"[`{short}`](#{short})"
        if kind == "class" and short in event_names:
            return f"[`{short}`](#{short.lower()})"
        return f"`{short}`"

    text = re.sub(r":(func|class|data|meth|attr|mod):`([^`]+)`", role, text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    text = re.sub(r"^\.\. versionadded:: (\S+)$", r"*New in version \1.*", text, flags=re.M)
    text = text.replace("::\n", ":\n")
    lines, out = text.splitlines(), []
    i = 0
    while i < len(lines):
        match = re.match(r":param (\w+):\s*(.*)", lines[i])
        if match:
            body = [match.group(2)]
            i += 1
            while i < len(lines) and lines[i].startswith("    "):
                body.append(lines[i].strip())
                i += 1
            out.append(f"- **`{match.group(1)}`** — {' '.join(body)}")
            if i < len(lines) and lines[i].strip() and not lines[i].startswith(":param"):
                out.append("")  # a paragraph after the list
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def hook_reference() -> str:
    from foundry_track import hookspecs

    hooks = set(hookspecs.__all__)
    out = []
    for name in hookspecs.__all__:
        function = getattr(hookspecs, name)
        spec = getattr(function, f"{hookspecs.PROJECT_NAME}_spec", {}) or {}
        stage = _STAGES.get(name, "log")
        if spec.get("firstresult"):
            returns = "returns a value (the first non-None result is used)"
        else:
            returns = "return value ignored" if hook_signature(name).endswith("-> None") else "returns a value"
        out += [
            f"### `{hook_signature(name)}` {{ #{name} }}",
            "",
            f"*{stage} hook · {returns}* — {_STAGE_TEXT[stage]}",
            "",
            rst_to_markdown(function.__doc__ or "", hooks),
            "",
        ]
    return "\n".join(out)


def event_types() -> str:
    from foundry_track import events

    out = []
    for name in events.__all__:
        obj = getattr(events, name)
        if isinstance(obj, type) and dataclasses.is_dataclass(obj):
            doc = inspect.cleandoc(obj.__doc__ or "") if obj.__doc__ and not obj.__doc__.startswith(name + "(") else ""
            out += [f"### `{name}` {{ #{name.lower()} }}", ""]
            if doc:
                out += [rst_to_markdown(doc, set()), ""]
            out += ["| field | type | default |", "| --- | --- | --- |"]
            for f in dataclasses.fields(obj):
                if f.default is not dataclasses.MISSING:
                    default = cell(yaml_value(f.default))
                elif f.default_factory is not dataclasses.MISSING:
                    default = cell(yaml_value(f.default_factory()))
                else:
                    default = ""
                out.append(f"| `{f.name}` | {cell(str(f.type))} | {default} |")
            out.append("")
    aliases = [(n, getattr(events, n)) for n in events.__all__ if get_origin(getattr(events, n)) is not None]
    if aliases:
        out += ["### Type aliases { #type-aliases }", "", "| name | values |", "| --- | --- |"]
        out += [f"| `{n}` | {cell(type_name(a))} |" for n, a in aliases]
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- #
# The conformance kit and the command line
# --------------------------------------------------------------------------- #


def conformance_cases() -> str:
    from foundry_track.events import RunInfo
    from foundry_track.testing import cases as kit

    with tempfile.TemporaryDirectory() as tmp:
        info = RunInfo("docs0000", "docs", "docs", None, (), None, None, {}, Path(tmp), False)
        files = kit.write_inputs(Path(tmp) / "inputs")
        groups = [("A new run", kit.new_run_cases(info, None, files)),
                  ("Restart after a failed run", kit.restart_cases(info, None, {})),
                  ("Sync of a closed run", kit.sync_cases(info, None, {}))]
    out = ["| instance | case | hook | what a backend must do |", "| --- | --- | --- | --- |"]
    for title, cases in groups:
        for case in cases:
            out.append(f"| {title} | {case.name} | [`{case.hook}`](reference.md#{case.hook}) | "
                       f"{case.hint.replace('|', '/') or 'return without raising'} |")
    return "\n".join(out) + "\n"


class _StableHelp(argparse.HelpFormatter):
    """--help as committed: the same on every Python the project supports and in
    any terminal (a fixed width, no colour, one spelling of an option's metavar)."""

    def __init__(self, prog: str, *args: Any, **kwargs: Any) -> None:
        kwargs.update(width=80, max_help_position=24)
        super().__init__(prog, *args, **kwargs)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        # Python 3.13 writes `-o, --output FILE` where earlier ones write
        # `-o FILE, --output FILE`: the shorter one, everywhere.
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {metavar}"


def _stable(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    base = parser.formatter_class
    parser.formatter_class = type(f"Stable{getattr(base, '__name__', 'Help')}", (_StableHelp, base), {})
    parser.color = False  # Python 3.14 colours help on a terminal
    return parser


def cli_reference() -> str:
    from foundry_track import cli

    parser = _stable(cli._parser())
    out = ["```text", "$ foundry-track --help", parser.format_help().rstrip(), "```", ""]
    for action in parser._subparsers._group_actions if parser._subparsers else []:  # noqa: SLF001
        for name, sub in action.choices.items():
            out += [f"### `foundry-track {name}` {{ #cli-{name} }}", "", "```text",
                    f"$ foundry-track {name} --help", _stable(sub).format_help().rstrip(), "```", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- #
# The Python API: foundry_track.init, foundry_track.sync and Run
# --------------------------------------------------------------------------- #


def _default_text(value: Any) -> str:
    # Strings in double quotes, as the source writes them.
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def python_signature(name: str, function: Callable[..., Any], *, skip_self: bool = False) -> str:
    """``name(arg: Type = default, *, kw: Type, **rest: Any) -> Return`` as the
    source writes it (annotations stay text under ``from __future__ import
    annotations``), one parameter per line when it does not fit in 88 columns."""
    sig = inspect.signature(function)
    params, star_done = [], False
    for i, p in enumerate(sig.parameters.values()):
        if skip_self and i == 0:
            continue
        if p.kind is p.KEYWORD_ONLY and not star_done:
            params.append("*")
            star_done = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {_default_text(p.default)}" if p.annotation is not p.empty else f"={_default_text(p.default)}"
        params.append(text)
    returns = "" if sig.return_annotation is sig.empty else f" -> {_annotation(sig.return_annotation)}"
    one_line = f"{name}({', '.join(params)}){returns}"
    if len(one_line) <= 88:
        return one_line
    return f"{name}(\n" + "".join(f"    {p},\n" for p in params) + f"){returns}"


def _api_links() -> dict[str, str]:
    from foundry_track.run import Run

    links = {"init": "#init", "foundry_track.init": "#init", "sync": "#sync", "foundry_track.sync": "#sync",
             "Run": "#run", "foundry_track.Run": "#run"}
    links.update({name: f"#run-{name.replace('_', '-')}" for name, _ in run_members(Run)})
    return links


def run_members(cls: type) -> list[tuple[str, Any]]:
    """The public properties and methods of ``cls``, in the order the source defines them."""
    return [(name, value) for name, value in vars(cls).items()
            if not name.startswith("_") and (isinstance(value, property) or inspect.isfunction(value))]


def _docstring(obj: Any, links: Mapping[str, str]) -> str:
    doc = inspect.getdoc(obj) or ""
    return rst_to_markdown(doc, set(), links=links) if doc else ""


def api_reference() -> str:
    from foundry_track import start
    from foundry_track.run import Run

    links = _api_links()
    out: list[str] = []
    for public, function in (("init", start.init), ("sync", start.sync)):
        out += [f"## `foundry_track.{public}()` {{ #{public} }}", "", "```python",
                python_signature(f"foundry_track.{public}", function), "```", "",
                _docstring(function, links), ""]
    out += ["## `Run` { #run }", "", _docstring(Run, links), "",
            "A `Run` is a context manager: `with foundry_track.init(...) as run:` calls "
            "[`run.finish()`](#run-finish) when the block ends, with the status `success`, `failed` when the "
            "block raised, or `killed` on `KeyboardInterrupt` and `SystemExit`.", ""]
    for name, member in run_members(Run):
        anchor = f"run-{name.replace('_', '-')}"
        if isinstance(member, property):
            returns = inspect.signature(member.fget).return_annotation if member.fget else inspect.Signature.empty
            kind = "" if returns is inspect.Signature.empty else f": {_annotation(returns)}"
            out += [f"### `run.{name}` {{ #{anchor} }}", "", "```python", f"run.{name}{kind}  # read-only",
                    "```", ""]
            out += [_docstring(member, links), ""] if member.__doc__ else []
        else:
            out += [f"### `run.{name}()` {{ #{anchor} }}", "", "```python",
                    python_signature(f"run.{name}", member, skip_self=True), "```", ""]
            out += [_docstring(member, links), ""] if member.__doc__ else []
    return "\n".join(out)


GENERATORS: dict[str, Callable[..., str]] = {
    "api-reference": api_reference,
    "tracking-config": tracking_config,
    "tracking-defaults": tracking_defaults,
    "backend-options": backend_options,
    "backends": backends_table,
    "hook-reference": hook_reference,
    "event-types": event_types,
    "conformance-cases": conformance_cases,
    "cli-reference": cli_reference,
}


def generate(spec: str, where: str = "page") -> str:
    """The Markdown of one generated part, ``spec`` being its name and argument."""
    kind, _, argument = spec.partition(" ")
    generator = GENERATORS.get(kind)
    if generator is None:
        raise DocsError(f"{where}: unknown marker 'generated: {kind}'; known: {', '.join(GENERATORS)}")
    return generator(argument) if argument else generator()


def _block(spec: str, body: str) -> str:
    return (f"<!-- BEGIN generated: {spec} (from the code: {REGENERATE}) -->\n\n{body.strip(chr(10))}\n\n"
            f"<!-- END generated: {spec} -->")


def render(markdown: str, where: str = "page") -> str:
    """``markdown`` with every generated part regenerated from the code, and
    every one-line marker expanded into a BEGIN/END block."""
    markdown = MARKER.sub(lambda m: _block(m.group(1), ""), markdown)
    rendered = BLOCK.sub(lambda m: _block(m.group("spec"), generate(m.group("spec"), where)), markdown)
    stray = EDGE.findall(BLOCK.sub("", rendered))
    if stray:
        raise DocsError(f"{where}: a generated part's markers do not pair up: {stray[0]!r} (each "
                        f"'<!-- BEGIN generated: NAME -->' needs its '<!-- END generated: NAME -->')")
    return rendered


def pages(root: Path = DOCS) -> list[Path]:
    """Every Markdown page of the docs (the example distribution's build folder excluded)."""
    return sorted(p for p in root.rglob("*.md") if "build" not in p.relative_to(root).parts)


def drift(paths: Iterable[Path]) -> dict[Path, str]:
    """Each page whose committed generated text differs from the code's, with a unified diff."""
    found = {}
    for path in paths:
        committed = path.read_text(encoding="utf-8")
        current = render(committed, str(path))
        if current != committed:
            found[path] = "".join(difflib.unified_diff(
                committed.splitlines(keepends=True), current.splitlines(keepends=True),
                f"{path} (committed)", f"{path} (from the code)", n=1))
    return found


def write(paths: Iterable[Path]) -> list[Path]:
    """Regenerate the parts of ``paths`` in place; return the pages that changed."""
    changed = []
    for path in paths:
        committed = path.read_text(encoding="utf-8")
        current = render(committed, str(path))
        if current != committed:
            path.write_text(current, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/hooks.py", description=(
        "Regenerate the reference parts of the docs from the code. With no page given, every docs/**/*.md."))
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite the pages whose generated parts changed")
    action.add_argument("--check", action="store_true", help="exit 1, showing a diff, if a page would change")
    parser.add_argument("pages", nargs="*", type=Path, help="Markdown pages (default: every page of docs/)")
    args = parser.parse_args(argv)
    targets = args.pages or pages()
    if args.write:
        for path in write(targets):
            print(f"regenerated {path}")
        return 0
    drifted = drift(targets)
    for diff in drifted.values():
        sys.stdout.write(diff)
    if drifted:
        print(f"\n{len(drifted)} page(s) differ from the code: run `{REGENERATE}`", file=sys.stderr)
    return 1 if drifted else 0


# --------------------------------------------------------------------------- #
# MkDocs entry points
# --------------------------------------------------------------------------- #


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return unescape_table_code(render(markdown, where=page.file.src_uri))


if __name__ == "__main__":
    sys.exit(main())
