"""The package's import graph: no cycles, and each module imports only from its own layer or the layers below.

Layers, lowest first (a module's layer is its longest matching prefix below). The stage layer holds the library
code the tasks share (configs, model preparation for a run, edit processes, result fields, work lists) and every
task's body (`stages/<name>.py` or the package `stages/<name>/`: the gallery, the neuron pipeline); `tasks/` holds
thin task configs + calls, and only the CLI reaches it. The toy world's science harness and contact sheets
(`digin/science/`) run tasks the way a user does, so they sit above the CLI. Function-level imports count too.
"""
import ast
import collections
from pathlib import Path

import digin

ROOT = Path(digin.__file__).parent
LAYERS = [
    ("digin", "digin.errors", "digin.extras", "digin.quiet"),
    ("digin.kernels",),
    ("digin.shards",),
    ("digin.engine",),
    ("digin.caption", "digin.toy"),
    ("digin.stages",),
    ("digin.config_check",),
    ("digin.tasks",),
    ("digin.cli", "digin.__main__"),
    ("digin.science",),
]


def layer_of(module: str) -> int:
    best, level = "", None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best):
                best, level = p, i
    assert level is not None, module
    return level


def modules() -> dict:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("digin",) + path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph() -> dict:
    mods = modules()

    def resolve(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    edges = collections.defaultdict(set)
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(head + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                target = resolve(t) if t.startswith("digin") else None
                if target and target != mod:
                    edges[mod].add(target)
    return edges


def strongly_connected(edges: dict) -> list:
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert strongly_connected(import_graph()) == []


def test_no_module_imports_a_higher_layer():
    upward = sorted(f"{a} -> {b}" for a, bs in import_graph().items() for b in bs if layer_of(b) > layer_of(a))
    assert upward == []


def test_kernels_import_nothing_from_the_engine():
    edges = import_graph()
    assert not [(a, b) for a, bs in edges.items() if a.startswith("digin.kernels") for b in bs
                if not b.startswith("digin.kernels")]
