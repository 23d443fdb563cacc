"""The record every benchmark writes into ``benchmark.extra_info``, and its validation.

A suite builds one `Record` per benchmark (``benchmark.extra_info.update(Record(...).json())``)
instead of a hand-built dict: the constructor refuses a misspelt field, a wrong type or an
unknown role or growth, so the JSON holds only what the report knows how to read. Besides what
was measured, a record *declares* how the report treats it: ``variant`` (what tells its series
apart from the operation's others), ``growth`` (how its cost must grow with n), ``yardstick``
(its slope is the bar for its variant's other series) and ``peak_row`` (its row in the
peak-memory table). The report has no per-operation special cases: it reads these.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

#: What part a benchmark plays in its group.
ROLES = frozenset({"nap", "floor", "peer", "baseline", "metric", "convergence", "machine"})
#: How a benchmark's cost must grow with n (``growth``): linearly, as n log n (a sort), not
#: with n (its work is its events: a larger n costs only through the memory system) or not
#: fitted at all (the same work at every tier, or not a measurement).
GROWTHS = frozenset({"linear", "n log n", "events", "none"})


@dataclasses.dataclass(frozen=True)
class Record:
    """One benchmark's measurement, as the report reads it (``None``: not measured)."""

    # -- what it is
    op: str                     # the operation: "dense-step", "sparse-batch", "decay", ...
    impl: str                   # the implementation: "cpp-raw", "numba", "floor", ...
    role: str                   # one of ROLES
    n: int                      # memories in the population
    about: str = ""             # one line: what exactly is timed
    label: str | None = None    # a warning shown with its name ("not bit-exact")
    # -- how the report treats it
    variant: str = ""           # tells its series from the op's others: "k=1", "uniform 1M ev"
    growth: str = "linear"      # one of GROWTHS
    yardstick: bool = False     # its top-decade slope is the bar for its op and variant
    repeat: bool = False        # a repeat of another benchmark (the floor's drift check)
    peak_row: str | None = None  # its row in the peak-memory table (None: not there)
    # -- timing (the median is pytest-benchmark's own)
    rounds: int | None = None
    pairs: int | None = None
    foreign_cpu: float | None = None         # share of the machine other processes used
    paired_floor_ratio: float | None = None  # time / floor's, the two timed in alternation
    single_ratio: float | None = None        # sharded: time / single Engine's, in alternation
    fit_seconds: float | None = None         # the time fitted against n, where not the median
    # -- correctness
    bit_exact: bool | None = None            # None: not comparable (the floor)
    mismatches: int | None = None
    first_mismatch: str | None = None
    abs_error: float | None = None           # largest difference from the exact values
    value: float | None = None               # the number it computed (metrics)
    # -- work and memory
    bytes: int | None = None                 # bytes the operation must move at least
    events: int | None = None
    events_per_s: float | None = None
    bytes_moved: int | None = None           # sharded: between the client and the workers
    mem_peak_bytes_per_memory: float | None = None
    memory: dict[str, Any] | None = None     # the peak measurement in full (scale_support)
    # -- operation-specific
    dist: str | None = None                  # event ids: "uniform" or "zipf"
    max_multiplicity: int | None = None      # events on the hottest id
    data: str | None = None                  # metrics: "converged" or "uniform" weights
    distinct_values: int | None = None
    sigma: float | None = None               # convergence: the noise
    convergence: dict[str, Any] | None = None  # convergence: checkpoints, health, CRC-32
    fsync: str | None = None                 # wal, serve: "none", "group", "always"
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    ready_s: list[float] | None = None       # serve: start to ready, per restart
    first_start_s: float | None = None
    machine: dict[str, Any] | None = None    # the machine record: CPU, memory, versions
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)  # for readers of the JSON

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _check_type(field.name, getattr(self, field.name), _HINTS[field.name])
        if self.role not in ROLES:
            raise ValueError(f"role {self.role!r}: not one of {sorted(ROLES)}")
        if self.growth not in GROWTHS:
            raise ValueError(f"growth {self.growth!r}: not one of {sorted(GROWTHS)}")
        if self.n < 1:
            raise ValueError(f"n = {self.n}: a population has at least one memory")

    def json(self) -> dict[str, Any]:
        """The fields that are set (what goes into ``extra_info``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default and getattr(self, f.name) != {}}

    @classmethod
    def read(cls, extra_info: Mapping[str, Any]) -> Record:
        """The record a benchmark wrote; ValueError naming what is wrong with it."""
        unknown = set(extra_info) - set(_HINTS)
        if unknown:
            raise ValueError(f"not fields of a record: {sorted(unknown)}")
        try:
            return cls(**extra_info)
        except TypeError as exc:  # a required field missing
            raise ValueError(str(exc)) from None


def measured(**fields: Any) -> dict[str, Any]:
    """Fields of a record gathered before it is built (a timing, a verdict), checked now so
    that a misspelt or mistyped one fails where it is made."""
    for name, value in fields.items():
        if name not in _HINTS:
            raise ValueError(f"{name!r} is not a field of a record")
        _check_type(name, value, _HINTS[name])
    return fields


_HINTS = typing.get_type_hints(Record)


def _check_type(name: str, value: Any, hint: Any) -> None:
    if not _matches(value, hint):
        raise ValueError(f"{name} = {value!r}: expected {hint}")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:  # an int is a float (a ratio of 1, a count of seconds); a bool is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)
