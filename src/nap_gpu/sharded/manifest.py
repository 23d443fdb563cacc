"""The on-disk formats of a sharded population, and how ids are cut into shards.

Owns ``shard_bounds`` (the id ranges), a sharded save's manifest (``MANIFEST``: written
last, it is what makes a save), the names of a save's shard files, which old shard files a
new shard reads on load (``SavedShards.pieces``), and a durable sharded state's layout file
(``LAYOUT``: n and the boundaries, fixed when the state is created).

Imports the standard library, ``snapshot`` (its error, the parameters' fields) and
``_files``; nothing of Dask, and nothing else of ``nap_gpu.sharded``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import pathlib
import re
import uuid
from collections.abc import Sequence

from .. import __version__, snapshot
from .._files import atomic_file
from ..params import Params

#: The manifest of a sharded snapshot, written last: a save without it never happened.
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "nap-sharded-snapshot"
MANIFEST_VERSION = 1
#: A durable sharded state's layout file (n and the shard boundaries).
LAYOUT = "sharding.json"
LAYOUT_FORMAT = "nap-sharded-state"

_SHARD_FILE = re.compile(r"^shard-\d{4}-[0-9a-f]{12}\.nap$")

#: (path, checksum, first, stop): ids [first, stop) of one old shard file, counted in it.
Piece = tuple[str, str, int, int]


def shard_bounds(n: int, shards: int) -> tuple[int, ...]:
    """Boundaries of ``shards`` contiguous id ranges over ``n`` ids, as ``numpy.array_split``
    cuts them (the first ``n % shards`` ranges hold one id more): shard i is
    ``range(bounds[i], bounds[i + 1])``.

    Examples
    --------
    >>> from nap_gpu.sharded import shard_bounds
    >>> shard_bounds(10, 3)
    (0, 4, 7, 10)
    """
    size, extra = divmod(n, shards)
    bounds = [0]
    for i in range(shards):
        bounds.append(bounds[-1] + size + (i < extra))
    return tuple(bounds)


# -- a sharded save ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SavedShards:
    """A sharded save as its manifest describes it: what ``ShardedEngine.load`` starts from."""

    n: int
    bounds: tuple[int, ...]
    files: tuple[tuple[str, str], ...]  # each saved shard's (path, checksum), in id order
    params: Params
    iteration: int

    def pieces(self, ids: range) -> list[Piece]:
        """(file, checksum, first, stop) ranges of the saved shard files holding ``ids``."""
        pieces = []
        for (lo, hi), (path, checksum) in zip(zip(self.bounds[:-1], self.bounds[1:]), self.files):
            first, stop = max(lo, ids.start), min(hi, ids.stop)
            if first < stop:
                pieces.append((path, checksum, first - lo, stop - lo))
        return pieces


def shard_file_names(shards: int) -> list[str]:
    """Names for one save's shard files, fresh for each save: a save never writes over the
    files the manifest in place names, so one cut short leaves that save loadable."""
    token = uuid.uuid4().hex[:12]
    return [f"shard-{i:04d}-{token}.nap" for i in range(shards)]


def write_manifest(directory: pathlib.Path, *, n: int, bounds: Sequence[int],
                   files: Sequence[tuple[str, str]], params: Params, iteration: int) -> pathlib.Path:
    """Write the manifest of the save whose shard files (name, checksum) are written: last,
    atomically. Returns its path."""
    manifest = {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "n": n,
        "bounds": list(bounds),
        "shards": [{"file": name, "checksum": checksum} for name, checksum in files],
        "params": snapshot.params_fields(params), "iteration": iteration,
        "nap_gpu_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return _write_json(directory / MANIFEST, manifest)


def remove_earlier_saves(directory: pathlib.Path, keep: Sequence[str]) -> None:
    """Delete the shard files of earlier saves in ``directory`` (once the manifest names
    only ``keep``)."""
    for entry in os.scandir(directory):
        if _SHARD_FILE.match(entry.name) and entry.name not in keep:
            os.unlink(entry.path)


def read_manifest(directory: pathlib.Path) -> SavedShards:
    """The save in ``directory``, its manifest checked for consistency; ``SnapshotError``
    names the file and the fault. (The shard files are verified when they are read.)"""
    manifest = _checked_manifest(directory / MANIFEST)
    files = tuple((str(directory / s["file"]), s["checksum"]) for s in manifest["shards"])
    return SavedShards(manifest["n"], tuple(manifest["bounds"]), files, manifest["params"],
                       manifest["iteration"])


def _checked_manifest(path: pathlib.Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise snapshot.SnapshotError(f"{path}: no manifest: not a sharded save, or a save "
                                     "that never finished") from None
    except ValueError as exc:
        raise snapshot.SnapshotError(f"{path}: unreadable manifest: {exc}") from None
    try:
        if manifest["format"] != MANIFEST_FORMAT:
            raise ValueError(f"format {manifest['format']!r}, expected {MANIFEST_FORMAT!r}")
        if manifest["format_version"] > MANIFEST_VERSION:
            raise ValueError(f"format version {manifest['format_version']}; this nap_gpu reads "
                             f"versions up to {MANIFEST_VERSION}: upgrade nap_gpu")
        bounds = [int(b) for b in manifest["bounds"]]
        n = int(manifest["n"])
        if bounds[0] != 0 or bounds[-1] != n or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"shard boundaries {bounds} do not cut [0, {n}) into ranges")
        if len(manifest["shards"]) != len(bounds) - 1:
            raise ValueError(f"{len(manifest['shards'])} shard files for {len(bounds) - 1} ranges")
        params = snapshot.params_from_fields(manifest["params"])
        return {**manifest, "n": n, "bounds": bounds, "params": params,
                "iteration": int(manifest["iteration"])}
    except (KeyError, TypeError, ValueError) as exc:
        raise snapshot.SnapshotError(f"{path}: bad manifest: {exc}") from None


# -- a durable sharded state ----------------------------------------------------------------
def check_layout(state: pathlib.Path, n: int, bounds: Sequence[int]) -> None:
    """Write a new durable state's layout, or check an existing one's: its n and boundaries
    are fixed when it is created, and reopening with others would pair shard directories
    with the wrong ids (ValueError)."""
    path = state / LAYOUT
    layout = {"format": LAYOUT_FORMAT, "format_version": MANIFEST_VERSION, "n": n,
              "bounds": list(bounds)}
    if not path.exists():
        _write_json(path, layout)
        return
    held = json.loads(path.read_text())
    if held.get("n") != n or held.get("bounds") != layout["bounds"]:
        raise ValueError(f"{state} holds n = {held.get('n')} memories in "
                         f"{len(held.get('bounds', [])) - 1} shard(s), not n = {n} "
                         f"in {len(bounds) - 1}: re-shard with save() and "
                         "ShardedEngine.load()")


def _write_json(path: pathlib.Path, document: dict) -> pathlib.Path:
    """Write ``document`` to ``path`` atomically and durably, as a snapshot is written."""
    with atomic_file(path) as fh:
        fh.write(json.dumps(document, indent=1).encode())
    return path
