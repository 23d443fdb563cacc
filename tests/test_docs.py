"""The docs stand alone: every relative link resolves inside the repository, and every test a
page names as the proof of a promise exists (a renamed test must not leave a promise unproved).
The reference (docs/conf.py: Sphinx, numpydoc, MyST) names every public object, builds with
no warning, and every example in its docstrings runs."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import pathlib
import re
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("docker/*.md"),
                *ROOT.glob("benchmarks/**/*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")
CITED_TEST = re.compile(r"`(?:([\w/]+\.py)::)?(test_\w+)`")


def _defined_tests() -> dict[str, set[str]]:
    """Test name -> the files (relative to the root) that define it."""
    found: dict[str, set[str]] = {}
    for path in [*ROOT.glob("tests/**/*.py"), *ROOT.glob("benchmarks/**/*.py")]:
        for name in re.findall(r"^\s*(?:async )?def (test_\w+)\(", path.read_text(), re.M):
            found.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve_inside_the_repository(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL, or an anchor on the same page
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists() or ROOT not in path.parents:
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_cited_test_exists(page):
    defined = _defined_tests()
    missing = [f"{where}::{name}" if where else name
               for where, name in CITED_TEST.findall(page.read_text())
               if name not in defined or (where and where not in defined[name])]
    assert not missing, f"{page.name} cites tests that do not exist: {missing}"


def test_the_promise_tables_cite_tests():
    """Guard the guard: the pages that promise the most do cite their tests."""
    for name in ("serving.md", "durability.md"):
        assert len(CITED_TEST.findall((ROOT / "docs" / name).read_text())) >= 5, name


# -- the reference documentation (docs/conf.py: Sphinx, numpydoc, MyST) ----------------------
#: The modules whose docstrings are the API reference: each has examples, and they run.
DOCTESTED = ["nap_gpu", "nap_gpu.functional", "nap_gpu.params", "nap_gpu.engine",
             "nap_gpu.durable.engine", "nap_gpu.durable.recovery", "nap_gpu.sharded.engine",
             "nap_gpu.sharded.manifest",
             "nap_gpu.metrics", "nap_gpu.monitor", "nap_gpu.snapshot", "nap_gpu.workload",
             "nap_gpu.serve.settings"]
#: What each optional module needs to import (the test extra installs it).
NEEDS = {"nap_gpu.sharded.engine": "distributed", "nap_gpu.serve.settings": "pydantic_settings"}


@pytest.mark.parametrize("name", DOCTESTED)
def test_docstring_examples_run(name, monkeypatch):
    """Every example in the reference runs and prints what it shows. Their outputs are the
    same on every backend; they run on the host's best (the ``gpu`` tests cover the device)."""
    import nap_gpu as nap

    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    monkeypatch.setenv("NAP_BACKEND", "cpp" if nap.available_backends()["cpp"] is None
                       else "numpy")
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=report.append)
    assert runner.tries, f"{name} has no docstring examples"
    assert not runner.failures, "".join(report)


def _public_api():
    """(dotted name, object) of everything docs/api.rst must document."""
    import nap_gpu as nap
    from nap_gpu import durable, metrics, sharded, snapshot

    found = [(f"nap_gpu.{name}", getattr(nap, name)) for name in nap.__all__
             if name != "__version__"]
    for module, names in [(snapshot, ["SnapshotInfo", "inspect", "read", "write"]),
                          (metrics, ["Summary", "combine", "compute", "inversion_ratio",
                                     "merge", "summarize"]),
                          (durable, ["DamagedSnapshotError", "FormatTooNewError", "RecoveryPlan",
                                     "accept_loss", "decay_rounds_bound", "dry_run", "recover_plan",
                                     "recover_report"]),
                          (sharded, ["shard_bounds"])]:
        found += [(f"{module.__name__}.{name}", getattr(module, name)) for name in names]
    return found


def test_every_public_object_is_in_the_reference_with_a_docstring():
    page = (ROOT / "docs" / "api.rst").read_text()

    def names(name):  # ".. autoclass:: nap_gpu.Engine", or ".. function:: load" in nap_gpu
        return {name, name.removeprefix("nap_gpu.")} if name.count(".") == 1 else {name}

    missing = [name for name, _ in _public_api()
               if not any(re.search(rf"^\.\. (auto)?\w+:: {re.escape(n)}\b", page, re.M)
                          for n in names(name))]
    assert not missing, f"docs/api.rst does not document {missing}"
    undocumented = []
    for name, obj in _public_api():
        if not inspect.getdoc(obj):
            undocumented.append(name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            for member, value in vars(obj).items():
                function = value.fget if isinstance(value, property) else getattr(
                    value, "__func__", value)
                if not member.startswith("_") and callable(function) and not function.__doc__:
                    undocumented.append(f"{name}.{member}")
    assert not undocumented, f"no docstring: {undocumented}"


def test_the_main_objects_have_examples():
    import nap_gpu as nap
    from nap_gpu import snapshot

    objects = [nap.step, nap.update, nap.Params, nap.Engine, nap.Engine.save, nap.Engine.metrics,
               nap.health, nap.Monitor, nap.DurableEngine, nap.ShardedEngine,
               nap.ReferenceWorkload, snapshot.write]
    without = [obj.__qualname__ for obj in objects
               if "\nExamples\n--------\n" not in inspect.getdoc(obj)]
    assert not without, f"no Examples section: {without}"


def test_the_docs_build_without_warnings(tmp_path):
    absent = [m for m in ("sphinx", "numpydoc", "myst_parser")
              if importlib.util.find_spec(m) is None]
    if absent:
        pytest.skip(f"{', '.join(absent)} not installed (pip install '.[docs]')")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
                           "html", str(ROOT / "docs"), str(tmp_path / "html")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    for page in ["index", "api", "deployment-guide", *(p.stem for p in ROOT.glob("docs/*.md"))]:
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
    print(f"docs built in {time.perf_counter() - start:.1f} s")
