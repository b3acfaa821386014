"""No import circles in the package (sparsebench/ and plugins/sparsebench_builtins/).

Every import statement counts: module-level, under `if TYPE_CHECKING:`, and inside functions. A
function-level import defers a dependency to call time; it does not remove it, and a circle hidden
that way still ties the two modules' designs together (the Python API importing from the command
line that calls it was one). So the graph is built from the source, not from what Python happens
to execute at import time.

An edge goes to the module a statement names: `from a.b import c` to `a.b.c` when that is a module,
else to `a.b`; `from sparsebench import Name` to the module that `sparsebench.__init__` resolves
`Name` from on first access (its lazy `_PUBLIC` map), since the package itself imports nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"sparsebench": ROOT / "sparsebench", "sparsebench_builtins": ROOT / "plugins" / "sparsebench_builtins"}


def package_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the packages."""
    modules = {}
    for top, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def lazy_public_names(init: Path) -> dict[str, str]:
    """`sparsebench`'s public name -> the module it is resolved from."""
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_PUBLIC" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("sparsebench/__init__.py has no _PUBLIC map")


def imports_of(name: str, path: Path, modules: dict[str, Path], public: dict[str, str]) -> set[str]:
    """The package modules that `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package upwards
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    out.add(f"{base}.{alias.name}")
                elif base == "sparsebench" and alias.name in public:
                    out.add(public[alias.name])
                elif base in modules:
                    out.add(base)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    public = lazy_public_names(modules["sparsebench"])
    return {name: imports_of(name, path, modules, public) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as one circle through them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(path_through(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def path_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One closed path a -> ... -> a inside a strongly connected component, for the failure message."""
    start = min(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth-first back to `start`
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no circle through {sorted(component)}")


def test_the_package_has_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_check_sees_module_level_function_level_and_type_checking_imports():
    graph = import_graph()
    assert "sparsebench.options" in graph["sparsebench.interfaces"]  # module level
    assert "sparsebench.sparse.masks" in graph["sparsebench.interfaces"]  # under TYPE_CHECKING
    assert "sparsebench.grid" in graph["sparsebench.cli.run"]  # inside a function
    assert "sparsebench.kit" in graph["sparsebench_builtins.methods.stugan"]  # `from sparsebench import ...`
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_python_api_does_not_import_the_command_line():
    graph = import_graph()
    for name in ("sparsebench.grid", "sparsebench.interfaces", "sparsebench"):
        assert "sparsebench.cli" not in graph[name], name


def test_no_module_of_the_package_is_over_450_lines():
    """Small modules with one job: a module that grows past this is split by what it does."""
    root = Path(__file__).resolve().parents[1]
    long = {
        str(p.relative_to(root)): n
        for p in [*(root / "sparsebench").rglob("*.py"), *(root / "plugins").rglob("*.py")]
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert not long, long


def room(module: str) -> str:
    """The part of the package a module belongs to: a top-level module, a subpackage of `sparsebench`, or the
    built-in plugins as one."""
    parts = module.split(".")
    if parts[0] == "sparsebench_builtins":
        return "plugins"
    return ".".join(parts[:2])


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each room's layer: 1 for one that imports no other room, else one above the highest room it imports."""
    rooms: dict[str, set[str]] = {}
    for module, targets in graph.items():
        rooms.setdefault(room(module), set()).update(room(t) for t in targets)
    for name, targets in rooms.items():
        targets.discard(name)
    depth: dict[str, int] = {}

    def layer(name: str) -> int:
        if name not in depth:
            depth[name] = 1 + max((layer(t) for t in rooms[name]), default=0)
        return depth[name]

    return {name: layer(name) for name in rooms}


def test_the_package_stays_within_its_layers():
    """The package's rooms (top-level modules, subpackages, the built-in plugins) stack 12 deep, the command
    line's entry point on top: a new import that deepens the stack is a design change to make on purpose."""
    depth = layers(import_graph())
    assert max(depth.values()) <= 12, sorted(depth.items(), key=lambda kv: -kv[1])
    assert depth["sparsebench.__main__"] == max(depth.values())
