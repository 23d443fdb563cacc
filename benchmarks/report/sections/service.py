"""The write-ahead log, the HTTP service and sharding on Dask: throughput beside the plain
in-process Engine doing the same work."""

from __future__ import annotations

import statistics
from typing import Any

import pandas as pd

from nap_gpu._sizes import size_label

from ..frames import by_n, groups, impls, of_op
from ..render import Table

#: The plain in-process path each table divides by.
NO_LOG, IN_PROCESS = "none", "in-process-none"


def wal(bench: pd.DataFrame) -> Table | None:
    rows = of_op(bench, "wal")
    if rows.empty:
        return None
    ns = sorted({int(n) for n in rows["n"]})
    plain = by_n(rows[rows["fsync"] == NO_LOG])
    out = []
    for impl in impls(rows):
        mine = by_n(rows[rows["impl"] == impl])
        out.append([impl, *[mine[n]["events_per_s"] if n in mine else "–" for n in ns],
                    *[mine[n]["median"] / plain[n]["median"] if n in mine and n in plain else "–"
                      for n in ns]])
    return Table(["impl"] + [f"{size_label(n)}: events/s" for n in ns]
                 + [f"{size_label(n)}: × no-log" for n in ns],
                 ["code", *["rate"] * len(ns), *["ratio"] * len(ns)], out)


def service(bench: pd.DataFrame) -> dict[str, Any] | None:
    feedback, startup = of_op(bench, "serve-feedback"), of_op(bench, "serve-startup")
    if feedback.empty and startup.empty:
        return None
    return {"feedback": _feedback(feedback), "startup": _startup(startup)}


def _feedback(rows: pd.DataFrame) -> Table | None:
    ns = sorted({int(n) for n in rows["n"]})
    base = by_n(rows[rows["impl"] == IN_PROCESS])
    out = []
    for impl in impls(rows):
        mine = by_n(rows[rows["impl"] == impl])
        out += [[impl, n, mine[n]["events_per_s"], mine[n]["latency_ms_p50"],
                 mine[n]["latency_ms_p99"],
                 mine[n]["median"] / base[n]["median"] if n in base else None]
                for n in ns if n in mine]
    return Table(["path", "memories", "events/s", "request p50", "request p99", "× in process"],
                 ["code", "label", "rate", "ms", "ms", "ratio"], out) if out else None


def _startup(rows: pd.DataFrame) -> Table | None:
    if rows.empty:
        return None
    out = [[r["n"], statistics.median(r["ready_s"]), r["ready_s"], r["first_start_s"]]
           for _, r in rows.sort_values("n", kind="stable").iterrows()]
    return Table(["memories", "ready (median of runs)", "runs", "first start (creates)"],
                 ["label", "time", "seconds_list", "time"], out)


def sharded(bench: pd.DataFrame) -> Table | None:
    rows = bench[bench["op"].str.startswith("sharded")]
    if rows.empty:
        return None
    out = [[g, r["impl"], (r["bit_exact"], r["mismatches"]), r["median"], r["single_ratio"],
            r["events_per_s"], r["bytes_moved"]]
           for g, rs in sorted(groups(rows).items())
           for _, r in rs.sort_values("median", kind="stable").iterrows()]
    return Table(["group", "impl", "bit-exact", "median", "× single (paired)", "events/s",
                  "client ↔ workers"], ["text", "code", "exact", "time", "ratio", "rate", "mib"], out)
