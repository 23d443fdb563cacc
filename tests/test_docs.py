"""The docs stand alone: every relative link resolves inside the repository, and every test a
page names as the proof of a promise exists (a renamed test must not leave a promise unproved)."""

from __future__ import annotations

import pathlib
import re

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
