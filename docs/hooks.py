"""MkDocs hooks: the reference parts of the docs are generated from the code
at build time, so they cannot drift from it.

A page asks for a generated part with a marker on a line of its own::

    <!-- generated: tracking-config -->          every key of the `tracking:` block
    <!-- generated: tracking-defaults -->        the whole block with its defaults, as YAML
    <!-- generated: backend-options NAME -->     a built-in backend's options
    <!-- generated: backends -->                 the backends found through the entry points
    <!-- generated: hook-reference -->          one section per hook; its heading is the exact signature
    <!-- generated: event-types -->             the dataclasses the hooks receive
    <!-- generated: conformance-cases -->       the cases of foundry_track.testing
    <!-- generated: cli-reference -->           every `foundry-track` command's --help

An unknown marker, or a configuration field without a description, fails the
build (and ``tests/test_docs.py``, which runs ``mkdocs build --strict``).
The functions are plain, so the tests import this file and call them too.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import tempfile
import types
from pathlib import Path
from typing import Any, Callable, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

MARKER = re.compile(r"^<!-- generated: ([a-z-]+)(?: ([A-Za-z0-9_.-]+))? -->$", re.MULTILINE)
BUILTIN_DISTRIBUTION = "foundry-track"


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
        shown = "required" if default is PydanticUndefined else f"`{yaml_value(default)}`"
        out.append(f"| [`{name}`](#{anchor_prefix}{name}) | `{type_name(field.annotation)}` | {shown} |")
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
    state = "available" if info.available else f"not available here: {info.unavailable}"
    head = (f"Entry point `{name} = {info.value}` in the `foundry_track` group of the `{info.distribution}` "
            f"distribution ({state}).\n\n")
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


def rst_to_markdown(text: str, hooks: set[str]) -> str:
    """The subset of reStructuredText the hookspec docstrings use, as Markdown."""
    text = inspect.cleandoc(text)

    from foundry_track import events

    event_names = set(events.__all__)

    def role(match: re.Match[str]) -> str:
        kind, target = match.group(1), match.group(2).lstrip("~")
        short = target.rsplit(".", 1)[-1]
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
                    default = f"`{yaml_value(f.default)}`"
                elif f.default_factory is not dataclasses.MISSING:
                    default = f"`{yaml_value(f.default_factory())}`"
                else:
                    default = ""
                out.append(f"| `{f.name}` | `{f.type}` | {default} |")
            out.append("")
    aliases = [(n, getattr(events, n)) for n in events.__all__ if get_origin(getattr(events, n)) is not None]
    if aliases:
        out += ["### Type aliases { #type-aliases }", "", "| name | values |", "| --- | --- |"]
        out += [f"| `{n}` | `{type_name(a)}` |" for n, a in aliases]
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


def cli_reference() -> str:
    from foundry_track import cli

    parser: argparse.ArgumentParser = cli._parser()
    out = ["```text", "$ foundry-track --help", parser.format_help().rstrip(), "```", ""]
    for action in parser._subparsers._group_actions if parser._subparsers else []:  # noqa: SLF001
        for name, sub in action.choices.items():
            out += [f"### `foundry-track {name}` {{ #cli-{name} }}", "", "```text",
                    f"$ foundry-track {name} --help", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out)


GENERATORS: dict[str, Callable[..., str]] = {
    "tracking-config": tracking_config,
    "tracking-defaults": tracking_defaults,
    "backend-options": backend_options,
    "backends": backends_table,
    "hook-reference": hook_reference,
    "event-types": event_types,
    "conformance-cases": conformance_cases,
    "cli-reference": cli_reference,
}


def render(markdown: str, where: str = "page") -> str:
    """Replace every marker in ``markdown`` with its generated text."""

    def replace(match: re.Match[str]) -> str:
        kind, argument = match.group(1), match.group(2)
        generator = GENERATORS.get(kind)
        if generator is None:
            raise DocsError(f"{where}: unknown marker 'generated: {kind}'; known: {', '.join(GENERATORS)}")
        return generator(argument) if argument else generator()

    return MARKER.sub(replace, markdown)


# --------------------------------------------------------------------------- #
# MkDocs entry points
# --------------------------------------------------------------------------- #


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return render(markdown, where=page.file.src_uri)

