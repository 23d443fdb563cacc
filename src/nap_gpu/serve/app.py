"""The HTTP API (FastAPI): feedback in, weights and rankings out, health and metrics.

Every request is parsed and validated here, completely, before anything is queued: a
rejected request gets a 4xx with a JSON body naming the problem, and changes nothing. Writes
then go through the single writer (``writer.py``) and are answered once they are in the log.
Bodies are read by hand (not by FastAPI's models) so that the binary form, the size limit and
the error messages are ours; the OpenAPI schema documents both body forms.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__, _inputs
from .errors import Rejected
from .observability import method_label, request_id, throttled
from .stream import serve_stream
from .writer import Op, QueueFullError, WriterStoppedError

__all__ = ["Rejected", "create_app"]

log = logging.getLogger("nap_gpu.serve")

BINARY = "application/octet-stream"
_RID_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
#: An id in a query: ASCII digits, optionally negative (then refused as outside [0, n)).
#: int() alone also takes "1_0", "+5", " 5" and other scripts' digits.
_QUERY_ID = re.compile(r"-?[0-9]+")


# -- request parsing ---------------------------------------------------------------------------
async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejected(413, "too_large", f"body of {int(declared):,} bytes exceeds the limit "
                                         f"of {limit:,} bytes (NAP_MAX_BODY_BYTES)")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Rejected(413, "too_large", f"body exceeds the limit of {limit:,} bytes "
                                                 "(NAP_MAX_BODY_BYTES)")
            chunks.append(chunk)
    except ClientDisconnect:  # the client left, or the body deadline closed the connection
        raise Rejected(408, "request_timeout", "the body did not arrive in time "
                                               "(NAP_BODY_TIMEOUT_S)") from None
    return b"".join(chunks)


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list) -> dict:
    """A JSON object whose keys are unique: json would silently keep the last of two."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def parse_json(body: bytes, fields: dict[str, bool]) -> dict:
    """A JSON object with only the given fields (name -> required); 400/422 otherwise."""
    try:
        obj = json.loads(body or b"{}", parse_constant=_no_constants,
                         object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise Rejected(422, "duplicate_field", f"field {exc.args[0]!r} is given twice") from None
    except RecursionError:  # json's decoder recurses per nesting level
        raise Rejected(400, "malformed_json", "the body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Rejected(422, "wrong_type", f"the body must be a JSON object, got "
                                          f"{type(obj).__name__}")
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        raise Rejected(422, "unknown_field", f"unknown field(s) {unknown}; expected "
                                             f"{sorted(fields)}")
    missing = [name for name, required in fields.items() if required and name not in obj]
    if missing:
        raise Rejected(422, "missing_field", f"missing field(s) {missing}")
    return obj


def _numbers(values, name: str):
    """A JSON list (or one number) as given, refusing booleans, which NumPy would take as 0/1."""
    if isinstance(values, bool) or (isinstance(values, list)
                                    and any(isinstance(v, bool) for v in values)):
        raise Rejected(422, "wrong_type", f"{name} must be numbers, not booleans")
    if not isinstance(values, (list, int, float)):
        raise Rejected(422, "wrong_type", f"{name} must be a list of numbers, got "
                                          f"{type(values).__name__}")
    return values


def _too_big(value: int | float, name: str) -> Rejected:  # an int float() overflowed on
    return Rejected(422, "nonfinite", f"{name}: the integer {str(value)[:12]}... "
                                      f"({len(str(abs(value)))} digits) is beyond any float")


def _floats(values, name: str):
    """JSON numbers (a list, or one) as float64. JSON does not tell 1 from 1.0 (JavaScript
    writes 1.0 as 1), so integers are numbers like any other; one too large for a float is
    refused like 1e999, as not finite."""
    values = _numbers(values, name)
    if isinstance(values, int):
        try:
            return float(values)
        except OverflowError:
            raise _too_big(values, name) from None
    if isinstance(values, float):
        return values
    try:
        arr = np.asarray(values)
    except (ValueError, OverflowError) as exc:  # ragged, or nested beyond NumPy's 32 dims
        raise Rejected(422, "invalid_value", f"{name} must be a flat list of numbers: "
                                             f"{exc}") from None
    if arr.dtype.kind == "f":
        return arr
    if arr.dtype.kind in "iu":
        return arr.astype(np.float64)
    if arr.dtype != object:
        raise Rejected(422, "wrong_type", f"{name} must be numbers, got {arr.dtype.name} values")
    out = []
    for i, v in enumerate(arr.reshape(-1).tolist() if arr.ndim else [arr.item()]):
        if isinstance(v, list):
            raise Rejected(422, "invalid_value", f"{name} must be a flat list of numbers")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise Rejected(422, "wrong_type", f"{name}[{i}] = {v!r} is not a number")
        try:
            out.append(float(v))
        except OverflowError:
            raise _too_big(v, f"{name}[{i}]") from None
    return np.asarray(out, np.float64).reshape(arr.shape)


def validated_events(ids, quality, n: int, host_backend):
    """(int64 ids, float32 qualities) checked by the engine's own rules, as 422s."""
    try:
        ids_, q = _inputs.events(ids, quality, n, host_backend, check_finite=True)
    except IndexError as exc:
        raise Rejected(422, "unknown_id", str(exc)) from None
    except TypeError as exc:
        raise Rejected(422, "wrong_type", str(exc)) from None
    except ValueError as exc:
        reason = "nonfinite" if "finite" in str(exc) else "invalid_value"
        raise Rejected(422, reason, str(exc)) from None
    return np.ascontiguousarray(ids_), np.ascontiguousarray(q, dtype=np.float32)


def feedback_events(body: bytes, content_type: str, n: int, host_backend):
    """The events of a feedback body: JSON ``{"ids": [...], "quality": [...] | q}`` or binary
    (m little-endian int64 ids, then m little-endian float32 qualities)."""
    if content_type == BINARY:
        if len(body) % 12:
            raise Rejected(400, "malformed_binary",
                           f"a binary body holds m int64 ids then m float32 qualities (12 bytes "
                           f"per event); {len(body)} bytes is not a multiple of 12")
        m = len(body) // 12
        ids = np.frombuffer(body, "<i8", m)
        quality = np.frombuffer(body, "<f4", m, offset=8 * m)
    elif content_type == "application/json":
        obj = parse_json(body, {"ids": True, "quality": True})
        ids, quality = _numbers(obj["ids"], "ids"), _floats(obj["quality"], "quality")
        if not isinstance(ids, list):
            raise Rejected(422, "wrong_type", "ids must be a list of integers")
    else:
        raise Rejected(415, "unsupported_media_type",
                       f"Content-Type must be application/json or {BINARY}, got "
                       f"{content_type or 'none'!r}")
    return validated_events(ids, quality, n, host_backend)


def _ids_query(text: str | None, n: int, limit: int, host_backend) -> np.ndarray:
    if not text:
        raise Rejected(422, "missing_field", "give ids as ?ids=3,17,42")
    parts = text.split(",")
    if len(parts) > limit:
        raise Rejected(422, "too_many_ids", f"{len(parts):,} ids; at most {limit:,} a request "
                                            "(NAP_MAX_READ_IDS)")
    try:
        if not all(_QUERY_ID.fullmatch(p) for p in parts):
            raise ValueError
        values = [int(p, 10) for p in parts]
    except ValueError:  # also beyond Python's 4,300 digits
        raise Rejected(422, "wrong_type", f"ids must be comma-separated integers, got "
                                          f"{text[:80]!r}") from None
    return validated_events(values, 0.0, n, host_backend)[0]


# -- the app -----------------------------------------------------------------------------------
class Observe:
    """Each request's id (the client's if sane, else a fresh one: in the response's
    X-Request-ID, the log lines and error bodies), its metrics and its log line.

    Plain ASGI: Starlette's ``@app.middleware("http")`` (BaseHTTPMiddleware) runs every request
    in a task group of its own and streams the body and the response through memory channels;
    without it 1K-event feedback went from 468 to 599 requests/s (docs/serving.md)."""

    def __init__(self, app, state) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        rid = (given.decode("latin-1") if 0 < len(given) <= 64 and set(given) <= _RID_BYTES
               else os.urandom(16).hex())  # uuid4().hex's form, a quarter of its cost
        scope.setdefault("state", {})["request_id"] = rid  # request.state.request_id
        context = request_id.set(rid)
        start = time.perf_counter()
        status = 0

        async def send_with_id(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()),
                                      (b"x-request-id", rid.encode("latin-1"))]
            await send(message)
        try:
            await self.app(scope, receive, send_with_id)
            self._record(scope, status, time.perf_counter() - start)
        finally:
            request_id.reset(context)

    def _record(self, scope, status: int, elapsed: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        method = method_label(scope["method"])
        metrics = self.state.metrics
        metrics.requests.labels(route, method, str(status)).inc()
        metrics.request_seconds.labels(route).observe(elapsed)
        log.info("request", extra={"method": method, "route": route, "status": status,
                                   "duration_ms": round(elapsed * 1e3, 3)})


class FastRoute:
    """One route answered in front of FastAPI's routing: ``POST /v1/feedback``, the route
    clients call at a high rate. Its handler is the FastAPI route's own endpoint (which stays
    registered: it is the OpenAPI schema's entry, and other methods still get their 405);
    what is skipped is the per-request machinery around it (the router's matching, the
    exception and exit-stack wrappers, dependency solving, response serialisation): 1K-event
    bodies 0.57-0.72 -> 0.90-0.99 M events/s (docs/serving.md). Rejected requests get
    ``error``'s body, as the app's handler gives them; any other exception goes on to the app's
    500 handler."""

    def __init__(self, app, method: str, route, error) -> None:
        self.app, self.method, self.route, self.error = app, method, route, error

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] != "http" or scope["path"] != self.route.path
                or scope["method"] != self.method):
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # as the router sets it: Observe's route label
        try:
            response = JSONResponse(await self.route.endpoint(Request(scope, receive)))
        except Rejected as exc:
            response = self.error(exc.status, exc.reason, exc.message, exc.headers)
        await response(scope, receive, send)


