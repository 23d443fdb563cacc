"""A sharded population's initial weights: each shard makes its own part of
``Engine(n, seed=seed, init=init)``'s weights, bit for bit, and nothing of the rest.

Owns ``UniformSlice`` (a shard's part of the seeded uniform weights, made by jumping PCG64
ahead), ``initial_parts`` (the client's split of ``init`` and ``seed`` into what each shard
is sent) and ``shard_weights`` (what a shard makes of it). Imports NumPy and ``_inputs``
only: the client and the workers both use it.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import numpy as np

from .. import _inputs

if TYPE_CHECKING:
    from numpy.random._pcg64 import _PCG64State

    from .._types import HostWeights, InitialWeights

    #: What ``seed`` may be: split into shards through its generator's state.
    Seed: TypeAlias = int | Sequence[int] | np.random.SeedSequence | None


@dataclasses.dataclass(frozen=True)
class UniformSlice:
    """Weights [start, stop) of ``np.random.default_rng(seed).random(n, dtype=float32)``,
    made without the ones before ``start``: each float32 takes 32 bits of one of PCG64's
    64-bit outputs, low half first, so weight i comes from output i // 2, and PCG64 jumps
    to any output in O(log n) (``advance``). ``state`` is the fresh generator's state."""

    state: Mapping[str, Any]
    start: int
    stop: int

    def make(self) -> np.ndarray:
        bits = np.random.PCG64()
        # default_rng's bit generator is a PCG64: its state is one (typed as a plain dict)
        bits.state = cast("_PCG64State", self.state)
        bits.advance(self.start // 2)
        rng = np.random.Generator(bits)
        if self.start % 2:  # the low half of output start // 2 is weight start - 1
            rng.random(1, dtype=np.float32)
        return rng.random(self.stop - self.start, dtype=np.float32)


if TYPE_CHECKING:
    #: What a shard is sent to make its initial weights from.
    ShardInit: TypeAlias = UniformSlice | InitialWeights

def initial_parts(init: InitialWeights, seed: Seed, n: int) -> Callable[[range], ShardInit]:
    """A function of a shard's id range giving what that shard needs to make its part
    of ``Engine(n, seed=seed, init=init)``'s weights, after the Engine's own checks."""
    if isinstance(init, str) and init == "uniform":
        if isinstance(seed, (np.random.Generator, np.random.BitGenerator)):
            raise TypeError("seed must be None, an int, a sequence of ints or a "
                            "SeedSequence: a Generator's state cannot be split into shards")
        state = np.random.default_rng(seed).bit_generator.state  # fixes seed=None's entropy
        return lambda ids: UniformSlice(state, ids.start, ids.stop)
    if isinstance(init, (str, numbers.Real)):
        _inputs.initial_weights(init, 1, seed)  # the Engine's checks on a constant
        return lambda ids: init
    weights = _inputs.initial_weights(init, n, seed)  # validated, on the client anyway
    return lambda ids: weights[ids.start:ids.stop]


def shard_weights(init: ShardInit, size: int) -> HostWeights:
    """A shard's initial host weights from what the client sent for it."""
    if isinstance(init, UniformSlice):
        return init.make()
    return _inputs.initial_weights(init, size, None)  # a constant, or the shard's slice
