"""The mutating calls as log records: each kind's payload (written, read back, checked), how a
decoded call is applied, and the bound that keeps a logged ``decay(k)`` cheap to replay.

Payloads (little-endian): step, u64 n then n float32 qualities; step(scalar), one float32;
update, u64 m then m int64 ids and m float32 qualities; decay, u64 k; params, the three
float32 bit patterns (`Params.to_bits`). Above `_COMPRESS_MIN` bytes the data after the count
may be zlib-compressed (record flag bit 0).
"""

from __future__ import annotations

import fractions
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, SupportsFloat

import numpy as np

from ..params import Params

if TYPE_CHECKING:
    from .._types import HostWeights
    from ..engine import Engine
    from .format import Parts, Record

STEP, STEP_SCALAR, UPDATE, DECAY, PARAMS = 1, 2, 3, 4, 5
KIND_NAMES = {STEP: "step", STEP_SCALAR: "step(scalar)", UPDATE: "update", DECAY: "decay",
              PARAMS: "params"}
_ZLIB = 0x01
#: Payloads below this are never compressed: a small record costs one page-cache copy (or one
#: disk block) raw, while zlib costs ~0.1 ms per 10 KB. Measured on 1k-event batches: trying
#: zlib made a group-committed update 18x slower than no log; skipping it, 3x.
_COMPRESS_MIN = 1 << 20
_SAMPLE = 1 << 16
_U64 = struct.Struct("<Q")
_PARAMS = struct.Struct("<3I")


@dataclass(frozen=True)
class Payload:
    """One call, ready for the log: its record kind, flags and payload parts."""

    kind: int
    flags: int
    parts: Parts


# -- writing --------------------------------------------------------------------------------
def _maybe_compress(data: bytes | memoryview, enabled: bool) -> tuple[bytes | memoryview, int]:
    """(payload data, flags): zlib when a sample shows it pays (quantised or repeated values,
    sorted ids), raw otherwise (random float qualities barely compress)."""
    if not enabled or len(data) < _COMPRESS_MIN:
        return data, 0
    sample = data[:_SAMPLE]
    if len(zlib.compress(sample, 1)) > 0.8 * len(sample):
        return data, 0
    packed = zlib.compress(data, 1)
    if len(packed) > 0.9 * len(data):
        return data, 0
    return packed, _ZLIB


def dense_step(quality: HostWeights, compress: bool) -> Payload:
    """A dense step's record: one quality per memory (host float32)."""
    host = np.ascontiguousarray(quality, "<f4")
    data, flags = _maybe_compress(host.data.cast("B"), compress)
    return Payload(STEP, flags, [_U64.pack(host.size), data])


def scalar_step(quality: float) -> Payload:
    """A step with one quality for every memory."""
    return Payload(STEP_SCALAR, 0, [np.array([quality], "<f4").tobytes()])


def update(ids: np.ndarray, quality: np.ndarray, compress: bool) -> Payload:
    """A sparse batch's record: the ids (host int64), then their qualities (host float32)."""
    hi = np.ascontiguousarray(ids, "<i8")
    hq = np.ascontiguousarray(quality, "<f4")
    data, flags = _maybe_compress(hi.tobytes() + hq.tobytes(), compress)
    return Payload(UPDATE, flags, [_U64.pack(hi.size), data])


def decay(k: int) -> Payload:
    """``k`` rounds of decay (already capped by `decay_rounds_bound`)."""
    return Payload(DECAY, 0, [_U64.pack(k)])


def set_params(params: Params) -> Payload:
    """An assignment of the law's parameters."""
    return Payload(PARAMS, 0, [_PARAMS.pack(*params.to_bits())])


# -- reading --------------------------------------------------------------------------------
def decode(record: Record) -> Any:
    """The call a record describes, as Engine arguments; raises ValueError if malformed."""
    kind, flags, payload = record.kind, record.flags, record.payload

    def data(expected: int, offset: int) -> bytes:
        raw = payload[offset:]
        if flags & _ZLIB:
            raw = zlib.decompress(raw)
        if len(raw) != expected:
            raise ValueError(f"payload holds {len(raw)} bytes, expected {expected}")
        return raw
    if kind == STEP:
        (n,) = _U64.unpack_from(payload)
        return np.frombuffer(data(4 * n, 8), "<f4").astype(np.float32)
    if kind == STEP_SCALAR:
        return float(np.frombuffer(data(4, 0), "<f4")[0])
    if kind == UPDATE:
        (m,) = _U64.unpack_from(payload)
        raw = data(12 * m, 8)
        return (np.frombuffer(raw[:8 * m], "<i8").astype(np.int64),
                np.frombuffer(raw[8 * m:], "<f4").astype(np.float32))
    if kind == DECAY:
        (k,) = _U64.unpack_from(data(8, 0))
        return int(k)
    if kind == PARAMS:
        return Params.from_bits(_PARAMS.unpack(data(12, 0)))
    raise ValueError(f"unknown record kind {kind}")


def misfit(kind: int, args: Any, n: int) -> str | None:
    """Why a decoded call cannot apply to ``n`` memories (ids out of range, the wrong number of
    qualities), or None."""
    if kind == UPDATE and len(args[0]) and (args[0].min() < 0 or args[0].max() >= n):
        return f"names ids outside [0, {n})"
    if kind == STEP and args.size != n:
        return f"holds {args.size} qualities for {n} memories"
    return None


def apply(eng: Engine, kind: int, args: Any) -> None:
    """Apply one decoded call: the live path and replay both come here."""
    if kind in (STEP, STEP_SCALAR):
        eng.step(args, check_finite=False)
    elif kind == UPDATE:
        eng.update(args[0], args[1], check_finite=False)
    elif kind == DECAY:
        eng.decay(args)
    elif kind == PARAMS:
        eng.params = args


# -- decay(k) -------------------------------------------------------------------------------
def decay_rounds_bound(decay: SupportsFloat) -> int:
    """A number of rounds after which decay(k) changes nothing more: ``decay(k)`` and
    ``decay(min(k, decay_rounds_bound(d)))`` give the same bits for every weight, so a
    durable engine logs the smaller k and a replay costs at most this many rounds.

    With d the float32 decay (0 < d <= 1) the bound is 2 + min(floor(3 / (2 d)), 3 * 2^24)
    (exactly, in rationals); d = 0 is the clamp: 1 round. Why (docs/durability.md):
    round 1 clamps every weight into [0, 1] (NaN stays NaN); after it a weight w moves only
    if d is at least half the float32 spacing below it, which is >= w 2^-24, so only
    w <= 2^25 d moves; a round that moves w and lands above 0 lowers it by at least 2d/3
    (by at least the spacing u below w, and by at least d - u/2 after rounding to nearest:
    max(u, d - u/2) >= 2d/3); a round that lands on 0 is the last. So at most
    1 + floor(min(1, 2^25 d) * 3 / (2 d)) rounds after the first move anything. (1/d rounds
    do not suffice: d = 1.4 * 2^-24 takes 14,100,130 rounds from w = 1, 1.18 / d.)
    """
    d = fractions.Fraction(float(np.float32(decay)))
    if d <= 0:
        return 1
    return 2 + min(int(fractions.Fraction(3, 2) / d), 3 << 24)