def create_app(state) -> FastAPI:
    """The API over a ``ServiceState`` (engine, writer, metrics, health, settings)."""
    settings = state.settings
    app = FastAPI(title="nap_gpu", version=__version__,
                  description="Feedback-weighted memories: post feedback events, read weights, "
                              "rank candidates by similarity × weight. Writes need a bearer "
                              "token; reads too unless NAP_PUBLIC_READS is set.")
    app.state.nap = state

    def authorize(request: Request | WebSocket, kind: str) -> None:
        tokens = state.tokens  # read per request: a reload swaps the whole tuple
        if not tokens or (kind == "read" and settings.public_reads):
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Rejected(401, "unauthorized", "a bearer token is required (Authorization: "
                                                "Bearer <token>)", {"WWW-Authenticate": "Bearer"})
        given_bytes, match = given.encode(), False
        for token in tokens:  # every one compared, in constant time: no early exit
            match |= secrets.compare_digest(given_bytes, token.encode())
        if not match:
            raise Rejected(401, "unauthorized", "the bearer token is wrong",
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})

    def submit(op: Op):  # queued: the writer's future
        try:
            return state.writer.submit(op)
        except QueueFullError as exc:
            raise Rejected(503, "queue_full", str(exc), {"Retry-After": "1"}) from None
        except WriterStoppedError as exc:
            raise Rejected(503, "unavailable", str(exc)) from None

    async def result(future) -> Any:  # the op's result: (sequence, index), a sequence, a path
        try:
            return await asyncio.wrap_future(future)
        except (ValueError, TypeError, IndexError) as exc:  # validated: should not happen
            raise Rejected(422, "invalid_value", str(exc)) from None
        except Exception as exc:  # the log or the disk: nothing of this request was applied
            raise Rejected(503, "write_failed", f"the write was not applied: {exc}") from None

    async def write(op: Op) -> Any:
        return await result(submit(op))

    # -- errors (the middleware is added once the routes exist: below) -----------------------
    def error(status: int, reason: str, message: str, headers=None) -> JSONResponse:
        state.metrics.rejected.labels(reason).inc()
        return JSONResponse({"error": reason, "detail": message, "request_id": request_id.get()},
                            status_code=status, headers=headers)

    @app.exception_handler(Rejected)
    async def rejected(request: Request, exc: Rejected):
        return error(exc.status, exc.reason, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, "invalid_value", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error(exc.status_code, reason, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):  # a bug: say so, in JSON, and log it
        rid = getattr(request.state, "request_id", None)
        log.error("unhandled error", exc_info=exc, extra={"request_id": rid})
        state.metrics.rejected.labels("internal").inc()
        return JSONResponse({"error": "internal", "detail": "internal error; see the server log",
                             "request_id": rid}, status_code=500)

    # -- probes and metrics -------------------------------------------------------------------
    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    def healthz():
        return {"status": "alive"}

    @app.get("/readyz", tags=["operations"],
             summary="Ready: state loaded, writer running, state directory writable",
             responses={503: {"description": "not ready; the body says which check failed"}})
    def readyz():
        checks = state.readiness()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/health", tags=["operations"],
             summary="Alive and ready in one answer (for checkers that probe one path), with "
                     "the last health check's verdict",
             responses={503: {"description": "not ready; the body says which check failed"}})
    def health():
        checks = state.readiness()
        ok = all(checks.values())
        last = state.last_health
        return JSONResponse({"status": "ok" if ok else "unavailable", "ready": ok,
                             "checks": checks, "healthy": None if last is None else last["ok"]},
                            status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (text format)",
             response_class=Response)
    def metrics(request: Request):
        authorize(request, "read")
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- writes -------------------------------------------------------------------------------
    @app.post("/v1/feedback", tags=["writes"], summary="Apply a batch of feedback events, in order",
              openapi_extra=_FEEDBACK_BODY, responses=_ERRORS)
    async def feedback(request: Request):
        authorize(request, "write")
        body = await read_body(request, settings.max_body_bytes)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        return await answer(queue_feedback(body, content_type))

    def queue_feedback(body: bytes, content_type: str):
        """A feedback body validated and queued: its answer now (nothing to apply), or
        (events, the writer's future)."""
        ids, q = feedback_events(body, content_type, state.engine.n, state.host_backend)
        if ids.size == 0:  # nothing applied, so no place in the order
            return {"accepted": 0, "sequence": state.engine.sequence, "index": None}
        future, events = submit(Op("feedback", ids=ids, quality=q)), int(ids.size)
        future.add_done_callback(  # counted once applied
            lambda done: done.exception() is None and state.metrics.events.inc(events))
        return events, future

    async def answer(queued) -> dict:
        """The answer to a queued feedback body, once it is in the log."""
        if isinstance(queued, dict):
            return queued
        events, future = queued
        sequence, index = await result(future)
        return {"accepted": events, "sequence": sequence, "index": index}

    @app.websocket("/v1/feedback/stream")
    async def feedback_stream(websocket: WebSocket):
        """Feedback batches over one WebSocket (serve/stream.py): a message a batch, an
        answer a message, in order."""
        try:
            authorize(websocket, "write")
        except Rejected as exc:
            state.metrics.rejected.labels(exc.reason).inc()
            await websocket.close(code=1008, reason=exc.message[:120])  # before accept: 403
            return
        guard = state.guard
        if guard is not None and not guard.stream_opened():
            state.metrics.rejected.labels("too_many_connections").inc()
            await websocket.accept()  # so that the client reads the close code
            await websocket.close(code=1013, reason="every connection slot is in use")
            return
        try:
            await websocket.accept()
            messages, events = await serve_stream(websocket, accept_batch, answer, stream_error)
            log.info("feedback stream closed", extra={"messages": messages, "events": events})
        finally:
            if guard is not None:
                guard.stream_closed()

    def accept_batch(body: bytes, binary: bool):  # (a message's size: uvicorn's ws_max_size)
        return queue_feedback(body, BINARY if binary else "application/json")

    def stream_error(exc: Rejected) -> dict:
        state.metrics.rejected.labels(exc.reason).inc()
        return {"error": exc.reason, "detail": exc.message, "status": exc.status}

    @app.post("/v1/decay", tags=["writes"], summary="Passive decay, k times, of every memory",
              openapi_extra=_json_body({"k": {"type": "integer", "minimum": 0,
                                              "maximum": 1_000_000, "default": 1}}),
              responses=_ERRORS)
    async def decay(request: Request):
        authorize(request, "write")
        obj = parse_json(await read_body(request, settings.max_body_bytes), {"k": False})
        k = obj.get("k", 1)
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= 1_000_000:
            raise Rejected(422, "invalid_value", f"k must be an integer in [0, 1000000], got {k!r}")
        return {"sequence": await write(Op("decay", k=k))}

    @app.post("/v1/snapshot", tags=["writes"], summary="Write a snapshot of the state now",
              responses=_ERRORS)
    async def snapshot_now(request: Request):
        authorize(request, "write")
        path = await write(Op("snapshot"))
        return {"snapshot": path.name, "sequence": state.engine.snapshot_sequence}

    # -- reads --------------------------------------------------------------------------------
    @app.get("/v1/weights", tags=["reads"], summary="Weights of the given ids",
             responses=_ERRORS)
    def weights(request: Request, ids: str | None = None):
        authorize(request, "read")
        chosen = _ids_query(ids, state.engine.n, settings.max_read_ids, state.host_backend)
        with state.writer.lock:
            values = _gather(state.engine, chosen)
            sequence = state.engine.sequence
        return {"ids": chosen.tolist(), "weights": values.tolist(), "sequence": sequence}

    @app.post("/v1/rank", tags=["reads"],
              summary="Top-k candidates by similarity × weight (float32 product)",
              openapi_extra=_json_body({
                  "ids": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                  "similarities": {"type": "array", "items": {"type": "number"}},
                  "k": {"type": "integer", "minimum": 1, "default": 10}},
                  required=["ids", "similarities"]),
              responses=_ERRORS)
    async def rank(request: Request):
        authorize(request, "read")
        obj = parse_json(await read_body(request, settings.max_body_bytes),
                         {"ids": True, "similarities": True, "k": False})
        k = obj.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise Rejected(422, "invalid_value", f"k must be an integer >= 1, got {k!r}")
        ids = _numbers(obj["ids"], "ids")
        if not isinstance(obj["similarities"], list):
            raise Rejected(422, "wrong_type", "ids and similarities must be lists")
        sims = _floats(obj["similarities"], "similarities")
        if not isinstance(ids, list):
            raise Rejected(422, "wrong_type", "ids and similarities must be lists")
        if len(ids) > settings.max_read_ids:
            raise Rejected(422, "too_many_ids", f"{len(ids):,} candidates; at most "
                                                f"{settings.max_read_ids:,} (NAP_MAX_READ_IDS)")
        chosen, sim = validated_events(ids, sims, state.engine.n, state.host_backend)
        return await asyncio.to_thread(_rank, state, chosen, sim, k)

    @app.get("/v1/stats", tags=["reads"], summary="Metrics and health verdict of the last check",
             responses=_ERRORS)
    def stats(request: Request):
        authorize(request, "read")
        eng = state.engine
        return {"n": eng.n, "backend": eng.backend, "sequence": eng.sequence,
                "snapshot_sequence": eng.snapshot_sequence,
                "snapshot_age_s": None if eng.snapshot_time is None
                else round(time.time() - eng.snapshot_time, 3),
                "queued_events": state.writer.queued_events, "labels": state.has_labels,
                # float32 values, shortest form (0.05, not 0.05000000074505806)
                "params": dict(zip(("lr", "gate", "decay"),
                                   (float(str(v)) for v in eng.params.float32()))),
                "decay_every_s": settings.decay_every_s or None,
                "last_write_error": state.writer.last_error, "health": state.last_health}

    # -- middleware: the last added runs first -------------------------------------------------
    app.add_middleware(FastRoute, method="POST", route=_route(app, "POST", "/v1/feedback"),
                       error=error)
    app.add_middleware(Observe, state=state)
    return app


