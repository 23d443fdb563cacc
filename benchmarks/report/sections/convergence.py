"""Convergence of the reference workload: per (n, sigma), the checkpoints, the health, and
whether every backend that ran agrees (numbers and the final weights' CRC-32)."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ..frames import of_op
from ..render import Table

ITERATIONS = ("1", "5", "10", "20", "50")
#: What must be identical on every backend.
SAME = ("checkpoints", "first_healthy", "weights_crc32")


def convergence(bench: pd.DataFrame) -> dict[str, Any] | None:
    rows = of_op(bench, "convergence")
    if rows.empty:
        return None
    by: dict[tuple[int, float], list[dict[str, Any]]] = {}
    for _, r in rows.iterrows():
        by.setdefault((int(r["n"]), r["sigma"]), []).append(r["convergence"])
    table, differ = [], []
    for (n, sigma), recs in sorted(by.items()):
        same = all(_key(r) == _key(recs[0]) for r in recs)
        if not same:
            differ.append((n, sigma))
        first = recs[0]
        cps = first["checkpoints"]
        table.append([n, sigma, *[cps.get(it) for it in ITERATIONS], first["first_healthy"],
                      first["saturation_at_50"], first["healthy_at_50"],
                      ([r["backend"] for r in recs], same)])
    header = ["n", "σ", *[f"it {it}" for it in ITERATIONS], "healthy from", "saturation @50",
              "health @50", "backends"]
    formats = ["label", "g", *["checkpoint"] * len(ITERATIONS), "text", "f4", "health", "backends"]
    return {"table": Table(header, formats, table), "differ": differ, "curves": by}


def _key(rec: dict[str, Any]) -> str:
    return json.dumps({k: rec[k] for k in SAME}, sort_keys=True)
