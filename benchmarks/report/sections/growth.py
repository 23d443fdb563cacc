"""Cost growth: log-log slopes of time and peak memory against n, and what grows too fast.

One series per (op, variant, impl), its points the medians (or the record's ``fit_seconds``)
at each n. Each record declares how its cost must grow (``growth``): ``linear`` (slope 1) and
``n log n`` are flagged when the top-decade slope exceeds the algorithm's by more than
``TOLERANCE`` and also exceeds its yardstick's (the floor of its variant; the memory system
bends the floor too) by as much; ``events`` (the work is the events, so slope 0) is flagged
when it exceeds its yardstick's slope (the plain sequential loop on the same events), or
``EVENTS_BAR`` without one; ``none`` is not fitted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..render import Table

#: Slope above which a series is flagged (cache/DRAM transitions and noise give a few
#: hundredths; an accidental O(n log n) or O(n^2) gives much more).
TOLERANCE = 0.15
#: The bar of an ``events`` series without a yardstick.
EVENTS_BAR = 0.35
#: The yardstick of series whose variant has none: the dense step's floor (the machine's
#: streaming bandwidth).
MACHINE_FLOOR = ("dense-step", "")
#: Tiers from which the data leave the caches: the ``≥1M`` slopes.
BIG = 10**6


def loglog_slope(points: Sequence[tuple[float, float | None]]) -> float | None:
    """Least-squares slope of log(y) against log(x) (numpy.polyfit, degree 1); None with
    fewer than two distinct x. Points with y missing or not positive are left out."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    xs, ys = zip(*pts)
    return float(np.polyfit(xs, ys, 1)[0])


def nlogn_slope(n1: float, n2: float) -> float:
    """The log-log slope of n log n between n1 and n2."""
    return 1 + math.log(math.log(n2) / math.log(n1)) / math.log(n2 / n1)


def growth(bench: pd.DataFrame) -> dict[str, Any]:
    series = _series(bench[bench["growth"] != "none"])
    yard = {key[:2]: _top(s["pts"]) for key, s in series.items()
            if s["yardstick"] and len(s["pts"]) >= 2}
    rows, flagged = [], []
    for key, s in sorted(series.items()):
        if s["repeat"]:
            continue
        row = _fit(key, sorted(s["pts"]), s["growth"], yard)
        busy = [s["foreign"][n] for n, _, _ in row.pop("top") if s["foreign"][n] is not None]
        row["foreign"] = max(busy) if busy else None
        rows.append(row)
        if row["flag"] or row["mem_flag"]:
            flagged.append(row)
    return {"table": _table(rows), "flagged": flagged, "tolerance": TOLERANCE}


def _table(rows: list[dict[str, Any]]) -> Table:
    return Table(["operation", "variant", "impl", "time slope (all)", "time slope (≥1M)",
                  "time slope (top)", "algorithm", "memory slope (≥1M)", "tiers", "flag"],
                 ["text", "text", "code", "slope", "slope", "slope", "slope", "slope", "span", "text"],
                 [[r["op"], r["variant"], r["impl"], r["slope_all"], r["slope_from_1M"],
                   r["slope_top"], r["expected"], r["mem_slope_from_1M"], (r["first"], r["last"]),
                   "**superlinear**" if r["flag"] else "**memory**" if r["mem_flag"] else ""]
                  for r in rows])


def _series(rows: pd.DataFrame) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(op, variant, impl) -> its points [(n, seconds, peak B/mem)], the foreign CPU at each n
    (the last record's) and its declarations."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for _, r in rows.iterrows():
        s = out.setdefault((r["op"], r["variant"], r["impl"]), {"pts": [], "foreign": {}})
        s["pts"].append((int(r["n"]), r["fit_seconds"] or r["median"],
                         r["mem_peak_bytes_per_memory"]))
        s["foreign"][int(r["n"])] = r["foreign_cpu"]
        s.update({k: r[k] for k in ("growth", "yardstick", "repeat")})
    return out


def _top(pts: list[tuple]) -> float | None:
    """The slope over the two largest n (the top decade of a run of decade tiers)."""
    return loglog_slope([(n, t) for n, t, _ in sorted(pts)[-2:]])


def _fit(key: tuple[str, str, str], pts: list[tuple], law: str,
         yard: dict[tuple[str, str], float | None]) -> dict[str, Any]:
    big = [p for p in pts if p[0] >= BIG]
    s_top = _top(pts) if len(pts) >= 2 else None
    # Peaks under 1 byte a memory are allocations the measurement could not see (JIT
    # runtimes' pre-reserved pools; streaming writes): left out of the fit.
    m_big = loglog_slope([(n, m * n) for n, _, m in big if m and m >= 1.0])
    expected = (nlogn_slope(pts[-2][0], pts[-1][0]) if law == "n log n" and len(pts) >= 2
                else 0.0 if law == "events" else 1.0)
    if law == "events":
        ref = yard.get(key[:2])
        flag = s_top is not None and s_top > (ref if ref is not None else EVENTS_BAR) + TOLERANCE
    else:
        fl = yard.get(key[:2], yard.get(MACHINE_FLOOR))
        flag = (s_top is not None and s_top > expected + TOLERANCE
                and (fl is None or s_top > fl + TOLERANCE))
    return {"op": key[0], "variant": key[1], "impl": key[2],
            "slope_all": loglog_slope([(n, t) for n, t, _ in pts]),
            "slope_from_1M": loglog_slope([(n, t) for n, t, _ in big]), "slope_top": s_top,
            "expected": expected, "mem_slope_from_1M": m_big, "first": pts[0][0],
            "last": pts[-1][0], "flag": flag, "mem_flag": m_big is not None and m_big > 1 + TOLERANCE,
            "top": pts[-2:]}
