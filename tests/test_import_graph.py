"""The import graph of the ``jaxdiff`` package has no cycle (module-level and function-local
imports alike), and the training system never imports the tasks.

Edges are read with ``ast`` from every ``import`` / ``from ... import`` in every module (relative
imports resolved). Resolution rules:

* ``import jaxdiff.a.b`` / ``from jaxdiff.a.b import f``: an edge to module ``jaxdiff.a.b`` (a
  package means its ``__init__``);
* ``from jaxdiff.a import b`` where ``b`` is a submodule of ``jaxdiff.a``: an edge to
  ``jaxdiff.a.b`` only. Python needs just the parent package *object* for that; running its
  ``__init__`` is a side effect of the first import, so ``from jaxdiff import sde`` inside a
  subpackage does not make ``jaxdiff/__init__`` (which imports that subpackage) part of a cycle.
  Importing a *name* defined in a package's ``__init__`` (``from jaxdiff.a import f``) is an edge
  to that ``__init__``.
* A package ``__init__`` importing its own submodules is an ordinary edge; it only closes a cycle
  when a submodule imports a name from that ``__init__`` back.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "jaxdiff"


def _modules() -> dict:
    """module name -> path, for every .py file of the package."""
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _is_package(path: pathlib.Path) -> bool:
    return path.name == "__init__.py"


def _resolve(name: str, mods: dict):
    """The longest prefix of ``name`` that is a module of the package (or ``None``)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in mods:
            return cand
        parts.pop()
    return None


def import_graph() -> dict:
    """``{module: {imported jaxdiff module, ...}}`` over module-level and local imports."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if _is_package(path) else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                if not src.split(".")[0] == "jaxdiff":
                    continue
                names = [a.name for a in node.names]
                subs = [f"{src}.{n}" for n in names if f"{src}.{n}" in mods]
                targets = subs
                if len(subs) < len(names):  # names defined in ``src`` itself
                    targets = targets + [src]
            for t in targets:
                if t.split(".")[0] != "jaxdiff":
                    continue
                r = _resolve(t, mods)
                if r is not None and r != mod:
                    graph[mod].add(r)
    return graph


def find_cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan), each as a sorted
    list."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _cycle_path(graph: dict, comp: list) -> list:
    """One concrete cycle through ``comp[0]`` inside a strongly connected component (breadth
    first, so the shortest), for the failure message."""
    comp_set, start = set(comp), comp[0]
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp_set):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def test_the_walker_sees_local_and_relative_imports(tmp_path, monkeypatch):
    # the walker itself: a function-local import closing a cycle is found
    g = {"jaxdiff.a": {"jaxdiff.b"}, "jaxdiff.b": {"jaxdiff.c"}, "jaxdiff.c": {"jaxdiff.a"},
         "jaxdiff.d": {"jaxdiff.a"}}
    assert find_cycles(g) == [["jaxdiff.a", "jaxdiff.b", "jaxdiff.c"]]
    assert _cycle_path(g, ["jaxdiff.a", "jaxdiff.b", "jaxdiff.c"]) == [
        "jaxdiff.a", "jaxdiff.b", "jaxdiff.c", "jaxdiff.a"]
    graph = import_graph()
    # module-level, function-local and submodule edges are all present
    assert "jaxdiff.train.step" in graph["jaxdiff.train.loop"]
    assert "jaxdiff.sde" in graph["jaxdiff.train.step"]          # from jaxdiff import sde
    assert "jaxdiff" not in graph["jaxdiff.train.step"]          # ... not jaxdiff/__init__
    assert "jaxdiff.tasks.base" in graph["jaxdiff.tasks.msdiff"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    msg = "\n".join(" -> ".join(_cycle_path(graph, c)) for c in cycles)
    assert not cycles, f"import cycles in jaxdiff:\n{msg}"


@pytest.mark.parametrize("lower", ["jaxdiff.train", "jaxdiff.eval", "jaxdiff.data",
                                   "jaxdiff.models"])
def test_lower_layers_never_import_the_tasks(lower):
    graph = import_graph()
    bad = sorted((m, t) for m, ts in graph.items() if m == lower or m.startswith(lower + ".")
                 for t in ts if t == "jaxdiff.tasks" or t.startswith("jaxdiff.tasks."))
    assert not bad, bad
