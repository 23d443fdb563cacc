"""Sphinx configuration: the narrative pages (Markdown, through MyST) and the API reference
(autodoc over numpydoc docstrings). Build: ``python -m sphinx -W -b html docs docs/_build/html``.
Everything is local: no intersphinx, no network."""

from __future__ import annotations

import pathlib
import typing

import nap_gpu

project = "nap_gpu"
author = "nap_gpu contributors"
copyright = "nap_gpu contributors, Apache-2.0"
release = nap_gpu.__version__
version = release

extensions = ["sphinx.ext.autodoc", "numpydoc", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: heading anchors for the pages' own "page.md#heading" links, as GitHub makes them
myst_heading_anchors = 3

# `name` in a docstring is a cross-reference (numpydoc's convention), plain text if none
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True  # defaults as written ("np"), not their repr
autodoc_typehints = "none"  # numpydoc's Parameters sections say the types
numpydoc_show_class_members = False  # members come from autodoc's :members:
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "alabaster"
html_static_path: list[str] = []
html_show_sourcelink = False
html_theme_options = {"description": "The NAP learning law on CUDA, C++ and NumPy",
                      "fixed_sidebar": False}


_SIGNATURES = {
    "nap_gpu.serve.Settings": "(**fields)",  # pydantic's own init arguments are not the API
}


def _signature(app, what, name, obj, options, signature, return_annotation):
    if name in _SIGNATURES:
        return _SIGNATURES[name], None
    return None


def _settings_fields(app, what, name, obj, options, lines):
    """The service's settings, listed from the model itself (so the page cannot drift)."""
    if name != "nap_gpu.serve.Settings":
        return
    lines += ["", ".. list-table:: Fields: each is the variable ``NAP_FIELD_NAME`` and, but for "
              "the token, the flag ``--field-name``",
              "   :header-rows: 1", "", "   * - field", "     - default", "     - meaning"]
    for field, info in obj.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = str(default) if isinstance(default, pathlib.PurePath) else repr(default)
        meaning = info.description or ", ".join(map(str, typing.get_args(info.annotation)))
        lines += [f"   * - ``{field}``", f"     - ``{shown}``", f"     - {meaning}"]
    lines.append("")


def setup(app):
    app.connect("autodoc-process-signature", _signature)
    app.connect("autodoc-process-docstring", _settings_fields)
