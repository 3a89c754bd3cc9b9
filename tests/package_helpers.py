"""Static checks of a package's module layering (imported by tests; not a test module): which of its modules each
module imports, that they form no cycle, and that no module imports another's private (``_x``) names."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` for every import in ``path`` (module level and inside functions); absolute names."""
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            out.append((node.module or "", [alias.name for alias in node.names]))
    return out


def internal_imports(package: str) -> dict[str, set[str]]:
    """For each module of ``package`` (dotted name, without ``__init__``): the package's modules it imports."""
    folder = REPO.joinpath(*package.split("."))
    modules = {f"{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for module in sorted(modules):
        deps: set[str] = set()
        for target, names in _imports(folder / f"{module.rsplit('.', 1)[1]}.py"):
            if target == package:  # `from package import submodule`, or a name from its __init__ (a cycle)
                deps.update(f"{package}.{n}" if f"{package}.{n}" in modules else package for n in names)
            elif target.startswith(package + "."):
                deps.add(target)
        graph[module] = deps
    return graph


def assert_layered(package: str) -> dict[str, set[str]]:
    """Fail on an import of the package's ``__init__`` from a module, a cycle, or a private name imported from
    one of its modules anywhere in the project; returns :func:`internal_imports`."""
    graph = internal_imports(package)
    for module, deps in graph.items():
        assert package not in deps, f"{module} imports from {package}/__init__ (import the defining module)"
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join(path + (module,))}"
        if module in done:
            return
        for dep in graph.get(module, ()):
            visit(dep, path + (module,))
        done.add(module)

    for module in graph:
        visit(module, ())
    for top in ("rtfer", "ui", "training", "engines", "benchmarks"):
        for path in sorted((REPO / top).rglob("*.py")):
            for target, names in _imports(path):
                if target == package or target.startswith(package + "."):
                    private = [n for n in names if n.startswith("_") and n != "__version__"]
                    assert not private, f"{path.relative_to(REPO)} imports private {private} from {target}"
    return graph
