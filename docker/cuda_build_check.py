"""The CUDA image's build check: ``python cuda_build_check.py MAJOR`` (docker/Dockerfile.cuda).

Exits 0 when this environment can run the CUDA backend on a host with a driver for CUDA MAJOR,
as far as can be told without a GPU:

- the C++ core loads (``nap-gpu info``);
- nap_gpu's NVRTC (``nap-gpu info``) and CuPy's NVRTC are of CUDA MAJOR;
- CuPy is built for CUDA MAJOR;
- the CUDA runtime headers that CuPy 14 compiles its own array kernels with (``cuda_runtime.h``,
  found by cuda-pathfinder as CuPy finds them) are there, of CUDA MAJOR;
- the base image's CUDA release (``CUDA_VERSION``, set by the nvidia/cuda images) is CUDA MAJOR.

Otherwise it prints every mismatch and ``nap-gpu info`` as JSON, and exits 1. The image runs it
at build time only (a bind mount: it is not in the image).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys


def problems(major: int) -> tuple[list[str], dict]:
    found: list[str] = []
    result = subprocess.run(["nap-gpu", "info", "--json"], capture_output=True, text=True,
                            check=False)
    try:
        info = json.loads(result.stdout)
    except json.JSONDecodeError:
        return [f"nap-gpu info failed ({result.returncode}): {result.stderr.strip()}"], {}
    if info["backends"]["cpp"] != "usable":
        found.append(f"the C++ core: {info['backends']['cpp']}")
    nvrtc = info["cuda_kernels"]["nvrtc"]
    if not nvrtc.startswith(f"{major}."):
        found.append(f"nap_gpu's NVRTC is {nvrtc}, not CUDA {major}")

    release = os.environ.get("CUDA_VERSION")
    if release is not None and release.split(".")[0] != str(major):
        found.append(f"the base image is CUDA {release}, not CUDA {major}")

    try:
        import cupy  # noqa: PLC0415
    except ImportError as exc:
        return [*found, f"CuPy does not import: {exc}"], info
    built = cupy.cuda.runtime.runtimeGetVersion() // 1000  # the cudart CuPy links: no GPU needed
    if built != major:
        found.append(f"CuPy ({cupy.__version__}) is built for CUDA {built}, not CUDA {major}")
    try:
        cupy_nvrtc = cupy.cuda.nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001 - any failure to load it is the finding
        found.append(f"CuPy cannot load NVRTC: {exc}")
    else:
        if cupy_nvrtc[0] != major:
            found.append(f"CuPy's NVRTC is {cupy_nvrtc[0]}.{cupy_nvrtc[1]}, not CUDA {major}")

    from cuda.pathfinder import find_nvidia_header_directory  # noqa: PLC0415 - CuPy's dependency

    headers = find_nvidia_header_directory("cudart")
    if headers is None:
        found.append("no CUDA runtime headers (cuda_runtime.h): CuPy cannot compile its own "
                     "kernels; the cuda extras install them (nvidia-cuda-runtime*)")
    else:
        text = (pathlib.Path(headers) / "cuda_runtime_api.h").read_text(errors="replace")
        version = re.search(r"#define\s+CUDART_VERSION\s+(\d+)", text)
        if version is None or int(version.group(1)) // 1000 != major:
            found.append(f"the CUDA runtime headers in {headers} are not CUDA {major}")
    return found, info


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(f"usage: {argv[0]} CUDA_MAJOR", file=sys.stderr)
        return 2
    found, info = problems(int(argv[1]))
    if found:
        print("the CUDA image is not usable:", *(f"- {p}" for p in found), sep="\n",
              file=sys.stderr)
        print(json.dumps(info, indent=1), file=sys.stderr)
        return 1
    print(f"CUDA {argv[1]}: C++ core usable, NVRTC {info['cuda_kernels']['nvrtc']}, "
          "CuPy and its headers match")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
