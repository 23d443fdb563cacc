"""The HTTP service: a real ``nap-gpu serve`` process on loopback, real HTTP clients.

Every write is checked against a local Engine fed the same events in the same order (the
service's weights must be bit-identical); every rejected request must change nothing (the
log sequence and every weight are compared before and after).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
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

    def __init__(self, state_dir: pathlib.Path, *, memories: int = N, **env: str) -> None:
        self.state_dir, self.port = state_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = state_dir.parent / f"{state_dir.name}-server.log"
        self.env = {**os.environ, "NAP_STATE_DIR": str(state_dir), "NAP_MEMORIES": str(memories),
                    "NAP_PORT": str(self.port), "NAP_API_TOKEN": TOKEN, "NAP_SEED": "0",
                    "NAP_STATS_INTERVAL": "0.5", **env}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> Server:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "nap_gpu.cli", "serve"],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise AssertionError(f"server not ready in {timeout} s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


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
    for path in ("/v1/feedback", "/v1/decay", "/v1/snapshot", "/v1/weights", "/v1/rank",
                 "/v1/stats", "/healthz", "/readyz", "/metrics"):
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
                 "nap_writer_up 1.0", "nap_ready 1.0", "nap_queue_depth"):
        assert name in text, name
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (CI installs Debian's prometheus package)")
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


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
])
def test_bad_weight_queries(client, query, reason):
    r = client.get(f"/v1/weights?{query}")
    assert r.status_code == 422
    assert r.json()["error"] == reason


def test_request_ids_are_echoed_and_logged(server, client):
    r = client.get("/v1/stats", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    assert any(e.get("request_id") == "abc-123" and e.get("route") == "/v1/stats" for e in lines)
    r = client.get("/v1/stats", headers={"X-Request-ID": "bad id\"}"})
    assert r.headers["x-request-id"] != 'bad id"}'  # replaced, not echoed into logs


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
