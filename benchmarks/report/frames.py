"""pytest-benchmark JSON files -> pandas frames: one row per benchmark, one per run.

``Frames.bench`` has a column per `Record` field plus pytest-benchmark's own ``name``,
``group``, ``median`` (seconds), ``stat_rounds`` and the ``file`` it came from, in the order
the files list them (first seen comes first: the tables keep that order). Its cells are the
records' own Python values (``None`` where not measured, never NaN), so that a missing number
stays missing. ``Frames.runs`` has per file its date, pytest-benchmark's ``machine_info`` and
``commit_info``. The helpers below are the selections every section shares.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from typing import Any

import pandas as pd

from .schema import Record

_FIELDS = [f.name for f in dataclasses.fields(Record)]


@dataclasses.dataclass(frozen=True)
class Frames:
    bench: pd.DataFrame
    runs: pd.DataFrame


def load(paths: Iterable[str]) -> Frames:
    """Every benchmark of every file, validated as a `Record`; ValueError naming the file and
    the benchmark for JSON that is unfinished or does not hold records."""
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for path in paths:
        data = _read(path)
        name = os.path.basename(path)
        runs.append({"file": name, "datetime": data.get("datetime"),
                     "machine_info": data.get("machine_info", {}),
                     "commit_info": data.get("commit_info", {})})
        rows += [_row(b, name) for b in data.get("benchmarks", [])]
    bench = pd.DataFrame(rows, columns=[*_FIELDS, "name", "group", "median", "stat_rounds",
                                        "file"], dtype=object)
    bench["n"] = bench["n"].astype("int64")
    bench["median"] = bench["median"].astype("float64")
    return Frames(bench, pd.DataFrame(runs, columns=["file", "datetime", "machine_info",
                                                     "commit_info"], dtype=object))


def _read(path: str) -> dict[str, Any]:
    with open(path) as f:
        try:
            data: dict[str, Any] = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{path}: not JSON ({exc}); an unfinished run?") from exc
    return data


def _row(bench: dict[str, Any], file: str) -> dict[str, Any]:
    try:
        record = Record.read(bench.get("extra_info", {}))
    except ValueError as exc:
        raise ValueError(f"{file}: benchmark {bench.get('name')!r}: {exc}") from None
    row = {name: getattr(record, name) for name in _FIELDS}
    row.update(name=bench["name"], group=bench.get("group") or "", file=file,
               median=float(bench["stats"]["median"]), stat_rounds=bench["stats"]["rounds"])
    return row


# -- selections shared by the sections ---------------------------------------------------------
def of_op(bench: pd.DataFrame, *ops: str) -> pd.DataFrame:
    return bench[bench["op"].isin(ops)]


def groups(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Rows per pytest-benchmark group, groups in first-seen order."""
    return {str(g): part for g, part in rows.groupby("group", sort=False)}


def first_n(rows: pd.DataFrame) -> int:
    return int(rows["n"].iloc[0])


def floor_time(rows: pd.DataFrame) -> float | None:
    """The floor of a group: the smaller median of its floors (the floor and its repeat), the
    conservative choice (it never flatters a ratio)."""
    floors = rows.loc[rows["role"] == "floor", "median"]
    return float(floors.min()) if len(floors) else None


def fastest_peer(rows: pd.DataFrame) -> pd.Series | None:
    """The bit-exact peer with the smallest median (the first of equals), or None."""
    peers = rows[(rows["role"] == "peer") & rows["bit_exact"].map(bool)]
    return peers.loc[peers["median"].idxmin()] if len(peers) else None


def impls(rows: pd.DataFrame) -> list[str]:
    """The implementations of ``rows``, first seen first."""
    return list(dict.fromkeys(rows["impl"]))


def by_n(rows: pd.DataFrame) -> dict[int, pd.Series]:
    """One row per n (the last of several, as a dict built in order keeps it)."""
    return {int(r["n"]): r for _, r in rows.iterrows()}
