"""Shared test helpers: the backend matrix and bitwise comparison.

Comparison policy (every parity test): float32 results are compared as bit patterns
(``.view(np.uint32)``), never with a tolerance. The law never produces -0.0, so bitwise
equality is plain equality of values. NaN only arises from NaN inputs (the caller's own
weights, or ``check_finite=False``); there the contract is NaN in the same places, while the
payload is unspecified (IEEE leaves it open: NumPy's SIMD loops and GPUs pick different ones),
so tests that feed NaN compare with ``nan_payloads=False``.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

import nap_gpu as nap

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"
#: The shared golden vectors (an independent scalar implementation), beside the project.
SHARED_GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "shared" / "golden" / "law_vectors.json"

ALL_BACKENDS = ("cuda", "cpp", "numpy")


def backend_param(name: str):
    """A pytest param for backend ``name`` that skips with the probe's reason when unusable."""
    reason = nap.available_backends()[name]
    marks = [pytest.mark.gpu] if name == "cuda" else []
    if reason is not None:
        marks.append(pytest.mark.skip(reason=f"backend {name!r} unusable here: {reason}"))
    return pytest.param(name, marks=marks, id=name)


BACKENDS = [backend_param(name) for name in ALL_BACKENDS]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Each backend by name; unusable ones are skipped with the reason."""
    return request.param


def bits(a) -> np.ndarray:
    """The float32 bit patterns of an array (host copy)."""
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32)).view(np.uint32)


_CANONICAL_NAN = np.uint32(0x7FC00000)


def assert_same_bits(actual, expected, context: str = "", *, nan_payloads: bool = True) -> None:
    """Bitwise equality; with ``nan_payloads=False`` every NaN counts as the same NaN."""
    a, e = bits(actual), bits(expected)
    if not nan_payloads:
        a = np.where(np.isnan(a.view(np.float32)), _CANONICAL_NAN, a)
        e = np.where(np.isnan(e.view(np.float32)), _CANONICAL_NAN, e)
    assert a.shape == e.shape, f"{context}: shapes {a.shape} != {e.shape}"
    diff = np.flatnonzero(a != e)
    assert diff.size == 0, (f"{context}: {diff.size} weights differ, first at [{diff[0]}]: "
                            f"0x{a[diff[0]]:08x} != 0x{e[diff[0]]:08x}")


def f32(hex_bits: str) -> np.float32:
    return np.array([int(hex_bits, 16)], np.uint32).view(np.float32)[0]


def load_shared_golden() -> dict:
    if not SHARED_GOLDEN.exists():
        pytest.skip(f"shared golden vectors not found at {SHARED_GOLDEN}")
    return json.loads(SHARED_GOLDEN.read_text())


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    """Tests choose backends explicitly; a developer's NAP_BACKEND must not leak in."""
    monkeypatch.delenv("NAP_BACKEND", raising=False)
    yield
