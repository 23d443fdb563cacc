"""The package's layers, read from its source (every import statement, lazy ones inside
functions included; ``if TYPE_CHECKING:`` blocks left out, since they never run):

- the law and its engine (everything but the layers below) import neither the service, nor
  Dask, nor the service's web stack;
- only ``sharded`` (and the CLI, which starts it) imports Dask;
- only ``serve`` (and the CLI, which starts it) imports the web stack;
- nothing in the runtime package imports benchmark or test code.

The package's ``__init__`` is the facade: it re-exports ``ShardedEngine`` (whose module
imports Dask only when an engine starts) but, like the law, never the service.

docs/architecture.md draws the same layers.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "nap_gpu"

DASK = {"dask", "distributed"}
WEB = {"fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings", "prometheus_client",
       "h11", "httpx"}
#: module (dotted, below nap_gpu) -> the outside packages it alone may import
MAY_IMPORT = {"sharded": DASK, "serve": WEB, "cli": DASK | WEB}
SERVICE = {"nap_gpu.serve", "nap_gpu.cli"}
DASK_SIDE = {"nap_gpu.sharded"}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """Every module ``name`` imports at run time, absolute (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


MODULES = _modules()
IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str) -> str:
    return name.split(".")[1] if "." in name else ""


def _top(module: str) -> str:
    return module.split(".")[0]


def _within(module: str, prefixes: set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_scan_sees_the_package():
    """The walk finds the modules and their imports (a scan that found nothing would pass
    every rule below)."""
    assert {"nap_gpu", "nap_gpu.engine", "nap_gpu.backends", "nap_gpu.cli"} <= set(MODULES)
    assert "nap_gpu.backends" in IMPORTS["nap_gpu.engine"]
    assert "numpy" in IMPORTS["nap_gpu.engine"]
    assert not _within("nap_gpu.protocols", {"nap_gpu.sharded"})


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_imports_only_what_its_layer_may(name):
    layer = _layer(name)
    allowed = MAY_IMPORT.get(layer, set())
    outside = {_top(m) for m in IMPORTS[name]} & (DASK | WEB)
    assert outside <= allowed, f"{name} imports {sorted(outside - allowed)}: not its layer's"
    if layer not in ("serve", "cli"):
        service = sorted(m for m in IMPORTS[name] if _within(m, SERVICE))
        assert not service, f"{name} imports the service ({service})"
    if layer not in ("sharded", "serve", "cli") and name != "nap_gpu":  # the facade re-exports
        dask_side = sorted(m for m in IMPORTS[name] if _within(m, DASK_SIDE))
        assert not dask_side, f"{name} imports the Dask layer ({dask_side})"


def _local_test_and_benchmark_modules() -> set[str]:
    """The top-level names test and benchmark code is imported by (tests/simdevice/ left out:
    it stands in for real packages, CuPy, under their own names)."""
    names = set()
    for folder in (ROOT / "tests", ROOT / "benchmarks"):
        names.add(folder.name)
        for path in folder.rglob("*.py"):
            if "simdevice" not in path.relative_to(ROOT).parts:
                names.add(path.stem)
                names.update(p.name for p in path.relative_to(folder).parents if p.name)
    return names - {"__init__", "nap_gpu"}


def test_the_runtime_package_imports_no_benchmark_or_test_code():
    local = _local_test_and_benchmark_modules()
    assert {"benchmarks", "conftest", "scale_support"} <= local
    offenders = {name: sorted(m for m in imports if _top(m) in local)
                 for name, imports in IMPORTS.items()}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"runtime modules importing benchmark/test code: {offenders}"
