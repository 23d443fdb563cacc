"""``nap-gpu serve``: the engine as an HTTP service (extra ``serve``).

    nap-gpu serve --state-dir state/ --memories 1M      # or NAP_STATE_DIR, NAP_MEMORIES, ...

Start-up opens (or creates) the durable state, recovering the newest snapshot and the log,
then starts the writer and the periodic health check, then binds. SIGTERM (or Ctrl-C) stops
accepting connections, lets requests in flight finish (their writes included), drains the
write queue, writes a final snapshot and exits 0. SIGHUP re-reads the API token file (as does
a change of the file). See docs/serving.md.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import numpy as np

from .. import backends
from .. import metrics as _metrics
from ..durable import DurableEngine
from ..monitor import Monitor
from ..params import Params
from .app import create_app, disk_writable_probe
from .connections import ACCEPT_BURST, MAX_HEAD_BYTES, Guard, connection_cap, quiet_accept_errors
from .observability import ServiceMetrics, configure_logging, gpu_status_cached
from .settings import Settings, read_token_file
from .writer import Op, QueueFullError, Writer, WriterStoppedError

__all__ = ["ServiceState", "Settings", "create_app", "run"]

log = logging.getLogger("nap_gpu.serve")

#: Without labels there are no R/P populations: only the rules on the weights themselves
#: (finite, inside [0, 1]) and latency apply, so the population rules are never due.
_NEVER = 2**62
#: How often the token file is looked at for a change (SIGHUP reloads at once).
_TOKEN_POLL_S = 1.0


class ServiceState:
    """Everything the API needs: the engine, its writer, metrics, health and settings."""

    def __init__(self, settings: Settings, engine: DurableEngine,
                 guard: Guard | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.guard = guard  # the connections (None until the server is set up)
        self.tokens = settings.tokens()
        self._token_stamp = _stamp(settings.api_token_file)
        self._reload = threading.Event()
        self.host_backend = backends.best_host()  # validation and metrics run on host arrays
        self.metrics = ServiceMetrics(self)
        self.gpu_status = gpu_status_cached()
        self.disk_writable = disk_writable_probe(settings.state_dir)
        self.has_labels = settings.labels is not None
        labels = (np.load(settings.labels, allow_pickle=False) if settings.labels is not None
                  else np.ones(engine.n, np.uint8))
        # With populations given, the guide's rules apply once the state has taken
        # ``health_warmup`` / ``health_settle`` logged writes (counted from its creation, so a
        # restart does not start a new grace period); without them, only corruption counts.
        self.monitor = Monitor(
            engine, labels, warmup=settings.health_warmup if self.has_labels else _NEVER,
            settle=settings.health_settle if self.has_labels else _NEVER)
        self.last_health: dict | None = None
        self.writer = Writer(engine, max_queued=settings.max_queued_events,
                             on_applied=self._applied)
        engine.fsync_observer = self.metrics.fsync_seconds.observe
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._health_loop, name="nap-health",
                                          daemon=True)]
        if settings.api_token_file is not None:
            self._threads.append(threading.Thread(target=self._token_loop, name="nap-tokens",
                                                  daemon=True))
        if settings.decay_every_s:
            self._threads.append(threading.Thread(target=self._decay_loop, name="nap-decay",
                                                  daemon=True))

    def start(self) -> None:
        self.writer.start()
        for thread in self._threads:  # the first health check runs at once, beside start-up
            thread.start()

    # -- API tokens ------------------------------------------------------------------------
    def reload_tokens(self) -> None:
        """Ask for the token file to be read again now (SIGHUP; safe in a signal handler)."""
        self._reload.set()

    def _token_loop(self) -> None:
        path = self.settings.api_token_file
        assert path is not None, "the token loop runs only with a token file"
        while not self._stop.is_set():
            asked = self._reload.wait(_TOKEN_POLL_S)
            self._reload.clear()
            if self._stop.is_set():
                return
            stamp = _stamp(path)
            if not asked and stamp == self._token_stamp:
                continue
            try:
                tokens = read_token_file(path)
            except ValueError as exc:  # keep the tokens in force: better than none at all
                if asked or stamp != self._token_stamp:
                    log.error("API token file not reloaded; the previous tokens stay in force",
                              extra={"error": str(exc), "trigger": "SIGHUP" if asked else "change"})
                    self.metrics.token_reloads.labels("failed").inc()
                self._token_stamp = stamp
                continue
            self._token_stamp = stamp
            changed = tokens != self.tokens
            self.tokens = tokens
            self.metrics.token_reloads.labels("changed" if changed else "unchanged").inc()
            log.info("API tokens reloaded", extra={"tokens": len(tokens), "changed": changed,
                                                    "trigger": "SIGHUP" if asked else "change"})

    # -- scheduled decay ------------------------------------------------------------------
    def _decay_loop(self) -> None:
        """A passive decay every ``decay_every_s``: logged and ordered like any write."""
        period = self.settings.decay_every_s
        while not self._stop.wait(period):
            try:
                future = self.writer.submit(Op("decay", k=1))
            except QueueFullError as exc:
                log.warning("scheduled decay skipped", extra={"reason": str(exc)})
                continue
            except WriterStoppedError:
                return
            try:
                sequence = future.result()
            except Exception as exc:  # noqa: BLE001 - logged by the writer; try next time
                log.warning("scheduled decay failed", extra={"error": repr(exc)})
                continue
            self.metrics.scheduled_decays.inc()
            log.info("scheduled decay", extra={"sequence": sequence, "k": 1})

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
        m = _metrics.compute(host, self.monitor.labels, self.host_backend)
        del host
        with self.writer.lock:
            event = self.monitor.check(m, iteration=self.engine.sequence)
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
        self._reload.set()
        self.writer.stop()
        try:
            if self.writer.failure is None:
                path = self.engine.checkpoint()
                log.info("final snapshot written", extra={"snapshot": path.name,
                                                          "sequence": self.engine.sequence})
        except OSError as exc:  # e.g. still no space: every write is in the log all the same
            log.error("final snapshot failed; the log holds every write",
                      extra={"error": repr(exc), "sequence": self.engine.sequence})
        finally:
            self.engine.close()


def _stamp(path) -> tuple | None:
    """What tells a changed file (a Kubernetes secret is replaced through a symlink swap)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size, st.st_dev


