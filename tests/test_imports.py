"""The package's import graph, read from the source: no cycle, and each layer imports only those below.

Every import counts, at module level or inside a function (a delayed import hides a cycle from the
interpreter, not from this graph), and so does a module named in full by a string (`importlib`).
Importing `lmms_var.a.b` also runs `lmms_var/a/__init__.py`: that edge counts too.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

import lmms_var

PACKAGE = Path(lmms_var.__file__).parent
# Lowest first; a module imports its own top-level package and those of lower layers only. This is
# the order the code has: the models take `sink_dims=auto` and `attention_maps=N`, so `sink_dims`
# (which reads records through `tasks`) and `attention_maps` sit below `models`. `testing` (fixtures)
# sits above every library layer, so no library code can import it; `tools` (the `lmms-var`
# command) is above it for `lmms-var demo` alone, which runs on fixtures (`lmms_var.testing.demo`).
LAYERS = (
    {"core", "config", "checks"},
    {"model_args"},
    {"backbones"},
    {"patch"},
    {"tasks", "attention_maps"},
    {"sink_dims"},
    {"models"},
    {"leaderboard"},
    {"testing"},
    {"tools"},
)
# The one module outside `testing` that may import it.
TESTING_IMPORTERS = {"lmms_var.tools.demo"}


def _modules(package: Path) -> dict[str, Path]:
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _named(node: ast.AST, modules: dict[str, Path]) -> Iterator[str]:
    """What an AST node imports (or names in full by a string that is a module of the package)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        assert not node.level, f"relative import of {node.module}: this graph reads absolute ones only"
        for alias in node.names:  # `from pkg import mod` imports pkg.mod; `from mod import name`, mod
            yield f"{node.module}.{alias.name}"
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
        yield node.value


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of `package` -> the modules of it that importing it runs (their packages' too)."""
    modules = _modules(package)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for name in _named(node, modules):
                if not name.startswith(f"{package.name}."):
                    continue
                while name not in modules:  # `pkg.a.b.name`: the module is `pkg.a.b`
                    name = name.rpartition(".")[0]
                parts = name.split(".")
                ancestors = (".".join(parts[:end]) for end in range(2, len(parts) + 1))
                # A module's own packages are already running when it imports.
                targets |= {a for a in ancestors if a != module and not module.startswith(f"{a}.")}
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _layer(module: str) -> int:
    top = module.split(".")[1]
    return next(rank for rank, layer in enumerate(LAYERS) if top in layer)


def test_the_graph_sees_delayed_imports_names_and_packages(tmp_path):
    package = tmp_path / "pkg"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("from pkg.low.base import VALUE\n")
    (package / "low" / "base.py").write_text("import pkg.low.other\nVALUE = 1\n")
    (package / "low" / "other.py").write_text("")
    (package / "high.py").write_text(
        "import importlib\n\ndef run():\n    from pkg.low.base import VALUE\n"
        "    return importlib.import_module('pkg.low.other'), VALUE\n"
    )
    graph = import_graph(package)
    assert graph["pkg.high"] == {"pkg.low", "pkg.low.base", "pkg.low.other"}
    assert graph["pkg.low.base"] == {"pkg.low.other"}  # not its own package, already running
    assert graph["pkg.low"] == {"pkg.low.base"}


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_every_package_belongs_to_one_layer():
    tops = {module.split(".")[1] for module in import_graph() if module != PACKAGE.name}
    named = [top for layer in LAYERS for top in layer]
    assert sorted(named) == sorted(tops)


def test_each_layer_imports_only_those_below_it():
    graph = import_graph()
    upward = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module != "lmms_var"  # the package's facade: `VARConfig`, and the rest served lazily by name
        for target in targets
        if target.split(".")[1] != module.split(".")[1] and _layer(target) >= _layer(module)
    ]
    assert upward == []


def test_nothing_imports_the_fixtures_but_the_fixtures_and_the_demo():
    graph = import_graph()
    importers = {
        module
        for module, targets in graph.items()
        if not module.startswith("lmms_var.testing")
        and any(target.startswith("lmms_var.testing") for target in targets)
    }
    assert importers == TESTING_IMPORTERS


def test_no_tool_module_imports_another():
    """`lmms-var` is thin: what two subcommands share is library code, not another tool's."""
    graph = import_graph()
    shared = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.startswith("lmms_var.tools.")
        for target in targets
        if target.startswith("lmms_var.tools.") and module != "lmms_var.tools.cli"
    ]
    assert shared == []
