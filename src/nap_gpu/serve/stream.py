"""Feedback over one WebSocket (``/v1/feedback/stream``): many batches, no HTTP per batch.

Each message is one batch, in the body forms of ``POST /v1/feedback`` (a binary message: m
little-endian int64 ids then m float32 qualities; a text message: the JSON object), validated
in full before it is queued. Every message gets one answer, a text message in the order the
batches came: what ``POST /v1/feedback`` answers (``accepted``, ``sequence``, ``index``), sent
once the batch is in the log, or the error body it would have had plus its ``status``; a
refused batch changes nothing and the stream goes on.

A client may send up to ``IN_FLIGHT`` batches before reading an answer: past that the
service stops reading the connection until the oldest is answered, and TCP pushes back. Open
streams count in the service's connection cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Future

from .errors import Rejected

__all__ = ["IN_FLIGHT", "serve_stream"]

#: Batches a stream may have unanswered before the service stops reading from it.
IN_FLIGHT = 64

#: A message's answer to come: an answer already known, or (events, the writer's future).
Pending = dict | tuple[int, Future]


async def serve_stream(websocket, accept: Callable[[bytes, bool], Pending],
                       answer: Callable[[Pending], Awaitable[dict]],
                       error: Callable[[Rejected], dict]) -> tuple[int, int]:
    """Read batches and answer them, in order, until the client closes: (messages, events
    accepted). ``accept(body, binary)`` validates and queues one batch; ``answer`` awaits a
    queued batch's answer, as ``POST /v1/feedback`` gives it; ``error`` makes an error body."""
    pending: asyncio.Queue[Pending | None] = asyncio.Queue(IN_FLIGHT)
    counts = [0, 0]
    answers = asyncio.create_task(_answer(websocket, pending, answer, error, counts))
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            binary = message.get("bytes") is not None
            body = message["bytes"] if binary else (message.get("text") or "").encode()
            try:
                item = accept(body, binary)
            except Rejected as exc:
                item = error(exc)
            await pending.put(item)  # waits while IN_FLIGHT batches are unanswered
    finally:
        await pending.put(None)
        await answers
    return counts[0], counts[1]


async def _answer(websocket, pending: asyncio.Queue, answer, error, counts: list[int]) -> None:
    """Send each batch's answer, in the order the batches came, until ``None``. Once the
    client is gone the answers are still awaited (the batches stay applied), not sent, so
    the reader never waits on a full queue."""
    connected = True
    while (item := await pending.get()) is not None:
        try:
            item = await answer(item)
            counts[1] += item.get("accepted", 0)
        except Rejected as exc:
            item = error(exc)
        counts[0] += 1
        if connected:
            try:
                await websocket.send_json(item)
            except Exception:  # noqa: BLE001 - the client is gone: its batches stay applied
                connected = False
