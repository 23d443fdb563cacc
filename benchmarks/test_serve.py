"""The HTTP service under load: events per second through ``POST /v1/feedback`` and request
latency, beside the engine's own in-process throughput for the same batches; and the time
from process start to ready.

Groups (tiers from 1M up; the service runs as a real ``nap-gpu serve`` child process on
loopback, clients are threads with one ``httpx.Client`` each):

* ``serve-feedback-<tier>``: 400K events (1M from the load generator) from ``CLIENTS``
  concurrent connections, ``fsync=always`` and ``fsync=group``: JSON bodies of 1K events from
  client threads here, binary bodies of 1K and 10K events from ``benchmarks/loadgen.py`` in a
  process of its own (raw keep-alive connections: little client cost beside the service), and
  binary 1K-event messages over ``STREAMS`` feedback streams (``/v1/feedback/stream``) from it;
  beside ``in-process``: the same 1K batches through ``DurableEngine.update`` (fsync=always)
  and ``Engine.update`` (no log), one after another. ``extra_info``: events/s, request p50/p99.
* ``serve-startup-<tier>``: process start to ``/readyz`` = 200, on existing state (the
  snapshot loaded and verified, the log replayed), then SIGTERM.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import scale_support
from scale_support import size_label

import nap_gpu as nap

from benchmarks.report.schema import Record

httpx = pytest.importorskip("httpx", reason="httpx is not installed")
pytest.importorskip("fastapi", reason="the serve extra is not installed")

BATCH = 1_000
CLIENTS = 8
TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Service:
    def __init__(self, state, n: int, **env) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "NAP_STATE_DIR": str(state), "NAP_MEMORIES": str(n),
                    "NAP_PORT": str(self.port), "NAP_API_TOKEN": TOKEN, "NAP_LOG_LEVEL": "warning",
                    "NAP_SNAPSHOT_EVERY": "0", **env}

    def start(self) -> float:
        """Start; seconds until /readyz answered 200."""
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "nap_gpu.cli", "serve"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"nap-gpu serve exited with {self.proc.returncode}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(600)


def _need(tier: int, smoke: bool) -> None:
    if tier < 1_000_000 and not smoke:
        pytest.skip("the service benchmarks run from the 1M tier up")
    fits, why = scale_support.op_fits("serve", tier)
    if not fits:
        pytest.skip(why)


def _batches(n: int, events: int) -> list:
    rng = np.random.default_rng([n, 11])
    return [(rng.integers(0, n, BATCH), rng.random(BATCH, dtype=np.float32))
            for _ in range(events // BATCH)]


def _post_json(url: str, batches) -> list[float]:
    """Post the batches as JSON from CLIENTS threads (each its own share, in order); latencies
    (s)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client(share) -> None:
        mine = []
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as http:
            for ids, q in share:
                t0 = time.perf_counter()
                r = http.post("/v1/feedback", json={"ids": ids.tolist(), "quality": q.tolist()})
                mine.append(time.perf_counter() - t0)
                r.raise_for_status()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(batches[i::CLIENTS],))
               for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


#: Feedback streams of the ``stream`` cases, and the batches each may have unanswered.
STREAMS, STREAM_WINDOW = 2, 32


