"""The dense-step targets: per group, every benchmark as ratios, then each target met or missed.

Dense-step groups (``dense-step-<size>``, and the GPU run's ``gpu-dense-step-<size>``): each
benchmark's median, its ratio to the floor of the group (the smaller median of the floor and
its repeat: it never flatters a ratio), its paired ratio (the two timed in alternation: robust
to a machine that drifts), its ratio to the fastest bit-exact peer, its bandwidth, whether it
is bit-exact and the foreign CPU. Metrics groups (``metrics-<size>``): medians and
scikit-learn/nap per kind of data. Then the targets of the performance issue (see
benchmarks/README.md), judged on the paired ratios where the JSON has them, on the medians
otherwise; both shown. Any other group: medians and events/s.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from nap_gpu._sizes import parse_count

from .frames import Frames, fastest_peer, floor_time, groups
from .render import Table, fmt_ratio, fmt_time, markdown

FLOOR_LIMIT_CPP = 1.3        # cpp-raw / floor at 100M
FLOOR_LIMIT_NUMPY = 8.0      # numpy-raw / floor at 100M
NAIVE_SPEEDUP = 3.0          # numpy-naive / numpy-raw at 100M
SKLEARN_SPEEDUP = 3.0        # sklearn / nap inversion ratio at 10M
R = "---:"  # right-aligned


def size_key(group: str) -> tuple[str, int]:
    """'dense-step-10M' -> ('dense-step', 10_000_000); a group without a size: n = 0."""
    kind, _, label = group.rpartition("-")
    try:
        return kind, parse_count(label)
    except ValueError:
        return kind, 0


def targets_report(frames: Frames, paths: list[str]) -> str:
    out = ["## nap_gpu benchmarks", ""]
    for path, (_, run) in zip(paths, frames.runs.iterrows()):
        cpu = (run["machine_info"] or {}).get("cpu", {})
        out.append(f"- `{path}`: {run['datetime']}, {cpu.get('brand_raw')}, {cpu.get('count')} "
                   f"logical CPUs")
    out.append("")
    summary: dict[str, dict[str, Any]] = {}
    bench = frames.bench.assign(group=frames.bench["group"].replace("", "ungrouped"))
    parts = groups(bench)
    for name in sorted(parts, key=size_key):
        rows = parts[name].to_dict("records")
        if name.startswith("dense-step-"):
            summary[name] = dense_table(name, rows, out)
        elif name.startswith("gpu-dense-step-"):
            dense_table(name, rows, out)  # the GPU run (benchmarks/gpu): no CPU targets
        elif name.startswith("metrics-"):
            summary[name] = metrics_table(name, rows, out)
        else:
            plain_table(name, rows, out)
    targets(summary, out)
    return "\n".join(out)


def dense_table(name: str, rows: list[dict[str, Any]], out: list[str]) -> dict[str, Any]:
    frame = pd.DataFrame(rows)
    floors = [r["median"] for r in rows if r["role"] == "floor"]
    floor = floor_time(frame)
    best_peer = fastest_peer(frame)
    best = best_peer["median"] if best_peer is not None else None
    out += [f"### {name}", ""]
    if floor is not None and len(floors) == 2:
        out += [f"floor {fmt_time(floor)} (floor and its repeat differ by "
                f"{max(floors) / min(floors):.2f}×)"
                + (f"; fastest bit-exact peer: {best_peer['impl']}" if best_peer is not None else ""), ""]
    table = []
    for r in sorted(rows, key=lambda r: r["median"]):
        m = r["median"]
        exact = {True: "yes", False: "**NOT bit-exact**", None: "n/a"}[r["bit_exact"]]
        paired = 1.0 if r["role"] == "floor" else r["paired_floor_ratio"]
        table.append([r["impl"], fmt_time(m), fmt_ratio(m / floor if floor else None),
                      fmt_ratio(paired), fmt_ratio(m / best if best else None),
                      "" if not r["bytes"] else f"{r['bytes'] / m / 1e9:.1f}", str(r["stat_rounds"]),
                      exact, "" if r["foreign_cpu"] is None else f"{r['foreign_cpu']:.0%}"])
    out += [markdown(Table(["benchmark", "median", "× floor", "× floor (paired)", "× fastest peer",
                            "GB/s", "rounds", "bit-exact", "foreign CPU"], ["text"] * 9, table),
                     ["---", R, R, R, R, R, R, "---", R]), ""]
    paired_of = {r["impl"]: r["paired_floor_ratio"] for r in rows}
    exact_peers = [r["impl"] for r in rows if r["role"] == "peer" and r["bit_exact"]]
    best_paired = min((paired_of[p] for p in exact_peers if paired_of.get(p)), default=None)
    return {"floor": floor, "best_peer": best, "median": {r["impl"]: r["median"] for r in rows},
            "best_peer_name": best_peer["impl"] if best_peer is not None else None,
            "paired": paired_of, "best_paired": best_paired,
            "best_paired_name": next((p for p in exact_peers if paired_of.get(p) == best_paired), None)}


def metrics_table(name: str, rows: list[dict[str, Any]], out: list[str]) -> dict[str, Any]:
    med = {(r["impl"], r["data"]): r["median"] for r in rows}
    out += [f"### {name}", ""]
    table = [[r["name"].split("[")[0], fmt_time(r["median"]),
              "" if r["value"] is None else f"{r['value']:.6f}", str(r["stat_rounds"]),
              "" if r["foreign_cpu"] is None else f"{r['foreign_cpu']:.0%}"]
             for r in sorted(rows, key=lambda r: r["name"])]
    out += [markdown(Table(["benchmark", "median", "value", "rounds", "foreign CPU"], ["text"] * 5,
                           table), ["---", R, R, R, R]), ""]
    speedups = {}
    for data in sorted({d for _, d in med if d is not None}):
        if ("sklearn", data) in med and ("nap", data) in med:
            speedups[data] = med[("sklearn", data)] / med[("nap", data)]
            out.append(f"- {data}: scikit-learn / nap = **{speedups[data]:.2f}×**")
    out.append("")
    return {"speedups": speedups}


def plain_table(name: str, rows: list[dict[str, Any]], out: list[str]) -> None:
    """Any other group (e.g. the GPU sparse batch): medians, and events/s where known."""
    table = [[r["name"], fmt_time(r["median"]),
              f"{r['events'] / r['median']:.3g}" if r["events"] else "", str(r["stat_rounds"])]
             for r in sorted(rows, key=lambda r: r["median"])]
    out += [f"### {name}", "", markdown(Table(["benchmark", "median", "events/s", "rounds"],
                                              ["text"] * 4, table), ["---", R, R, R]), ""]


def targets(summary: dict[str, dict[str, Any]], out: list[str]) -> None:
    rows: list[list[str]] = []
    for name, s in summary.items():
        kind, n = size_key(name)
        label = name.rpartition("-")[2]
        if kind == "dense-step":
            rows += _dense_targets(s, n, label)
        elif kind == "metrics" and n == 10**7:
            rows += [_verdict(f"inversion ratio ≥ {SKLEARN_SPEEDUP:g}× faster than roc_auc_score "
                              f"at {label} ({data})", f"{x:.2f}×", x >= SKLEARN_SPEEDUP)
                     for data, x in s["speedups"].items()]
    out += ["### Targets", "", markdown(Table(["target", "measured", "verdict"], ["text"] * 3, rows),
                                        ["---", R, "---"]), ""]


def _verdict(what: str, value: str, ok: bool) -> list[str]:
    return [what, value, "met" if ok else "**missed**"]


def _judged(median_ratio: float | None, paired: float | None) -> float:
    """The ratio a target is judged on: the paired one where measured, else the medians'."""
    ratio = paired if paired else median_ratio
    assert ratio is not None, "judged only where the medians are known"
    return ratio


