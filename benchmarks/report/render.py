"""Numbers -> Markdown: the cell formats, the one table renderer and the page template.

Sections hand over `Table`s of raw values (seconds, ratios, counts; ``None`` for a gap) with a
format per column; `markdown` formats and lays them out, and `page` fills ``page.md.j2`` (the
page's prose and its order) with every section's data.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jinja2

from nap_gpu._sizes import size_label

DASH = "–"


def fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return DASH
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def fmt_ratio(x: float | None) -> str:
    return DASH if x is None or not math.isfinite(x) else f"{x:.2f}×"


def fmt_rate(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return DASH
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g}"


def fmt_bytes_pm(x: float | None) -> str:
    return DASH if x is None else f"{x:.1f}"


def fmt_pct(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:.0f}%"


def fmt_slope(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}"


def fmt_exact(verdict: tuple[bool | None, int | None]) -> str:
    """(bit_exact, mismatches) -> yes / **no** (k differ) / –."""
    exact, mismatches = verdict
    if exact is None:
        return DASH
    return "yes" if exact else "**no**" + (f" ({mismatches:,} differ)" if mismatches else "")


def fmt_label(n: int | None) -> str:
    return DASH if n is None else size_label(int(n))


def _checkpoint(c: dict[str, float] | None) -> str:
    return f"{c['separation']:.4f} / {c['inversion_ratio']:.4f}" if c else DASH


def _backends(names_same: tuple[list[str], bool]) -> str:
    names, same = names_same
    return (", ".join(names) + (": identical" if same and len(names) > 1 else "")
            + ("" if same else ": **DIFFER**"))


FORMATS: dict[str, Callable[[Any], str]] = {
    "time": fmt_time, "ratio": fmt_ratio, "rate": fmt_rate, "bytes": fmt_bytes_pm,
    "pct": fmt_pct, "slope": fmt_slope, "exact": fmt_exact, "label": fmt_label,
    "code": lambda x: f"`{x}`", "text": str,
    "plain": lambda x: "" if x is None else str(x),          # a count, blank when absent
    "plain_dash": lambda x: DASH if x is None else str(x),
    "gbs": lambda x: DASH if x is None else f"{x:.1f}",      # GB/s
    "ms": lambda x: f"{x:.3g} ms",
    "mib": lambda x: DASH if x is None else f"{x / 2**20:.1f} MiB",
    "error": lambda x: "0" if x is None else f"{x:.1e}",
    "g": lambda x: f"{x:g}", "f4": lambda x: f"{x:.4f}",
    "health": lambda ok: "ok" if ok else "**unhealthy**",
    "named_rate": lambda x: DASH if x is None else f"{x[0]} {fmt_rate(x[1])}",  # (impl, rate)
    "seconds_list": lambda xs: ", ".join(f"{x:.2f} s" for x in xs),
    "span": lambda nn: f"{fmt_label(nn[0])}–{fmt_label(nn[1])}",  # (first n, last n)
    "checkpoint": _checkpoint, "backends": _backends,
}


@dataclasses.dataclass(frozen=True)
class Table:
    """Rows of raw values under ``header``; ``formats`` names each column's format (FORMATS).
    A string in a column of numbers (``skipped``, a composite) is shown as it is."""

    header: Sequence[str]
    formats: Sequence[str]
    rows: Sequence[Sequence[Any]]


def markdown(table: Table, align: Sequence[str] = ()) -> str:
    """The table in Markdown; ``align``: each column's separator (``---:`` right-aligns)."""
    cells = [[_cell(f, c) for f, c in zip(table.formats, row)] for row in table.rows]
    seps = align or ["---"] * len(table.header)
    lines = ["| " + " | ".join(table.header) + " |", "|" + "".join(f"{s}|" for s in seps)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def _cell(fmt: str, value: Any) -> str:
    if isinstance(value, str) and fmt not in ("code", "text"):
        return value  # already a cell: "skipped", a composite
    return FORMATS[fmt](value)


_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(pathlib.Path(__file__).parent),
    trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined, autoescape=False)
_TEMPLATES.filters.update({name: f for name, f in FORMATS.items()}, table=markdown)


def page(**sections: Any) -> str:
    """``page.md.j2`` filled with the sections' data: the scaling page."""
    text = _TEMPLATES.get_template("page.md.j2").render(**sections)
    return text.rstrip() + "\n"
