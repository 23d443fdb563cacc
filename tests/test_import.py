"""Importing nap_gpu (and using its host backends) imports no GPU or deep-learning library.

Each check runs in a fresh interpreter, since this test process may already hold those
modules (other tests import torch and scikit-learn).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

FORBIDDEN = ("cupy", "cupy_backends", "torch", "jax", "jaxlib", "numba", "sklearn")


def run_python(code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAP_")}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


REPORT = f"""
import json, sys
forbidden = {FORBIDDEN!r}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
print(json.dumps({{"loaded": loaded, "core": "nap_gpu._core" in sys.modules,
                  "nap": "nap_gpu" in sys.modules}}))
"""


def test_plain_import():
    result = run_python("import nap_gpu\n" + REPORT)
    assert result["nap"]
    assert result["loaded"] == [], f"`import nap_gpu` imported {result['loaded']}"


def test_probe_engines_metrics_and_config():
    code = """
    import io
    import numpy as np
    import nap_gpu as nap

    backends = nap.available_backends()
    assert backends["cpp"] is None and backends["numpy"] is None, backends
    nap.show_config(file=io.StringIO())
    for name in ("numpy", "cpp", "auto"):
        eng = nap.Engine(1000, backend=name, seed=0)
        eng.step(0.9)
        eng.step(np.linspace(0, 1, 1000, dtype=np.float32))
        eng.update([3, 3, 7], [0.9, 0.1, 0.8])
        eng.decay(2)
        m = eng.metrics(np.arange(1000) % 2)
        nap.health(m, eng.iteration)
    w = np.zeros(10, np.float32)
    nap.step(w, 0.9)
    nap.update(w, [1, 2], [0.9, 0.1])
    """
    result = run_python(textwrap.dedent(code) + REPORT)
    assert result["core"], "the cpp Engine should have loaded the C++ core (positive control)"
    # Probing the cuda backend must import CuPy when it is installed (to ask for a device);
    # nothing else may come in.
    allowed = ("cupy", "cupy_backends", "cuda") if importlib.util.find_spec("cupy") else ()
    unexpected = [m for m in result["loaded"] if m.split(".")[0] not in allowed]
    assert unexpected == [], f"using nap_gpu imported {unexpected}"


def test_detection_works_for_an_installed_peer():
    """Positive control: the check does see a forbidden module when one is imported."""
    installed = [name for name in ("sklearn", "numba", "torch") if importlib.util.find_spec(name)]
    if not installed:
        pytest.skip("none of sklearn, numba, torch installed: no positive control")
    result = run_python(f"import nap_gpu, {installed[0]}\n" + REPORT)
    assert installed[0] in result["loaded"]
