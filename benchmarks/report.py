"""Print a pytest-benchmark JSON file as Markdown tables of ratios.

    python benchmarks/report.py results.json [more.json ...]

Dense-step groups: each benchmark's median, its ratio to the floor of the same group (the
smaller median of ``floor`` and ``floor-repeat``: the conservative choice, it never flatters a
ratio), its paired ratio (median of its time over the floor's, the two run in alternation:
robust to a machine that drifts between benchmarks), its ratio to the fastest bit-exact peer,
its effective bandwidth (the 12 bytes a memory that a step must move, over the median), whether
it is bit-exact, and the share of the machine's CPU that other processes used meanwhile
(``foreign CPU``; a high value means the measurement was taken on a busy machine). Metrics
groups: medians and scikit-learn/nap per data kind. Then the targets of the performance issue,
each met or missed: judged on the paired ratios where the JSON has them (on the group medians
otherwise), both shown.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

from nap_gpu.scaling_report import fmt_ratio, fmt_time  # one formatting for both reports

#: (size, what, limit) targets: see benchmarks/README.md.
FLOOR_LIMIT_CPP = 1.3        # cpp-raw / floor at 100M
FLOOR_LIMIT_NUMPY = 8.0      # numpy-raw / floor at 100M
NAIVE_SPEEDUP = 3.0          # numpy-naive / numpy-raw at 100M
SKLEARN_SPEEDUP = 3.0        # sklearn / nap inversion ratio at 10M


def _load(paths: list[str]) -> tuple[list[dict], list[dict]]:
    benches, machines = [], []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        machines.append({"file": path, "datetime": data.get("datetime"),
                         "cpu": data.get("machine_info", {}).get("cpu", {}).get("brand_raw"),
                         "cores": data.get("machine_info", {}).get("cpu", {}).get("count")})
        benches.extend(data["benchmarks"])
    return benches, machines


def _size_key(group: str) -> tuple[str, float]:
    kind, _, label = group.rpartition("-")
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(label[-1:], 1)
    try:
        n = float(label.rstrip("KMG")) * scale
    except ValueError:
        n = 0
    return kind, n


def dense_table(name: str, rows: list[dict], out: list[str], summary: dict) -> None:
    med = {r["extra_info"]["impl"]: r["stats"]["median"] for r in rows}
    floors = [r["stats"]["median"] for r in rows if r["extra_info"].get("role") == "floor"]
    floor = min(floors) if floors else None
    peers = [r for r in rows if r["extra_info"].get("role") == "peer"
             and r["extra_info"].get("bit_exact")]
    best_peer = min(peers, key=lambda r: r["stats"]["median"]) if peers else None
    best = best_peer["stats"]["median"] if best_peer else None
    out.append(f"### {name}")
    out.append("")
    if floor is not None and len(floors) == 2:
        drift = max(floors) / min(floors)
        out.append(f"floor {fmt_time(floor)} (floor and its repeat differ by {drift:.2f}×)"
                   + (f"; fastest bit-exact peer: {best_peer['extra_info']['impl']}"
                      if best_peer else ""))
        out.append("")
    out.append("| benchmark | median | × floor | × floor (paired) | × fastest peer | GB/s | rounds "
               "| bit-exact | foreign CPU |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in sorted(rows, key=lambda r: r["stats"]["median"]):
        info = r["extra_info"]
        m = r["stats"]["median"]
        exact = {True: "yes", False: "**NOT bit-exact**", None: "n/a"}[info.get("bit_exact")]
        gbs = info["bytes"] / m / 1e9 if info.get("bytes") else None
        foreign = info.get("foreign_cpu")
        paired = 1.0 if info.get("role") == "floor" else info.get("paired_floor_ratio")
        out.append(f"| {info['impl']} | {fmt_time(m)} | {fmt_ratio(m / floor if floor else None)} | "
                   f"{fmt_ratio(paired)} | {fmt_ratio(m / best if best else None)} | "
                   f"{'' if gbs is None else f'{gbs:.1f}'} | "
                   f"{r['stats']['rounds']} | {exact} | "
                   f"{'' if foreign is None else f'{foreign:.0%}'} |")
    out.append("")
    paired = {r["extra_info"]["impl"]: r["extra_info"].get("paired_floor_ratio") for r in rows}
    exact_peers = [r["extra_info"]["impl"] for r in peers]
    best_paired = min((paired[p] for p in exact_peers if paired.get(p)), default=None)
    best_paired_name = next((p for p in exact_peers if paired.get(p) == best_paired), None)
    summary[name] = {"floor": floor, "best_peer": best, "best_peer_name":
                     best_peer["extra_info"]["impl"] if best_peer else None, "median": med,
                     "paired": paired, "best_paired": best_paired,
                     "best_paired_name": best_paired_name}


def metrics_table(name: str, rows: list[dict], out: list[str], summary: dict) -> None:
    med = {(r["extra_info"]["impl"], r["extra_info"].get("data")): r["stats"]["median"]
           for r in rows}
    out.append(f"### {name}")
    out.append("")
    out.append("| benchmark | median | value | rounds | foreign CPU |")
    out.append("|---|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: r["name"]):
        info = r["extra_info"]
        value = info.get("value", info.get("inversion_ratio"))
        foreign = info.get("foreign_cpu")
        out.append(f"| {r['name'].split('[')[0]} | {fmt_time(r['stats']['median'])} | "
                   f"{'' if value is None else f'{value:.6f}'} | {r['stats']['rounds']} | "
                   f"{'' if foreign is None else f'{foreign:.0%}'} |")
    out.append("")
    speedups = {}
    for data in sorted({d for _, d in med}):
        if ("sklearn", data) in med and ("nap", data) in med:
            speedups[data] = med[("sklearn", data)] / med[("nap", data)]
            out.append(f"- {data}: scikit-learn / nap = **{speedups[data]:.2f}×**")
    out.append("")
    summary[name] = {"speedups": speedups}


def targets(summary: dict, out: list[str]) -> None:
    out.append("### Targets")
    out.append("")
    out.append("| target | measured | verdict |")
    out.append("|---|---:|---|")

    def row(what, value, ok):
        out.append(f"| {what} | {value} | {'met' if ok else '**missed**'} |")

    for name, s in summary.items():
        kind, n = _size_key(name)
        label = name.rpartition("-")[2]
        if kind == "dense-step":
            med, paired, floor = s["median"], s["paired"], s["floor"]

            def both(a, b, med_b=None, med=med, paired=paired):
                """a / b from the group medians, and from the paired floor ratios."""
                m = med.get(a) / (med_b if med_b else med.get(b)) if med.get(a) and (
                    med_b or med.get(b)) else None
                pb = 1.0 if b == "floor" else paired.get(b)
                p = paired.get(a) / pb if paired.get(a) and pb else None
                return m, p

            def show(m, p):
                return f"{fmt_ratio(m)} (paired {fmt_ratio(p)})" if p is not None else fmt_ratio(m)

            if s["best_peer"] and med.get("cpp-raw"):
                m, _ = both("cpp-raw", None, med_b=s["best_peer"])
                p = (paired["cpp-raw"] / s["best_paired"]
                     if paired.get("cpp-raw") and s["best_paired"] else None)
                row(f"cpp step ≤ fastest bit-exact peer at {label} ({s['best_peer_name']}; "
                    f"paired: {s['best_paired_name']})", show(m, p), (p if p else m) <= 1.0)
            if n == 1e8 and med.get("cpp-raw") and floor:
                m, p = both("cpp-raw", "floor", med_b=floor)
                row(f"cpp step ≤ {FLOOR_LIMIT_CPP}× floor at {label}", show(m, p),
                    (p if p else m) <= FLOOR_LIMIT_CPP)
            if n == 1e8 and med.get("numpy-raw") and floor:
                m, p = both("numpy-raw", "floor", med_b=floor)
                row(f"numpy step ≤ {FLOOR_LIMIT_NUMPY:g}× floor at {label}", show(m, p),
                    (p if p else m) <= FLOOR_LIMIT_NUMPY)
            if n == 1e8 and med.get("numpy-raw") and med.get("numpy-naive"):
                m, p = both("numpy-naive", "numpy-raw")
                row(f"numpy step ≥ {NAIVE_SPEEDUP:g}× faster than naive NumPy at {label}",
                    show(m, p), (p if p else m) >= NAIVE_SPEEDUP)
        elif kind == "metrics" and n == 1e7:
            for data, speedup in s["speedups"].items():
                row(f"inversion ratio ≥ {SKLEARN_SPEEDUP:g}× faster than roc_auc_score "
                    f"at {label} ({data})", f"{speedup:.2f}×", speedup >= SKLEARN_SPEEDUP)
    out.append("")


def plain_table(name: str, rows: list[dict], out: list[str]) -> None:
    """Any other group (e.g. the GPU sparse batch): medians, and events/s where known."""
    out += [f"### {name}", "", "| benchmark | median | events/s | rounds |", "|---|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r["stats"]["median"]):
        m, events = r["stats"]["median"], r["extra_info"].get("events")
        rate = f"{events / m:.3g}" if events else ""
        out.append(f"| {r['name']} | {fmt_time(m)} | {rate} | {r['stats']['rounds']} |")
    out.append("")


def report(paths: list[str]) -> str:
    benches, machines = _load(paths)
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in benches:
        groups[b.get("group") or "ungrouped"].append(b)
    out = ["## nap_gpu benchmarks", ""]
    for m in machines:
        out.append(f"- `{m['file']}`: {m['datetime']}, {m['cpu']}, {m['cores']} logical CPUs")
    out.append("")
    summary: dict[str, dict] = {}
    for name in sorted(groups, key=_size_key):
        rows = groups[name]
        if name.startswith("dense-step-"):
            dense_table(name, rows, out, summary)
        elif name.startswith("gpu-dense-step-"):
            dense_table(name, rows, out, {})  # the GPU run (benchmarks/gpu): no CPU targets
        elif name.startswith("metrics-"):
            metrics_table(name, rows, out, summary)
        else:
            plain_table(name, rows, out)
    targets(summary, out)
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print(report(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
