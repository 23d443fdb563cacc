"""The headline: nap's C++ core against the floor and the fastest bit-exact peer."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..frames import fastest_peer, first_n, floor_time, groups, of_op
from ..render import Table

#: The implementation the headline is about: nap's C++ core, raw, and its metrics.
CORE = "cpp-raw"
CORE_METRICS, METRICS_PEER = "cpp", "sklearn"


def headline(bench: pd.DataFrame) -> dict[str, Any]:
    return {"dense": _dense(of_op(bench, "dense-step")),
            "sparse": _sparse(of_op(bench, "sparse-batch")),
            "metrics": _metrics(of_op(bench, "metrics"))}


def _core(rows: pd.DataFrame) -> pd.Series | None:
    mine = rows[rows["impl"] == CORE]
    return mine.iloc[0] if len(mine) else None


def _dense(rows: pd.DataFrame) -> Table | None:
    out = []
    parts = groups(rows)
    for g in sorted(parts, key=lambda g: first_n(parts[g])):
        rs = parts[g]
        floor, cpp, peer = floor_time(rs), _core(rs), fastest_peer(rs)
        if cpp is None:
            continue
        out.append([first_n(rs), cpp["median"], cpp["median"] / floor if floor else None,
                    cpp["paired_floor_ratio"], peer["impl"] if peer is not None else "–",
                    cpp["median"] / peer["median"] if peer is not None else None])
    return Table(["memories", "cpp step", "× floor", "× floor (paired)", "fastest bit-exact peer",
                  "cpp / peer"], ["label", "time", "ratio", "ratio", "text", "ratio"],
                 out) if out else None


def _sparse(rows: pd.DataFrame) -> Table | None:
    out = []
    parts = groups(rows)
    key = lambda g: (parts[g]["dist"].iloc[0], parts[g]["events"].iloc[0], first_n(parts[g]))  # noqa: E731
    for g in sorted(parts, key=key):
        rs = parts[g]
        cpp, peer = _core(rs), fastest_peer(rs)
        if cpp is None:
            continue
        out.append([cpp["dist"], cpp["events"], cpp["n"], cpp["events_per_s"],
                    (peer["impl"], peer["events_per_s"]) if peer is not None else None,
                    cpp["median"] / peer["median"] if peer is not None else None])
    return Table(["ids", "events", "memories", "cpp events/s", "fastest bit-exact peer",
                  "cpp / peer"], ["text", "label", "label", "rate", "named_rate", "ratio"],
                 out) if out else None


def _metrics(rows: pd.DataFrame) -> Table | None:
    out = []
    for _, b in rows.sort_values("n", kind="stable").iterrows():
        if b["impl"] != CORE_METRICS:
            continue
        sk = rows[(rows["impl"] == METRICS_PEER) & (rows["n"] == b["n"])]
        out.append([b["n"], b["median"], sk["median"].iloc[0] / b["median"] if len(sk) else None])
    return Table(["memories", "Engine.metrics", "sklearn / nap"], ["label", "time", "ratio"],
                 out) if out else None