def _route(app: FastAPI, method: str, path: str):
    return next(r for r in app.routes if getattr(r, "path", None) == path
                and method in getattr(r, "methods", ()))


def _gather(engine, ids: np.ndarray) -> np.ndarray:
    """Host float32 weights of ``ids`` (a device gather, then a small copy, on cuda)."""
    w = engine.weights
    if isinstance(w, np.ndarray):
        return w[ids]
    import cupy  # noqa: PLC0415 - the cuda backend's array type

    return cupy.asnumpy(w[cupy.asarray(ids)])


def _rank(state, ids: np.ndarray, sim: np.ndarray, k: int) -> dict:
    with state.writer.lock:
        w = _gather(state.engine, ids)
        sequence = state.engine.sequence
    scores = sim * w  # float32 × float32, rounded once
    order = np.argsort(-scores, kind="stable")[:k]  # ties: the earlier candidate first
    return {"ids": ids[order].tolist(), "scores": scores[order].tolist(), "sequence": sequence}


# -- OpenAPI documentation of the hand-read bodies ---------------------------------------------
def _json_body(properties: dict, required: list[str] | None = None) -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return {"requestBody": {"required": bool(required),
                            "content": {"application/json": {"schema": schema}}}}


_FEEDBACK_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {
        "type": "object", "additionalProperties": False, "required": ["ids", "quality"],
        "properties": {
            "ids": {"type": "array", "items": {"type": "integer", "minimum": 0},
                    "description": "memory ids; an id may repeat: its events apply in order"},
            "quality": {"description": "one quality per id, or one for all (finite; the "
                                       "law clamps values outside [0, 1])",
                        "oneOf": [{"type": "array", "items": {"type": "number"}},
                                  {"type": "number"}]}}}},
    BINARY: {"schema": {"type": "string", "format": "binary",
                        "description": "m little-endian int64 ids, then m little-endian "
                                       "float32 qualities (12·m bytes)"}},
}}}

_ERRORS: dict[int | str, dict[str, Any]]  # FastAPI's responses=
_ERRORS = {code: {"description": text, "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}, "detail": {"type": "string"},
                                     "request_id": {"type": "string"}}}}}}
           for code, text in ((400, "malformed body"), (401, "missing or wrong bearer token"),
                              (413, "body too large"), (415, "unsupported Content-Type"),
                              (422, "invalid input (the detail names it)"),
                              (503, "not applied: shutting down, queue full or disk failure"))}


def disk_writable_probe(directory, period: float = 1.0):
    """``probe() -> bool``: can a file be created in ``directory``? (cached for ``period`` s)"""
    path = os.path.join(directory, f".readyz-{os.getpid()}")

    def probe() -> bool:
        try:
            with open(path, "wb") as fh:
                fh.write(b"ok")
            os.unlink(path)
            return True
        except OSError:
            return False
    return throttled(probe, period)
