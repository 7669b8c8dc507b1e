"""The module graph of edgekit/: every import statement anywhere in a file (inside functions too,
since a lazy import still ties the two modules together), with no cycles, and evaluate.py free of
the stages it measures."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgekit"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name; a package's __init__.py is the package."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def loaded_by(name: str, modules: dict[str, Path]) -> list[str]:
    """The edgekit modules importing dotted NAME runs: each package on its way, and NAME itself
    where it is a module (not an attribute of one)."""
    parts = name.split(".")
    return [m for m in (".".join(parts[: i + 1]) for i in range(len(parts))) if m in modules]


def imports(module: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The edgekit modules MODULE imports, each with the first line that does."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            for target in loaded_by(name, modules):
                if target != module:
                    found.setdefault(target, node.lineno)
    return found


def graph() -> dict[str, dict[str, int]]:
    modules = module_files()
    return {m: imports(m, p, modules) for m, p in modules.items()}


def shortest_path(edges: dict[str, dict[str, int]], start: str, goal: str, within: set[str]) -> list[str]:
    """Breadth-first path START -> GOAL through modules of WITHIN."""
    came = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = [node]
            while came[path[-1]] is not None:
                path.append(came[path[-1]])
            return path[::-1]
        for nxt in edges[node]:
            if nxt in within and nxt not in came:
                came[nxt] = node
                queue.append(nxt)
    return []


def components(edges: dict[str, dict[str, int]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """For every import edge inside a cycle, the shortest cycle through it; each cycle once."""
    seen, out = set(), []
    for component in components(edges):
        for source in sorted(component):
            for target in sorted(t for t in edges[source] if t in component):
                cycle = [source, *shortest_path(edges, target, source, component)[:-1]]
                turn = cycle.index(min(cycle))
                key = tuple(cycle[turn:] + cycle[:turn])
                if key not in seen:
                    seen.add(key)
                    out.append(list(key))
    return sorted(out, key=lambda c: (len(c), c))


def describe(cycle: list[str], edges: dict[str, dict[str, int]]) -> str:
    steps = zip(cycle, cycle[1:] + cycle[:1], strict=True)
    return " -> ".join(f"{a} (line {edges[a][b]})" for a, b in steps) + f" -> {cycle[0]}"


def test_no_import_cycles():
    edges = graph()
    found = cycles(edges)
    assert not found, f"{len(found)} import cycle(s) in edgekit/:\n" + "\n".join(
        describe(c, edges) for c in found
    )


def test_cycles_are_found_inside_functions(tmp_path):
    """The checker itself: a lazy import inside a function, a relative import and a submodule
    named by `from package import module` are all edges, and a cycle among them is found."""
    files = {
        "edgekit/__init__.py": "",
        "edgekit/a/__init__.py": "",
        "edgekit/a/b.py": "def f():\n    from . import c\n    from ..d import value\n",
        "edgekit/a/c.py": "from edgekit import d\n",
        "edgekit/d.py": "value = 1\n\n\ndef g():\n    import edgekit.a.b\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = module_files(tmp_path / "edgekit")
    edges = {m: imports(m, p, modules) for m, p in modules.items()}
    assert edges["edgekit.a.b"] == {"edgekit": 2, "edgekit.a": 2, "edgekit.a.c": 2, "edgekit.d": 3}
    assert cycles(edges) == [["edgekit.a.b", "edgekit.d"], ["edgekit.a.b", "edgekit.a.c", "edgekit.d"]]
    assert "edgekit.a.b (line 3) -> edgekit.d (line 5) -> edgekit.a.b" in [
        describe(c, edges) for c in cycles(edges)
    ]


def test_evaluate_imports_no_stage():
    """evaluate.py measures what the stages make, so it imports none of them."""
    allowed = {
        "edgekit",
        "edgekit.artifact",
        "edgekit.data",
        "edgekit.errors",
        "edgekit.benchmarks",
        "edgekit.benchmarks.metrics",
        "edgekit.runtimes",
        "edgekit.runtimes.ort",
        "edgekit.memory",  # how many samples a run may hold
        "edgekit.task_metric",  # the user's metric, called on outputs
        "edgekit.user_code",
    }
    assert set(graph()["edgekit.evaluate"]) <= allowed
