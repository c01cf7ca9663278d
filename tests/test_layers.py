"""The folder tree is the layer table (DESIGN.md, "The code"): every import inside pathens goes
down the table or stays in its own layer, and no modules import each other in a circle.

Read from the source (ast), so that imports inside functions (lazy ones) count too; only the
package's own `pathens/__init__.py` is exempt: it names the public API of every layer (lazily).
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

import pathens

ROOT = Path(pathens.__file__).parent

# lowest first; a module may import its own layer and those before it
LAYERS = [
    {"version", "errors", "checks", "io", "results", "display", "distributed", "combinatorics"},
    {"data"}, {"models"}, {"adapters"}, {"zoo"}, {"view"}, {"measure"}, {"report"},
    {"analysis", "diagnosis", "demo"}, {"cli", "__main__"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_names() -> dict:
    """dotted name (under pathens, "" for the package) -> file"""
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = module_names()


def imports(name: str, path: Path) -> set:
    """The pathens modules `name` imports (relative or absolute, at any depth of the file)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] + (node.module.split(".") if
                                                                   node.module else [])
            elif node.module and node.module.split(".")[0] == "pathens":
                base = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                sub = ".".join(base + [alias.name])
                found.add(sub if sub in MODULES else ".".join(base))  # a module, or a name in one
        elif isinstance(node, ast.Import):
            found |= {a.name.partition(".")[2] for a in node.names
                      if a.name.split(".")[0] == "pathens" and a.name.partition(".")[2]}
    return {m for m in found if m != name}


def layer(name: str) -> str:
    return name.split(".")[0]


GRAPH = nx.DiGraph()
for _name, _path in MODULES.items():
    if _name:  # the package itself: the public API
        GRAPH.add_node(_name)
        GRAPH.add_edges_from((_name, m) for m in imports(_name, _path) if m)


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_name_modules_that_exist(name):
    """A relative import that moved with its file but not with the tree fails at run time only
    (a lazy one, only when that function runs): found here instead."""
    missing = [m for m in GRAPH.successors(name) if m not in MODULES]
    assert not missing, f"{name} imports modules that do not exist: {missing}"


def test_every_module_is_in_a_layer():
    assert {layer(m) for m in GRAPH} <= set(RANK), \
        f"add the new top-level module or package to LAYERS: {sorted({layer(m) for m in GRAPH} - set(RANK))}"


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_go_down_the_layers(name):
    up = [m for m in GRAPH.successors(name) if RANK[layer(m)] > RANK[layer(name)]]
    assert not up, f"{name} ({layer(name)}) imports up the layers: {up}"


def test_no_import_cycles():
    cycles = list(nx.simple_cycles(GRAPH))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_the_oracle_sees_imports():
    """The graph this test checks is the real one: a few known edges, lazy ones included."""
    assert "view.residual_view" in GRAPH.successors("measure.lesion")
    assert "measure.registry" in GRAPH.successors("report.writer")
    assert "zoo" in GRAPH.successors("cli.inputs")  # imported inside a function


def test_every_module_imports():
    """Every name a module imports at its top exists (the moves, merges and splits of a layout
    change break exactly this, and only the tests that happen to import the module see it)."""
    import importlib
    for name in sorted(MODULES):
        if name and name != "__main__":
            importlib.import_module(f"pathens.{name}")
