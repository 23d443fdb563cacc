"""Connections: deadlines, a cap, and what to do when file descriptors run out.

uvicorn's HTTP protocols (httptools' and h11's) arm no timer until a first response is sent,
so a client that connects and sends nothing (or one header byte at a time) holds a descriptor
for ever: 1,100 idle connections exhausted 1,024 descriptors and stalled every other client.
Here, on either parser (``Guard.protocol``):

* a request head must arrive within ``header_timeout`` of the connection (or of the previous
  response), its body within ``body_timeout`` of the head; otherwise the connection gets a
  408 (if it sent anything) and is closed;
* at most ``cap`` connections are open. A new one past the cap closes the connection that has
  waited longest for a request head (an idle one: nothing of it is in flight), so probes and
  real clients still get in while idle connections hold every slot; only when every slot
  runs a request is the new one refused (503);
* a request head is at most ``MAX_HEAD_BYTES`` (h11 counts it itself; for httptools, which has
  no limit, the bytes of the reads after the one a head began in are counted: a head is
  refused, 431, within one read, at most 256 KiB, of the limit);
* the cap leaves room under RLIMIT_NOFILE for the state's files and for the connections
  accepted in one event-loop pass before any is looked at (``ACCEPT_BURST``);
* asyncio's "socket.accept() out of system resource" (logged once per failed accept, ~6,400
  lines a second when descriptors ran out) is logged at most every ``_ACCEPT_LOG_PERIOD`` s,
  with the number of failures in between.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import resource
import socket
import time
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["ACCEPT_BURST", "MAX_HEAD_BYTES", "Guard", "connection_cap", "http_protocol_base",
           "quiet_accept_errors"]

log = logging.getLogger("nap_gpu.serve")

#: Connections accepted in one pass of the event loop (asyncio's per-pass accept count is
#: the listen backlog passed to create_server; the kernel's queue is made longer afterwards).
ACCEPT_BURST = 32
#: Descriptors kept free beside the connections: the state's files, logs, probes.
_RESERVE = 32
_ACCEPT_LOG_PERIOD = 10.0
#: A request head (request line + headers) larger than this is refused (h11's default, made
#: explicit: our requests need a few hundred bytes).
MAX_HEAD_BYTES = 16 * 1024
#: Why a connection was closed by the service (the label values of nap_connections_closed).
CLOSE_REASONS = ("idle_timeout", "header_timeout", "body_timeout", "evicted", "refused")

def _reply(status: bytes, reason: str, detail: str, extra: bytes = b"") -> bytes:
    """A whole HTTP response, written by hand: the connection is closed right after it."""
    body = f'{{"error": "{reason}", "detail": "{detail}"}}'.encode()
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + extra + b"content-length: %d\r\n\r\n" % len(body) + body)


_408 = _reply(b"408 Request Timeout", "request_timeout", "the request was not sent in time")
_431 = _reply(b"431 Request Header Fields Too Large", "head_too_large",
              f"the request head exceeds {MAX_HEAD_BYTES:,} bytes")
_503 = _reply(b"503 Service Unavailable", "too_many_connections",
              "every connection slot is running a request", b"retry-after: 1\r\n")


def connection_cap(wanted: int) -> tuple[int, int]:
    """(the connection cap, RLIMIT_NOFILE's soft limit): the soft limit is raised to the hard
    one first (the default soft limit, often 1,024, is a compatibility relic)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    room = soft - in_use - _RESERVE - 4 * ACCEPT_BURST  # accepted before any is looked at
    if room < 16:
        raise ValueError(f"RLIMIT_NOFILE is {soft}, too low to serve: raise it (ulimit -n) to "
                         f"at least {soft - room + 16}")
    return min(wanted, room), soft


class Guard:
    """The open connections, the idle ones in the order they became idle, and the timers."""

    def __init__(self, *, cap: int, header_timeout: float, body_timeout: float) -> None:
        self.cap, self.header_timeout, self.body_timeout = cap, header_timeout, body_timeout
        self.live: set = set()
        self.streams = 0  # upgraded to WebSocket (feedback streams): outside the timers
        self.idle: collections.OrderedDict = collections.OrderedDict()  # oldest first
        self.closed = dict.fromkeys(CLOSE_REASONS, 0)
        self.accept_errors = 0
        self._accept_logged_at = -float("inf")
        self._accept_unlogged = 0

    def protocol(self, parser: str = "auto") -> type[_Guarded]:
        """The uvicorn protocol class that reports to this guard, on ``parser``: "httptools"
        (uvicorn's C parser), "h11" (pure Python), or "auto" (httptools where installed)."""
        base = http_protocol_base(parser)
        h11 = base is H11Protocol
        mixins = (_Guarded,) if h11 else (_HeadLimited, _Guarded)
        return type(f"Guarded{base.__name__}", (*mixins, base),
                    {"_nap_guard": self, "nap_parser": "h11" if h11 else "httptools"})

    # -- the protocol's events ------------------------------------------------------------
    def opened(self, conn) -> None:
        if len(self.live) + self.streams >= self.cap:
            oldest = next(iter(self.idle), None)
            if oldest is None:  # every slot runs a request: refuse the newcomer
                self._close(conn, "refused", _503)
                return
            self._close(oldest, "evicted")
        self.live.add(conn)
        self.waiting(conn)

    def stream_opened(self) -> bool:
        """A feedback stream takes a slot of the cap, closing the connection that has waited
        longest for a request head if need be (False: every slot runs a request or a
        stream). Streams themselves are never evicted: each is a write in progress."""
        if len(self.live) + self.streams >= self.cap:
            oldest = next(iter(self.idle), None)
            if oldest is None:
                self.closed["refused"] += 1
                return False
            self._close(oldest, "evicted")
        self.streams += 1
        return True

    def stream_closed(self) -> None:
        self.streams -= 1

    def waiting(self, conn) -> None:
        """``conn`` waits for a request head (new, or after a response)."""
        self._cancel(conn)
        conn._nap_partial = False
        self.idle[conn] = None
        self.idle.move_to_end(conn)
        conn._nap_timer = conn.loop.call_later(self.header_timeout, self._head_late, conn)

    def request_started(self, conn) -> None:
        self.idle.pop(conn, None)
        self._cancel(conn)
        cycle = conn.cycle
        if cycle is not None and cycle.more_body:
            conn._nap_timer = conn.loop.call_later(self.body_timeout, self._body_late, conn,
                                                   cycle)

    def body_done(self, conn) -> None:
        if conn not in self.idle:  # idle: answered early, the rest of a body on its way
            self._cancel(conn)

    def head_too_large(self, conn) -> None:
        log.warning("request head too large: connection closed",
                    extra={"limit_bytes": MAX_HEAD_BYTES})
        self.forget(conn)
        _hang_up(conn, _431)

    def forget(self, conn) -> None:
        self._cancel(conn)
        self.live.discard(conn)
        self.idle.pop(conn, None)

    # -- timers -----------------------------------------------------------------------------
    def _head_late(self, conn) -> None:
        conn._nap_timer = None
        if conn in self.idle:
            if conn._nap_partial:
                self._close(conn, "header_timeout", _408)
            else:
                self._close(conn, "idle_timeout")

    def _body_late(self, conn, cycle) -> None:
        conn._nap_timer = None
        if conn.cycle is cycle and cycle.more_body:
            # The handler waits for the rest of the body: closing the transport tells it
            # the client is gone (it answers 408 to no one); the client gets this 408.
            self._close(conn, "body_timeout", None if cycle.response_started else _408)

    def _cancel(self, conn) -> None:
        if conn._nap_timer is not None:
            conn._nap_timer.cancel()
            conn._nap_timer = None

    def _close(self, conn, reason: str, reply: bytes | None = None) -> None:
        self.forget(conn)
        self.closed[reason] += 1
        _hang_up(conn, reply)

    # -- accept errors ----------------------------------------------------------------------
    def accept_failed(self, exc: BaseException | None) -> None:
        self.accept_errors += 1
        now = time.monotonic()
        if now - self._accept_logged_at < _ACCEPT_LOG_PERIOD:
            self._accept_unlogged += 1
            return
        log.error("accept() out of resources: new connections wait", extra={
            "error": repr(exc), "open_connections": len(self.live),
            "failures_since_last_line": self._accept_unlogged + 1})
        self._accept_logged_at, self._accept_unlogged = now, 0


def _hang_up(conn, reply: bytes | None) -> None:
    """Close ``conn``'s transport, after ``reply`` if given (nothing if already closing)."""
    transport = conn.transport
    if transport is None or transport.is_closing():
        return
    if reply is not None:
        transport.write(reply)
    transport.close()


def http_protocol_base(parser: str = "auto") -> type:
    """uvicorn's HTTP protocol class for ``parser`` ("auto": httptools where installed)."""
    if parser == "h11":
        return H11Protocol
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: PLC0415
    except ImportError:  # httptools is not installed
        if parser == "httptools":
            raise
        return H11Protocol
    return HttpToolsProtocol


if TYPE_CHECKING:
    class _UvicornHTTP(asyncio.Protocol):
        """What the mixins below use of uvicorn's HTTP protocols (h11's and httptools')."""

        cycle: Any
        transport: Any
        loop: asyncio.AbstractEventLoop

        def handle_websocket_upgrade(self, *event: Any) -> None: ...
        def on_response_complete(self) -> None: ...
        def on_message_begin(self) -> None: ...  # httptools' parser callbacks
        def on_headers_complete(self) -> None: ...
else:
    _UvicornHTTP = object


class _Guarded(_UvicornHTTP):
    """Reports a uvicorn HTTP protocol's connection and request events to its Guard."""

    _nap_guard: Guard
    nap_parser: str  # "httptools" or "h11": set on the class Guard.protocol builds
    _nap_timer = None
    _nap_partial = False

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        _no_delay(transport)
        self._nap_guard.opened(self)

    def connection_lost(self, exc) -> None:
        self._nap_guard.forget(self)
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, *event) -> None:
        # The transport goes to uvicorn's WebSocket protocol and this one never hears of it
        # again (no connection_lost): without this, every upgrade would hold a slot of the cap
        # for ever. The stream counts itself (stream_opened).
        self._nap_guard.forget(self)
        super().handle_websocket_upgrade(*event)

    def data_received(self, data: bytes) -> None:
        guard, cycle = self._nap_guard, self.cycle
        if self in guard.idle:
            self._nap_partial = True
        super().data_received(data)
        if self.cycle is not cycle:
            guard.request_started(self)
        elif cycle is not None and not cycle.more_body:
            guard.body_done(self)

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if self.cycle is not cycle:  # h11: a pipelined request starts now
            self._nap_guard.request_started(self)
        elif not cycle.response_complete:  # httptools: a pipelined request, started as parsed
            pass
        elif not self.transport.is_closing():
            self._nap_guard.waiting(self)


