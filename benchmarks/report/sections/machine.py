"""The machine the suites ran on, each run, the foreign CPU, and the tiers present."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ..frames import Frames

#: Every tier the suites know, smallest first: the page names those that did not run.
TIERS = (10**4, 10**5, 10**6, 10**7, 10**8, 10**9)


def tiers(bench: pd.DataFrame) -> dict[str, list[int]]:
    """The tiers run and not run. test_metrics.py's comparison (role ``metric``) runs at its
    own sizes (--metrics-sizes), which are not tiers."""
    present = sorted({int(n) for n in bench.loc[bench["role"] != "metric", "n"]})
    return {"present": present, "absent": [t for t in TIERS if t not in present]}


def machine(frames: Frames) -> dict[str, Any]:
    return {"machines": _machines(frames.bench), "runs": _runs(frames.runs),
            "foreign": _foreign(frames.bench)}


def _machines(bench: pd.DataFrame) -> list[dict[str, Any]]:
    """The machine records, once per (versions, CPU)."""
    seen, out = set(), []
    for m in bench.loc[bench["role"] == "machine", "machine"]:
        m = m or {}
        key = json.dumps(m.get("versions", {}), sort_keys=True) + str(m.get("cpu"))
        if key in seen:
            continue
        seen.add(key)
        mem = m.get("mem_total_bytes")
        out.append({"cpu": m.get("cpu", "?"), "cores": m.get("cores", "?"),
                    "mem_gib": mem / 2**30 if mem else None,
                    "platform": m.get("platform", "?"), "python": m.get("python", "?"),
                    "versions": m.get("versions", {}),
                    "backends": m["backends"] if isinstance(m.get("backends"), dict) else None,
                    "cpp_threads": m.get("cpp_threads"), "cpp_build": m.get("cpp_build") or None})
    return out


def _runs(runs: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for _, r in runs.iterrows():
        commit = r["commit_info"] or {}
        out.append({"file": r["file"], "datetime": r["datetime"],
                    "commit": commit.get("id", "")[:10] if commit.get("id") else None,
                    "dirty": bool(commit.get("dirty")),
                    "cpu": (r["machine_info"] or {}).get("cpu", {}).get("brand_raw")})
    return out


def _foreign(bench: pd.DataFrame) -> dict[str, Any] | None:
    """Share of the machine other processes used while a benchmark ran, over the run."""
    fc = sorted(x for x in bench["foreign_cpu"] if x is not None)
    if not fc:
        return None
    return {"median": fc[len(fc) // 2], "max": fc[-1], "busy": sum(x > 0.1 for x in fc),
            "count": len(fc)}
