"""The headline: nap's C++ core against the floor and the fastest bit-exact peer."""

from __future__ import annotations

from collections.abc import Callable
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


def _per_group(rows: pd.DataFrame, key: Callable[[pd.DataFrame], Any],
               row: Callable[[pd.DataFrame, pd.Series, pd.Series | None], list[Any]]) -> list[list[Any]]:
    """``row(group, core, fastest peer)`` for each group that has the core, ordered by ``key``."""
    parts = groups(rows)
    out = []
    for g in sorted(parts, key=lambda g: key(parts[g])):
        cpp = _core(parts[g])
        if cpp is not None:
            out.append(row(parts[g], cpp, fastest_peer(parts[g])))
    return out


def _table(header: list[str], formats: list[str], rows: list[list[Any]]) -> Table | None:
    return Table(header, formats, rows) if rows else None


def _dense(rows: pd.DataFrame) -> Table | None:
    def row(rs: pd.DataFrame, cpp: pd.Series, peer: pd.Series | None) -> list[Any]:
        floor = floor_time(rs)
        return [first_n(rs), cpp["median"], cpp["median"] / floor if floor else None,
                cpp["paired_floor_ratio"], peer["impl"] if peer is not None else "–",
                cpp["median"] / peer["median"] if peer is not None else None]
    return _table(["memories", "cpp step", "× floor", "× floor (paired)", "fastest bit-exact peer",
                   "cpp / peer"], ["label", "time", "ratio", "ratio", "text", "ratio"],
                  _per_group(rows, first_n, row))


def _sparse(rows: pd.DataFrame) -> Table | None:
    def row(rs: pd.DataFrame, cpp: pd.Series, peer: pd.Series | None) -> list[Any]:
        return [cpp["dist"], cpp["events"], cpp["n"], cpp["events_per_s"],
                (peer["impl"], peer["events_per_s"]) if peer is not None else None,
                cpp["median"] / peer["median"] if peer is not None else None]
    return _table(["ids", "events", "memories", "cpp events/s", "fastest bit-exact peer",
                   "cpp / peer"], ["text", "label", "label", "rate", "named_rate", "ratio"],
                  _per_group(rows, lambda rs: (rs["dist"].iloc[0], rs["events"].iloc[0], first_n(rs)),
                             row))


def _metrics(rows: pd.DataFrame) -> Table | None:
    out = []
    for _, b in rows.sort_values("n", kind="stable").iterrows():
        if b["impl"] != CORE_METRICS:
            continue
        sk = rows[(rows["impl"] == METRICS_PEER) & (rows["n"] == b["n"])]
        out.append([b["n"], b["median"], sk["median"].iloc[0] / b["median"] if len(sk) else None])
    return _table(["memories", "Engine.metrics", "sklearn / nap"], ["label", "time", "ratio"], out)
