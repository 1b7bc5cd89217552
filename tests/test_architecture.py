"""The layering rules, checked on the source (docs/plugins/reference.md and
README's layout table describe them):

- nothing outside ``foundry_track/cli/`` imports ``foundry_track.cli``;
- a backend imports only the public surface of ``foundry_track``;
- the import graph of ``foundry_track/`` has no cycle (module-level and
  function-level imports both count; ``if TYPE_CHECKING:`` blocks do not,
  they never run);
- no module over ~600 lines, no function over ~80 lines without a
  ``# long: <why>`` comment just above its ``def``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "foundry_track"
BACKENDS = ROOT / "backends"
#: What a backend (built-in or third-party) may import of foundry_track.
PUBLIC_SURFACE = frozenset({
    "foundry_track", "foundry_track.events", "foundry_track.hookspecs", "foundry_track.errors",
    "foundry_track.checks", "foundry_track.testing",
})
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, module: str, *, type_checking: bool) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in ``path``, resolved to absolute names.
    ``from a import b`` yields ``a.b`` as well as ``a`` (``b`` may be a module)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child) and not type_checking:
                for other in child.orelse:
                    yield from visit(other)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, child.lineno
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".")
                    drop = child.level - 1 if is_package else child.level
                    anchor = anchor[: len(anchor) - drop] if drop else anchor
                    base = ".".join([*anchor, base] if base else anchor)
                yield base, child.lineno
                for alias in child.names:
                    yield f"{base}.{alias.name}", child.lineno
            yield from visit(child)

    yield from visit(tree)


def package_modules() -> dict[str, Path]:
    return {module_name(p, ROOT): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module of foundry_track: line}, runtime imports only."""
    modules = package_modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in imports(path, name, type_checking=False):
            if target in modules and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_nothing_outside_the_cli_imports_the_cli() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for name, path in package_modules().items() if not (name == "foundry_track.cli" or
                                                            name.startswith("foundry_track.cli."))
        for target, line in imports(path, name, type_checking=True)
        if target == "foundry_track.cli" or target.startswith("foundry_track.cli.")
    ]
    assert not offenders, "the core must not reach up into its command line:\n" + "\n".join(offenders)


def test_backends_import_only_the_public_surface() -> None:
    paths = sorted(BACKENDS.rglob("*.py"))
    assert len(paths) >= 3
    offenders = []
    for path in paths:
        for target, line in imports(path, module_name(path, BACKENDS), type_checking=True):
            if (target == "foundry_track" or target.startswith("foundry_track.")) and target not in PUBLIC_SURFACE:
                # `from foundry_track import hookimpl` yields foundry_track.hookimpl: a name, not a module
                if target.rsplit(".", 1)[0] == "foundry_track" and not (PACKAGE / target.split(".")[1]).exists() \
                        and not (PACKAGE / f"{target.split('.')[1]}.py").exists():
                    continue
                if target.rsplit(".", 1)[0] in PUBLIC_SURFACE - {"foundry_track"}:
                    continue  # a name imported from a public module
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not offenders, ("backends may import only " + ", ".join(sorted(PUBLIC_SURFACE)) + ":\n"
                           + "\n".join(offenders))


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "foundry_track.run" in graph and graph["foundry_track.start"], "the graph was not read"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    # So that the test above can fail.
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1}}) is None


def test_imports_are_resolved_with_relative_and_function_level_forms(tmp_path: Path) -> None:
    pkg = tmp_path / "foundry_track" / "sub"
    pkg.mkdir(parents=True)
    source = pkg / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\nfrom . import other\nif TYPE_CHECKING:\n"
                      "    from foundry_track import hidden\n\ndef f():\n    from ..cli import main\n")
    found = {t for t, _ in imports(source, "foundry_track.sub.mod", type_checking=False)}
    assert {"foundry_track.sub.other", "foundry_track.cli.main", "foundry_track.cli"} <= found
    assert "foundry_track.hidden" not in found
    assert "foundry_track.hidden" in {t for t, _ in imports(source, "foundry_track.sub.mod", type_checking=True)}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {len(lines)} lines; split it"
    long_ones = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
            size = node.end_lineno - node.lineno + 1
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            reason = lines[first - 2].strip() if first >= 2 else ""
            if size > MAX_FUNCTION_LINES and not reason.startswith("# long:"):
                long_ones.append(f"{node.name} (line {node.lineno}, {size} lines)")
    assert not long_ones, (f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION_LINES} lines without a "
                           f"'# long: <why>' comment above them: {', '.join(long_ones)}")