def _dense_targets(s: dict[str, Any], n: int, label: str) -> list[list[str]]:
    med, paired, floor = s["median"], s["paired"], s["floor"]

    def both(a: str, b: str | None, med_b: float | None = None) -> tuple[float | None, float | None]:
        """a / b from the group medians, and from the paired floor ratios."""
        den = med_b if med_b else med.get(b)
        m = med.get(a) / den if med.get(a) and den else None
        pb = 1.0 if b == "floor" else paired.get(b)
        p = paired.get(a) / pb if paired.get(a) and pb else None
        return m, p

    def show(m: float | None, p: float | None) -> str:
        return f"{fmt_ratio(m)} (paired {fmt_ratio(p)})" if p is not None else fmt_ratio(m)

    rows = []
    if s["best_peer"] and med.get("cpp-raw"):
        m, _ = both("cpp-raw", None, med_b=s["best_peer"])
        p = paired["cpp-raw"] / s["best_paired"] if paired.get("cpp-raw") and s["best_paired"] else None
        rows.append(_verdict(f"cpp step ≤ fastest bit-exact peer at {label} ({s['best_peer_name']}; "
                             f"paired: {s['best_paired_name']})", show(m, p), _judged(m, p) <= 1.0))
    if n == 10**8 and floor:
        for impl, limit, what in (("cpp-raw", FLOOR_LIMIT_CPP, "cpp step"),
                                  ("numpy-raw", FLOOR_LIMIT_NUMPY, "numpy step")):
            if med.get(impl):
                m, p = both(impl, "floor", med_b=floor)
                rows.append(_verdict(f"{what} ≤ {limit:g}× floor at {label}", show(m, p),
                                     _judged(m, p) <= limit))
    if n == 10**8 and med.get("numpy-raw") and med.get("numpy-naive"):
        m, p = both("numpy-naive", "numpy-raw")
        rows.append(_verdict(f"numpy step ≥ {NAIVE_SPEEDUP:g}× faster than naive NumPy at {label}",
                             show(m, p), _judged(m, p) >= NAIVE_SPEEDUP))
    return rows
