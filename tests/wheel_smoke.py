"""Smoke test of an installed nap_gpu (a wheel, fresh from cibuildwheel or auditwheel): the
golden vectors (docs/law.md §5) through every host backend it offers, compared bit for bit.

    python tests/wheel_smoke.py [--allow-no-core]

Exits non-zero when a case differs or, unless ``--allow-no-core``, when the C++ core did not
load (a wheel's whole point is the core: the reason is printed). Needs only nap_gpu and NumPy,
so cibuildwheel can run it against the wheel it just built.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

import nap_gpu as nap

VECTORS = pathlib.Path(__file__).resolve().parent / "golden" / "law_vectors.json"


def _f32(hex_bits: str) -> np.float32:
    return np.array([int(hex_bits, 16)], np.uint32).view(np.float32)[0]


def mismatches(backend: str) -> int:
    """Cases of the golden vectors whose result differs in bits on ``backend``."""
    by_params: dict[tuple, list[dict]] = {}
    for case in json.loads(VECTORS.read_text())["cases"]:
        by_params.setdefault((case["op"], case["lr"], case["gate"], case["decay"]), []).append(case)
    wrong = 0
    for (op, lr, gate, decay), cases in by_params.items():
        params = nap.Params(lr=float(_f32(lr)), gate=float(_f32(gate)), decay=float(_f32(decay)))
        w = np.array([_f32(c["w"]) for c in cases], np.float32)
        eng = nap.Engine(len(cases), init=w, params=params, backend=backend)
        if op == "step":
            eng.step(np.array([_f32(c["q"]) for c in cases], np.float32))
        else:
            eng.decay(1)
        want = np.array([int(c["out"], 16) for c in cases], np.uint32)
        wrong += int(np.count_nonzero(eng.to_numpy().view(np.uint32) != want))
    return wrong


def main(argv: list[str]) -> int:
    usable = {name for name, reason in nap.available_backends().items() if reason is None}
    print(f"nap_gpu {nap.__version__} from {pathlib.Path(nap.__file__).parent}")
    print(f"backends: {nap.available_backends()}")
    if "cpp" not in usable and "--allow-no-core" not in argv:
        print("FAIL: the C++ core did not load")
        return 1
    failed = False
    for backend in sorted(usable & {"cpp", "numpy"}):
        wrong = mismatches(backend)
        print(f"{backend}: {wrong} of the golden cases differ")
        failed |= wrong > 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
