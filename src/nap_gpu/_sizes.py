"""Population sizes as people write them: one parser and one labeller for the CLI, the scale
suites and the scaling report."""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["parse_count", "size_label"]

_SCALES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}
_COUNT = re.compile(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([kmbg]?)\s*")


def parse_count(text: str) -> int:
    """A whole count written ``10000``, ``10k``, ``1M``, ``2.5M``, ``1G``, ``1e6`` or
    ``1_000_000`` (suffixes in any case; ``B`` is a billion, as ``G``).

    >>> parse_count("10K"), parse_count("2.5M"), parse_count("1e6"), parse_count("1_000")
    (10000, 2500000, 1000000, 1000)

    Raises ValueError for anything else, or for a count that is not whole (``1.5``)."""
    match = _COUNT.fullmatch(text.lower()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"not a count: {text!r} (e.g. 10000, 10k, 1M, 1e6)")
    mantissa = match.group(1).replace("_", "")
    scale = _SCALES[match.group(2)]
    if "." in mantissa or "e" in mantissa:  # exact: no float rounding of large counts
        value = Fraction(mantissa) * scale
        if value.denominator != 1:
            raise ValueError(f"not a whole count: {text!r}")
        return int(value)
    return int(mantissa) * scale


def size_label(n: int) -> str:
    """The shortest label for ``n``: ``10K``, ``1M``, ``1G``; other counts in digits.

    >>> size_label(10_000), size_label(100_000_000), size_label(1_000_000_000), size_label(1500)
    ('10K', '100M', '1G', '1500')
    """
    for suffix, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)
