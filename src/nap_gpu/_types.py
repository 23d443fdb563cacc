"""Type aliases of the public API, in one place (annotations only: the modules import this
under ``TYPE_CHECKING``, so nothing here runs when nap_gpu is imported).

Inputs come from any array library: NumPy and whatever ``numpy.asarray`` takes
(``numpy.typing.ArrayLike``: numbers, nested sequences, objects with ``__array__``, e.g.
PyTorch CPU tensors), plus arrays that only speak DLPack or the CUDA array interface (CuPy,
PyTorch CUDA tensors, Numba device arrays). What a backend holds is an array of its own
namespace: ``numpy.ndarray`` (cpp, numpy) or ``cupy.ndarray`` (cuda), which has no types:
`BackendArray` is therefore ``Any``. What comes back on the host is
``numpy.typing.NDArray[numpy.float32]`` (`HostWeights`).
"""

from __future__ import annotations

import os
from typing import Any, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = ["ArrayInput", "BackendArray", "HostWeights", "InitialWeights", "Labels", "StrPath",
           "SupportsCudaArrayInterface", "SupportsDLPack", "WritableArray"]


class SupportsDLPack(Protocol):
    """An array that exports itself through DLPack (``__dlpack__``): CuPy, PyTorch, JAX..."""

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any: ...

    def __dlpack_device__(self) -> tuple[int, int]: ...


class SupportsCudaArrayInterface(Protocol):
    """A GPU array exposing ``__cuda_array_interface__`` (CuPy, Numba, PyTorch CUDA)."""

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]: ...


#: A path to a file or a directory.
StrPath: TypeAlias = str | os.PathLike[str]

#: An input array (qualities, ids, labels, initial weights) from any array library, or a
#: number where one value stands for all.
ArrayInput: TypeAlias = npt.ArrayLike | SupportsDLPack | SupportsCudaArrayInterface

#: One label per memory: bool, 0/1 integers, or the strings "R"/"P".
Labels: TypeAlias = ArrayInput

#: An Engine's initial weights: "uniform" (seeded U[0, 1)), a constant in [0, 1], or an
#: array of n weights in [0, 1].
InitialWeights: TypeAlias = str | float | ArrayInput

#: Weights the functional form writes in place: a C-contiguous, writable float32 array
#: (NumPy, or anything sharing its memory through DLPack or the CUDA array interface).
WritableArray: TypeAlias = (npt.NDArray[np.float32] | SupportsDLPack
                                 | SupportsCudaArrayInterface)

#: An array of a backend's namespace: numpy.ndarray (cpp, numpy) or cupy.ndarray (cuda, untyped).
BackendArray: TypeAlias = Any

#: Float32 weights on the host.
HostWeights: TypeAlias = npt.NDArray[np.float32]
