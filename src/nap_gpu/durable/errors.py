"""What the durable package raises and warns: refusals to recover, a failed log, recovery's
notices.

A `RecoveryError` is a refusal: opening would lose acknowledged data (or the files are from a
newer nap_gpu). It names the file and byte offset at fault, and carries the repair
``accept_loss`` would make to get past it, if any. The subclasses name the refusals callers
tell apart: `FormatTooNewError` (upgrade nap_gpu; no repair) and `DamagedSnapshotError` (the
log does not reach past a damaged snapshot).
"""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._types import StrPath
    from .repairs import Repair

__all__ = ["DamagedSnapshotError", "DurabilityWarning", "EngineFailedError", "FormatTooNewError",
           "RecoveryError"]


class DurabilityWarning(UserWarning):
    """Recovery did something the user should know about (a torn record dropped, a damaged
    snapshot bypassed) or an automatic snapshot could not be written."""


class RecoveryError(ValueError):
    """The state cannot be recovered without losing acknowledged data (or it is from a newer
    nap_gpu); the message names the file and the byte offset at fault.

    ``path`` and ``offset`` say where; ``repair`` is what ``accept_loss`` would drop to get
    past it (None: nothing can: a newer format, no usable snapshot).
    """

    def __init__(self, message: str, path: StrPath | None = None, offset: int | None = None, *,
                 repair: Repair | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.offset = offset
        self.repair = repair

    @property
    def fallback(self) -> bool:
        """Whether this is a `DamagedSnapshotError` (the flag older code tested)."""
        return isinstance(self, DamagedSnapshotError)

    @classmethod
    def fallback_error(cls, *args: Any, **kwargs: Any) -> RecoveryError:
        """Deprecated: raise `DamagedSnapshotError` (same arguments) instead."""
        warnings.warn("RecoveryError.fallback_error is deprecated: use DamagedSnapshotError",
                      DeprecationWarning, stacklevel=2)
        return DamagedSnapshotError(*args, **kwargs)


class FormatTooNewError(RecoveryError):
    """A snapshot or log segment was written in a newer format version than this nap_gpu
    reads: upgrade nap_gpu (no repair can get past it)."""


class DamagedSnapshotError(RecoveryError):
    """A snapshot is damaged and the log from the previous one does not reach the calls it
    covered: falling back would lose acknowledged calls. Restore the file from a backup, or
    ``accept_loss`` (which sets it aside, losing those calls)."""


class EngineFailedError(RuntimeError):
    """The log could not be made consistent after an I/O error (fsync or rollback failed):
    the engine refuses further calls; close it and open the directory again."""


def warn(message: str) -> None:
    """A `DurabilityWarning` attributed to the first caller outside this package (``open`` and
    the constructor, or a call and its automatic checkpoint, are different depths)."""
    level, frame = 2, sys._getframe(1)  # the caller's frame: stacklevel 2
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(f"{__package__}."):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, DurabilityWarning, stacklevel=level)
