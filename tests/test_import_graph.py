"""No lightpipe module imports another that imports it back, directly or through others — lazy
imports inside functions included: a cycle means two modules that are really one."""

import ast
from pathlib import Path

import pytest

import lightpipe

pytestmark = pytest.mark.unit

ROOT = Path(lightpipe.__file__).parent


def module_files() -> dict[str, tuple[Path, bool]]:
    """Module name → (file, is a package)."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → the lightpipe modules it imports anywhere in its file. Importing a submodule
    runs its package's __init__ too, but that isn't the submodule importing its package back."""
    modules = module_files()
    graph = {}
    for name, (path, is_package) in modules.items():
        targets = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        edges = set()
        for target in targets:
            while target and target not in modules:  # `from x.y import function` → x.y
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that reach each other (strongly connected, more than one module)."""
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    groups = {frozenset([a] + [b for b in reach[a] if a in reach[b]]) for a in graph if a in reach[a]}
    return sorted(sorted(g) for g in groups)


def test_the_checker_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_includes_lazy_and_relative_imports():
    graph = import_graph()
    assert "lightpipe.tokenization.marian" in graph["lightpipe.tokenization"]  # imported inside load()
    assert "lightpipe.tokenization.base" in graph["lightpipe.tokenization.fast"]  # from .base import ...


def test_no_module_imports_another_that_imports_it_back():
    found = cycles(import_graph())
    assert not found, f"import cycles: {found}"
