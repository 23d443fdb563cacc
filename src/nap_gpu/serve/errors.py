"""The one error a request is refused with (``Rejected``): raised while a request is parsed,
validated or queued, answered as a JSON error body by the HTTP API and the feedback stream."""

from __future__ import annotations

__all__ = ["Rejected"]


class Rejected(Exception):
    """A request refused with ``status``; ``reason`` labels the rejection counter."""

    def __init__(self, status: int, reason: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers
