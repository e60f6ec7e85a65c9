"""The dependency rules of docs/architecture.md, read from the source with `ast` (nothing is imported):

- no import cycle between the modules of `src/`, counting imports inside functions, where `from pkg import mod`
  imports the module `pkg.mod` and importing `a.b.c` also imports the packages `a.b` and `a` (Python runs their
  `__init__` first), except a module's own packages when it only passes through them to reach a sibling (they
  are initialised before it);
- MLflow is imported only inside `tracking/` and `registry/`;
- no source file is over 400 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MLFLOW_HOMES = ("rain_mlflow/tracking/", "rain_mlflow/registry/")
MAX_LINES = 400


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under `root` (a package is its `__init__.py`)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported_names(name: str, path: Path) -> Iterable[tuple[str, int]]:
    """(dotted name, line) of everything the module imports, at any depth of the file; relative imports resolved,
    and `from X import Y` reported both as X and as X.Y (a submodule, when Y is one)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of `root` it imports (itself excluded; the packages on the way included)."""
    mods = modules(root)
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        # The module's own packages are initialised before it runs: passing through one of them on the way to a
        # sibling (`from rain_mlflow.config.durations import ...` inside `config/`) is no edge, while importing
        # from the package itself (`from pkg import b` inside `pkg/`) is one.
        own = {".".join(name.split(".")[:end]) for end in range(1, name.count(".") + 1)}
        for target, _ in imported_names(name, path):
            parts = target.split(".")
            for end in range(1, len(parts) + 1):
                prefix = ".".join(parts[:end])
                if prefix in mods and prefix != name and (prefix not in own or prefix == target):
                    graph[name].add(prefix)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) per strongly connected group of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_through(graph, set(group), group[0]) for group in groups]


def _cycle_through(graph: dict[str, set[str]], group: set[str], start: str) -> list[str]:
    """The shortest path start -> ... -> start inside the group (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def mlflow_imports(root: Path) -> list[str]:
    """`file:line` of every import of mlflow outside tracking/ and registry/."""
    found: dict[tuple[str, int], str] = {}
    for name, path in modules(root).items():
        where = path.relative_to(root).as_posix()
        if where.startswith(MLFLOW_HOMES):
            continue
        for target, line in imported_names(name, path):
            if target == "mlflow" or target.startswith("mlflow."):  # `from mlflow import X`: named once, as mlflow
                found[where, line] = min(found.get((where, line), target), target, key=len)
    return [f"{where}:{line} imports {target}" for (where, line), target in sorted(found.items())]


def long_files(root: Path) -> list[str]:
    return [f"{path.relative_to(root)}: {n} lines" for path in sorted(root.rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_LINES]


@pytest.mark.unit
def test_no_import_cycles():
    found = cycles(import_graph(SRC))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


@pytest.mark.unit
def test_mlflow_is_imported_only_by_tracking_and_registry():
    found = mlflow_imports(SRC)
    assert not found, "MLflow imported outside tracking/ and registry/:\n" + "\n".join(found)


@pytest.mark.unit
def test_no_source_file_is_over_400_lines():
    found = long_files(SRC)
    assert not found, f"source files over {MAX_LINES} lines:\n" + "\n".join(found)


@pytest.mark.unit
def test_the_checks_find_what_they_look_for(tmp_path):
    """The three checks on a small made-up tree: a cycle closed by an import inside a function and by a package
    `__init__`, an MLflow import in the wrong place, a long file."""
    files = {
        "pkg/__init__.py": "from pkg.a import run\n",                      # pkg -> pkg.a
        "pkg/a.py": "def run():\n    from pkg import b\n    return b\n",  # pkg.a -> pkg and pkg.b (a module)
        "pkg/b.py": "import mlflow.pyfunc\nfrom pkg.sub.c import x\n",   # pkg.b -> pkg.sub.c and pkg.sub
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "x = 1\n" + "y = 2\n" * MAX_LINES,
        "pkg/tracking/d.py": "from .. import sub\nimport mlflow\n",          # relative: pkg.sub
        "rain_mlflow/tracking/e.py": "import mlflow\n",                      # allowed here
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["pkg.a"] == {"pkg", "pkg.b"}  # only through the import inside the function
    assert graph["pkg.b"] == {"pkg.sub", "pkg.sub.c"}  # its own package only passed through
    assert graph["pkg.tracking.d"] == {"pkg", "pkg.sub"}
    assert cycles(graph) == [["pkg", "pkg.a", "pkg"]]
    del graph["pkg.a"]  # without that function's import: pkg -> pkg.a stays, nothing comes back
    assert cycles({**graph, "pkg.a": set()}) == []
    assert mlflow_imports(tmp_path) == ["pkg/b.py:1 imports mlflow.pyfunc", "pkg/tracking/d.py:2 imports mlflow"]
    assert long_files(tmp_path) == [f"pkg/sub/c.py: {MAX_LINES + 1} lines"]
