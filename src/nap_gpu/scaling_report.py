"""Turn the scale suites' pytest-benchmark JSON into ``docs/SCALING.md`` and its plots.

    nap-gpu report benchmarks/results/scale-*.json [-o docs/SCALING.md] [--plots-dir DIR]

(or ``python -m nap_gpu.scaling_report ...``). Reads every ``--benchmark-json`` file the
suites in ``benchmarks/`` wrote (one per tier, or one for several) and writes one Markdown
page: the machine, the headline numbers, a table per operation with ratios to the floor
measured in the same run and to each peer, measured peak memory, the convergence tables of
the reference workload, and the fitted growth of time and memory with n (log–log slopes),
flagging any operation that grows faster than its algorithm allows. Plots (matplotlib PNGs)
go to ``docs/scaling/`` beside the page; without matplotlib the page is written without
them and says so. Every number on the page comes from the JSON: nothing is typed by hand.

This module imports nothing from nap_gpu (it runs where only the JSON is).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import sys
from collections import defaultdict
from typing import Any

from ._files import atomic_file

DEFAULT_OUTPUT = "docs/SCALING.md"
PLOTS_SUBDIR = "scaling"
#: Slope above which a linear operation is flagged (cache/DRAM transitions and noise give
#: a few hundredths; an accidental O(n log n) or O(n^2) gives much more).
LINEAR_TOLERANCE = 0.15
#: Operations whose algorithm is O(n log n) (the exact inversion ratio sorts).
NLOGN_OPS = {"metrics"}


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------
def load(paths: list[str]) -> tuple[list[dict], list[dict]]:
    """(benchmarks, runs): every benchmark of every file (with ``file`` added), and per file
    the run's date and pytest-benchmark's machine_info."""
    benches, runs = [], []
    for path in paths:
        with open(path) as f:
            try:
                data = json.load(f)
            except ValueError as exc:
                raise ValueError(f"{path}: not JSON ({exc}); an unfinished run?") from exc
        runs.append({"file": os.path.basename(path), "datetime": data.get("datetime"),
                     "machine_info": data.get("machine_info", {}),
                     "commit_info": data.get("commit_info", {})})
        for b in data.get("benchmarks", []):
            b = dict(b)
            b["file"] = os.path.basename(path)
            b.setdefault("extra_info", {})
            benches.append(b)
    return benches, runs


def _median(b: dict) -> float:
    return float(b["stats"]["median"])


def _label(n: int) -> str:
    for suffix, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


# ------------------------------------------------------------------------------------------
# Formatting
# ------------------------------------------------------------------------------------------
def fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def fmt_ratio(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.2f}×"


def fmt_rate(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g}"


def fmt_bytes_pm(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def fmt_pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def fmt_exact(b: dict) -> str:
    v = b["extra_info"].get("bit_exact")
    if v is None:
        return "–"
    if v:
        return "yes"
    mm = b["extra_info"].get("mismatches")
    return "**no**" + (f" ({mm:,} differ)" if mm else "")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


# ------------------------------------------------------------------------------------------
# Fits
# ------------------------------------------------------------------------------------------
def loglog_slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) against log(x); None with fewer than 2 distinct x."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y and y > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def nlogn_slope(n1: float, n2: float) -> float:
    """The log–log slope of n log n between n1 and n2."""
    return 1 + math.log(math.log(n2) / math.log(n1)) / math.log(n2 / n1)


# ------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------
class Report:
    def __init__(self, benches: list[dict], runs: list[dict], plots_dir: pathlib.Path | None,
                 rel_plots: str):
        self.benches, self.runs = benches, runs
        self.plots_dir, self.rel_plots = plots_dir, rel_plots
        self.by_op: dict[str, list[dict]] = defaultdict(list)
        for b in benches:
            op = b["extra_info"].get("op")
            if op is None:
                g = b.get("group") or ""
                op = "metrics-sklearn" if g.startswith("metrics-") else g.split("-")[0]
            self.by_op[op].append(b)
        self.out: list[str] = []
        self.plots: list[str] = []
        self.growth: list[dict] = []
        self.plot_error: str | None = None
        self._plt = None
        if plots_dir is not None:
            try:
                import matplotlib
                matplotlib.use("Agg")
                import matplotlib.pyplot as plt
                self._plt = plt
            except ImportError as exc:
                self.plot_error = f"matplotlib is not installed ({exc}): no plots"

    # -- helpers ---------------------------------------------------------------------------
    def group_floor(self, rows: list[dict]) -> float | None:
        floors = [_median(r) for r in rows if r["extra_info"].get("role") == "floor"]
        return min(floors) if floors else None

    def fastest_peer(self, rows: list[dict]) -> dict | None:
        peers = [r for r in rows if r["extra_info"].get("role") == "peer"
                 and r["extra_info"].get("bit_exact")]
        return min(peers, key=_median) if peers else None

    def save_plot(self, fig, name: str, alt: str) -> None:
        # plots are made only with a plots_dir, once matplotlib imported
        assert self.plots_dir is not None and self._plt is not None
        path = self.plots_dir / name
        fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
        self._plt.close(fig)
        self.plots.append(name)
        self.out += [f"![{alt}]({self.rel_plots}/{name})", ""]

    @staticmethod
    def by_group(rows: list[dict]) -> dict[str, list[dict]]:
        g: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            g[r["group"]].append(r)
        return g

    # -- sections --------------------------------------------------------------------------
    def machine(self) -> None:
        o = self.out
        o += ["## The machine", ""]
        seen = set()
        for b in self.by_op.get("machine", []):
            m = b["extra_info"].get("machine", {})
            key = json.dumps(m.get("versions", {}), sort_keys=True) + str(m.get("cpu"))
            if key in seen:
                continue
            seen.add(key)
            mem = m.get("mem_total_bytes")
            o.append(f"- CPU: {m.get('cpu', '?')}, {m.get('cores', '?')} cores; memory "
                     f"{mem / 2**30:.1f} GiB" if mem else f"- CPU: {m.get('cpu', '?')}")
            o.append(f"- {m.get('platform', '?')}, Python {m.get('python', '?')}")
            vers = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
            o.append(f"- versions: {vers}")
            be = m.get("backends")
            if isinstance(be, dict):
                o.append("- nap backends: " + "; ".join(f"{k}: {v}" for k, v in be.items()))
            if m.get("cpp_build"):
                cb = m["cpp_build"]
                o.append(f"- C++ core: {m.get('cpp_threads')} threads, "
                         + ", ".join(f"{k}={v}" for k, v in cb.items()))
        for r in self.runs:
            cpu = r["machine_info"].get("cpu", {})
            o.append(f"- run `{r['file']}`: {r['datetime']}"
                     + (f", commit {r['commit_info'].get('id', '')[:10]}"
                        + (" (dirty tree)" if r['commit_info'].get('dirty') else "")
                        if r.get("commit_info", {}).get("id") else "")
                     + (f", {cpu.get('brand_raw')}" if cpu.get("brand_raw") else ""))
        fc = [b["extra_info"]["foreign_cpu"] for b in self.benches
              if b["extra_info"].get("foreign_cpu") is not None]
        if fc:
            fc.sort()
            o.append(f"- foreign CPU (share of the machine other processes used while a "
                     f"benchmark ran): median {fmt_pct(fc[len(fc) // 2])}, max "
                     f"{fmt_pct(fc[-1])}, above 10% in {sum(x > 0.1 for x in fc)} of "
                     f"{len(fc)} benchmarks")
        o.append("")

    def headline(self) -> None:
        o = self.out
        o += ["## Headline", ""]
        rows = []
        dense = self.by_group(self.by_op.get("dense-step", []))
        for g in sorted(dense, key=lambda g: self.n_of(dense[g])):
            rs = dense[g]
            floor = self.group_floor(rs)
            cpp = next((r for r in rs if r["extra_info"].get("impl") == "cpp-raw"), None)
            peer = self.fastest_peer(rs)
            if cpp is None:
                continue
            rows.append([_label(self.n_of(rs)), fmt_time(_median(cpp)),
                         fmt_ratio(_median(cpp) / floor if floor else None),
                         fmt_ratio(cpp["extra_info"].get("paired_floor_ratio")),
                         (peer["extra_info"]["impl"] if peer else "–"),
                         fmt_ratio(_median(cpp) / _median(peer) if peer else None)])
        if rows:
            o += ["Dense step, nap's C++ core (`cpp-raw`) against the floor and the fastest "
                  "bit-exact peer (ratio < 1: nap is faster):", ""]
            o += table(["memories", "cpp step", "× floor", "× floor (paired)",
                        "fastest bit-exact peer", "cpp / peer"], rows)
        rows = []
        sparse = self.by_group(self.by_op.get("sparse-batch", []))
        for g in sorted(sparse, key=lambda g: (sparse[g][0]["extra_info"]["dist"],
                                               sparse[g][0]["extra_info"]["events"],
                                               self.n_of(sparse[g]))):
            rs = sparse[g]
            cpp = next((r for r in rs if r["extra_info"].get("impl") == "cpp-raw"), None)
            if cpp is None:
                continue
            e = cpp["extra_info"]
            peer = self.fastest_peer(rs)
            rows.append([e["dist"], _label(e["events"]), _label(e["n"]),
                         fmt_rate(e.get("events_per_s")),
                         f"{peer['extra_info']['impl']} {fmt_rate(peer['extra_info'].get('events_per_s'))}"
                         if peer else "–",
                         fmt_ratio(_median(cpp) / _median(peer)) if peer else "–"])
        if rows:
            o += ["Sparse ordered batch, `cpp-raw`, events per second, beside the fastest "
                  "bit-exact peer (time ratio > 1: the peer is faster):", ""]
            o += table(["ids", "events", "memories", "cpp events/s", "fastest bit-exact peer",
                        "cpp / peer"], rows)
        rows = []
        for b in sorted(self.by_op.get("metrics", []), key=lambda b: b["extra_info"]["n"]):
            e = b["extra_info"]
            if e.get("impl") != "cpp":
                continue
            sk = next((x for x in self.by_op["metrics"]
                       if x["extra_info"].get("impl") == "sklearn"
                       and x["extra_info"]["n"] == e["n"]), None)
            rows.append([_label(e["n"]), fmt_time(_median(b)),
                         fmt_ratio(_median(sk) / _median(b)) if sk else "–"])
        if rows:
            o += ["Metrics (exact separation + exact inversion ratio, `Engine.metrics` on "
                  "cpp) and scikit-learn's time over nap's:", ""]
            o += table(["memories", "Engine.metrics", "sklearn / nap"], rows)

    @staticmethod
    def n_of(rows: list[dict]) -> int:
        return int(rows[0]["extra_info"].get("n", 0))

    def dense(self) -> None:
        rows_all = self.by_op.get("dense-step", [])
        if not rows_all:
            return
        o = self.out
        o += ["## Dense step", "",
              "One `step` of n float32 memories (read w and q, write w: 12 bytes a memory). "
              "`× floor` divides by the smaller median of `floor` and `floor-repeat` of the "
              "same group (an in-place streaming triad `w += s*q` over the same bytes, "
              "C++/OpenMP on all cores); `× floor (paired)` is the median ratio of the "
              "benchmark and the floor timed back to back in alternation (robust to a "
              "drifting machine); `× peer` divides by the fastest bit-exact peer. "
              "`peak B/mem`: measured peak memory of the implementation's own state and one "
              "step (its working copy of w, JIT buffers, temporaries) per memory, above the "
              "resident inputs (pristine w and q, 8 B/memory); `–`/0 at small n where "
              "allocations reuse resident pages.", ""]
        groups = self.by_group(rows_all)
        for g in sorted(groups, key=lambda g: self.n_of(groups[g])):
            rs = groups[g]
            floor = self.group_floor(rs)
            peer = self.fastest_peer(rs)
            fl = [r for r in rs if r["extra_info"].get("role") == "floor"]
            drift = (max(map(_median, fl)) / min(map(_median, fl))) if len(fl) == 2 else None
            o += [f"### {_label(self.n_of(rs))} memories (`{g}`)", "",
                  f"floor {fmt_time(floor)}"
                  + (f" (floor and its repeat differ by {drift:.2f}×)" if drift else "")
                  + (f"; fastest bit-exact peer: `{peer['extra_info']['impl']}`" if peer
                     else ""), ""]
            rows = []
            for r in rs:
                e = r["extra_info"]
                med = _median(r)
                rows.append([f"`{e.get('impl')}`", e.get("role", ""), fmt_time(med),
                             fmt_ratio(med / floor if floor else None),
                             fmt_ratio(e.get("paired_floor_ratio")),
                             fmt_ratio(med / _median(peer) if peer else None),
                             f"{e['bytes'] / med / 1e9:.1f}" if e.get("bytes") else "–",
                             fmt_exact(r), fmt_bytes_pm(e.get("mem_peak_bytes_per_memory")),
                             str(e.get("rounds", "")), fmt_pct(e.get("foreign_cpu"))])
            o += table(["impl", "role", "median", "× floor", "× floor (paired)", "× peer",
                        "GB/s", "bit-exact", "peak B/mem", "rounds", "foreign CPU"], rows)
            for r in rs:
                if r["extra_info"].get("first_mismatch"):
                    o.append(f"- `{r['extra_info']['impl']}` not bit-exact: first mismatch "
                             f"{r['extra_info']['first_mismatch']}")
            o.append("")
        if self._plt is not None:
            self.plot_dense(rows_all, groups)

    def plot_dense(self, rows_all, groups) -> None:
        plt = self._plt
        assert plt is not None, "called only once matplotlib imported"
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
        series: dict[str, list] = defaultdict(list)
        for rs in groups.values():
            floor = self.group_floor(rs)
            for r in rs:
                impl = r["extra_info"]["impl"]
                if impl == "floor-repeat":
                    continue
                series[impl].append((int(r["extra_info"]["n"]), _median(r),
                                     _median(r) / floor if floor else None))
        for impl, pts in sorted(series.items()):
            pts.sort()
            style = dict(color="black", linewidth=2.5, linestyle="--") if impl == "floor" \
                else {}
            label = impl + ("" if all(r["extra_info"].get("bit_exact") is not False
                                      for r in rows_all if r["extra_info"]["impl"] == impl)
                            else " (not bit-exact)")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label, **style)
            ax2.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=label, **style)
        for a in (ax, ax2):
            a.set_xscale("log")
            a.set_yscale("log")
            a.set_xlabel("memories n")
            a.grid(True, which="both", alpha=0.3)
        ax.set_ylabel("time per step (s)")
        ax.set_title("dense step: time vs memories (floor dashed)")
        ax2.set_ylabel("time / same-run floor")
        ax2.set_title("dense step: ratio to the floor of its group")
        ax.legend(fontsize=8)
        self.save_plot(fig, "dense_step.png", "time per dense step vs memories")

    def plot_lines(self, rows, name, title, ylabel, y=_median, key=lambda r: r["extra_info"]
                   ["impl"]) -> None:
        plt = self._plt
        assert plt is not None, "called only once matplotlib imported"
        series: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for r in rows:
            series[key(r)].append((int(r["extra_info"]["n"]), y(r)))
        fig, ax = plt.subplots(figsize=(7.5, 5))
        for impl, pts in sorted(series.items()):
            pts.sort()
            style = dict(color="black", linewidth=2.5, linestyle="--") \
                if impl.startswith("floor") else {}
            if impl == "floor-repeat":
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("memories n")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        self.save_plot(fig, name, title)

    def sparse(self) -> None:
        rows_all = self.by_op.get("sparse-batch", [])
        if not rows_all:
            return
        o = self.out
        o += ["## Sparse ordered batch", "",
              "One batch of `events` (id, quality) events applied in order (feedback only) to "
              "a population of n memories; events/s = events / median time. Ids uniform, or "
              "Zipf(1.1) over the ids (`max mult`: events on the hottest id). `× best peer`: "
              "time over the fastest bit-exact peer's (< 1: nap faster). `peak B/mem`: "
              "measured peak memory (population, events, scratch) per memory. "
              "`numpy-add-at` is `np.add.at` + one clamp: not the law (it sums an id's "
              "events and clamps once, unordered), shown with its mismatch count.", ""]
        key = lambda b: (b["extra_info"]["dist"], b["extra_info"]["events"])  # noqa: E731
        cases = defaultdict(list)
        for b in rows_all:
            cases[key(b)].append(b)
        for (dist, events) in sorted(cases):
            rs = cases[(dist, events)]
            impls = []
            for r in rows_all:  # every impl of the operation: a missing one shows as skipped
                if r["extra_info"]["impl"] not in impls:
                    impls.append(r["extra_info"]["impl"])
            ns = sorted({r["extra_info"]["n"] for r in rs})
            o += [f"### {dist} ids, {_label(events)} events", ""]
            header = ["impl", "bit-exact"] + [f"{_label(n)}: events/s" for n in ns] + \
                [f"{_label(n)}: × best peer" for n in ns] + ["peak B/mem (largest n)"]
            rows = []
            for impl in impls:
                mine = {r["extra_info"]["n"]: r for r in rs if r["extra_info"]["impl"] == impl}
                if not mine:
                    rows.append([f"`{impl}`", "–"] + ["skipped"] * len(ns) + ["–"] * len(ns)
                                + ["–"])
                    continue
                any_r = next(iter(mine.values()))
                cells = [f"`{impl}`", fmt_exact(any_r)]
                cells += [fmt_rate(mine[n]["extra_info"].get("events_per_s")) if n in mine
                          else "skipped" for n in ns]
                for n in ns:
                    group = [r for r in rs if r["extra_info"]["n"] == n]
                    peer = self.fastest_peer(group)
                    cells.append(fmt_ratio(_median(mine[n]) / _median(peer))
                                 if n in mine and peer else "–")
                big = mine[max(mine)]["extra_info"]
                cells.append(fmt_bytes_pm(big.get("mem_peak_bytes_per_memory")))
                rows.append(cells)
            o += table(header, rows)
            mult = {r["extra_info"]["n"]: r["extra_info"].get("max_multiplicity") for r in rs}
            o += ["max multiplicity per n: " + ", ".join(
                f"{_label(n)}: {m:,}" for n, m in sorted(mult.items()) if m is not None), ""]
        if self._plt is not None:
            plt = self._plt
            dists = sorted({b["extra_info"]["dist"] for b in rows_all})
            evs = sorted({b["extra_info"]["events"] for b in rows_all})
            fig, axes = plt.subplots(len(dists), len(evs), figsize=(4.2 * len(evs),
                                                                    3.6 * len(dists)),
                                     sharey=True, squeeze=False)
            colors: dict[str, str] = {}
            for b in rows_all:
                colors.setdefault(b["extra_info"]["impl"], f"C{len(colors)}")
            for i, dist in enumerate(dists):
                for j, ev in enumerate(evs):
                    ax = axes[i][j]
                    series = defaultdict(list)
                    for b in rows_all:
                        e = b["extra_info"]
                        if e["dist"] == dist and e["events"] == ev:
                            series[e["impl"]].append((e["n"], e["events_per_s"]))
                    for impl, pts in sorted(series.items()):
                        pts.sort()
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                                color=colors[impl], label=impl,
                                linestyle=":" if impl == "numpy-add-at" else "-")
                    ax.set_xscale("log")
                    ax.set_yscale("log")
                    ax.set_title(f"{dist} ids, {_label(ev)} events", fontsize=10)
                    ax.grid(True, which="both", alpha=0.3)
                    if i == len(dists) - 1:
                        ax.set_xlabel("memories n")
                    if j == 0:
                        ax.set_ylabel("events per second")
            handles: dict[str, Any] = {}  # label -> its first matplotlib artist
            for row in axes:
                for ax in row:
                    for h, lab in zip(*ax.get_legend_handles_labels()):
                        handles.setdefault(lab, h)
            if handles:
                fig.legend(list(handles.values()), list(handles.keys()), loc="lower center",
                           ncol=len(handles), fontsize=8, bbox_to_anchor=(0.5, -0.03))
            fig.suptitle("sparse ordered batch (numpy-add-at: not the law, dotted)")
            self.save_plot(fig, "sparse_batch.png", "events per second, sparse ordered batch")

    def simple_op(self, op: str, title: str, intro: str, bytes_label: bool = True) -> None:
        rows_all = self.by_op.get(op, [])
        if not rows_all:
            return
        o = self.out
        o += [f"## {title}", "", intro, ""]
        groups = self.by_group(rows_all)
        # paired: ratios measured in alternation with the floor (older JSON: same-run medians)
        paired = any("paired_floor_ratio" in r["extra_info"] for r in rows_all)
        kinds = defaultdict(list)  # group prefix (without size) -> groups
        for g in groups:
            kinds[g.rsplit("-", 1)[0]].append(g)
        for kind in sorted(kinds):
            gs = sorted(kinds[kind], key=lambda g: self.n_of(groups[g]))
            impls = []
            for g in gs:
                for r in groups[g]:
                    if r["extra_info"]["impl"] not in impls:
                        impls.append(r["extra_info"]["impl"])
            ns = [self.n_of(groups[g]) for g in gs]
            o += [f"### `{kind}`", ""]
            header = ["impl", "bit-exact"] + [f"{_label(n)}" for n in ns] + \
                [f"{_label(n)}: × floor (paired)" for n in ns if paired] + \
                [f"{_label(n)}: × floor" for n in ns if not paired] + \
                ["× best peer (largest n)", "peak B/mem (largest n)"]
            rows = []
            for impl in impls:
                cells = [f"`{impl}`"]
                mine = {}
                for g in gs:
                    for r in groups[g]:
                        if r["extra_info"]["impl"] == impl:
                            mine[self.n_of(groups[g])] = (r, groups[g])
                cells.append(fmt_exact(next(iter(mine.values()))[0]))
                cells += [fmt_time(_median(mine[n][0])) if n in mine else "–" for n in ns]
                for n in ns:
                    if n not in mine:
                        cells.append("–")
                        continue
                    r, grp = mine[n]
                    if paired:
                        cells.append(fmt_ratio(r["extra_info"].get("paired_floor_ratio")))
                    else:
                        fl = self.group_floor(grp)
                        cells.append(fmt_ratio(_median(r) / fl if fl else None))
                nmax = max(mine)
                r, grp = mine[nmax]
                peer = self.fastest_peer(grp)
                cells.append(fmt_ratio(_median(r) / _median(peer)) if peer else "–")
                cells.append(fmt_bytes_pm(r["extra_info"].get("mem_peak_bytes_per_memory")))
                rows.append(cells)
            o += table(header, rows)
            for impl in impls:
                for g in gs:
                    for r in groups[g]:
                        e = r["extra_info"]
                        if e["impl"] == impl and e.get("first_mismatch"):
                            o.append(f"- `{impl}` at {_label(e['n'])}: {e['first_mismatch']}")
                            break
            o.append("")

    def wal(self) -> None:
        rows_all = self.by_op.get("wal", [])
        if not rows_all:
            return
        self.out += ["## Write-ahead log", "",
                     "Batches of 1,000 sparse events through a durable engine (one checksummed "
                     "log record per batch), beside the same batches on a plain Engine "
                     "(`no-log`). `wal-group`: group commit (in the page cache on return, on "
                     "disk within 10 ms); `wal-always`: fsync before each call returns. "
                     "`× no-log`: time over the plain Engine's (what durability costs).", ""]
        ns = sorted({r["extra_info"]["n"] for r in rows_all})
        impls = list(dict.fromkeys(r["extra_info"]["impl"] for r in rows_all))
        plain = {r["extra_info"]["n"]: r for r in rows_all if r["extra_info"]["fsync"] == "none"}
        rows = []
        for impl in impls:
            mine = {r["extra_info"]["n"]: r for r in rows_all if r["extra_info"]["impl"] == impl}
            cells = [f"`{impl}`"]
            cells += [fmt_rate(mine[n]["extra_info"]["events_per_s"]) if n in mine else "–"
                      for n in ns]
            cells += [fmt_ratio(_median(mine[n]) / _median(plain[n]))
                      if n in mine and n in plain else "–" for n in ns]
            rows.append(cells)
        self.out += table(["impl"] + [f"{_label(n)}: events/s" for n in ns]
                          + [f"{_label(n)}: × no-log" for n in ns], rows)
        self.out.append("")

    def service(self) -> None:
        feedback = self.by_op.get("serve-feedback", [])
        startup = self.by_op.get("serve-startup", [])
        if not (feedback or startup):
            return
        o = self.out
        o += ["## The HTTP service", "",
              "`nap-gpu serve` as a child process on loopback (docs/serving.md). Feedback: "
              "1k-event batches from concurrent client threads (in the benchmark's process, "
              "sharing the cores), JSON or binary bodies, `fsync` per batch (`always`) or "
              "group commit; beside the same batches in process (`in-process-always`: the "
              "durable engine, one caller; `in-process-none`: `Engine.update`, no log). "
              "`× in process`: time over `in-process-none`'s.", ""]
        ns = sorted({r["extra_info"]["n"] for r in feedback})
        impls = list(dict.fromkeys(r["extra_info"]["impl"] for r in feedback))
        base = {r["extra_info"]["n"]: r for r in feedback
                if r["extra_info"]["impl"] == "in-process-none"}
        rows = []
        for impl in impls:
            mine = {r["extra_info"]["n"]: r for r in feedback if r["extra_info"]["impl"] == impl}
            for n in ns:
                if n not in mine:
                    continue
                e = mine[n]["extra_info"]
                rows.append([f"`{impl}`", _label(n), fmt_rate(e.get("events_per_s")),
                             f"{e['latency_ms_p50']:.3g} ms", f"{e['latency_ms_p99']:.3g} ms",
                             fmt_ratio(_median(mine[n]) / _median(base[n]) if n in base
                                       else None)])
        if rows:
            o += table(["path", "memories", "events/s", "request p50", "request p99",
                        "× in process"], rows)
        if startup:
            o += ["Start-up: process start to `/readyz` = 200 on existing state (the newest "
                  "snapshot verified and loaded, the log after it replayed), and the first "
                  "start, which creates the state.", ""]
            o += table(["memories", "ready (median of runs)", "runs", "first start (creates)"],
                       [[_label(e["n"]), fmt_time(statistics.median(e["ready_s"])),
                         ", ".join(f"{x:.2f} s" for x in e["ready_s"]),
                         fmt_time(e.get("first_start_s"))]
                        for e in sorted((b["extra_info"] for b in startup),
                                        key=lambda e: e["n"])])

    def sharded(self) -> None:
        rows_all = [b for op, rs in self.by_op.items() if op.startswith("sharded")
                    for b in rs]
        if not rows_all:
            return
        self.out += ["## Sharding on Dask", "",
                     "A `ShardedEngine` of 2 shards on a 2-worker `LocalCluster` beside a single "
                     "Engine on the same machine (docs/sharding.md). `× single (paired)`: its "
                     "time over the single Engine's doing the same work, timed in alternation: "
                     "the cost of distribution on one machine.", ""]
        rows = []
        for g, rs in sorted(self.by_group(rows_all).items()):
            for r in sorted(rs, key=_median):
                e = r["extra_info"]
                rows.append([g, f"`{e['impl']}`", fmt_exact(r), fmt_time(_median(r)),
                             fmt_ratio(e.get("single_ratio")), fmt_rate(e.get("events_per_s")),
                             "–" if e.get("bytes_moved") is None
                             else f"{e['bytes_moved'] / 2**20:.1f} MiB"])
        self.out += table(["group", "impl", "bit-exact", "median", "× single (paired)",
                           "events/s", "client ↔ workers"], rows)

    def metrics(self) -> None:
        rows_all = self.by_op.get("metrics", [])
        if not rows_all:
            return
        o = self.out
        o += ["## Metrics", "",
              "`Engine.metrics(labels)` (exact separation and exact inversion ratio, "
              "docs/law.md §3) per backend on the weights after 20 reference-workload steps, "
              "beside scikit-learn (`roc_auc_score` + a float64 mean difference). `exact`: "
              "both numbers equal the NumPy backend's to the last bit. `abs error`: "
              "scikit-learn's largest difference from the exact values.", ""]
        ns = sorted({b["extra_info"]["n"] for b in rows_all})
        impls = []
        for b in rows_all:
            if b["extra_info"]["impl"] not in impls:
                impls.append(b["extra_info"]["impl"])
        rows = []
        for impl in impls:
            mine = {b["extra_info"]["n"]: b for b in rows_all if b["extra_info"]["impl"] == impl}
            cells = [f"`{impl}`"] + [fmt_time(_median(mine[n])) if n in mine else "–" for n in ns]
            for n in ns:
                sk = next((b for b in rows_all if b["extra_info"]["impl"] == "sklearn"
                           and b["extra_info"]["n"] == n), None)
                cells.append(fmt_ratio(_median(sk) / _median(mine[n])) if sk and n in mine
                             else "–")
            ex = [mine[n]["extra_info"].get("bit_exact") for n in ns if n in mine]
            cells.append("yes" if all(ex) else "**no**")
            errs = [mine[n]["extra_info"].get("abs_error") for n in ns if n in mine]
            errs = [e for e in errs if e is not None]
            cells.append(f"{max(errs):.1e}" if errs else "0")
            big = mine[max(mine)]["extra_info"]
            cells.append(fmt_bytes_pm(big.get("mem_peak_bytes_per_memory")))
            rows.append(cells)
        o += table(["impl"] + [_label(n) for n in ns] + [f"{_label(n)}: sklearn / this"
                                                         for n in ns]
                   + ["exact", "abs error", "peak B/mem (largest n)"], rows)
        sk10 = self.by_op.get("metrics-sklearn", [])
        if sk10:
            o += ["`benchmarks/test_metrics.py` (inversion ratio alone, nap against "
                  "scikit-learn on converged and on uniform weights):", ""]
            rows = [[f"`{b['name']}`", fmt_time(_median(b)),
                     str(b["extra_info"].get("distinct_values", "–"))] for b in sk10]
            o += table(["benchmark", "median", "distinct values"], rows)

    def memory(self) -> None:
        o = self.out
        o += ["## Peak memory, measured", "",
              "Bytes per memory at the peak of each operation, measured (not estimated) as the "
              "larger of peak RSS (the kernel's `VmHWM`, reset before the operation: every "
              "allocation, C++ and JIT runtimes included, page granularity) and `tracemalloc` "
              "(exact for NumPy allocations), above the process's memory before the "
              "operation's state was built. The state counts: 4 B/memory of weights is the "
              "least any operation holds. (Dense step: above the resident pristine weights "
              "and qualities; sparse batch: includes the events, so small n reads high.)", ""]
        rows = []
        keyed: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
        found: set[int] = set()
        for op, rs in self.by_op.items():
            for b in rs:
                e = b["extra_info"]
                if e.get("mem_peak_bytes_per_memory") is None or e.get("role") == "floor":
                    continue
                sub = op
                if op == "sparse-batch":
                    if e["events"] != 1_000_000 or e["dist"] != "uniform":
                        continue
                    sub = "sparse-batch (1M uniform events)"
                if op == "decay" and e.get("k") != 1:
                    continue
                keyed[(sub, e["impl"])][e["n"]] = e["mem_peak_bytes_per_memory"]
                found.add(e["n"])
        ns = sorted(found)
        for (sub, impl), vals in sorted(keyed.items()):
            rows.append([sub, f"`{impl}`"] + [fmt_bytes_pm(vals.get(n)) for n in ns])
        o += table(["operation", "impl"] + [_label(n) for n in ns], rows)

    def convergence(self) -> None:
        rows_all = self.by_op.get("convergence", [])
        if not rows_all:
            return
        o = self.out
        o += ["## Convergence of the reference workload", "",
              "docs/law.md §4: n memories, half R (q ~ U[0.6, 1)), half P (q ~ U[0, 0.4)), "
              "plus Gaussian noise σ, initial weights U[0, 1), seed 0; one step per "
              "iteration. Separation / inversion ratio at iterations 1, 5, 10, 20, 50 "
              "(exact), the first iteration at which every health rule holds with its "
              "threshold (separation > 0.2, inversion ratio > 0.9, no NaN, weights in "
              "[0, 1]), the saturation at 50 and `health(m, 50)`. `backends`: those that "
              "ran, and whether their numbers and final weights (CRC-32) are identical.", ""]
        by = defaultdict(list)
        for b in rows_all:
            e = b["extra_info"]
            by[(e["n"], e["sigma"])].append(e["convergence"])
        mismatch = []
        rows = []
        for (n, sigma) in sorted(by):
            recs = by[(n, sigma)]
            first = recs[0]
            same = all(json.dumps({k: r[k] for k in ("checkpoints", "first_healthy",
                                                     "weights_crc32")}, sort_keys=True)
                       == json.dumps({k: first[k] for k in ("checkpoints", "first_healthy",
                                                            "weights_crc32")}, sort_keys=True)
                       for r in recs)
            if not same:
                mismatch.append((n, sigma))
            cps = first["checkpoints"]
            cells = [_label(n), f"{sigma:g}"]
            for it in ("1", "5", "10", "20", "50"):
                c = cps.get(it)
                cells.append(f"{c['separation']:.4f} / {c['inversion_ratio']:.4f}" if c else "–")
            cells += [str(first["first_healthy"]), f"{first['saturation_at_50']:.4f}",
                      "ok" if first["healthy_at_50"] else "**unhealthy**",
                      ", ".join(r["backend"] for r in recs) + (": identical" if same and
                                                                len(recs) > 1 else "")
                      + ("" if same else ": **DIFFER**")]
            rows.append(cells)
        o += table(["n", "σ", "it 1", "it 5", "it 10", "it 20", "it 50", "healthy from",
                    "saturation @50", "health @50", "backends"], rows)
        if mismatch:
            o += ["**Backends differ** at: " + ", ".join(f"{_label(n)} σ={s}"
                                                        for n, s in mismatch), ""]
        if self._plt is not None:
            plt = self._plt
            sigmas = sorted({s for _, s in by})
            fig, axes = plt.subplots(2, len(sigmas), figsize=(4.5 * len(sigmas), 7),
                                     squeeze=False)
            for j, sigma in enumerate(sigmas):
                for (n, s), recs in sorted(by.items()):
                    if s != sigma:
                        continue
                    cps = recs[0]["checkpoints"]
                    its = sorted(int(k) for k in cps)
                    for i, metric in enumerate(("separation", "inversion_ratio")):
                        axes[i][j].plot(its, [cps[str(t)][metric] for t in its], marker="o",
                                        label=_label(n))
                axes[0][j].set_title(f"σ = {sigma:g}")
                axes[0][j].axhline(0.2, color="grey", linestyle=":", linewidth=1)
                axes[1][j].axhline(0.9, color="grey", linestyle=":", linewidth=1)
                axes[1][j].set_xlabel("iteration")
                for i in range(2):
                    axes[i][j].grid(True, alpha=0.3)
                    axes[i][j].set_xscale("log")
                if axes[0][j].get_legend_handles_labels()[0]:
                    axes[0][j].legend(fontsize=7)
            axes[0][0].set_ylabel("separation")
            axes[1][0].set_ylabel("inversion ratio")
            self.save_plot(fig, "convergence.png", "convergence curves per tier and noise")

    def cost_growth(self) -> None:
        """Slopes of time and memory against n on log–log axes, per operation and impl."""
        o = self.out
        o += ["## Cost growth", "",
              "Least-squares slope of log(time) and log(peak memory) against log(n), per "
              "operation and implementation, over the tiers from 1M up (below that the data "
              "sit in cache and fixed costs dominate; the all-tier slope is shown too), and "
              "over the top decade alone (`top`). Linear cost is slope 1; the exact inversion "
              "ratio sorts, O(n log n) (slope ≈ "
              "1.05 per decade at these sizes); everything else must be linear. An operation "
              f"is flagged when its top-decade time slope exceeds its algorithm's by more "
              f"than {LINEAR_TOLERANCE} *and* exceeds the floor's own top-decade slope by "
              f"as much (the memory system, not the algorithm, bends the floor too). The "
              "sparse batch's work is the events (fixed per variant): its slope against n is "
              "the cost of a larger population (cache and TLB misses), not work; it is "
              "judged against the sequential numba loop's slope on the same events (its "
              "`algorithm` column shows 0: no growth in work). Memory slopes leave out peaks "
              "below 1 byte a memory (allocations the measurement cannot see: JAX's "
              "pre-reserved pool, streaming writes).", ""]
        series = defaultdict(list)  # (op, variant, impl) -> [(n, time, mem)]
        fcpu: dict = {}
        for op, rs in self.by_op.items():
            if op in ("machine", "metrics-sklearn", "wal", "serve-feedback"):
                continue  # a fixed number of events at every tier: no growth to fit
            for b in rs:
                e = b["extra_info"]
                if "n" not in e or e.get("impl") is None:
                    continue
                if op == "sparse-batch":
                    variant = f"{e['dist']} {_label(e['events'])} ev"
                elif op == "decay":
                    variant = f"k={e['k']}"
                elif op == "convergence":
                    variant = f"σ={e['sigma']:g}"
                else:
                    variant = ""
                t = _median(b)
                if op == "convergence":
                    t = e["convergence"].get("step_seconds_mean") or t
                series[(op, variant, e["impl"])].append(
                    (int(e["n"]), t, e.get("mem_peak_bytes_per_memory")))
                fcpu[(op, variant, e["impl"], int(e["n"]))] = e.get("foreign_cpu")
        floor_top = {}
        for (op, variant, impl), pts in series.items():
            if impl in ("floor",):
                pts = sorted(pts)
                if len(pts) >= 2:
                    floor_top[(op, variant)] = loglog_slope([(n, t) for n, t, _ in pts[-2:]])
        sparse_ref = {}
        for (op, variant, impl), pts in series.items():
            if op == "sparse-batch" and impl == "numba-seq" and len(pts) >= 2:
                sparse_ref[variant] = loglog_slope([(n, t) for n, t, _ in sorted(pts)[-2:]])
        rows = []
        flagged = []
        for (op, variant, impl), pts in sorted(series.items()):
            if impl == "floor-repeat":
                continue
            pts = sorted(pts)
            big = [p for p in pts if p[0] >= 10**6]
            s_all = loglog_slope([(n, t) for n, t, _ in pts])
            s_big = loglog_slope([(n, t) for n, t, _ in big])
            s_top = loglog_slope([(n, t) for n, t, _ in pts[-2:]]) if len(pts) >= 2 else None
            # Peaks under 1 byte a memory are allocations the measurement could not see
            # (JIT runtimes' pre-reserved pools; streaming writes): left out of the fit.
            m_big = loglog_slope([(n, m * n) for n, _, m in big if m and m >= 1.0])
            expected = 1.0
            if op in NLOGN_OPS and len(pts) >= 2:
                expected = nlogn_slope(pts[-2][0], pts[-1][0])
            if op == "sparse-batch":
                expected = 0.0
            fl = floor_top.get((op, variant), floor_top.get(("dense-step", "")))
            flag = (s_top is not None and s_top > expected + LINEAR_TOLERANCE
                    and (fl is None or op == "sparse-batch" or s_top > fl + LINEAR_TOLERANCE))
            if op == "sparse-batch" and s_top is not None:
                # The same events on a larger population cost more per event only through
                # the memory system (w leaves the caches): judged against the plain
                # sequential loop's slope on the same events (numba-seq), if it ran.
                ref = sparse_ref.get(variant)
                flag = s_top > (ref if ref is not None else 0.35) + LINEAR_TOLERANCE
            mem_flag = m_big is not None and m_big > 1 + LINEAR_TOLERANCE
            if flag or mem_flag:
                foreign = [fcpu.get((op, variant, impl, n)) for n, _, _ in pts[-2:]]
                busy = max((b for b in foreign if b is not None), default=None)
                flagged.append((op, variant, impl, s_top, m_big, busy))
            self.growth.append({"op": op, "variant": variant, "impl": impl, "slope_all": s_all,
                                "slope_from_1M": s_big, "slope_top": s_top,
                                "mem_slope_from_1M": m_big, "flag": flag or mem_flag})
            f = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
            rows.append([op, variant, f"`{impl}`", f(s_all), f(s_big), f(s_top),
                         f"{expected:.2f}", f(m_big),
                         f"{_label(pts[0][0])}–{_label(pts[-1][0])}",
                         "**superlinear**" if flag else ("**memory**" if mem_flag else "")])
        o += table(["operation", "variant", "impl", "time slope (all)", "time slope (≥1M)",
                    "time slope (top)", "algorithm", "memory slope (≥1M)", "tiers", "flag"],
                   rows)
        if flagged:
            o += ["Flagged (growing faster than the algorithm allows):", ""]
            for op, variant, impl, s, m, busy in flagged:
                o.append(f"- {op} {variant} `{impl}`: top-decade time slope "
                         f"{'–' if s is None else f'{s:.2f}'}"
                         + (f", memory slope {m:.2f}" if m else "")
                         + (f" (foreign CPU up to {fmt_pct(busy)} while timed)"
                            if busy is not None else ""))
            o += ["", "A flag on microsecond-scale timings taken with much foreign CPU may "
                  "be noise: rerun that tier before reading it as a law."]
            o.append("")
        else:
            o += ["Nothing flagged: every operation grows as its algorithm says.", ""]

    # -- the page --------------------------------------------------------------------------
    def render(self, command: str) -> str:
        o = self.out
        o += ["# Scaling of nap_gpu", "",
              "<!-- Generated: do not edit. Every number below comes from the benchmark JSON. -->",
              "",
              f"Generated by `{command}` from the pytest-benchmark JSON of the scale suites "
              "(`benchmarks/`, see `benchmarks/README.md`). To regenerate on your machine: "
              "`bash benchmarks/run_scale.sh` (runs every tier, then this command). Read "
              "times as ratios to the floor measured in the same run: the machine is shared "
              "and its absolute speed drifts.", ""]
        if self.plot_error:
            o += [f"*{self.plot_error}*", ""]
        present = sorted({int(b["extra_info"]["n"]) for b in self.benches
                          if "n" in b["extra_info"] and b["extra_info"].get("op")})
        absent = [t for t in (10**4, 10**5, 10**6, 10**7, 10**8, 10**9) if t not in present]
        o += ["Tiers in this report: " + ", ".join(_label(n) for n in present)
              + (f"; not run: {', '.join(_label(n) for n in absent)}" if absent else ""), ""]
        self.machine()
        self.headline()
        self.dense()
        self.sparse()
        self.simple_op("decay", "decay(k)",
                       "`decay(k)`: k rounds of passive decay over every memory (read and "
                       "write w: 8 bytes a memory, whatever k). The floor is an in-place "
                       "streaming triad over the same bytes (`w += s*w`), and `× floor "
                       "(paired)` is measured in alternation with it.")
        self.metrics()
        self.simple_op("snapshot-save", "Snapshot save",
                       "`Engine.save` (safetensors, CRC-32C beside the writes, temp file + fsync + "
                       "rename) per backend; floor: raw `tofile` + fsync of the same 4 bytes a "
                       "memory, timed in alternation (paired); "
                       "peer: `np.save` + fsync. (Disk and page cache of a shared VM: read "
                       "the ratios.)")
        self.simple_op("snapshot-load", "Snapshot load",
                       "`nap.load(path, backend=...)` (header checks, CRC-32C and range verified "
                       "a chunk behind the reads); floor: raw `readinto` of the same bytes, "
                       "timed in alternation (paired); peer: `np.load` (no checksum). The "
                       "file is in the page cache.")
        self.wal()
        self.service()
        self.sharded()
        self.memory()
        self.convergence()
        self.cost_growth()
        return "\n".join(o).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nap-gpu report",
        description="Write docs/SCALING.md (and its PNG plots) from scale-suite JSON files.")
    parser.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT,
                        help=f"the Markdown page to write (default {DEFAULT_OUTPUT})")
    parser.add_argument("--plots-dir", default=None,
                        help=f"where the PNGs go (default: {PLOTS_SUBDIR}/ beside the page)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    args = parser.parse_args(argv)
    missing = [p for p in args.json if not os.path.isfile(p)]
    if missing:
        print(f"nap-gpu report: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        benches, runs = load(args.json)
    except (OSError, ValueError, KeyError) as exc:
        print(f"nap-gpu report: cannot read the JSON: {exc}", file=sys.stderr)
        return 2
    if not benches:
        print("nap-gpu report: the JSON holds no benchmarks", file=sys.stderr)
        return 2
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots_dir = None
    rel = PLOTS_SUBDIR
    if not args.no_plots:
        plots_dir = pathlib.Path(args.plots_dir) if args.plots_dir else out.parent / PLOTS_SUBDIR
        plots_dir.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(plots_dir, out.parent)
    names = " ".join(sorted({os.path.relpath(p) if not os.path.isabs(p) else p
                             for p in args.json}))
    command = "nap-gpu report " + names + ("" if args.output == DEFAULT_OUTPUT
                                           else f" -o {args.output}")
    report = Report(benches, runs, plots_dir, rel)
    text = report.render(command)
    with atomic_file(out) as fh:
        fh.write(text.encode("utf-8"))
    print(f"wrote {out}" + (f" and {len(report.plots)} plots in {plots_dir}"
                            if report.plots else "")
          + (f" ({report.plot_error})" if report.plot_error else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
