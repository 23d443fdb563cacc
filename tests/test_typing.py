"""The package type-checks (mypy, configured in pyproject.toml), the C++ core's stub matches
the built extension (stubtest), the sources lint clean (ruff, configured there too), and the
public API is annotated (every parameter and return, checked through ``inspect.signature``).

Each tool runs in a subprocess from the repository root, as a developer would run it; a
tool that is not installed skips its test with the reason (the `test` extra brings both).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import nap_gpu

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = pathlib.Path(nap_gpu.__file__).resolve().parent

#: The optional dependencies whose own types mypy checks the package against (the `test`
#: extra installs them all); pydantic also provides the mypy plugin pyproject.toml names.
TYPED_DEPENDENCIES = ("pydantic", "pydantic_settings", "fastapi", "uvicorn", "starlette",
                      "prometheus_client", "distributed", "matplotlib")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _run(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _report(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def _require_mypy() -> None:
    if not _installed("mypy"):
        pytest.skip("mypy is not installed (pip install 'mypy>=1.11', or the test extra)")


def test_mypy_is_clean():
    """``mypy`` with pyproject.toml's [tool.mypy] (files, Python 3.10, the overrides for the
    untyped optional modules): no error."""
    _require_mypy()
    missing = [m for m in TYPED_DEPENDENCIES if not _installed(m)]
    if missing:
        pytest.skip(f"mypy checks against these optional dependencies' types, not installed: "
                    f"{', '.join(missing)} (pip install -e '.[test]')")
    proc = _run([sys.executable, "-m", "mypy"])
    assert proc.returncode == 0, _report(proc)


def test_the_core_stub_matches_the_extension():
    """src/nap_gpu/_core.pyi says what the built C++ extension holds (mypy.stubtest)."""
    _require_mypy()
    if not _installed("nap_gpu._core"):
        pytest.skip("the C++ core is not built (nap_gpu._core): nothing to compare the stub with")
    proc = _run([sys.executable, "-m", "mypy.stubtest", "nap_gpu._core"])
    assert proc.returncode == 0, _report(proc)


def test_ruff_is_clean():
    """``ruff check src tests benchmarks`` with pyproject.toml's [tool.ruff]: no finding."""
    if _installed("ruff"):
        ruff = [sys.executable, "-m", "ruff"]
    elif shutil.which("ruff"):
        ruff = [str(shutil.which("ruff"))]
    else:
        pytest.skip("ruff is not installed (pip install 'ruff>=0.6', or the test extra)")
    proc = _run([*ruff, "check", "--no-cache", "--output-format=concise", "src", "tests", "benchmarks"])
    assert proc.returncode == 0, _report(proc)


# -- the public API is annotated ------------------------------------------------------------
#: The modules whose ``__all__`` is public API (nap_gpu's own, and the public modules'):
#: every callable they name, and every public method and property of every class they name,
#: must be annotated, so that a user's type checker sees real types.
PUBLIC_MODULES = ("nap_gpu", "nap_gpu.backends", "nap_gpu.durable", "nap_gpu.engine",
                  "nap_gpu.functional", "nap_gpu.metrics", "nap_gpu.monitor", "nap_gpu.params",
                  "nap_gpu.sharded", "nap_gpu.snapshot", "nap_gpu.workload")

#: The modules mypy checks with --disallow-untyped-defs --disallow-incomplete-defs (a package:
#: its directory).
STRICTLY_TYPED = [f"src/nap_gpu/{m}" if (ROOT / "src" / "nap_gpu" / m).is_dir() else f"src/nap_gpu/{m}.py"
                  for m in ("engine", "functional", "params", "metrics", "monitor", "snapshot",
                            "durable", "sharded", "workload")]


