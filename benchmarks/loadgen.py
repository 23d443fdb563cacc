"""A load generator for ``POST /v1/feedback``, run in a process of its own:

    python benchmarks/loadgen.py --port 8000 --token T --memories 1000000 \
        --events-per-body 1000 --bodies 400 --connections 8

Binary bodies (m little-endian int64 ids, then m float32 qualities) are built once; each of
``--connections`` keep-alive HTTP/1.1 connections (raw asyncio streams: the client costs
little beside the service on the same cores) posts its share of ``--bodies``, one request in
flight each; with ``--stream WINDOW``, over ``/v1/feedback/stream`` instead (a WebSocket per
connection, up to WINDOW batches unanswered on each). Prints one JSON line: events/s over the
whole run, latency p50/p99 (ms; request to answer) and the count of refused batches.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np


def batch_bodies(memories: int, events: int, count: int = 8) -> list[bytes]:
    """``count`` different binary bodies of ``events`` random events each."""
    rng = np.random.default_rng([memories, events])
    return [rng.integers(0, memories, events).astype("<i8").tobytes()
            + rng.random(events, dtype=np.float32).astype("<f4").tobytes() for _ in range(count)]


def post(token: str, body: bytes) -> bytes:
    """The whole ``POST /v1/feedback`` request of a binary body."""
    return (b"POST /v1/feedback HTTP/1.1\r\nHost: nap\r\n"
            + f"Authorization: Bearer {token}\r\n".encode()
            + b"Content-Type: application/octet-stream\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


async def _client(port: int, sends: list[bytes], latencies: list[float], failed: list[bytes]):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in sends:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 200"):
                failed.append(head.split(b"\r\n", 1)[0] + b" " + body[:200])
    finally:
        writer.close()


async def _streamer(port: int, token: str, sends: list[bytes], window: int,
                    latencies: list[float], failed: list[bytes]) -> None:
    """One feedback stream: up to ``window`` batches unanswered, answers read as they come."""
    import websockets  # noqa: PLC0415 - only for --stream

    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/feedback/stream",
                                  additional_headers={"Authorization": f"Bearer {token}"},
                                  compression=None, max_size=None) as ws:
        room, sent_at = asyncio.Semaphore(window), []

        async def answers() -> None:
            for i in range(len(sends)):
                answer = json.loads(await ws.recv())
                latencies.append(time.perf_counter() - sent_at[i])
                if "error" in answer:
                    failed.append(json.dumps(answer).encode())
                room.release()
        reader = asyncio.create_task(answers())
        for body in sends:
            await room.acquire()
            sent_at.append(time.perf_counter())
            await ws.send(body)
        await reader


async def run(port: int, token: str, memories: int, events: int, bodies: int,
              connections: int, window: int = 0) -> dict:
    prepared = batch_bodies(memories, events)
    if not window:  # the stream sends the bodies alone, as binary messages
        prepared = [post(token, body) for body in prepared]
    sends = [prepared[i % len(prepared)] for i in range(bodies)]
    latencies: list[float] = []
    failed: list[bytes] = []
    start = time.perf_counter()
    await asyncio.gather(*(
        _streamer(port, token, sends[c::connections], window, latencies, failed) if window
        else _client(port, sends[c::connections], latencies, failed)
        for c in range(connections)))
    wall = time.perf_counter() - start
    p50, p99 = np.percentile(np.asarray(latencies) * 1e3, [50, 99])
    return {"events": events * bodies, "seconds": wall, "events_per_s": events * bodies / wall,
            "requests_per_s": bodies / wall, "latency_ms_p50": float(p50),
            "latency_ms_p99": float(p99), "failed": len(failed),
            "first_failure": failed[0].decode("latin-1") if failed else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--memories", type=int, required=True)
    parser.add_argument("--events-per-body", type=int, default=1_000)
    parser.add_argument("--bodies", type=int, default=400)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--stream", type=int, default=0, metavar="WINDOW",
                        help="send over /v1/feedback/stream (WebSocket), up to WINDOW batches "
                             "unanswered a connection, instead of one POST each")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.port, args.token, args.memories, args.events_per_body,
                             args.bodies, args.connections, args.stream))
    print(json.dumps(result))
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
