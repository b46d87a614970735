"""The package's import graph: every reptorch module and the reptorch modules it imports.

    python -m tools.import_graph            # a summary: modules, imports, layers, circles
    python -m tools.import_graph --list     # also each module's imports

Reads the source with `ast` (nothing is imported). An import at a module's top level is an edge;
one inside a function runs only when called (a deferred import, listed apart); one under
`if TYPE_CHECKING:` never runs and is left out. Exits 1 if the top-level edges form a circle
(Python would meet a half-initialised module), or if a module of the algorithm layer imports one
of the layer that runs it (`docs/architecture.md`), else 0.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "reptorch"

# The algorithm: what a user composes (`import reptorch`), and what it needs. Everything else
# runs it: configurations, run directories, training and evaluation loops, the CLI, datasets'
# files, experiments, the demo.
ALGORITHM_LAYER = (
    "reptorch",
    "reptorch.adapt",
    "reptorch.algorithms",
    "reptorch.config",
    "reptorch.distributed",
    "reptorch.errors",
    "reptorch.fast",
    "reptorch.functional",
    "reptorch.inner_optim",
    "reptorch.losses",
    "reptorch.meta",
    "reptorch.models",
    "reptorch.outer",
    "reptorch.schedule",
    "reptorch.tree",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def in_layer(module: str, layer: tuple[str, ...]) -> bool:
    return any(module == m or (m != PACKAGE and module.startswith(m + ".")) for m in layer)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(body: list[ast.stmt], deferred: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement with whether it is deferred (inside a function)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, deferred
        elif isinstance(node, ast.If) and _type_checking(node):
            yield from _walk(node.orelse, deferred)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _walk(node.body, True)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    yield from _walk([n for n in inner if isinstance(n, ast.AST)], deferred)


def imports(known: dict[str, Path]) -> dict[str, dict[str, bool]]:
    """module -> {imported reptorch module: deferred}, top-level winning over deferred."""
    graph: dict[str, dict[str, bool]] = {}
    for module, path in known.items():
        edges: dict[str, bool] = {}
        tree = ast.parse(path.read_text(), str(path))
        for node, deferred in _walk(tree.body, False):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(node, module, path.name == "__init__.py")
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
                ]
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]  # `import a.b.c` runs a.b.c, an attribute
                if target and target != module:
                    edges[target] = edges.get(target, True) and deferred
        graph[module] = edges
    return graph


def circles(graph: dict[str, dict[str, bool]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), top-level edges."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w, deferred in graph[v].items():
            if deferred:
                continue
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
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def layer_breaches(graph: dict[str, dict[str, bool]]) -> list[tuple[str, str]]:
    """(algorithm-layer module, run-layer module it imports at top level)."""
    return [
        (m, t)
        for m, edges in graph.items()
        if in_layer(m, ALGORITHM_LAYER)
        for t, deferred in edges.items()
        if not deferred and not in_layer(t, ALGORITHM_LAYER)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="each module's imports")
    args = parser.parse_args(argv)
    graph = imports(modules())
    top = sum(not d for edges in graph.values() for d in edges.values())
    deferred = sum(d for edges in graph.values() for d in edges.values())
    algorithm = sorted(m for m in graph if in_layer(m, ALGORITHM_LAYER))
    if args.list:
        for module, edges in graph.items():
            shown = [t + (" (deferred)" if d else "") for t, d in sorted(edges.items())]
            print(f"{module}: {', '.join(shown) or '-'}")
        print()
    print(
        f"{len(graph)} modules, {top} top-level imports, {deferred} deferred; "
        f"algorithm layer {len(algorithm)} modules, run layer {len(graph) - len(algorithm)}"
    )
    found, breaches = circles(graph), layer_breaches(graph)
    for component in found:
        print(f"circle: {' <-> '.join(component)}")
    for module, target in breaches:
        print(f"layer: {module} (algorithm) imports {target} (run)")
    if not found and not breaches:
        print("no circles; the algorithm layer imports nothing of the run layer")
    return 1 if found or breaches else 0


if __name__ == "__main__":
    sys.exit(main())
