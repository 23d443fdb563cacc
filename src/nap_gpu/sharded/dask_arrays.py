"""Dense steps whose qualities are a dask array: each shard is stepped with its own block,
where the block lives, so the qualities never pass through the client.

Owns the array's checks (shape and dtype on its metadata, finiteness by a task per block),
rechunking it to the shards, and the tasks that run on the workers (``_first_nonfinite``,
``_step_with_block``). Imports ``_inputs``, ``backends`` and ``shards``; Dask only as the
caller's client and arrays, and ``distributed.wait`` once a client exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from .. import _inputs, backends
from .shards import distributed

if TYPE_CHECKING:
    import dask.array
    import distributed as _distributed

    from .._types import BackendArray
    from .shards import Part


def is_dask_array(x: object) -> TypeGuard[dask.array.Array]:
    return type(x).__module__.startswith("dask.array")


def shard_blocks(client: _distributed.Client, q: dask.array.Array, ranges: Sequence[range],
                 timeout: float | None) -> list[_distributed.Future]:
    """Futures of the blocks of a dask array of qualities, one per shard (``ranges``),
    computed: a wrong shape or dtype raises the Engine's error first, and an error of the
    array's own graph is raised here, before any shard call."""
    sizes = tuple(len(r) for r in ranges)
    _check_metadata(q, sum(sizes))
    blocks = client.compute(list(q.rechunk((sizes,)).to_delayed().ravel()))
    _wait_for_tasks(blocks, "computed", timeout)
    for block in blocks:
        if block.status == "error":
            block.result()  # raises the graph's error
    return blocks


def require_finite(client: _distributed.Client, blocks: Sequence[_distributed.Future],
                   workers: Sequence[str], ranges: Sequence[range], timeout: float | None) -> None:
    """The Engine's error for the first non-finite quality of the blocks (each checked by a
    task on its shard's worker), at its index in the whole array."""
    # pure tasks, not shard calls: Dask reruns them if a worker dies
    checks = [client.submit(_first_nonfinite, block, pure=False, workers=[worker],
                            allow_other_workers=True)
              for worker, block in zip(workers, blocks)]
    _wait_for_tasks(checks, "checked", timeout)
    found = client.gather(checks)
    hits = [(i, hit) for i, hit in enumerate(found) if hit is not None]
    if hits:
        i, (at, value) = hits[0]
        raise _inputs.not_finite("quality", ranges[i].start + at, value)


def step_parts(client: _distributed.Client,
               blocks: Sequence[_distributed.Future]) -> dict[int, Part]:
    """Each shard's part of the step: a task on the shard's worker stepping it with its block.
    ``allow_other_workers``: if the shard's worker is gone, the task runs elsewhere and its
    call to the lost actor fails, which starts recovery (instead of waiting forever)."""
    def part(block: _distributed.Future) -> Part:
        return lambda shard: client.submit(_step_with_block, shard.actor, shard.sequence, block,
                                           pure=False, workers=[shard.worker],
                                           allow_other_workers=True)
    return {i: part(block) for i, block in enumerate(blocks)}


def _check_metadata(q: dask.array.Array, n: int) -> None:
    """A dask array of qualities must be a 1-D float array of length n by the Engine's shape
    and dtype rules, checked on its metadata (nothing is computed)."""
    if q.dtype.kind != "f" or q.shape != (n,):
        # Engine's own checks on a zero-byte stand-in of the same shape: they raise what
        # the array would (a float32 stand-in for float dtypes: nothing to convert)
        dtype = np.float32 if q.dtype.kind == "f" else q.dtype
        _inputs.quality(np.broadcast_to(np.zeros((), dtype), q.shape), n,
                        backends.best_host(), check_finite=False)


def _wait_for_tasks(futures: list, what: str, timeout: float | None) -> None:
    """Wait for the dask array's own tasks, within ``call_timeout``: no shard has been
    called yet, so a timeout here changes nothing."""
    try:
        distributed().wait(futures, timeout=timeout)
    except TimeoutError:
        raise TimeoutError(f"the qualities' blocks were not {what} within call_timeout = "
                           f"{timeout:g} s (a worker holding them may be "
                           "stalled); no shard was called") from None


# -- tasks, on the workers ----------------------------------------------------------------
def _first_nonfinite(block: BackendArray) -> tuple[int, float] | None:
    """Where a block of a dask array of qualities lives: (index, value) of its first
    non-finite quality, after the Engine's float32 conversion; None if all finite."""
    host = backends.best_host()
    q = _inputs.quality(block, int(block.size), host, check_finite=False)
    bad = host.first_nonfinite(q)
    return None if bad < 0 else (int(bad), float(q[bad]))


def _step_with_block(actor: Any, expected: int | None, block: BackendArray) -> int | None:
    """On a shard's worker: step the shard with its block of a dask array."""
    return actor.mutate(expected, "step", block, False).result()
