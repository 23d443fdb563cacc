"""The HTTP service: a real ``nap-gpu serve`` process on loopback, real HTTP clients.

Every write is checked against a local Engine fed the same events in the same order (the
service's weights must be bit-identical); every rejected request must change nothing (the
log sequence and every weight are compared before and after).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import nap_gpu as nap

from conftest import assert_same_bits

httpx = pytest.importorskip("httpx", reason="httpx is not installed (test extra)")
pytest.importorskip("fastapi", reason="the serve extra is not installed")

N = 1000
TOKEN = "test-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``nap-gpu serve`` in a child process, configured by environment variables."""

    started: list[subprocess.Popen] = []  # every process started (see _no_leftover_servers)

    def __init__(self, state_dir: pathlib.Path, *, memories: int = N, nofile: int | None = None,
                 **env: str) -> None:
        self.state_dir, self.port, self.nofile = state_dir, free_port(), nofile
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = state_dir.parent / f"{state_dir.name}-server.log"
        self.env = {**os.environ, "NAP_STATE_DIR": str(state_dir), "NAP_MEMORIES": str(memories),
                    "NAP_PORT": str(self.port), "NAP_API_TOKEN": TOKEN, "NAP_SEED": "0",
                    "NAP_STATS_INTERVAL": "0.5", **env}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> Server:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "nap_gpu.cli", "serve"],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=self._limits)
        Server.started.append(self.proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise AssertionError(f"server not ready in {timeout} s:\n{self.output()}")

    def _limits(self) -> None:
        """In the child: a lowered descriptor limit (soft and hard: the server cannot undo it)."""
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def events(self) -> list[dict]:
        return [json.loads(x) for x in self.output().splitlines() if x.startswith("{")]

    def logged(self, match, timeout: float = 10.0) -> bool:
        """Whether a log entry ``match``es within ``timeout``: a request's line is written after
        its response is sent, so a client can read the log before it lands."""
        deadline = time.monotonic() + timeout
        while not any(match(e) for e in self.events()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, **{"timeout": 30, **kwargs})


@pytest.fixture(autouse=True)
def _no_leftover_servers():
    """A test that fails before stopping its server must not leave it running (module-scoped
    servers start before this fixture, so they are not among the new ones)."""
    before = len(Server.started)
    yield
    for proc in Server.started[before:]:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("serve") / "state", NAP_MAX_READ_IDS=str(N)).start()
    yield srv
    if srv.proc.poll() is None:
        assert srv.stop() == 0, srv.output()


@pytest.fixture(scope="module")
def client(server):
    with server.client(headers=AUTH) as c:
        yield c


def everything(client) -> tuple[np.ndarray, int]:
    """All N weights (float32, exact: JSON carries float32 values losslessly) and the sequence."""
    got = client.get("/v1/weights", params={"ids": ",".join(map(str, range(N)))}).json()
    return np.asarray(got["weights"], np.float32), got["sequence"]


def replay(batches) -> np.ndarray:
    ref = nap.Engine(N, seed=0)
    for ids, q in batches:
        ref.update(np.asarray(ids), np.asarray(q, np.float32))
    return ref.to_numpy()


def binary(ids, q) -> bytes:
    return np.asarray(ids, "<i8").tobytes() + np.asarray(q, "<f4").tobytes()


# -- probes, schema, configuration ---------------------------------------------------------------
def test_probes_and_schema(server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "alive"}
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready == {"ready": True, "checks": {"state_loaded": True, "writer_running": True,
                                               "disk_writable": True}}
    schema = httpx.get(f"{server.url}/openapi.json").json()
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["checks"] == ready["checks"]
    for path in ("/v1/feedback", "/v1/decay", "/v1/snapshot", "/v1/weights", "/v1/rank",
                 "/v1/stats", "/healthz", "/readyz", "/health", "/metrics"):
        assert path in schema["paths"]
    content = schema["paths"]["/v1/feedback"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "application/octet-stream"}


def test_committed_openapi_schema_is_current(server):
    committed = pathlib.Path(__file__).resolve().parents[1] / "docs" / "openapi.json"
    served = httpx.get(f"{server.url}/openapi.json").json()
    assert json.loads(committed.read_text()) == served, (
        "docs/openapi.json is stale: regenerate it with "
        "`python -m nap_gpu.serve.openapi > docs/openapi.json`")


def test_no_token_refuses_a_public_address(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAP_")}
    done = subprocess.run([sys.executable, "-m", "nap_gpu.cli", "serve", "--host", "0.0.0.0",
                           "--state-dir", str(tmp_path / "s"), "--memories", "10"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no API token" in done.stderr and "0.0.0.0" in done.stderr
    assert not (tmp_path / "s").exists()  # refused before touching any state


def test_the_token_is_never_logged(server, client):
    client.get("/v1/stats")
    assert TOKEN not in server.output()
    assert '"api_token": "(set)"' in server.output()


# -- auth --------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers, why", [
    ({}, "required"), ({"Authorization": "Bearer wrong"}, "wrong"),
    ({"Authorization": f"Basic {TOKEN}"}, "required"), ({"Authorization": "Bearer"}, "required"),
], ids=["missing", "wrong", "other-scheme", "empty"])
def test_writes_and_reads_need_the_token(server, client, headers, why):
    before = everything(client)
    with server.client(headers=headers) as anon:
        for method, path, body in (("POST", "/v1/feedback", {"ids": [1], "quality": [0.9]}),
                                   ("POST", "/v1/decay", {"k": 1}), ("POST", "/v1/snapshot", None),
                                   ("GET", "/v1/weights?ids=1", None), ("GET", "/v1/stats", None),
                                   ("GET", "/metrics", None)):
            r = anon.request(method, path, json=body)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["error"] == "unauthorized" and why in r.json()["detail"]
        assert anon.get("/healthz").status_code == 200  # probes are always open
    after = everything(client)
    assert after[1] == before[1]
    assert_same_bits(after[0], before[0], "after refused requests")


def test_public_reads_open_gets_only(tmp_path):
    srv = Server(tmp_path / "s", NAP_PUBLIC_READS="true").start()
    try:
        with srv.client() as anon:
            assert anon.get("/v1/weights?ids=1").status_code == 200
            assert anon.get("/metrics").status_code == 200
            assert anon.post("/v1/feedback", json={"ids": [1], "quality": 0.9}).status_code == 401
    finally:
        assert srv.stop() == 0


# -- writes ------------------------------------------------------------------------------------
def test_feedback_json_and_binary_match_a_local_engine(server, client):
    start = everything(client)[0]
    rng = np.random.default_rng(3)
    batches = []
    for i in range(12):
        ids = rng.integers(0, N, 200)
        q = rng.random(200, dtype=np.float32) * np.float32(1.4) - np.float32(0.2)  # clamps too
        if i % 2:
            r = client.post("/v1/feedback", content=binary(ids, q),
                            headers={"Content-Type": "application/octet-stream"})
        else:
            r = client.post("/v1/feedback", json={"ids": ids.tolist(), "quality": q.tolist()})
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 200
        batches.append((ids, q))
    r = client.post("/v1/feedback", json={"ids": [5, 5, 6], "quality": 0.8})  # one for all
    batches.append(([5, 5, 6], [0.8] * 3))
    ref = nap.Engine(N, init=start)
    for ids, q in batches:
        ref.update(np.asarray(ids), np.asarray(q, np.float32))
    assert_same_bits(everything(client)[0], ref.to_numpy(), "service vs local engine")


def test_decay_and_snapshot(server, client):
    before, seq = everything(client)
    assert client.post("/v1/decay", json={"k": 3}).json()["sequence"] == seq + 1
    ref = nap.Engine(N, init=before)
    ref.decay(3)
    assert_same_bits(everything(client)[0], ref.to_numpy(), "after decay(3)")
    snap = client.post("/v1/snapshot").json()
    assert snap["sequence"] == seq + 1
    saved = nap.load(server.state_dir / snap["snapshot"])
    assert_same_bits(saved.to_numpy(), ref.to_numpy(), "the snapshot")


def test_rank_scores_and_orders_in_float32(server, client):
    w = everything(client)[0]
    ids = [7, 3, 3, 900, 42, 0]
    sims = [0.5, 0.25, 0.25, 1.0, -0.5, 0.0]
    got = client.post("/v1/rank", json={"ids": ids, "similarities": sims, "k": 4}).json()
    scores = np.float32(sims) * w[ids]
    order = np.argsort(-scores, kind="stable")[:4]
    assert got["ids"] == [ids[i] for i in order]
    assert_same_bits(np.float32(got["scores"]), scores[order], "rank scores")


def test_stats_and_metrics(server, client):
    time.sleep(0.6)  # one health check interval
    stats = client.get("/v1/stats").json()
    assert stats["n"] == N and stats["health"]["ok"] is True and stats["labels"] is False
    text = client.get("/metrics").text
    for name in ("nap_requests_total", "nap_request_duration_seconds_bucket", "nap_events_total",
                 "nap_apply_duration_seconds_bucket", "nap_fsync_duration_seconds_bucket",
                 "nap_weight_min", "nap_weight_max", "nap_saturation", "nap_healthy 1.0",
                 "nap_snapshot_age_seconds", "nap_wal_records_since_snapshot", "nap_memories 1000.0",
                 "nap_writer_up 1.0", "nap_ready 1.0", "nap_queue_depth",
                 "nap_bootstrap_duration_seconds", "nap_build_info{", "nap_open_connections",
                 "nap_connections_closed_total"):
        assert name in text, name
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (CI installs Debian's prometheus package)")
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _requests_counted(client, route: str, method: str, code: int) -> float:
    line = f'nap_requests_total{{code="{code}",method="{method}",route="{route}"}} '
    found = [ln for ln in client.get("/metrics").text.splitlines() if ln.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


def test_each_request_is_counted_under_its_route(client):
    """POST /v1/feedback is answered in front of FastAPI's router (app.FastRoute): its
    requests still count under their route, taken or refused, beside the router's own."""
    cases = [("POST", 200, {"json": {"ids": [1, 2], "quality": 0.75}}),
             ("POST", 422, {"json": {"ids": [1, N], "quality": 0.75}}),
             ("GET", 405, {})]
    before = [_requests_counted(client, "/v1/feedback", m, c) for m, c, _ in cases]
    for method, code, body in cases:
        assert client.request(method, "/v1/feedback", **body).status_code == code
    after = [_requests_counted(client, "/v1/feedback", m, c) for m, c, _ in cases]
    assert [a - b for a, b in zip(after, before)] == [1.0, 1.0, 1.0]


# -- bad input: a 4xx naming the problem, and nothing changes -------------------------------------
JSON = {"Content-Type": "application/json"}
BIN = {"Content-Type": "application/octet-stream"}
BAD_REQUESTS = [
    ("nan", "/v1/feedback", b'{"ids": [1], "quality": [NaN]}', JSON, 400, "malformed_json"),
    ("infinity", "/v1/feedback", b'{"ids": [1], "quality": Infinity}', JSON, 400, "malformed_json"),
    ("huge-float", "/v1/feedback", b'{"ids": [1], "quality": [1e999]}', JSON, 422, "nonfinite"),
    ("unknown-id", "/v1/feedback", b'{"ids": [1, 1000], "quality": 0.5}', JSON, 422, "unknown_id"),
    ("negative-id", "/v1/feedback", b'{"ids": [-1], "quality": 0.5}', JSON, 422, "unknown_id"),
    ("huge-id", "/v1/feedback", b'{"ids": [99999999999999999999999], "quality": 0.5}', JSON, 422,
     "unknown_id"),
    ("float-id", "/v1/feedback", b'{"ids": [1.5], "quality": 0.5}', JSON, 422, "wrong_type"),
    ("bool-id", "/v1/feedback", b'{"ids": [true, 2], "quality": 0.5}', JSON, 422, "wrong_type"),
    ("string-id", "/v1/feedback", b'{"ids": ["1"], "quality": 0.5}', JSON, 422, "wrong_type"),
    ("string-quality", "/v1/feedback", b'{"ids": [1], "quality": ["x"]}', JSON, 422, "wrong_type"),
    ("null-quality", "/v1/feedback", b'{"ids": [1], "quality": null}', JSON, 422, "wrong_type"),
    ("lengths", "/v1/feedback", b'{"ids": [1, 2], "quality": [0.5]}', JSON, 422, "invalid_value"),
    ("nested", "/v1/feedback", b'{"ids": [[1]], "quality": [0.5]}', JSON, 422, "invalid_value"),
    ("missing", "/v1/feedback", b'{"ids": [1]}', JSON, 422, "missing_field"),
    ("unknown-field", "/v1/feedback", b'{"ids": [1], "quality": 1, "x": 1}', JSON, 422,
     "unknown_field"),
    ("not-object", "/v1/feedback", b'[1, 2]', JSON, 422, "wrong_type"),
    ("malformed-json", "/v1/feedback", b'{"ids": [1', JSON, 400, "malformed_json"),
    ("malformed-binary", "/v1/feedback", b"\x00" * 13, BIN, 400, "malformed_binary"),
    ("binary-nan", "/v1/feedback", binary([1, 2], [0.5, np.nan]), BIN, 422, "nonfinite"),
    ("binary-bad-id", "/v1/feedback", binary([1, -5], [0.5, 0.5]), BIN, 422, "unknown_id"),
    ("media-type", "/v1/feedback", b"ids=1", {"Content-Type": "text/plain"}, 415,
     "unsupported_media_type"),
    ("too-large", "/v1/feedback", b"\x00" * (16 << 20) + b"\x00" * 12, BIN, 413, "too_large"),
    ("decay-k", "/v1/decay", b'{"k": -1}', JSON, 422, "invalid_value"),
    ("decay-k-float", "/v1/decay", b'{"k": 1.5}', JSON, 422, "invalid_value"),
    ("decay-field", "/v1/decay", b'{"steps": 1}', JSON, 422, "unknown_field"),
    ("rank-lengths", "/v1/rank", b'{"ids": [1, 2], "similarities": [1.0]}', JSON, 422,
     "invalid_value"),
    ("rank-nan", "/v1/rank", b'{"ids": [1], "similarities": [1e999]}', JSON, 422, "nonfinite"),
    ("rank-k", "/v1/rank", b'{"ids": [1], "similarities": [1.0], "k": 0}', JSON, 422,
     "invalid_value"),
    ("rank-id", "/v1/rank", b'{"ids": [5000], "similarities": [1.0]}', JSON, 422, "unknown_id"),
    # integers beyond any float are not finite (they gave 500)
    ("huge-int-quality", "/v1/feedback", b'{"ids": [1], "quality": [0.5, ' + b"9" * 400
     + b']}', JSON, 422, "nonfinite"),
    ("huge-int-quality-alone", "/v1/feedback", b'{"ids": [1], "quality": ' + b"9" * 400 + b'}',
     JSON, 422, "nonfinite"),
    ("huge-int-quality-list", "/v1/feedback", b'{"ids": [1], "quality": [' + b"9" * 400 + b']}',
     JSON, 422, "nonfinite"),
    ("huge-int-similarity", "/v1/rank", b'{"ids": [1], "similarities": [-' + b"9" * 400 + b']}',
     JSON, 422, "nonfinite"),
    ("huge-int-id", "/v1/feedback", b'{"ids": [' + b"9" * 400 + b'], "quality": 0.5}', JSON, 422,
     "unknown_id"),
    # nesting: beyond json's recursion (gave 500), beyond NumPy's 32 dimensions
    ("deep-ids", "/v1/feedback", b'{"ids": ' + b"[" * 200_000 + b"]" * 200_000
     + b', "quality": 1}', JSON, 400, "malformed_json"),
    ("deep-quality", "/v1/feedback", b'{"ids": [1], "quality": ' + b"[" * 200_000
     + b"]" * 200_000 + b'}', JSON, 400, "malformed_json"),
    ("nested-40-ids", "/v1/feedback", b'{"ids": ' + b"[" * 40 + b"1" + b"]" * 40
     + b', "quality": 1}', JSON, 422, "invalid_value"),
    ("nested-40-quality", "/v1/feedback", b'{"ids": [1], "quality": ' + b"[" * 40 + b"1"
     + b"]" * 40 + b'}', JSON, 422, "invalid_value"),
    ("ragged-quality", "/v1/feedback", b'{"ids": [1, 2], "quality": [1, [2]]}', JSON, 422,
     "invalid_value"),
    ("null-in-quality", "/v1/feedback", b'{"ids": [1, 2], "quality": [0.5, null]}', JSON, 422,
     "wrong_type"),
    ("bool-quality", "/v1/feedback", b'{"ids": [1, 2], "quality": [1, true]}', JSON, 422,
     "wrong_type"),
    # duplicate keys (json keeps the last one silently)
    ("duplicate-ids", "/v1/feedback", b'{"ids": [1], "ids": [2], "quality": 0.5}', JSON, 422,
     "duplicate_field"),
    ("duplicate-k", "/v1/decay", b'{"k": 1, "k": 2}', JSON, 422, "duplicate_field"),
    ("duplicate-rank-k", "/v1/rank", b'{"ids": [1], "similarities": [1], "k": 1, "k": 2}', JSON,
     422, "duplicate_field"),
]


@pytest.mark.parametrize("path, body, headers, status, reason",
                         [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_is_refused_and_changes_nothing(client, path, body, headers, status, reason):
    before = everything(client)
    r = client.post(path, content=body, headers=headers)
    assert r.status_code == status, r.text
    error = r.json()
    assert error["error"] == reason and error["detail"] and error["request_id"]
    after = everything(client)
    assert after[1] == before[1], "the log moved"
    assert_same_bits(after[0], before[0], f"after a refused {path}")
    assert f'nap_rejected_total{{reason="{reason}"}}' in client.get("/metrics").text


@pytest.mark.parametrize("query, reason", [
    ("ids=1,x", "wrong_type"), ("ids=1000", "unknown_id"), ("ids=-1", "unknown_id"),
    ("", "missing_field"), ("ids=" + ",".join(["1"] * (N + 1)), "too_many_ids"),
    # int() takes all of these; an id is ASCII digits
    ("ids=1_0", "wrong_type"), ("ids=%2B5", "wrong_type"), ("ids=%205", "wrong_type"),
    ("ids=5%20", "wrong_type"), ("ids=%D9%A3", "wrong_type"), ("ids=%EF%BC%95", "wrong_type"),
    ("ids=1,,2", "wrong_type"), ("ids=0x5", "wrong_type"), ("ids=" + "9" * 5000, "wrong_type"),
], ids=["letter", "unknown", "negative", "none", "too-many", "underscore", "plus", "space",
        "trailing-space", "arabic-digit", "fullwidth-digit", "empty-part", "hex", "5000-digits"])
def test_bad_weight_queries(client, query, reason):
    r = client.get(f"/v1/weights?{query}")
    assert r.status_code == 422
    assert r.json()["error"] == reason


def test_integer_qualities_are_numbers(client):
    """JSON has no integer type apart: JavaScript sends 1.0 as 1, so [1, 0] must work as
    [1.0, 0.0] does (it was refused while [1, 0.5] was accepted)."""
    start = everything(client)[0]
    for body in ({"ids": [10, 11], "quality": [1, 0]}, {"ids": [12], "quality": 1},
                 {"ids": [13, 14], "quality": [0, 1.0]}):
        r = client.post("/v1/feedback", json=body)
        assert r.status_code == 200, r.text
    ref = nap.Engine(N, init=start)
    for ids, q in (([10, 11], [1.0, 0.0]), ([12], [1.0]), ([13, 14], [0.0, 1.0])):
        ref.update(np.asarray(ids), np.asarray(q, np.float32))
    assert_same_bits(everything(client)[0], ref.to_numpy(), "integer qualities")
    w = everything(client)[0]
    got = client.post("/v1/rank", json={"ids": [10, 11, 12], "similarities": [1, 0, 2]}).json()
    scores = np.float32([1, 0, 2]) * w[[10, 11, 12]]
    assert_same_bits(np.float32(got["scores"]), np.sort(scores)[::-1], "integer similarities")


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
@pytest.mark.parametrize("token", [" ", "  ,  ", "\t\n"], ids=["space", "commas", "tab-newline"])
def test_a_blank_token_is_refused_at_start_up(tmp_path, host, token):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAP_")}
    done = subprocess.run([sys.executable, "-m", "nap_gpu.cli", "serve", "--host", host,
                           "--state-dir", str(tmp_path / "s"), "--memories", "10"],
                          env={**env, "NAP_API_TOKEN": token}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "blank" in done.stderr
    assert not (tmp_path / "s").exists()


def test_request_ids_are_echoed_and_logged(server, client):
    r = client.get("/v1/stats", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert server.logged(lambda e: e.get("request_id") == "abc-123"
                         and e.get("route") == "/v1/stats")
    r = client.get("/v1/stats", headers={"X-Request-ID": "bad id\"}"})
    assert r.headers["x-request-id"] != 'bad id"}'  # replaced, not echoed into logs


def test_log_fields(server, client):
    """Monitor events are fields of their log line (not a JSON string in the message); the
    backend choice is logged once; the start-up time is a metric."""
    assert server.logged(lambda e: e["logger"] == "nap_gpu.monitor")  # a health check ran
    events = server.events()
    checks = [e for e in events if e["logger"] == "nap_gpu.monitor"]
    assert checks and all(e["message"] in ("health check", "health check failed")
                          and isinstance(e["ok"], bool) and "failures" in e for e in checks)
    chose = [e for e in events if e["logger"] == "nap_gpu" and "backend" in e["message"]]
    assert len(chose) <= 1, chose
    # the default parser, httptools (the serve and test extras install it)
    assert [e["http_parser"] for e in events if "http_parser" in e] == ["httptools"]
    assert 0 < sample(client.get("/metrics").text, "nap_bootstrap_duration_seconds") < 60


def test_serve_help_lists_every_documented_setting():
    done = subprocess.run([sys.executable, "-m", "nap_gpu.cli", "serve", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    docs = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    documented = set(re.findall(r"NAP_[A-Z_]+[A-Z]", docs))
    assert len(documented) > 20
    missing = sorted(v for v in documented if v not in done.stdout)
    assert not missing, missing
    from nap_gpu.serve import Settings
    for name in Settings.model_fields:  # every setting has a flag (the token: never a flag)
        assert f"NAP_{name.upper()}" in documented, name
        if name != "api_token":
            assert f"--{name.replace('_', '-')}" in done.stdout, name


# -- ordering under load, restarts -----------------------------------------------------------------
CLIENTS = 50
SPAN = N // CLIENTS  # each client owns ids [c * SPAN, (c + 1) * SPAN)


def client_batches(c: int, count: int, seed: int) -> list:
    rng = np.random.default_rng([seed, c])
    lo = c * SPAN
    return [(rng.integers(lo, lo + SPAN, 20), rng.random(20, dtype=np.float32))
            for _ in range(count)]


def run_clients(url: str, batches_of, acked: dict, stop: threading.Event | None = None) -> None:
    """50 threads, each posting its own batches in order, recording each acknowledged one."""
    def one(c: int) -> None:
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
            for i, (ids, q) in enumerate(batches_of[c]):
                if stop is not None and stop.is_set():
                    return
                body = binary(ids, q) if (c + i) % 2 else None
                try:
                    if body is None:
                        r = http.post("/v1/feedback", json={"ids": ids.tolist(),
                                                            "quality": q.tolist()})
                    else:
                        r = http.post("/v1/feedback", content=body, headers=BIN)
                except httpx.TransportError:
                    return  # the server went away mid-request: not acknowledged
                if r.status_code != 200:
                    return
                acked[c] = i + 1
    threads = [threading.Thread(target=one, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def test_concurrent_clients_lose_and_reorder_nothing(tmp_path):
    srv = Server(tmp_path / "s", NAP_FSYNC="group").start()
    try:
        batches_of = [client_batches(c, 20, seed=1) for c in range(CLIENTS)]
        acked: dict[int, int] = {}
        run_clients(srv.url, batches_of, acked)
        assert all(acked.get(c) == 20 for c in range(CLIENTS)), acked
        with srv.client(headers=AUTH) as c:
            got = everything(c)[0]
        expected = replay(b for c in range(CLIENTS) for b in batches_of[c])
        assert_same_bits(got, expected, "50 concurrent clients vs sequential replay")
    finally:
        assert srv.stop() == 0, srv.output()


def test_sigkill_mid_load_loses_no_acknowledged_event(tmp_path):
    srv = Server(tmp_path / "s").start()
    batches_of = [client_batches(c, 400, seed=2) for c in range(CLIENTS)]
    acked: dict[int, int] = {}
    stop = threading.Event()
    loader = threading.Thread(target=run_clients, args=(srv.url, batches_of, acked, stop))
    loader.start()
    deadline = time.monotonic() + 30
    while sum(acked.values()) < 1000 and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.proc.kill()  # SIGKILL: no drain, no final snapshot
    srv.proc.wait(30)
    stop.set()
    loader.join(60)
    assert sum(acked.values()) >= 1000, "the load did not get going"
    srv.start()  # recovers from the snapshot + log
    try:
        with srv.client(headers=AUTH) as c:
            got = everything(c)[0]
        for c in range(CLIENTS):  # each client had at most one request in flight
            span = slice(c * SPAN, (c + 1) * SPAN)
            done = acked.get(c, 0)
            options = [replay(batches_of[c][:k])[span] for k in (done, done + 1)]
            assert any(np.array_equal(got[span].view(np.uint32), o.view(np.uint32))
                       for o in options), f"client {c}: acknowledged {done} batches"
    finally:
        assert srv.stop() == 0, srv.output()


def test_sigterm_drains_snapshots_and_exits_zero(tmp_path):
    srv = Server(tmp_path / "s").start()
    with srv.client(headers=AUTH) as c:
        c.post("/v1/feedback", json={"ids": [1, 2, 3], "quality": [0.9, 0.1, 0.5]})
        before = everything(c)
    assert srv.stop(signal.SIGTERM) == 0, srv.output()
    snaps = sorted((tmp_path / "s").glob("snap-*.nap"))
    assert nap.snapshot.inspect(snaps[-1]).sequence == before[1]  # the final snapshot
    events = [json.loads(x) for x in srv.output().splitlines() if x.startswith("{")]
    assert any(e["message"] == "stopped" and e.get("signal") == "SIGTERM" for e in events)
    srv.start()
    try:
        with srv.client(headers=AUTH) as c:
            after = everything(c)
        assert after[1] == before[1]
        assert_same_bits(after[0], before[0], "after a restart")
    finally:
        assert srv.stop() == 0


# -- connections: deadlines, a cap, bounded labels -------------------------------------------------
def sample(text: str, name: str) -> float:
    """The value of the sample ``name`` (with its labels, as printed) in a /metrics text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the metrics")


def _raise_own_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"this test holds {needed} sockets; RLIMIT_NOFILE's hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


#: The HTTP parsers the connection guard is written against (NAP_HTTP): the default, and the
#: pure-Python fallback used where httptools is not installed.
PARSERS = ["httptools", "h11"]


def _connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """(the server closed the connection within ``seconds``, what it sent before closing)."""
    sock.settimeout(0.2)
    got, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


@pytest.mark.parametrize("parser", PARSERS)
def test_idle_and_slow_connections_do_not_starve_probes_or_writes(tmp_path, parser):
    """1,100 idle connections and 50 slow-loris ones against a server with 512 descriptors
    (the issue: 1,100 idle connections exhausted 1,024 and stalled /healthz and writes)."""
    _raise_own_nofile(1400)
    srv = Server(tmp_path / "s", nofile=512, NAP_HEADER_TIMEOUT_S="60", NAP_HTTP=parser).start()
    assert srv.logged(lambda e: e.get("http_parser") == parser)
    held = []
    try:
        for _ in range(1100):
            held.append(_connect(srv.port))  # the kernel accepts them: the backlog is long
        slow = [_connect(srv.port) for _ in range(50)]
        for s in slow:
            s.sendall(b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\n")
        held += slow
        stop = threading.Event()

        def dribble() -> None:  # one header byte per connection every 0.2 s
            while not stop.wait(0.2):
                for s in slow:
                    with contextlib.suppress(OSError):
                        s.send(b"X")
        dribbler = threading.Thread(target=dribble, daemon=True)
        dribbler.start()
        try:
            time.sleep(1.0)  # let the server see all of them
            t0 = time.monotonic()
            assert httpx.get(f"{srv.url}/healthz", timeout=10).status_code == 200
            health_s = time.monotonic() - t0
            with srv.client(headers=AUTH, timeout=10) as c:
                t0 = time.monotonic()
                r = c.post("/v1/feedback", json={"ids": [1, 2], "quality": [0.9, 0.1]})
                write_s = time.monotonic() - t0
                assert r.status_code == 200, r.text
                metrics = c.get("/metrics").text
        finally:
            stop.set()
            dribbler.join()
        assert health_s < 5 and write_s < 5, (health_s, write_s)
        assert srv.proc.poll() is None
        assert sample(metrics, 'nap_connections_closed_total{reason="evicted"}') > 0
        cap = sample(metrics, "nap_max_connections")
        assert cap < 512
        assert sample(metrics, "nap_open_connections") <= cap
    finally:
        for s in held:
            s.close()
        if srv.proc.poll() is None:
            code = srv.stop()
    assert code == 0, srv.output()[-3000:]
    # the accept() error, if it occurred at all, was logged a few times, not thousands
    lines = srv.output().splitlines()
    assert sum("out of" in x and "resource" in x for x in lines) <= 5


def test_responses_are_not_held_back_by_nagle(client):
    """A response's head and body go out in two writes: without TCP_NODELAY the body waited
    for the client's delayed ACK, ~44 ms per request on a keep-alive connection (measured
    here: median 44 ms before, 4 ms after)."""
    for path in ("/healthz", "/v1/weights?ids=1,2"):
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            assert client.get(path).status_code == 200
            times.append(time.perf_counter() - t0)
        assert np.median(times) < 0.025, (path, np.median(times))


@pytest.fixture(scope="module", params=PARSERS)
def strict(tmp_path_factory, request):
    """A server with 1-second header and body deadlines, on each HTTP parser."""
    srv = Server(tmp_path_factory.mktemp("strict") / "state", NAP_HEADER_TIMEOUT_S="1",
                 NAP_BODY_TIMEOUT_S="1", NAP_KEEP_ALIVE_S="30", NAP_HTTP=request.param).start()
    srv.parser = request.param
    assert srv.logged(lambda e: e.get("http_parser") == request.param), srv.output()
    yield srv
    if srv.proc.poll() is None:
        assert srv.stop() == 0, srv.output()


def test_a_silent_connection_is_closed(strict):
    with _connect(strict.port) as s:
        closed, got = _closed_within(s, 5)
    assert closed and got == b""


def _trickle(sock: socket.socket, start: bytes, until: float) -> None:
    """The bytes of ``start``, then b"X" (a header name, or a query, that never ends), one
    every 0.2 s until ``until`` (monotonic): a head that never completes. Sending stops
    before the deadline: a byte sent after the server closed would draw a reset, which
    discards the 408 before it is read."""
    sent = 0
    while time.monotonic() < until:
        sock.sendall(start[sent:sent + 1] or b"X")
        sent += 1
        time.sleep(0.2)


def test_a_slow_request_head_gets_408(strict):
    """The deadline counts from the connection, not from the last byte (header timeout 1 s:
    bytes until 0.8 s, so a deadline the bytes pushed back would fall after 1.8 s)."""
    with _connect(strict.port) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        _trickle(s, b"X", t0 + 0.8)
        closed, got = _closed_within(s, 5)
        elapsed = time.monotonic() - t0
    assert closed and got.startswith(b"HTTP/1.1 408"), got
    assert elapsed < 1.7, elapsed


def test_a_slow_head_after_a_keep_alive_response_is_closed(strict):
    """After a response (keep-alive), the next head has the same deadline; uvicorn's own
    keep-alive timer is cancelled by the first byte."""
    with _connect(strict.port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"alive"}'):  # the whole first response
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        _trickle(s, b"GET /healthz?", t0 + 0.8)  # then a query that never ends
        closed, got = _closed_within(s, 5)
        elapsed = time.monotonic() - t0
    assert closed and got.startswith(b"HTTP/1.1 408"), got
    assert elapsed < 1.7, elapsed


def test_a_slow_body_gets_408_and_changes_nothing(strict):
    with strict.client(headers=AUTH) as c:
        before = everything(c)
    with _connect(strict.port) as s:
        s.sendall(b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"ids\": [1]")
        closed, got = _closed_within(s, 5)
    assert closed and got.startswith(b"HTTP/1.1 408"), got
    with strict.client(headers=AUTH) as c:
        after = everything(c)
        assert 'nap_connections_closed_total{reason="body_timeout"} 1.0' in c.get("/metrics").text
    assert after[1] == before[1]
    assert_same_bits(after[0], before[0], "after a body that never came")


#: Methods no route takes that every parser passes on (httptools knows a fixed list).
UNROUTED = ["PROPFIND", "MKCOL", "PURGE", "SEARCH", "LINK", "UNLINK", "REPORT", "SUBSCRIBE"]


def test_made_up_methods_do_not_grow_the_metrics(strict):
    """h11 takes any token as a method: the app answers 405 and labels it "other".
    httptools refuses a method it does not know (400, before the app sees it)."""
    made_up = 405 if strict.parser == "h11" else 400
    with strict.client(headers=AUTH) as c:
        c.get("/v1/stats")
        size = len(c.get("/metrics").text)
        for i in range(300):
            assert c.request(f"MADEUP{i}", "/v1/stats").status_code == made_up
        for method in UNROUTED:
            assert c.request(method, "/v1/stats").status_code == 405
        text = c.get("/metrics").text
    assert "MADEUP" not in text and "PROPFIND" not in text
    assert 'method="other"' in text
    assert len(text) < size + 2000, (size, len(text))
    # the request log uses the same bounded label (its lines land after the responses)
    assert strict.logged(lambda e: e.get("method") == "other" and e.get("status") == 405)
    assert "MADEUP" not in strict.output() and "PROPFIND" not in strict.output()


def _responses(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` whole responses (each with a content-length) read from ``sock``."""
    got, out = b"", []
    while len(out) < count:
        head, sep, rest = got.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head) if sep else None
        if length is not None and len(rest) >= int(length[1]):
            out.append(head + sep + rest[:int(length[1])])
            got = rest[int(length[1]):]
            continue
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(out)} responses: {got!r}"
        got += chunk
    return out


def test_pipelined_requests_are_answered_in_order_and_keep_their_deadlines(strict):
    """Three requests in one write (a body between them): each answered in order; the
    connection then waits for a head under the header deadline like any other."""
    body = binary(np.array([1, 2]), np.array([0.9, 0.1], np.float32))
    post = (b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
            % len(body) + body)
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(strict.port) as s:
        s.sendall(get + post + get)
        first, written, last = _responses(s, 3)
        assert all(r.startswith(b"HTTP/1.1 200") for r in (first, written, last))
        assert b'"accepted":2' in written.replace(b" ", b"")
        t0 = time.monotonic()
        closed, got = _closed_within(s, 5)  # idle after the last: closed at the deadline
    assert closed and got == b"" and 0.5 < time.monotonic() - t0 < 2.5


def test_a_pipelined_request_with_a_slow_body_gets_408(strict):
    """A request whose head came behind another's (httptools parses it at once, h11 once the
    first is answered) is timed as a request, not as an idle connection: its body deadline
    gives a 408 (an idle close would send nothing)."""
    with _connect(strict.port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"ids\": [1]")
        assert _responses(s, 1)[0].startswith(b"HTTP/1.1 200")
        closed, got = _closed_within(s, 5)
    assert closed and got.startswith(b"HTTP/1.1 408"), got


def test_a_head_over_the_limit_is_refused(strict):
    """A head past 16 KiB (h11's limit; httptools has none of its own: the guard's, counted
    over reads) is refused and closed; one under it is served. The client stops sending past
    the limit: bytes sent after the server closed would draw a reset that drops the answer."""
    refused = b"HTTP/1.1 400" if strict.parser == "h11" else b"HTTP/1.1 431"
    with _connect(strict.port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 15_000 + b"\r\n\r\n")
        assert _responses(s, 1)[0].startswith(b"HTTP/1.1 200")
    with _connect(strict.port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        for _ in range(20):  # up to 40 KB, in reads of their own, until the server answers
            if select.select([s], [], [], 0.02)[0]:
                break
            s.sendall(b"a" * 2_000)
        closed, got = _closed_within(s, 5)
    assert closed and got.startswith(refused), got[:200]
    assert httpx.get(f"{strict.url}/healthz", timeout=5).status_code == 200


# -- a full disk: writes refused while it lasts, then the writer goes on ---------------------------
@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit (Linux)")
def test_writes_resume_after_a_full_disk(tmp_path):
    """The kernel refuses to grow the server's files (RLIMIT_FSIZE, set on the running process:
    EFBIG, as ENOSPC would): writes and snapshots get 503 and change nothing; once the limit
    is lifted writes succeed again, /readyz stayed ready, SIGTERM writes the final snapshot."""
    srv = Server(tmp_path / "s", NAP_SNAPSHOT_EVERY="0").start()
    unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    rng = np.random.default_rng(6)
    first = (rng.integers(0, N, 1000), rng.random(1000, dtype=np.float32))
    second = (rng.integers(0, N, 1000), rng.random(1000, dtype=np.float32))
    with srv.client(headers=AUTH) as c:
        assert c.post("/v1/feedback", content=binary(*first), headers=BIN).status_code == 200
        before = everything(c)
        segment = max((tmp_path / "s").glob("wal-*.log"))
        full = 1024  # no file may grow beyond 1 KiB: the disk is "full" (the probe's 2 B fit)
        assert segment.stat().st_size > full and N * 4 > full
        resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (full, resource.RLIM_INFINITY))
        try:
            r = c.post("/v1/feedback", content=binary(*second), headers=BIN)
            assert r.status_code == 503 and r.json()["error"] == "write_failed", r.text
            r = c.post("/v1/snapshot")
            assert r.status_code == 503 and r.json()["error"] == "write_failed", r.text
            r = c.post("/v1/decay", json={"k": 1})
            assert r.status_code == 503 and r.json()["error"] == "write_failed", r.text
            during = everything(c)
            ready = c.get("/readyz")
            assert ready.status_code == 200, ready.text  # the engine rolled back: still ready
        finally:
            resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, unlimited)
        assert during[1] == before[1]
        assert_same_bits(during[0], before[0], "while the disk was full")
        r = c.post("/v1/feedback", content=binary(*second), headers=BIN)
        assert r.status_code == 200, r.text
        assert c.get("/readyz").json()["checks"]["writer_running"] is True
        assert c.post("/v1/snapshot").status_code == 200
        after = everything(c)
    assert srv.stop() == 0, srv.output()
    assert any(e["message"] == "final snapshot written" for e in srv.events())
    ref = nap.Engine(N, seed=0)
    ref.update(first[0], first[1])
    ref.update(second[0], second[1])
    assert_same_bits(after[0], ref.to_numpy(), "the acknowledged writes, and only them")
    newest = max((tmp_path / "s").glob("snap-*.nap"))
    assert nap.snapshot.inspect(newest).sequence == after[1]
    srv.start()
    try:
        with srv.client(headers=AUTH) as c:
            again = everything(c)
        assert again[1] == after[1]
        assert_same_bits(again[0], after[0], "after a restart")
    finally:
        assert srv.stop() == 0


# -- snapshots and decays count in the queue limit -------------------------------------------------
def test_concurrent_snapshots_do_not_hold_up_feedback(tmp_path):
    """300 concurrent snapshot requests (each writes every weight) are merged or refused
    rather than queued one after another in front of a feedback request."""
    n = 1_000_000
    srv = Server(tmp_path / "s", memories=n, NAP_MAX_QUEUED_EVENTS=str(2 * n)).start()
    try:
        with srv.client(headers=AUTH) as c:
            applied = sample(c.get("/metrics").text, "nap_apply_duration_seconds_count")
        answers: list[int] = []

        async def snapshots() -> None:
            limits = httpx.Limits(max_connections=300)
            async with httpx.AsyncClient(base_url=srv.url, headers=AUTH, timeout=120,
                                         limits=limits) as http:
                rs = await asyncio.gather(*(http.post("/v1/snapshot") for _ in range(300)))
            answers.extend(r.status_code for r in rs)
        loader = threading.Thread(target=asyncio.run, args=(snapshots(),))
        loader.start()
        time.sleep(0.5)  # the snapshot requests are in
        with srv.client(headers=AUTH) as c:
            t0 = time.monotonic()
            r = c.post("/v1/feedback", json={"ids": [1, 2], "quality": 0.9})
            feedback_s = time.monotonic() - t0
        loader.join(300)
        assert r.status_code == 200, r.text
        assert set(answers) <= {200, 503} and answers.count(200) >= 1, answers
        with srv.client(headers=AUTH) as c:
            done = sample(c.get("/metrics").text, "nap_apply_duration_seconds_count") - applied
        assert done < 150, f"{done} applies for 300 snapshot requests + 1 feedback"
        assert feedback_s < 3, feedback_s
    finally:
        assert srv.stop() == 0, srv.output()[-3000:]


def test_decays_count_in_the_queue_limit(tmp_path):
    """A decay touches every memory: it holds n events' worth of the queue (here the whole
    limit), so concurrent decays beyond the one queued are refused with 503 + Retry-After."""
    n = 1_000_000
    srv = Server(tmp_path / "s", memories=n, NAP_MAX_QUEUED_EVENTS=str(n)).start()
    try:
        async def decays() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url, headers=AUTH, timeout=60,
                                         limits=httpx.Limits(max_connections=200)) as http:
                return await asyncio.gather(*(http.post("/v1/decay", json={"k": 1})
                                              for _ in range(200)))
        answers = asyncio.run(decays())
        codes = [r.status_code for r in answers]
        assert set(codes) == {200, 503}, codes
        refused = [r for r in answers if r.status_code == 503]
        assert all(r.json()["error"] == "queue_full" and r.headers["retry-after"] == "1"
                   for r in refused)
        with srv.client(headers=AUTH) as c:
            assert c.get("/v1/stats").json()["sequence"] == codes.count(200)
    finally:
        assert srv.stop() == 0, srv.output()[-3000:]


# -- API tokens: several at once, reloaded without a restart ---------------------------------------
def _status(url: str, token: str) -> int:
    return httpx.post(f"{url}/v1/feedback", json={"ids": [1], "quality": 0.5},
                      headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code


def _replace(path: pathlib.Path, text: str) -> None:
    """As a secret volume does: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_token_rotation_by_sighup_and_by_file_change(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("old-token-aaaa\n")
    srv = Server(tmp_path / "s", NAP_API_TOKEN_FILE=str(token_file)).start()
    try:
        assert _status(srv.url, "old-token-aaaa") == 200
        assert _status(srv.url, "new-token-bbbb") == 401
        _replace(token_file, "old-token-aaaa\nnew-token-bbbb\n")  # current + next
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _status(srv.url, "new-token-bbbb") != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.proc.poll() is None, "SIGHUP ended the server"
        assert _status(srv.url, "new-token-bbbb") == 200
        assert _status(srv.url, "old-token-aaaa") == 200  # both during the rotation
        _replace(token_file, "# rotated\nnew-token-bbbb\n")  # no signal: the change is seen
        deadline = time.monotonic() + 10
        while _status(srv.url, "old-token-aaaa") != 401 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _status(srv.url, "old-token-aaaa") == 401
        assert _status(srv.url, "new-token-bbbb") == 200
        _replace(token_file, "")  # a broken file keeps the tokens in force
        srv.proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert _status(srv.url, "new-token-bbbb") == 200
        with srv.client(headers={"Authorization": "Bearer new-token-bbbb"}) as c:
            text = c.get("/metrics").text
        assert sample(text, 'nap_token_reloads_total{result="failed"}') >= 1
        assert sample(text, 'nap_token_reloads_total{result="changed"}') >= 2
    finally:
        assert srv.stop() == 0, srv.output()[-3000:]
    out = srv.output()
    assert "old-token-aaaa" not in out and "new-token-bbbb" not in out
    assert any(e["message"] == "API tokens reloaded" for e in srv.events())


def test_several_tokens_in_the_environment(tmp_path):
    srv = Server(tmp_path / "s", NAP_API_TOKEN="first-token-1, second-token-2").start()
    try:
        assert _status(srv.url, "first-token-1") == 200
        assert _status(srv.url, "second-token-2") == 200
        assert _status(srv.url, "first-token-1, second-token-2") == 401
        srv.proc.send_signal(signal.SIGHUP)  # nothing to reload: logged, and it goes on
        time.sleep(0.5)
        assert srv.proc.poll() is None and _status(srv.url, "first-token-1") == 200
    finally:
        assert srv.stop() == 0, srv.output()[-3000:]


# -- the applied order, as the responses tell it ---------------------------------------------------
def test_responses_give_the_applied_order(tmp_path):
    """Clients write the same ids concurrently, so the result depends on the order: sorting
    every acknowledged request by (sequence, index) and replaying in that order must give
    the service's weights bit for bit; requests merged into one record share its sequence,
    with indexes that tile the record."""
    srv = Server(tmp_path / "s").start()
    clients, per_client = 24, 15
    got: list[tuple] = []
    lock = threading.Lock()

    def one(c: int) -> None:
        rng = np.random.default_rng([14, c])
        with srv.client(headers=AUTH) as http:
            for i in range(per_client):
                ids = rng.integers(0, 50, int(rng.integers(1, 30)))  # 50 ids shared by all
                q = rng.random(ids.size, dtype=np.float32)
                if i % 2:
                    r = http.post("/v1/feedback", content=binary(ids, q), headers=BIN)
                else:
                    r = http.post("/v1/feedback", json={"ids": ids.tolist(), "quality": q.tolist()})
                assert r.status_code == 200, r.text
                with lock:
                    got.append((r.json()["sequence"], r.json()["index"], ids, q))
    try:
        threads = [threading.Thread(target=one, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(got) == clients * per_client
        with srv.client(headers=AUTH) as c:
            weights, sequence = everything(c)
    finally:
        assert srv.stop() == 0, srv.output()[-3000:]
    got.sort(key=lambda g: (g[0], g[1]))
    records: dict[int, list] = {}
    for seq, index, ids, _ in got:
        records.setdefault(seq, []).append((index, ids.size))
    assert max(records) == sequence
    for parts in records.values():  # each record: its requests' events back to back, from 0
        position = 0
        for index, size in parts:
            assert index == position
            position += size
    assert_same_bits(weights, replay((ids, q) for _, _, ids, q in got), "replayed in "
                     "(sequence, index) order")


# -- the law's parameters, a decay schedule --------------------------------------------------------
def test_law_parameters_are_set_at_creation_and_shown(tmp_path):
    params = nap.Params(lr=0.1, gate=0.6, decay=0.01)
    srv = Server(tmp_path / "s", NAP_LR="0.1", NAP_GATE="0.6", NAP_DECAY="0.01").start()
    try:
        with srv.client(headers=AUTH) as c:
            start = everything(c)[0]
            assert c.get("/v1/stats").json()["params"] == {"lr": 0.1, "gate": 0.6, "decay": 0.01}
            assert ('gate="0.6"' in c.get("/metrics").text
                    and 'lr="0.1"' in c.get("/metrics").text)
            ids, q = [1, 2, 3, 1], [0.9, 0.55, 0.65, 0.1]
            assert c.post("/v1/feedback", json={"ids": ids, "quality": q}).status_code == 200
            assert c.post("/v1/decay", json={"k": 2}).status_code == 200
            got = everything(c)[0]
        ref = nap.Engine(N, init=start, params=params)
        ref.update(np.asarray(ids), np.asarray(q, np.float32))
        ref.decay(2)
        assert_same_bits(got, ref.to_numpy(), "the law with the configured parameters")
    finally:
        assert srv.stop() == 0, srv.output()[-3000:]
    # on an existing state: what is given must match (they are fixed at creation) ...
    env = {**srv.env, "NAP_LR": "0.2"}
    env.pop("NAP_GATE")
    done = subprocess.run([sys.executable, "-m", "nap_gpu.cli", "serve"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "NAP_LR=0.2" in done.stderr, done.stderr
    # ... and what is not given is the state's
    srv.env = {k: v for k, v in srv.env.items() if k not in ("NAP_GATE", "NAP_DECAY")}
    srv.start()
    try:
        with srv.client(headers=AUTH) as c:
            assert c.get("/v1/stats").json()["params"] == {"lr": 0.1, "gate": 0.6, "decay": 0.01}
    finally:
        assert srv.stop() == 0


def _health_after(c: httpx.Client, sequence: int, timeout: float = 30.0) -> dict:
    """The first health check that saw the state at ``sequence`` logged writes or later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = c.get("/v1/stats").json()["health"]
        if health is not None and health["iteration"] >= sequence:
            return health
        time.sleep(0.1)
    raise AssertionError(f"no health check saw sequence {sequence} in {timeout} s")


def test_a_labelled_service_applies_the_guides_warm_up(tmp_path):
    """Healthy at boot and through the warm-up (the weights are still the random initial
    ones), the failed rule once past it without learning, the grace not renewed by a restart,
    healthy again once the populations separate."""
    labels = (np.arange(N) % 2).astype(np.uint8)
    np.save(tmp_path / "labels.npy", labels)
    srv = Server(tmp_path / "s", NAP_LABELS=str(tmp_path / "labels.npy"),
                 NAP_HEALTH_WARMUP="3", NAP_HEALTH_SETTLE="6", NAP_STATS_INTERVAL="0.2").start()
    noise = {"ids": [0], "quality": [0.7]}
    try:
        with srv.client(headers=AUTH) as c:
            assert c.get("/v1/stats").json()["labels"] is True
            at_boot = _health_after(c, 0)
            assert at_boot["ok"] and at_boot["separation"] < 0.2, at_boot
            for sequence in (1, 2):
                assert c.post("/v1/feedback", json=noise).json()["sequence"] == sequence
                assert _health_after(c, sequence)["ok"]
            assert c.post("/v1/feedback", json=noise).json()["sequence"] == 3
            past = _health_after(c, 3)
            assert not past["ok"] and [f.split()[0] for f in past["failures"]] == ["separation"]
    finally:
        assert srv.stop() == 0, srv.output()[-3000:]
    srv.start()  # the count is the state's, so the restarted service is past its warm-up
    try:
        with srv.client(headers=AUTH) as c:
            assert not _health_after(c, 3)["ok"]
            teach = {"ids": list(range(N)), "quality": labels.astype(float).tolist()}
            for _ in range(8):
                sequence = c.post("/v1/feedback", json=teach).json()["sequence"]
            learned = _health_after(c, sequence)
            assert sequence >= 6 and learned["ok"], learned
            assert learned["separation"] > 0.2 and learned["inversion_ratio"] > 0.9
    finally:
        assert srv.stop() == 0, srv.output()[-3000:]


def test_scheduled_decay(tmp_path):
    srv = Server(tmp_path / "s", NAP_DECAY_EVERY_S="0.2").start()
    try:
        with srv.client(headers=AUTH) as c:
            deadline = time.monotonic() + 20
            while c.get("/v1/stats").json()["sequence"] < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            weights, sequence = everything(c)  # read with its sequence, under the lock
            assert sequence >= 4
            assert c.get("/v1/stats").json()["decay_every_s"] == 0.2
    finally:
        assert srv.stop() == 0, srv.output()[-3000:]
    ref = nap.Engine(N, seed=0)
    ref.decay(sequence)  # nothing else wrote: every record is one scheduled decay(1)
    assert_same_bits(weights, ref.to_numpy(), f"{sequence} scheduled decays")
    logged = [e for e in srv.events() if e["message"] == "scheduled decay"]
    assert len(logged) >= sequence and [e["sequence"] for e in logged[:4]] == [1, 2, 3, 4]


# -- recovery points: every kept snapshot ----------------------------------------------------------
def test_an_older_snapshot_is_a_recovery_point(tmp_path):
    """The newest snapshot damaged: the service recovers from an older one and the log after
    it (the log is kept back to the oldest kept snapshot), losing nothing."""
    srv = Server(tmp_path / "s", NAP_SNAPSHOT_EVERY="3", NAP_KEEP="3").start()
    try:
        with srv.client(headers=AUTH) as c:
            for i in range(10):
                assert c.post("/v1/feedback", json={"ids": [i, i + 1],
                                                    "quality": [0.9, 0.2]}).status_code == 200
            before = everything(c)
    finally:
        assert srv.stop() == 0
    snaps = sorted((tmp_path / "s").glob("snap-*.nap"))
    assert len(snaps) == 3
    data = bytearray(snaps[-1].read_bytes())
    data[-5] ^= 0xFF  # a bit flip in the weights: the checksum fails
    snaps[-1].write_bytes(bytes(data))
    srv.start()
    try:
        with srv.client(headers=AUTH) as c:
            after = everything(c)
        assert after[1] == before[1]
        assert_same_bits(after[0], before[0], "recovered from an older snapshot")
    finally:
        assert srv.stop() == 0


# -- the feedback stream (WebSocket) -------------------------------------------------------------
ws_client = pytest.importorskip("websockets.sync.client", reason="websockets (serve extra)")
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402


def stream(srv: Server, headers: dict | None = AUTH, path: str = "/v1/feedback/stream"):
    return ws_client.connect(f"ws://127.0.0.1:{srv.port}{path}", additional_headers=headers,
                             compression=None, open_timeout=10, max_size=None)


def _refused_upgrade(srv: Server) -> tuple[bool, bytes]:
    """A WebSocket upgrade to the stream on a raw socket: (closed within 10 s, what came)."""
    sock = _connect(srv.port)
    with sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /v1/feedback/stream HTTP/1.1\r\nHost: x\r\n"
                         b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         b"Sec-WebSocket-Version: 13\r\n"
                         b"Authorization: " + AUTH["Authorization"].encode() + b"\r\n\r\n")
        return _closed_within(sock, 10)


def test_feedback_stream_applies_batches_in_order_and_answers_each(server, client):
    """Batches sent back to back (no answer read in between), binary and JSON, one refused
    in the middle: the answers come in order, the refused one changes nothing, and the
    weights are the good batches replayed on a local engine."""
    start, sequence = everything(client)
    rng = np.random.default_rng(21)
    sent, good = [], []
    for i in range(30):
        ids = rng.integers(0, N, 150)
        q = rng.random(150, dtype=np.float32) * np.float32(1.4) - np.float32(0.2)
        if i == 13:
            ids[7] = N  # unknown id: this batch is refused whole
        else:
            good.append((ids, q))
        sent.append(binary(ids, q) if i % 3 else json.dumps({"ids": ids.tolist(),
                                                             "quality": q.tolist()}))
    with stream(server) as ws:
        for message in sent:
            ws.send(message)
        answers = [json.loads(ws.recv(timeout=30)) for _ in sent]
    assert answers[13] == {"error": "unknown_id", "detail": answers[13]["detail"], "status": 422}
    accepted = [a for i, a in enumerate(answers) if i != 13]
    assert all(a["accepted"] == 150 for a in accepted)
    order = [(a["sequence"], a["index"]) for a in accepted]
    assert order == sorted(order) and len(set(order)) == len(order) and order[0][0] > sequence
    ref = nap.Engine(N, init=start)
    for ids, q in good:
        ref.update(ids, q)
    assert_same_bits(everything(client)[0], ref.to_numpy(), "stream vs local engine")
    metrics = client.get("/metrics").text
    assert sample(metrics, "nap_open_feedback_streams") == 0


@pytest.mark.parametrize("headers", [None, {"Authorization": "Bearer wrong"}],
                         ids=["no-token", "wrong-token"])
def test_feedback_stream_needs_the_token(server, client, headers):
    before = everything(client)
    with pytest.raises(InvalidStatus) as refused, stream(server, headers):
        pass
    assert refused.value.response.status_code == 403
    assert everything(client)[1] == before[1]


def test_a_stream_message_over_the_body_limit_closes_it_and_changes_nothing(tmp_path):
    srv = Server(tmp_path / "s", NAP_MAX_BODY_BYTES="1200").start()
    try:
        with srv.client(headers=AUTH) as c:
            before = c.get("/v1/stats").json()["sequence"]
            with stream(srv) as ws:
                ws.send(binary([1] * 100, [0.9] * 100))  # 1,200 bytes: at the limit
                assert json.loads(ws.recv(timeout=30))["accepted"] == 100
                ws.send(binary([1] * 101, [0.9] * 101))  # 1,212 bytes
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=30)
            assert closed.value.rcvd.code == 1009
            assert c.get("/v1/stats").json()["sequence"] == before + 1
    finally:
        assert srv.stop() == 0, srv.output()[-3000:]


def test_streams_count_in_the_connection_cap_and_give_their_slot_back(tmp_path):
    """Upgraded connections leave the HTTP guard (before, each WebSocket upgrade, to any
    path, held a slot for ever: 16 of them and the service refused every client), streams
    take slots of their own (never evicted), and with every slot a stream a new connection
    is refused with 503."""
    srv = Server(tmp_path / "s", NAP_MAX_CONNECTIONS="16").start()
    try:
        for _ in range(40):  # upgrades to a path with no WebSocket route, then to the stream
            with pytest.raises(InvalidStatus), stream(srv, path="/nope"):
                pass
            with stream(srv) as ws:
                ws.send(binary([3], [0.9]))
                assert json.loads(ws.recv(timeout=30))["accepted"] == 1
        with srv.client(headers=AUTH) as c:
            assert c.post("/v1/feedback", json={"ids": [1], "quality": 0.9}).status_code == 200
            cap = int(sample(c.get("/metrics").text, "nap_max_connections"))
        with contextlib.ExitStack() as held:
            for _ in range(cap):
                held.enter_context(stream(srv))
            # every slot holds a stream: the connection itself is refused, a 503 and a close
            # (on a raw socket: the server may close before the upgrade request is even
            # written, which a WebSocket client reports as any of several errors)
            closed, answer = _refused_upgrade(srv)
            assert closed, "a connection past the cap was kept open"
            assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer[:200]
        deadline = time.monotonic() + 10
        while True:  # the slots come back as the server sees the closes
            with contextlib.suppress(httpx.TransportError), srv.client(headers=AUTH) as c:
                r = c.get("/metrics")  # a 503 while the streams' slots are still held
                metrics = r.text if r.status_code == 200 else 'nap_open_feedback_streams 1\n'
                if sample(metrics, "nap_open_feedback_streams") == 0:
                    assert sample(metrics, 'nap_connections_closed_total{reason="refused"}') >= 1
                    break
            assert time.monotonic() < deadline, "streams still counted after closing"
            time.sleep(0.1)
    finally:
        assert srv.stop() == 0, srv.output()[-3000:]


def test_a_stream_closed_with_answers_unread_applies_what_it_sent(server, client):
    """100 batches (more than may be unanswered) sent and the stream closed at once: every
    batch is applied, in order, and the stream gives its slot back."""
    start = everything(client)[0]
    with stream(server) as ws:
        for i in range(100):
            ws.send(binary([5, 6], [0.9, 0.1 * (i % 10)]))
    deadline = time.monotonic() + 30
    while sample(client.get("/metrics").text, "nap_open_feedback_streams") != 0:
        assert time.monotonic() < deadline, "the stream is still open"
        time.sleep(0.05)
    ref = nap.Engine(N, init=start)
    for i in range(100):
        ref.update(np.array([5, 6]), np.array([0.9, 0.1 * (i % 10)], np.float32))
    assert_same_bits(everything(client)[0], ref.to_numpy(), "after the stream closed")
