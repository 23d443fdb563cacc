"""The speed goals of the performance issue, each measured from this run and judged met or
missed: the one place a reader sees which hold on this machine (benchmarks/README.md says why
the missed ones are missed)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from nap_gpu._sizes import size_label

from ..frames import floor_time, groups, of_op
from ..render import DASH, Table, fmt_rate, fmt_ratio

METRICS_IMPL, METRICS_PEER, STEP = "cpp", "sklearn", "cpp-raw"
CHECKED_STEPS = ("cpp-validated", "cpp-double-buffer")  # in place; one pass into a 2nd buffer
PUBLIC_BATCH, RAW_BATCH, BATCH_PEER = "cpp-validated", "cpp-raw", "numba-seq"
AT_SCALE, RANDOM_AT = (10**7, 10**8), (10**8, 10**9)
METRICS_PER_STEP, METRICS_SPEEDUP, CHECKED_STEP_FLOOR = 10.0, 50.0, 1.38
SMALL_BATCH_EVENTS, SMALL_BATCH_RATIO, RANDOM_BATCH_SPEEDUP = 10_000, 1.0, 2.0
SERVICE_N, SERVICE_P99_MS = 10**6, 50.0
SERVICE_RATE = {"group": 2e6, "always": 1e6}  # events/s, per fsync mode
SERVICE_PATHS = ("binary", "stream")  # the paths the goal is for (JSON bodies are not)

Row = list[str]


def goals(bench: pd.DataFrame) -> Table | None:
    rows = (_metrics(bench) + _checked_step(bench) + _small_batches(bench)
            + _random_batches(bench) + _service(bench))
    return Table(["goal", "at", "measured", "verdict"], ["text"] * 4, rows) if rows else None


def _verdict(goal: str, at: str, ratio: float | None, ok: Callable[[float], bool]) -> Row:
    """A goal's row: its ``ratio`` (None: not run), judged by ``ok``."""
    if ratio is None:
        return [goal, at, "not run", DASH]
    return [goal, at, fmt_ratio(ratio), _judged(ok(ratio))]