class _HeadLimited(_UvicornHTTP):
    """A head-size limit for httptools, which has none (h11's is the server's config): the
    bytes that arrive while a head is incomplete, counted from the read after the one that
    began it (that read may also end a pipelined body, which must not count)."""

    _nap_guard: Guard
    _nap_head_bytes = -1  # -1: no head incomplete

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._nap_head_bytes = 0

    def on_headers_complete(self) -> None:
        self._nap_head_bytes = -1
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._nap_head_bytes >= 0:
            self._nap_head_bytes += len(data)
        super().data_received(data)
        if self._nap_head_bytes > MAX_HEAD_BYTES:
            self._nap_head_bytes = -1
            self._nap_guard.head_too_large(self)


def _no_delay(transport) -> None:
    """TCP_NODELAY: uvicorn writes a response's head and body separately, and with Nagle the
    body waits for the client's delayed ACK (~40 ms a request). asyncio sets it only on
    sockets whose proto is IPPROTO_TCP, which uvicorn's bind_socket() does not give."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def quiet_accept_errors(loop, guard: Guard) -> None:
    """Route asyncio's accept() resource errors to ``guard`` (rate-limited); the rest as before."""
    previous = loop.get_exception_handler()

    def handler(loop, context) -> None:
        if context.get("message") == "socket.accept() out of system resource":
            guard.accept_failed(context.get("exception"))
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)
    loop.set_exception_handler(handler)