def _load(service: _Service, n: int, events: int, per_body: int, streamed: bool) -> dict:
    """benchmarks/loadgen.py in a process of its own: binary bodies from CLIENTS connections,
    or binary messages over STREAMS feedback streams."""
    how = (["--connections", str(STREAMS), "--stream", str(STREAM_WINDOW)] if streamed
           else ["--connections", str(CLIENTS)])
    done = subprocess.run(
        [sys.executable, str(pathlib.Path(__file__).with_name("loadgen.py")), "--port",
         str(service.port), "--token", TOKEN, "--memories", str(n), "--events-per-body",
         str(per_body), "--bodies", str(events // per_body), *how],
        capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"loadgen failed: {done.stdout}{done.stderr}")
    return json.loads(done.stdout)


#: (body, fsync, events per request): JSON from client threads here, binary from the load
#: generator's process (1K and 10K events a request), and the engine's own baselines.
CASES = [("json", "always", BATCH), ("json", "group", BATCH),
         ("binary", "always", BATCH), ("binary", "group", BATCH),
         ("binary", "always", 10 * BATCH), ("binary", "group", 10 * BATCH),
         ("stream", "always", BATCH), ("stream", "group", BATCH),
         ("in-process", "always", BATCH), ("in-process", "none", BATCH)]


def _case_id(body: str, fsync: str, per_body: int) -> str:
    return f"{body}-{fsync}" + (f"-{size_label(per_body)}" if per_body != BATCH else "")


@pytest.mark.parametrize("body, fsync, per_body", CASES, ids=[_case_id(*c) for c in CASES])
def test_serve_feedback(benchmark, smoke, tier, tmp_path, body, fsync, per_body):
    _need(tier, smoke)
    benchmark.group = f"serve-feedback-{size_label(tier)}"
    benchmark.name = f"{_case_id(body, fsync, per_body)}[{size_label(tier)}]"
    # 1M events from the load generator (a second or two: a steadier rate than 400K)
    events = 20_000 if smoke else 1_000_000 if body in ("binary", "stream") else 400_000
    batches = _batches(tier, events)
    # the same events at every tier: no growth with n to fit
    info = {"impl": _case_id(body, fsync, per_body), "op": "serve-feedback", "n": tier,
            "events": events, "growth": "none",
            "role": "baseline" if body == "in-process" else "nap",
            "detail": {"batch": per_body,
                       "clients": STREAMS if body == "stream" else CLIENTS,
                       "client": "threads" if body == "json" else "loadgen process"}}
    latencies: list[float] = []
    if body in ("binary", "stream"):  # timed by the load generator (the benchmark's own
        # clock would add the generator's start)
        service = _Service(tmp_path / "state", tier, NAP_FSYNC=fsync)
        service.start()
        try:
            load: dict = {}
            benchmark.pedantic(lambda: load.update(_load(service, tier, events, per_body,
                                                         body == "stream")),
                               rounds=1, iterations=1)
        finally:
            service.stop()
        info.update(events_per_s=load["events_per_s"], latency_ms_p50=load["latency_ms_p50"],
                    latency_ms_p99=load["latency_ms_p99"])
        benchmark.extra_info.update(Record(**info).json())
        return
    if body == "in-process":
        eng = (nap.Engine(tier, seed=0) if fsync == "none" else
               nap.Engine.open(tmp_path / "state", n=tier, seed=0, snapshot_every=None,
                               wal_retention="newest"))

        def run():
            for ids, q in batches:
                t0 = time.perf_counter()
                eng.update(ids, q)
                latencies.append(time.perf_counter() - t0)
        benchmark.pedantic(run, rounds=1, iterations=1)
        if fsync != "none":
            eng.close()
    else:
        service = _Service(tmp_path / "state", tier, NAP_FSYNC=fsync)
        service.start()
        try:
            benchmark.pedantic(lambda: latencies.extend(_post_json(service.url, batches)),
                               rounds=1, iterations=1)
        finally:
            service.stop()
    p50, p99 = np.percentile(np.asarray(latencies) * 1e3, [50, 99])
    info.update(events_per_s=events / benchmark.stats.stats.median,
                latency_ms_p50=float(p50), latency_ms_p99=float(p99))
    benchmark.extra_info.update(Record(**info).json())


def test_serve_startup(benchmark, smoke, tier, tmp_path):
    _need(tier, smoke)
    benchmark.group = f"serve-startup-{size_label(tier)}"
    benchmark.name = f"startup[{size_label(tier)}]"
    service = _Service(tmp_path / "state", tier)
    created = service.start()  # first start creates the state (weights + first snapshot)
    with httpx.Client(base_url=service.url, headers=AUTH) as http:
        for ids, q in _batches(tier, 10 * BATCH):  # a log to replay on the next start
            http.post("/v1/feedback", content=ids.astype("<i8").tobytes()
                      + q.astype("<f4").tobytes(),
                      headers={"Content-Type": "application/octet-stream"}).raise_for_status()
    service.proc.kill()  # no final snapshot: the next start replays the log
    service.proc.wait()
    seconds = []

    def start_and_stop():
        seconds.append(service.start())
        service.proc.kill()
        service.proc.wait()
    benchmark.pedantic(start_and_stop, rounds=1 if smoke else 3, iterations=1)
    benchmark.extra_info.update(Record(op="serve-startup", impl="nap-gpu serve", role="nap", n=tier,
                                       first_start_s=created, ready_s=seconds).json())