def _defined_here(fn: Any) -> bool:
    """Whether ``fn`` is source code of this package (not, e.g., a dataclass-generated
    ``__init__``, whose annotations are the fields' own, or a builtin's)."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    return code is not None and pathlib.Path(code.co_filename).resolve().is_relative_to(PACKAGE)


def _class_members(cls: type, qualname: str,
                   here: Callable[[object], bool] = _defined_here,
                   ) -> list[tuple[str, Callable[..., object]]]:
    """``cls``'s public methods, classmethods, staticmethods and property accessors, and its
    ``__init__``, as (name, function): those for which ``here`` holds (this package's
    source), inherited ones included."""
    found: dict[str, tuple[str, Callable[..., object]]] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if name.startswith("_") and name != "__init__":
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                for role, accessor in (("getter", value.fget), ("setter", value.fset)):
                    if accessor is not None and here(accessor):
                        found[f"{name}.{role}"] = (f"{qualname}.{name} ({role})", accessor)
            elif inspect.isfunction(value) and here(value):
                found[name] = (f"{qualname}.{name}", value)
    return list(found.values())


def _public_api() -> list[tuple[str, Callable[..., object]]]:
    """(qualified name, function) of every public callable, each once."""
    api: dict[int, tuple[str, Callable[..., object]]] = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            qualname = f"{module_name}.{name}"
            if inspect.isclass(obj):
                for member in _class_members(obj, qualname):
                    api.setdefault(id(member[1]), member)
            elif callable(obj) and _defined_here(obj):
                api.setdefault(id(inspect.unwrap(obj)), (qualname, obj))
    return sorted(api.values())


def _unannotated(fn: Callable[..., object]) -> list[str]:
    """The parameters of ``fn`` without an annotation (``self``/``cls`` of a method aside),
    and ``return`` if the return has none. ``*args``/``**kwargs`` count too: annotate them
    (``Any`` where they forward)."""
    signature = inspect.signature(fn)  # follows functools.wraps to the decorated function
    params = list(signature.parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    missing = [p.name for p in params if p.annotation is inspect.Parameter.empty]
    if signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def test_the_annotation_check_finds_what_is_missing():
    """The check below can fail: it names each unannotated parameter and return."""
    def bare(x, y: int, *args, z=1, **kwargs) -> None: ...

    def no_return(self, x: int): ...

    def complete(x: int, *args: Any, **kwargs: Any) -> int: ...

    assert _unannotated(bare) == ["x", "args", "z", "kwargs"]
    assert _unannotated(no_return) == ["return"]
    assert _unannotated(complete) == []

    class Bare:
        def method(self, x): ...

        @property
        def prop(self): ...

    members = dict(_class_members(Bare, "Bare", here=lambda fn: True))
    assert {name: _unannotated(fn) for name, fn in members.items()} == {
        "Bare.method": ["x", "return"], "Bare.prop (getter)": ["return"]}


def test_the_public_api_is_annotated():
    """Every public callable (``nap_gpu.__all__``, the public modules' ``__all__``, and each
    public method and property of the classes they name) annotates every parameter and its
    return: a new public function without annotations fails here."""
    api = _public_api()
    names = {name for name, _ in api}
    expected = {  # the walk reaches every kind of public callable (so it cannot pass empty)
        "nap_gpu.Engine.step", "nap_gpu.Engine.__init__", "nap_gpu.Engine.load",
        "nap_gpu.Engine.weights (getter)", "nap_gpu.Engine.params (setter)",
        "nap_gpu.DurableEngine.open", "nap_gpu.ShardedEngine.metrics", "nap_gpu.Monitor.check",
        "nap_gpu.Params.float32", "nap_gpu.Metrics.as_dict", "nap_gpu.ReferenceWorkload.labels (getter)",
        "nap_gpu.step", "nap_gpu.update", "nap_gpu.health", "nap_gpu.show_config",
        "nap_gpu.available_backends", "nap_gpu.durable.recover_plan", "nap_gpu.durable.accept_loss",
        "nap_gpu.durable.decay_rounds_bound", "nap_gpu.durable.recover_report",
        "nap_gpu.snapshot.read", "nap_gpu.snapshot.write", "nap_gpu.snapshot.inspect",
        "nap_gpu.metrics.summarize", "nap_gpu.metrics.inversion_ratio",
        "nap_gpu.sharded.shard_bounds", "nap_gpu.RecoveryError.__init__",
    }
    assert expected <= names, f"not walked: {sorted(expected - names)}"
    missing = {name: gaps for name, fn in api if (gaps := _unannotated(fn))}
    assert not missing, "unannotated (parameters, or 'return'):\n" + "\n".join(
        f"  {name}: {', '.join(gaps)}" for name, gaps in sorted(missing.items()))


def test_mypy_strict_on_the_public_modules():
    """``mypy --disallow-untyped-defs --disallow-incomplete-defs`` on the public modules
    (pyproject.toml's configuration otherwise): every function there is annotated."""
    _require_mypy()
    missing = [m for m in TYPED_DEPENDENCIES if not _installed(m)]
    if missing:
        pytest.skip(f"mypy checks against these optional dependencies' types, not installed: "
                    f"{', '.join(missing)} (pip install -e '.[test]')")
    # silent: the modules these import are checked (for their types), but held to the
    # default rules, which test_mypy_is_clean applies to the whole package
    proc = _run([sys.executable, "-m", "mypy", "--disallow-untyped-defs",
                 "--disallow-incomplete-defs", "--follow-imports=silent", *STRICTLY_TYPED])
    assert proc.returncode == 0, _report(proc)
