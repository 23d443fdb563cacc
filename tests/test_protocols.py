"""The two contracts (nap_gpu.protocols) hold at run time as mypy proves them statically:
every usable backend module is a `Backend`, every engine an `EngineLike` (the sharded one in
tests/test_sharded.py, on its cluster)."""

from __future__ import annotations

import pytest

import nap_gpu as nap
from nap_gpu.protocols import Backend, EngineLike

USABLE = [name for name, reason in nap.available_backends().items() if reason is None]


@pytest.mark.parametrize("name", USABLE)
def test_every_usable_backend_is_a_backend(name):
    assert isinstance(nap.backends.get(name), Backend)


def test_a_module_missing_an_operation_is_not_a_backend():
    import types

    partial = types.ModuleType("partial")
    for member in ("name", "xp", "asarray", "step"):
        setattr(partial, member, getattr(nap.backends.get("numpy"), member))
    assert not isinstance(partial, Backend)


def test_engine_and_durable_engine_are_engines(tmp_path):
    assert isinstance(nap.Engine(8, backend="numpy"), EngineLike)
    with nap.DurableEngine.open(tmp_path / "state", n=8, backend="numpy") as durable:
        assert isinstance(durable, EngineLike)
