"""Dense step: nap's paths beside the floor and the peers, one group per population size.

Group ``dense-step-<size>`` holds, in this order: the floor (an in-place streaming triad over
the same two float32 arrays), cpp raw, cpp validated (``nap.step``), numpy raw, and the peers
(naive NumPy, numba, JAX, torch.compile), then the floor again (a drift check). Read the
results as ratios to the floor of the same run (``python -m benchmarks.report targets r.json``),
never as absolute times. Each benchmark also records ``paired_floor_ratio``: its time over the
floor's, the two run in alternation, which cancels a machine drifting between benchmarks.
Each implementation is first checked bit for bit against the NumPy backend on a 1M input with
the law's special values; one that is not bit-exact is still timed and carries
``bit_exact: False`` and ``label: "not bit-exact"`` in its record.
"""

from __future__ import annotations

import peers
import pytest
import scale_support

from nap_gpu import backends

from benchmarks.report.schema import Record, measured

# JAX and torch may warn on import or compile on some versions; they are peers, not nap.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning:torch"),
]

#: Bytes a dense step must move at least: read w and q, write w (4 bytes each).
BYTES_PER_MEMORY = 12

_verdicts: dict[str, dict] = {}  # impl name -> bit-exactness verdict, made once per session


def _verdict(impl: peers.Impl) -> dict:
    if impl.name not in _verdicts:
        w, q = peers.check_input()
        _verdicts[impl.name] = peers.check_exact(impl, w, q, peers.reference_step(w, q))
    return dict(_verdicts[impl.name])


def _threads() -> int | None:
    if backends.available_backends().get("cpp") is not None:
        return None
    return int(backends.get("cpp").num_threads())


@pytest.mark.parametrize("name", [impl.name for impl in peers.IMPLS])
def test_dense_step(benchmark, measure, dense_data, size, size_name, name):
    impl = peers.BY_NAME[name]
    benchmark.group = f"dense-step-{size_name}"
    benchmark.name = f"{name}[{size_name}]"
    floor_role = impl.role == "floor"
    info = {"op": "dense-step", "impl": name, "role": impl.role, "about": impl.about, "n": size,
            "bytes": BYTES_PER_MEMORY * size, "yardstick": name == "floor",
            "repeat": name == "floor-repeat", "peak_row": None if floor_role else "dense-step"}
    detail = {"threads": _threads()}
    try:
        if impl.check:
            verdict = _verdict(impl)
            detail.update({k: verdict.pop(k) for k in ("donated",) if k in verdict})
            info.update(measured(**verdict))
            if not info["bit_exact"]:
                info["label"] = "not bit-exact"
        # else: bit_exact stays None: the floor computes something else, by design
        runner = impl.make(*dense_data)
        floor = None if floor_role else peers.floor_runner(*dense_data)
    except peers.Unavailable as exc:
        pytest.skip(str(exc))
    info.update(measure(runner.reset, runner.run, size, floor=floor))
    # Peak memory of the implementation: its working state (built fresh: the runner's own
    # copy of the weights, device/JIT buffers) and one step, above the resident inputs (the
    # pristine weights and the qualities, 8 bytes a memory, already allocated).
    del runner
    pristine, quality = dense_data
    mem = scale_support.measure_peak(lambda: impl.make(pristine, quality),
                                     lambda r: (r.reset(), r.run()))
    info.update(scale_support.per_memory(mem, size))
    info["memory"]["mem_inputs_bytes_per_memory"] = (pristine.nbytes + quality.nbytes) / size
    benchmark.extra_info.update(Record(**info, detail=detail).json())
