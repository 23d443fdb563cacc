"""The sparse ordered batch: per (ids, events), events/s and the ratio to the best peer per n."""

from __future__ import annotations

from typing import Any

import pandas as pd

from nap_gpu._sizes import size_label

from ..frames import by_n, fastest_peer, impls, of_op
from ..render import Table


def sparse(bench: pd.DataFrame) -> list[dict[str, Any]] | None:
    rows = of_op(bench, "sparse-batch")
    if rows.empty:
        return None
    every = impls(rows)  # every impl of the operation: a missing one shows as skipped
    cases = rows.groupby(["dist", "events"], sort=True)
    return [_case(str(dist), int(events), rs, every) for (dist, events), rs in cases]


def _case(dist: str, events: int, rs: pd.DataFrame, every: list[str]) -> dict[str, Any]:
    ns = sorted({int(n) for n in rs["n"]})
    peers = {n: fastest_peer(rs[rs["n"] == n]) for n in ns}
    table = [_row(impl, by_n(rs[rs["impl"] == impl]), ns, peers) for impl in every]
    header = (["impl", "bit-exact"] + [f"{size_label(n)}: events/s" for n in ns]
              + [f"{size_label(n)}: × best peer" for n in ns] + ["peak B/mem (largest n)"])
    mult = {n: r["max_multiplicity"] for n, r in by_n(rs).items()}
    return {"dist": dist, "events": events,
            "table": Table(header, ["code", "exact", *["rate"] * len(ns), *["ratio"] * len(ns),
                                    "bytes"], table),
            "multiplicity": [(n, m) for n, m in sorted(mult.items()) if m is not None]}


def _row(impl: str, mine: dict[int, pd.Series], ns: list[int],
         peers: dict[int, pd.Series | None]) -> list[Any]:
    if not mine:
        return [impl, "–", *["skipped"] * len(ns), *["–"] * len(ns), "–"]
    first = next(iter(mine.values()))
    rates = [mine[n]["events_per_s"] if n in mine else "skipped" for n in ns]
    ratios = [_ratio(mine.get(n), peers[n]) for n in ns]
    return [impl, (first["bit_exact"], first["mismatches"]), *rates, *ratios,
            mine[max(mine)]["mem_peak_bytes_per_memory"]]


def _ratio(mine: pd.Series | None, peer: pd.Series | None) -> float | None:
    return mine["median"] / peer["median"] if mine is not None and peer is not None else None