def _judged(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _median(rows: pd.DataFrame, impl: str, n: int | None = None) -> float | None:
    """``impl``'s median in ``rows`` (at ``n`` where given), or None."""
    mine = rows[rows["impl"] == impl]
    if n is not None:
        mine = mine[mine["n"] == n]
    return float(mine["median"].iloc[0]) if len(mine) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _metrics(bench: pd.DataFrame) -> list[Row]:
    metrics, dense = of_op(bench, "metrics"), of_op(bench, "dense-step")
    if metrics.empty:
        return []
    out = []
    for n in AT_SCALE:
        nap = _median(metrics, METRICS_IMPL, n)
        out.append(_verdict(f"exact metrics ≤ {METRICS_PER_STEP:g}× a dense step (`{STEP}`)",
                            size_label(n), _ratio(nap, _median(dense, STEP, n)),
                            lambda x: x <= METRICS_PER_STEP))
        out.append(_verdict(f"exact metrics ≥ {METRICS_SPEEDUP:g}× faster than scikit-learn",
                            size_label(n), _ratio(_median(metrics, METRICS_PEER, n), nap),
                            lambda x: x >= METRICS_SPEEDUP))
    return out


def _checked_step(bench: pd.DataFrame) -> list[Row]:
    """The step with the finite scan over the floor timed in alternation (the medians' ratio
    where no pairing was measured)."""
    dense = of_op(bench, "dense-step")
    if dense.empty:
        return []
    out = []
    for impl in CHECKED_STEPS:
        for n in AT_SCALE:
            part = dense[dense["n"] == n]
            mine = part[part["impl"] == impl]
            if impl != CHECKED_STEPS[0] and not len(mine):
                continue  # an older run, without the double-buffered step
            ratio = None
            if len(mine):
                ratio = mine["paired_floor_ratio"].iloc[0] or _ratio(
                    float(mine["median"].iloc[0]), floor_time(part))
            out.append(_verdict(f"step with the finite check (`{impl}`) ≤ "
                                f"{CHECKED_STEP_FLOOR:g}× the floor (paired)", size_label(n),
                                ratio, lambda x: x <= CHECKED_STEP_FLOOR))
    return out


def _batch_ratios(bench: pd.DataFrame, impl: str, dist: str, small: bool,
                  n: int | None = None) -> list[tuple[int, float]]:
    """(n, ``impl``'s time over numba-seq's: the pairs' where the run timed the two in
    alternation, else the medians') for each sparse group of ``dist`` ids with
    SMALL_BATCH_EVENTS events (``small``) or more, at ``n`` where given."""
    out = []
    for rows in groups(of_op(bench, "sparse-batch")).values():
        mine, peer = rows[rows["impl"] == impl], _median(rows, BATCH_PEER)
        if not len(mine) or not peer:
            continue
        r = mine.iloc[0]
        if (r["dist"] == dist and (r["events"] == SMALL_BATCH_EVENTS) == small
                and (n is None or r["n"] == n)):
            paired = r.get("paired_floor_ratio")  # timed in alternation with the peer
            out.append((int(r["n"]), float(paired) if pd.notna(paired)
                        else float(r["median"]) / peer))
    return out


def _small_batches(bench: pd.DataFrame) -> list[Row]:
    """10K events, the public call: the worst time ratio over every n, per id distribution."""
    out = []
    for dist in ("uniform", "zipf"):
        ratios = _batch_ratios(bench, PUBLIC_BATCH, dist, small=True)
        if not ratios:
            continue
        worst_n, ratio = max(ratios, key=lambda nr: nr[1])
        ns = sorted(n for n, _ in ratios)
        out.append(_verdict(f"`nap.update` of {size_label(SMALL_BATCH_EVENTS)} events ≤ "
                            f"{SMALL_BATCH_RATIO:g}× {BATCH_PEER}'s time, {dist} ids, worst n",
                            f"{size_label(ns[0])}–{size_label(ns[-1])} "
                            f"(worst: {size_label(worst_n)})", ratio,
                            lambda x: x <= SMALL_BATCH_RATIO))
    return out


def _random_batches(bench: pd.DataFrame) -> list[Row]:
    """1M-10M uniform events (random access): numba-seq's time over the raw core's, the
    smaller over the batch sizes, per n."""
    out = []
    for n in RANDOM_AT:
        ratios = _batch_ratios(bench, RAW_BATCH, "uniform", small=False, n=n)
        speedup = min(1 / ratio for _, ratio in ratios) if ratios else None
        out.append(_verdict(f"`{RAW_BATCH}` batch of 1M-10M uniform events ≥ "
                            f"{RANDOM_BATCH_SPEEDUP:g}× {BATCH_PEER}'s events/s",
                            size_label(n), speedup, lambda x: x >= RANDOM_BATCH_SPEEDUP))
    return out


def _service(bench: pd.DataFrame) -> list[Row]:
    """Each binary and streaming path at SERVICE_N memories: its rate against its fsync
    mode's goal, at a p99 within SERVICE_P99_MS."""
    rows = of_op(bench, "serve-feedback")
    out = []
    for _, r in rows[rows["n"] == SERVICE_N].iterrows():
        path, _, rest = str(r["impl"]).partition("-")
        fsync = rest.partition("-")[0]
        if path not in SERVICE_PATHS or fsync not in SERVICE_RATE:
            continue
        goal = SERVICE_RATE[fsync]
        rate, p99 = float(r["events_per_s"]), float(r["latency_ms_p99"])
        out.append([f"`{r['impl']}` ≥ {fmt_rate(goal)} events/s at p99 ≤ {SERVICE_P99_MS:g} ms",
                    size_label(SERVICE_N), f"{fmt_rate(rate)} events/s, p99 {p99:.3g} ms",
                    _judged(rate >= goal and p99 <= SERVICE_P99_MS)])
    return out
