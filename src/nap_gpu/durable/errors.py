"""What the durable package raises and warns: refusals to recover, a failed log, recovery's
notices.

A `RecoveryError` is a refusal: opening would lose acknowledged data (or the files are from a
newer nap_gpu). It names the file and byte offset at fault, and carries the repair
``accept_loss`` would make to get past it, if any.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._types import StrPath

__all__ = ["DurabilityWarning", "EngineFailedError", "RecoveryError"]


class DurabilityWarning(UserWarning):
    """Recovery did something the user should know about (a torn record dropped, a damaged
    snapshot bypassed) or an automatic snapshot could not be written."""


class RecoveryError(ValueError):
    """The state cannot be recovered without losing acknowledged data (or it is from a newer
    nap_gpu); the message names the file and the byte offset at fault."""

    def __init__(self, message: str, path: StrPath | None = None, offset: int | None = None, *,
                 repair: dict | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.offset = offset
        self.fallback = False
        # what accept_loss would drop to get past this (None: nothing can: a newer format,
        # no usable snapshot)
        self.repair = repair

    @classmethod
    def fallback_error(cls, *args: Any, **kwargs: Any) -> RecoveryError:
        exc = cls(*args, **kwargs)
        exc.fallback = True  # already says which snapshot is damaged
        return exc


class EngineFailedError(RuntimeError):
    """The log could not be made consistent after an I/O error (fsync or rollback failed):
    the engine refuses further calls; close it and open the directory again."""
