"""Peak memory, measured: bytes per memory per n, one row per (peak_row, impl).

Which benchmarks appear, and under what name, each record declares (``peak_row``): one
variant stands for its operation (the sparse batch's 1M uniform events, decay's k = 1)."""

from __future__ import annotations

import pandas as pd

from nap_gpu._sizes import size_label

from ..render import Table


def memory(bench: pd.DataFrame) -> Table:
    shown = bench[bench["peak_row"].map(bool)
                  & bench["mem_peak_bytes_per_memory"].map(lambda x: x is not None)]
    keyed: dict[tuple[str, str], dict[int, float]] = {}
    for _, r in shown.iterrows():
        keyed.setdefault((r["peak_row"], r["impl"]), {})[int(r["n"])] = r["mem_peak_bytes_per_memory"]
    ns = sorted({int(n) for n in shown["n"]})
    rows = [[row, impl, *[vals.get(n) for n in ns]] for (row, impl), vals in sorted(keyed.items())]
    return Table(["operation", "impl", *[size_label(n) for n in ns]], ["text", "code", *["bytes"] * len(ns)],
                 rows)
