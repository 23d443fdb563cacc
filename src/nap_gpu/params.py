"""The law's parameters (docs/law.md §2), validated once and held as float32."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["Params"]


@dataclass(frozen=True)
class Params:
    """Parameters of the NAP law, each a float32 in [0, 1].

    Parameters
    ----------
    lr : float
        Learning rate: the step of reinforcement (``lr * q``) and punishment
        (``lr * (1 - q)``). Default 0.05.
    gate : float
        A quality strictly above the gate reinforces; at or below it punishes. Default 0.5.
    decay : float
        Passive decay subtracted per dense step and per ``decay()`` round. 0 disables it.
        Default 0.02, so a reinforced memory plateaus at ``1 - 0.02``.

    Notes
    -----
    Values are rounded to float32 (the law's arithmetic is float32); ``-0.0`` becomes ``0.0``.
    Non-finite values or values outside [0, 1] raise ``ValueError`` naming the parameter.

    Examples
    --------
    >>> import nap_gpu as nap
    >>> nap.Params()
    Params(lr=0.05, gate=0.5, decay=0.02)
    >>> nap.Params(lr=0.1, decay=0.0).lr  # held as the float32 nearest 0.1
    0.10000000149011612
    >>> nap.Params(gate=1.5)
    Traceback (most recent call last):
    ...
    ValueError: Params.gate must lie in [0, 1], got 1.5
    """

    lr: float = 0.05
    gate: float = 0.5
    decay: float = 0.02

    def __post_init__(self) -> None:
        for name in ("lr", "gate", "decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"Params.{name} must be a real number, got {type(value).__name__}")
            try:
                real = float(value)
            except OverflowError:  # an integer or Fraction beyond float64 (10**400)
                raise ValueError(f"Params.{name} must lie in [0, 1], got {value!r}") from None
            if not math.isfinite(real):
                raise ValueError(f"Params.{name} must be finite, got {value!r}")
            if not -1.0 <= real <= 2.0:  # far outside: float32 rounding would overflow
                raise ValueError(f"Params.{name} must lie in [0, 1], got {value!r}")
            as32 = float(np.float32(real)) + 0.0  # round to float32; -0.0 -> 0.0
            if not 0.0 <= as32 <= 1.0:
                raise ValueError(f"Params.{name} must lie in [0, 1], got {value!r}")
            object.__setattr__(self, name, as32)

    def __repr__(self) -> str:  # the float32 values, shortest round-trip form
        lr, gate, decay = (str(v) for v in self.float32())
        return f"Params(lr={lr}, gate={gate}, decay={decay})"

    def float32(self) -> tuple[np.float32, np.float32, np.float32]:
        """``(lr, gate, decay)`` as NumPy float32 scalars."""
        return np.float32(self.lr), np.float32(self.gate), np.float32(self.decay)

    def to_bits(self) -> tuple[int, int, int]:
        """``(lr, gate, decay)`` as the uint32 bit patterns of their float32 values: the one
        form in which the parameters are stored (snapshots, the log, sharded manifests).

        >>> Params().to_bits()
        (1028443341, 1056964608, 1017370378)
        >>> Params.from_bits(Params(lr=0.1).to_bits()) == Params(lr=0.1)
        True
        """
        lr, gate, decay = np.array(self.float32(), np.float32).view(np.uint32).tolist()
        return lr, gate, decay

    @classmethod
    def from_bits(cls, bits: Iterable[int]) -> Params:
        """The parameters whose float32 bit patterns are ``bits`` (``to_bits``' inverse);
        validated as the constructor validates (ValueError for NaN or out of [0, 1])."""
        words = list(bits)
        if len(words) != 3 or any(isinstance(b, bool) or not isinstance(b, numbers.Integral)
                                  or not 0 <= b < 1 << 32 for b in words):
            raise ValueError(f"Params.from_bits takes three uint32 bit patterns, got {words!r}")
        lr, gate, decay = np.array(words, np.uint32).view(np.float32).tolist()
        return cls(lr=lr, gate=gate, decay=decay)
