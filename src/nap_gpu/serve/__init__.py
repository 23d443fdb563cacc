"""``nap-gpu serve``: the engine as an HTTP service (extra ``serve``).

    nap-gpu serve --state-dir state/ --memories 1M      # or NAP_STATE_DIR, NAP_MEMORIES, ...

Start-up opens (or creates) the durable state, recovering the newest snapshot and the log,
then starts the writer and the periodic health check, then binds. SIGTERM (or Ctrl-C) stops
accepting connections, lets requests in flight finish (their writes included), drains the
write queue, writes a final snapshot and exits 0. See docs/serving.md.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import numpy as np

from .. import backends, metrics as _metrics
from ..durable import DurableEngine
from ..monitor import Monitor
from .app import create_app, disk_writable_probe
from .observability import ServiceMetrics, configure_logging, gpu_status_cached
from .settings import Settings
from .writer import Writer

__all__ = ["ServiceState", "Settings", "create_app", "run"]

log = logging.getLogger("nap_gpu.serve")

#: Without labels there are no R/P populations: only the rules on the weights themselves
#: (finite, inside [0, 1]) and latency apply, so the population rules are never due.
_NEVER = 2**62


class ServiceState:
    """Everything the API needs: the engine, its writer, metrics, health and settings."""

    def __init__(self, settings: Settings, engine: DurableEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.host_backend = backends.get("numpy")  # validation runs on host arrays
        self.metrics_backend = backends.resolve("cpp" if backends.available_backends()["cpp"]
                                                is None else "numpy")
        self.metrics = ServiceMetrics(self)
        self.gpu_status = gpu_status_cached()
        self.disk_writable = disk_writable_probe(settings.state_dir)
        self.has_labels = settings.labels is not None
        labels = (np.load(settings.labels, allow_pickle=False) if self.has_labels
                  else np.ones(engine.n, np.uint8))
        # The operator gave populations: their rules apply from the start.
        due = 0 if self.has_labels else _NEVER
        self.monitor = Monitor(engine, labels, warmup=due, settle=due)
        self.last_health: dict | None = None
        self.writer = Writer(engine, max_queued=settings.max_queued_events,
                             on_applied=self._applied)
        engine.fsync_observer = self.metrics.fsync_seconds.observe
        self._stop = threading.Event()
        self._health_thread = threading.Thread(target=self._health_loop, name="nap-health",
                                               daemon=True)

    def start(self) -> None:
        self.writer.start()
        self._health_thread.start()  # the first check runs at once, beside start-up

    def readiness(self) -> dict[str, bool]:
        """What /readyz checks: state loaded, writer running, state directory writable."""
        return {"state_loaded": self.engine is not None, "writer_running": self.writer.alive,
                "disk_writable": self.disk_writable()}

    def _applied(self, kind: str, events: int, seconds: float) -> None:
        self.metrics.apply_seconds.observe(seconds)
        self.monitor.observe_latency(seconds * 1e3)

    def check_health(self) -> dict:
        """Metrics from a copy of the weights (writes wait only for the copy), then the
        monitor's rules and playbook (corruption: restore from snapshot + log)."""
        with self.writer.lock:
            host = self.engine.to_numpy()
        m = _metrics.compute(host, self.monitor.labels, self.metrics_backend)
        del host
        with self.writer.lock:
            event = self.monitor.check(m)
        gauges = self.metrics.population
        for name, value in (("separation", m.separation), ("inversion_ratio", m.inversion_ratio),
                            ("saturation", m.saturation), ("weight_min", m.min),
                            ("weight_max", m.max), ("nonfinite_weights", m.nonfinite),
                            ("healthy", 1.0 if event["ok"] else 0.0),
                            ("health_check_timestamp_seconds", event["time"])):
            gauges[name].set(value)
        self.last_health = event
        return event

    def _health_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_health()
            except Exception:  # noqa: BLE001 - the service goes on; the error is logged
                log.exception("health check failed")
            self._stop.wait(self.settings.stats_interval)

    def shutdown(self) -> None:
        """Drain the writes, write a final snapshot, close the state."""
        self._stop.set()
        self.writer.stop()
        try:
            if self.writer.failure is None:
                path = self.engine.checkpoint()
                log.info("final snapshot written", extra={"snapshot": path.name,
                                                          "sequence": self.engine.sequence})
        finally:
            self.engine.close()


def open_state(settings: Settings) -> DurableEngine:
    return DurableEngine.open(settings.state_dir, n=settings.memories, seed=settings.seed,
                              backend=settings.backend, fsync=settings.fsync,
                              group_ms=settings.group_ms, keep=settings.keep,
                              snapshot_every=settings.snapshot_every or None,
                              wal_retention="newest")


def run(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    import uvicorn  # noqa: PLC0415 - the serve extra

    configure_logging(settings.log_level)
    log.info("starting", extra={"settings": settings.public()})
    start = time.perf_counter()
    engine = open_state(settings)
    state = ServiceState(settings, engine)
    state.start()
    log.info("state loaded", extra={"n": engine.n, "backend": engine.backend,
                                    "sequence": engine.sequence,
                                    "seconds": round(time.perf_counter() - start, 3)})
    server = uvicorn.Server(uvicorn.Config(
        create_app(state), host=settings.host, port=settings.port, log_config=None,
        access_log=False, timeout_graceful_shutdown=30, lifespan="off"))
    # uvicorn handles SIGTERM/SIGINT while it runs (stop accepting, finish requests in
    # flight), then re-raises the signal to the handler it found: make that one ours, so the
    # drain and the final snapshot run and the exit code is 0, as an orchestrator expects.
    received = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        server.run()
    finally:
        state.shutdown()
    log.info("stopped", extra={"sequence": engine.sequence,
                               "signal": signal.Signals(received[0]).name if received else None})
    return 0 if server.started else 1
