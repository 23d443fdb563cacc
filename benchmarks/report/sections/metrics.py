"""Metrics: ``Engine.metrics`` per backend beside scikit-learn, and test_metrics.py's table."""

from __future__ import annotations

from typing import Any

import pandas as pd

from nap_gpu._sizes import size_label

from ..frames import by_n, impls, of_op
from ..render import Table

PEER = "sklearn"


def metrics(bench: pd.DataFrame) -> dict[str, Any] | None:
    rows = of_op(bench, "metrics")
    if rows.empty:
        return None
    return {"table": _table(rows), "inversion": _inversion(of_op(bench, "inversion-ratio"))}


def _table(rows: pd.DataFrame) -> Table:
    ns = sorted({int(n) for n in rows["n"]})
    peer = {n: rows[(rows["impl"] == PEER) & (rows["n"] == n)] for n in ns}
    out = []
    for impl in impls(rows):
        mine = by_n(rows[rows["impl"] == impl])
        times = [mine[n]["median"] if n in mine else "–" for n in ns]
        ratios = [peer[n]["median"].iloc[0] / mine[n]["median"] if len(peer[n]) and n in mine
                  else "–" for n in ns]
        exact = all(mine[n]["bit_exact"] for n in ns if n in mine)
        errors = [mine[n]["abs_error"] for n in ns if n in mine and mine[n]["abs_error"] is not None]
        out.append([impl, *times, *ratios, "yes" if exact else "**no**",
                    max(errors) if errors else None,
                    mine[max(mine)]["mem_peak_bytes_per_memory"]])
    header = (["impl"] + [size_label(n) for n in ns] + [f"{size_label(n)}: sklearn / this" for n in ns]
              + ["exact", "abs error", "peak B/mem (largest n)"])
    return Table(header, ["code", *["time"] * len(ns), *["ratio"] * len(ns), "text", "error",
                          "bytes"], out)


def _inversion(rows: pd.DataFrame) -> Table | None:
    """benchmarks/test_metrics.py: the inversion ratio alone, nap beside scikit-learn."""
    if rows.empty:
        return None
    return Table(["benchmark", "median", "distinct values"], ["code", "time", "plain_dash"],
                 [[r["name"], r["median"], r["distinct_values"]] for _, r in rows.iterrows()])
