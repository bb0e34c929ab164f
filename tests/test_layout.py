"""The package's shape: no import cycles inside ``kasa/`` (lazy imports inside functions and package<->submodule
edges count too), the benchmark families are discovered from their folders, and nothing outside ``kasa/tasks/``
names a family."""

from __future__ import annotations

import ast
from pathlib import Path

import kasa

ROOT = Path(kasa.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(current: str, is_pkg: bool, level: int, target: str | None) -> str:
    base = current.split(".") if is_pkg else current.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def import_graph() -> dict[str, set[str]]:
    """``{module: kasa modules it imports}``; ``from pkg import name`` counts as importing ``pkg.name`` when
    that is a module, else ``pkg``."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(mod, is_pkg, node.level, node.module) if node.level else (node.module or "")
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in files else src for a in node.names]
            for t in targets:
                while t and t not in files:  # kasa.methods.layer.X -> kasa.methods.layer
                    t = t.rpartition(".")[0]
                if t.startswith("kasa") and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles of the import graph, package<->submodule edges included: a package's ``__init__`` may import its
    submodules to expose its API, but then no submodule may import the package back (``from kasa.methods import X``
    inside ``kasa/methods/``), or which one Python initialises first decides whether the import works."""
    edges = graph
    cycles, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycles_inside_kasa():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_cycle_finder_sees_a_cycle():
    assert find_cycles({"kasa.a": {"kasa.b"}, "kasa.b": {"kasa.a"}}) == [["kasa.a", "kasa.b", "kasa.a"]]


def test_every_family_folder_is_discovered():
    from kasa.tasks import tasks

    folders = {p.parent.name for p in (ROOT / "tasks").glob("*/__init__.py")}
    assert set(tasks()) == folders
    assert {type(t).__module__.split(".")[2] for t in tasks().values()} == folders


def test_nothing_outside_tasks_names_a_family():
    """A family is known by its folder under kasa/tasks/ alone: no string literal outside it is a family's name
    (code asks the family's Task for what it needs: ``causal_lm``, ``peft_task_type``, ``check``...)."""
    from kasa.tasks import tasks

    families = set(tasks())
    named = []
    for p in ROOT.rglob("*.py"):
        if (ROOT / "tasks") in p.parents:
            continue
        tree = ast.parse(p.read_text())
        # a record's field (r["instruction"], the Alpaca key) is data, not a family
        keys = {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
        named += [f"{p.relative_to(ROOT.parent)}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in families
                  and id(node) not in keys]
    assert not named, named
