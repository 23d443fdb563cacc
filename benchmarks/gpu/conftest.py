"""GPU benchmarks (``benchmarks/gpu/run.sh`` on a GPU host): skipped, with the probe's reason,
anywhere the cuda backend is unusable."""

from __future__ import annotations

import pytest

import nap_gpu as nap
from nap_gpu.cli import count

DEFAULT_GPU_SIZES = "10M,100M,1G"


def pytest_addoption(parser):
    parser.getgroup("nap benchmarks").addoption(
        "--gpu-sizes", default=DEFAULT_GPU_SIZES,
        help=f"populations of the GPU dense-step benchmarks (default {DEFAULT_GPU_SIZES})")


def pytest_generate_tests(metafunc):
    if "gpu_size" in metafunc.fixturenames:
        text = metafunc.config.getoption("--gpu-sizes")
        sizes = [count(s) for s in text.split(",") if s.strip()]
        metafunc.parametrize("gpu_size", sizes, ids=text.split(","), scope="module")


def pytest_collection_modifyitems(config, items):
    reason = nap.available_backends()["cuda"]
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"cuda backend unusable here: {reason}")
    for item in items:
        if "benchmarks/gpu" in str(item.fspath):
            item.add_marker(skip)