def open_state(settings: Settings, backend: str | None = None) -> DurableEngine:
    """The durable state; the law's parameters from the settings when it is created, checked
    against the state's own when it is recovered (they are fixed at creation)."""
    given = settings.params()
    # Parameters only for a new state: for an existing one, only the given ones are checked
    # (open would compare all three, defaults included, with the state's).
    fresh = not any(settings.state_dir.glob("snap-*.nap"))
    engine = DurableEngine.open(settings.state_dir, n=settings.memories, seed=settings.seed,
                                backend=backend or settings.backend, fsync=settings.fsync,
                                group_ms=settings.group_ms, keep=settings.keep,
                                snapshot_every=settings.snapshot_every or None,
                                wal_retention=settings.wal_retention,
                                params=Params(**given) if given and fresh else None)
    wanted = Params(**{**vars(engine.params), **given})  # rounded to float32 like the state's
    differ = {k: (getattr(engine.params, k), getattr(wanted, k)) for k in given
              if getattr(engine.params, k) != getattr(wanted, k)}
    if differ:
        engine.close()
        raise ValueError(f"{settings.state_dir} holds {engine.params}; the law's parameters are "
                         f"fixed when the state is created, and "
                         + ", ".join(f"NAP_{k.upper()}={w} differs from {h}"
                                     for k, (h, w) in differ.items()))
    return engine


def run(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    import uvicorn  # noqa: PLC0415 - the serve extra

    configure_logging(settings.log_level)
    log.info("starting", extra={"settings": settings.public()})
    start = time.perf_counter()
    cap, nofile = connection_cap(settings.max_connections)
    # Resolved once: "auto" is probed and its choice logged here, not at every resolve.
    backend = backends.resolve(settings.backend).name
    engine = open_state(settings, backend)
    guard = Guard(cap=cap, header_timeout=settings.header_timeout_s,
                  body_timeout=settings.body_timeout_s)
    state = ServiceState(settings, engine, guard)
    state.start()
    bootstrap = time.perf_counter() - start
    state.metrics.bootstrap_seconds.set(bootstrap)
    log.info("state loaded", extra={"n": engine.n, "backend": engine.backend,
                                    "params": repr(engine.params), "sequence": engine.sequence,
                                    "seconds": round(bootstrap, 3)})
    protocol = guard.protocol(settings.http)
    log.info("connection limits", extra={
        "max_connections": cap, "asked": settings.max_connections, "rlimit_nofile": nofile,
        "header_timeout_s": settings.header_timeout_s, "body_timeout_s": settings.body_timeout_s,
        "keep_alive_s": settings.keep_alive_s, "http_parser": protocol.nap_parser})
    config = uvicorn.Config(
        create_app(state), host=settings.host, port=settings.port, log_config=None,
        access_log=False, timeout_graceful_shutdown=30, lifespan="off",
        http=protocol,
        # asyncio's loop, even where uvloop is installed (uvicorn's "auto" would take it): the
        # accept-error handling (quiet_accept_errors) is written and tested against asyncio's
        loop="asyncio",
        # uvicorn annotates an int but uses it as a delay (loop.call_later): 0.5 s works
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        ws_max_size=settings.max_body_bytes,  # a feedback stream's message: one body's limit
        ws_per_message_deflate=False,  # random ids and qualities do not compress: CPU spent
        backlog=ACCEPT_BURST)  # asyncio accepts this many per pass (the kernel queue: below)
    server = _server(config, guard)
    # uvicorn handles SIGTERM/SIGINT while it runs (stop accepting, finish requests in
    # flight), then re-raises the signal to the handler it found: make that one ours, so the
    # drain and the final snapshot run and the exit code is 0, as an orchestrator expects.
    received = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    # SIGHUP's default action ends the process (exit 129, no drain): here it reloads tokens.
    signal.signal(signal.SIGHUP, lambda signum, frame: _hangup(state))
    try:
        server.run(sockets=[config.bind_socket()])
    finally:
        state.shutdown()
    log.info("stopped", extra={"sequence": engine.sequence,
                               "signal": signal.Signals(received[0]).name if received else None})
    return 0 if server.started else 1


def _hangup(state: ServiceState) -> None:
    if state.settings.api_token_file is None:
        log.info("SIGHUP: no token file to reload (NAP_API_TOKEN is read only at start-up)")
    else:
        state.reload_tokens()


#: The kernel's accept queue (uvicorn's backlog is set small: asyncio accepts that many a pass).
_KERNEL_BACKLOG = 2048


def _server(config, guard: Guard):
    """uvicorn's server, with the accept errors rate-limited and a long kernel accept queue."""
    import asyncio  # noqa: PLC0415

    import uvicorn  # noqa: PLC0415 - the serve extra

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            quiet_accept_errors(asyncio.get_running_loop(), guard)
            await super().startup(sockets=sockets)
            for sock in sockets or ():
                sock.listen(_KERNEL_BACKLOG)
    return Server(config)
