"""Operations shown as one table per kind of group: decay(k) and the snapshots' save and load.

Per kind (the group name without its size), per implementation: the median at each n, the
ratio to the floor (paired where the run timed it in alternation), to the best peer at the
largest n, and the peak memory there.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from nap_gpu._sizes import size_label

from ..frames import fastest_peer, first_n, floor_time, groups, impls, of_op
from ..render import Table


def simple(bench: pd.DataFrame, op: str) -> list[dict[str, Any]] | None:
    rows = of_op(bench, op)
    if rows.empty:
        return None
    parts = groups(rows)
    paired = rows["paired_floor_ratio"].map(lambda x: x is not None).any()
    kinds: dict[str, list[str]] = {}
    for g in parts:
        kinds.setdefault(g.rsplit("-", 1)[0], []).append(g)
    return [_kind(kind, sorted(kinds[kind], key=lambda g: first_n(parts[g])), parts, bool(paired))
            for kind in sorted(kinds)]


def _kind(kind: str, gs: list[str], parts: dict[str, pd.DataFrame], paired: bool) -> dict[str, Any]:
    every = impls(pd.concat([parts[g] for g in gs]))
    ns = [first_n(parts[g]) for g in gs]
    ratio = "× floor (paired)" if paired else "× floor"
    header = (["impl", "bit-exact"] + [size_label(n) for n in ns]
              + [f"{size_label(n)}: {ratio}" for n in ns]
              + ["× best peer (largest n)", "peak B/mem (largest n)"])
    rows, mismatches = [], []
    for impl in every:
        mine = {first_n(parts[g]): (r, parts[g]) for g in gs
                for _, r in parts[g][parts[g]["impl"] == impl].iterrows()}
        rows.append(_row(mine, ns, paired))
        for g in gs:  # the first mismatch of each group
            found = [fm for fm in parts[g].loc[parts[g]["impl"] == impl, "first_mismatch"] if fm]
            mismatches += [(impl, first_n(parts[g]), fm) for fm in found[:1]]
    formats = ["code", "exact", *["time"] * len(ns), *["ratio"] * len(ns), "ratio", "bytes"]
    return {"kind": kind, "table": Table(header, formats, rows), "mismatches": mismatches}


def _row(mine: dict[int, tuple[pd.Series, pd.DataFrame]], ns: list[int], paired: bool) -> list[Any]:
    first = next(iter(mine.values()))[0]
    times = [mine[n][0]["median"] if n in mine else "–" for n in ns]
    ratios: list[Any] = []
    for n in ns:
        if n not in mine:
            ratios.append("–")
            continue
        r, grp = mine[n]
        floor = floor_time(grp)
        ratios.append(r["paired_floor_ratio"] if paired
                      else r["median"] / floor if floor else None)
    r, grp = mine[max(mine)]
    peer = fastest_peer(grp)
    return [r["impl"], (first["bit_exact"], first["mismatches"]), *times, *ratios,
            r["median"] / peer["median"] if peer is not None else None,
            r["mem_peak_bytes_per_memory"]]
