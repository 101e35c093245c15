"""The training package has no import cycle, and every module imports on its own in a fresh
interpreter whatever was imported before it (a cycle shows up as an ImportError for a
half-initialised module only in some orders)."""
from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ChestCTMTLTraining"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph():
    """module -> package modules it imports anywhere (function-level imports count too)."""
    files = sorted(PKG.rglob("*.py"))
    modules = {_module_name(p): p for p in files}
    graph = {}
    for mod, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, mod, path.name == "__init__.py")
                targets = [base] + ["%s.%s" % (base, a.name) for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != mod and t.startswith("ChestCTMTLTraining"):
                    deps.add(t)
        graph[mod] = deps
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_training_package_has_no_import_cycle():
    graph = import_graph()
    assert "ChestCTMTLTraining.train" in graph and "ChestCTMTLTraining.data" in graph
    # a package's __init__ importing its own submodules is no cycle when they import only
    # siblings; an edge from a submodule back to its package __init__ would be one
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_source_module_is_registered():
    from ChestCTMTLTraining.sources import ADAPTERS

    modules = {p.stem for p in (PKG / "sources").glob("*.py")} - {"__init__", "base", "volumes"}
    assert modules == set(ADAPTERS), "one module per source type, each in ADAPTERS"
    for kind, fn in ADAPTERS.items():
        assert fn.__module__ == "ChestCTMTLTraining.sources." + kind


@pytest.mark.parametrize("seed", [0, 1])
def test_modules_import_in_any_order_in_a_fresh_interpreter(seed):
    mods = sorted(import_graph())
    random.Random(seed).shuffle(mods)
    code = "import importlib\nfor m in %r:\n    importlib.import_module(m)\n" % mods
    env_path = "%s:%s" % (ROOT / "ChestCTMTL", ROOT)
    res = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, timeout=300)
    assert res.returncode == 0, "order %s:\n%s" % (mods, res.stderr[-3000:])
