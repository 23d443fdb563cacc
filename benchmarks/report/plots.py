"""The page's plots (matplotlib, PNG): the dense step, the sparse batch, the convergence curves.

Each takes the frame (or a section's data) and a directory, writes one PNG and returns its
file name; `Plotter` is None-safe: without matplotlib it records why and draws nothing.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pandas as pd

from nap_gpu._sizes import size_label

from .frames import floor_time, groups, of_op

DASHED = {"color": "black", "linewidth": 2.5, "linestyle": "--"}  # the floor, in every plot


class Plotter:
    """Draws into ``directory``; ``error`` says why it cannot (matplotlib missing)."""

    def __init__(self, directory: pathlib.Path | None) -> None:
        self.directory, self.error = directory, None
        self.plt: Any = None  # matplotlib.pyplot, once imported
        if directory is None:
            return
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            self.plt = plt
        except ImportError as exc:
            self.error = f"matplotlib is not installed ({exc}): no plots"

    def save(self, fig: Any, name: str) -> str:
        assert self.directory is not None
        fig.savefig(self.directory / name, dpi=110, bbox_inches="tight", metadata={"Software": None})
        self.plt.close(fig)
        return name

    def dense(self, bench: pd.DataFrame) -> str | None:
        rows = of_op(bench, "dense-step")
        if self.plt is None or rows.empty:
            return None
        fig, (ax, ax2) = self.plt.subplots(1, 2, figsize=(13, 5))
        series: dict[str, list[tuple[int, float, float | None]]] = {}
        for rs in groups(rows).values():
            floor = floor_time(rs)
            for _, r in rs[~rs["repeat"].map(bool)].iterrows():
                series.setdefault(r["impl"], []).append(
                    (int(r["n"]), r["median"], r["median"] / floor if floor else None))
        floors = set(rows.loc[rows["role"] == "floor", "impl"])
        for impl, pts in sorted(series.items()):
            pts.sort()
            style = DASHED if impl in floors else {}
            exact = rows.loc[rows["impl"] == impl, "bit_exact"]
            label = impl + ("" if all(x is not False for x in exact) else " (not bit-exact)")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label, **style)
            ax2.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=label, **style)
        for a in (ax, ax2):
            _loglog(a)
            a.set_xlabel("memories n")
        ax.set_ylabel("time per step (s)")
        ax.set_title("dense step: time vs memories (floor dashed)")
        ax2.set_ylabel("time / same-run floor")
        ax2.set_title("dense step: ratio to the floor of its group")
        ax.legend(fontsize=8)
        return self.save(fig, "dense_step.png")

    def sparse(self, bench: pd.DataFrame) -> str | None:
        rows = of_op(bench, "sparse-batch")
        if self.plt is None or rows.empty:
            return None
        dists, evs = sorted(set(rows["dist"])), sorted(set(rows["events"]))
        fig, axes = self.plt.subplots(len(dists), len(evs), figsize=(4.2 * len(evs), 3.6 * len(dists)),
                                      sharey=True, squeeze=False)
        colors = {impl: f"C{i}" for i, impl in enumerate(dict.fromkeys(rows["impl"]))}
        exact = {impl: all(x is not False for x in part["bit_exact"])
                 for impl, part in rows.groupby("impl")}
        for i, dist in enumerate(dists):
            for j, ev in enumerate(evs):
                ax = axes[i][j]
                case = rows[(rows["dist"] == dist) & (rows["events"] == ev)]
                for impl, part in sorted(case.groupby("impl")):
                    pts = sorted(zip(part["n"], part["events_per_s"]))
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colors[impl],
                            label=impl, linestyle="-" if exact[impl] else ":")
                _loglog(ax)
                ax.set_title(f"{dist} ids, {size_label(ev)} events", fontsize=10)
                if i == len(dists) - 1:
                    ax.set_xlabel("memories n")
                if j == 0:
                    ax.set_ylabel("events per second")
        handles: dict[str, Any] = {}  # label -> its first artist
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles),
                       fontsize=8, bbox_to_anchor=(0.5, -0.03))
        fig.suptitle("sparse ordered batch (not bit-exact peers dotted)")
        return self.save(fig, "sparse_batch.png")

    def convergence(self, curves: dict[tuple[int, float], list[dict[str, Any]]] | None) -> str | None:
        if self.plt is None or not curves:
            return None
        sigmas = sorted({s for _, s in curves})
        fig, axes = self.plt.subplots(2, len(sigmas), figsize=(4.5 * len(sigmas), 7), squeeze=False)
        for j, sigma in enumerate(sigmas):
            for (n, s), recs in sorted(curves.items()):
                if s != sigma:
                    continue
                cps = recs[0]["checkpoints"]
                its = sorted(int(k) for k in cps)
                for i, metric in enumerate(("separation", "inversion_ratio")):
                    axes[i][j].plot(its, [cps[str(t)][metric] for t in its], marker="o",
                                    label=size_label(n))
            axes[0][j].set_title(f"σ = {sigma:g}")
            axes[0][j].axhline(0.2, color="grey", linestyle=":", linewidth=1)  # health thresholds
            axes[1][j].axhline(0.9, color="grey", linestyle=":", linewidth=1)
            axes[1][j].set_xlabel("iteration")
            for i in range(2):
                axes[i][j].grid(True, alpha=0.3)
                axes[i][j].set_xscale("log")
            if axes[0][j].get_legend_handles_labels()[0]:
                axes[0][j].legend(fontsize=7)
        axes[0][0].set_ylabel("separation")
        axes[1][0].set_ylabel("inversion ratio")
        return self.save(fig, "convergence.png")


def _loglog(ax: Any) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
