"""The dense step: per group (one population size), every implementation beside the floor."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..frames import fastest_peer, first_n, floor_time, groups, of_op
from ..render import Table

HEADER = ["impl", "role", "median", "× floor", "× floor (paired)", "× peer", "GB/s", "bit-exact",
          "peak B/mem", "rounds", "foreign CPU"]
FORMATS = ["code", "text", "time", "ratio", "ratio", "ratio", "gbs", "exact", "bytes", "plain",
           "pct"]


def dense(bench: pd.DataFrame) -> list[dict[str, Any]] | None:
    rows = of_op(bench, "dense-step")
    if rows.empty:
        return None
    parts = groups(rows)
    return [_group(g, parts[g]) for g in sorted(parts, key=lambda g: first_n(parts[g]))]


def _group(name: str, rs: pd.DataFrame) -> dict[str, Any]:
    floor, peer = floor_time(rs), fastest_peer(rs)
    floors = rs.loc[rs["role"] == "floor", "median"]
    drift = floors.max() / floors.min() if len(floors) == 2 else None
    peer_t = peer["median"] if peer is not None else None
    table = [[r["impl"], r["role"], r["median"], r["median"] / floor if floor else None,
              r["paired_floor_ratio"], r["median"] / peer_t if peer_t else None,
              r["bytes"] / r["median"] / 1e9 if r["bytes"] else None,
              (r["bit_exact"], r["mismatches"]), r["mem_peak_bytes_per_memory"], r["rounds"],
              r["foreign_cpu"]] for _, r in rs.iterrows()]
    return {"n": first_n(rs), "group": name, "floor": floor, "drift": drift,
            "peer": peer["impl"] if peer is not None else None,
            "table": Table(HEADER, FORMATS, table),
            "mismatches": [(r["impl"], r["first_mismatch"]) for _, r in rs.iterrows()
                           if r["first_mismatch"]]}
