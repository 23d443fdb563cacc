"""What the service tells its operators: Prometheus metrics and one JSON object per log line.

Every metric is ``nap_``-prefixed and lives in the service's own registry (several services
can run in one process, as the tests do). Counters and histograms are updated as requests
are served; the population's gauges (separation, inversion ratio, ...) are set by the
periodic health check, and the state and GPU gauges are read when Prometheus scrapes.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .. import __version__, telemetry

__all__ = ["ServiceMetrics", "configure_logging", "method_label", "request_id"]

#: Label values come from a fixed set: any token is a valid HTTP method, and each new label
#: value is a new series (20,000 made-up methods grew /metrics from 18 KB to 1.4 MB).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in _METHODS else "other"

#: The current request's id (set by the service's middleware; logged with every line).
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0)


class ServiceMetrics:
    """The service's Prometheus registry and the metrics in it."""

    def __init__(self, state) -> None:
        disable_created_metrics()  # no *_created series: they double the scrape for nothing
        self.registry = r = CollectorRegistry()
        self.requests = Counter("nap_requests", "HTTP requests served",
                                ["route", "method", "code"], registry=r)
        self.request_seconds = Histogram("nap_request_duration_seconds",
                                         "HTTP request latency", ["route"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.events = Counter("nap_events", "feedback events applied", registry=r)
        self.rejected = Counter("nap_rejected", "requests rejected, by reason", ["reason"],
                                registry=r)
        self.apply_seconds = Histogram("nap_apply_duration_seconds",
                                       "time to log and apply one write batch",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.fsync_seconds = Histogram("nap_fsync_duration_seconds",
                                       "write-ahead log fsync latency",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.bootstrap_seconds = Gauge("nap_bootstrap_duration_seconds",
                                       "process start to serving: state opened and recovered, "
                                       "writer and health check started", registry=r)
        self.scheduled_decays = Counter("nap_scheduled_decays", "decays run by the schedule "
                                        "(NAP_DECAY_EVERY_S)", registry=r)
        self.token_reloads = Counter("nap_token_reloads", "API token file reloads, by result",
                                     ["result"], registry=r)
        self.population = {name: Gauge(f"nap_{name}", text, registry=r) for name, text in (
            ("separation", "mean(w[R]) - mean(w[P]) at the last health check"),
            ("inversion_ratio", "P(a random R memory outranks a random P memory)"),
            ("saturation", "fraction of weights within eps of 0 or 1"),
            ("weight_min", "smallest weight"),
            ("weight_max", "largest weight"),
            ("nonfinite_weights", "NaN or infinite weights (corruption)"),
            ("healthy", "1 if every health rule held at the last check, else 0"),
            ("health_check_timestamp_seconds", "when the last health check ran"),
        )}
        r.register(_StateCollector(state))


class _StateCollector:
    """Gauges read at scrape time: the state, the writer, and NVML's GPU readings."""

    def __init__(self, state) -> None:
        self.state = state

    def collect(self):
        s = self.state
        eng, writer = s.engine, s.writer
        yield GaugeMetricFamily("nap_memories", "memories in the population", value=eng.n)
        yield GaugeMetricFamily("nap_writer_up", "1 while the writer takes writes",
                                value=1.0 if writer.alive else 0.0)
        yield GaugeMetricFamily("nap_ready", "1 when /readyz would answer 200",
                                value=1.0 if all(s.readiness().values()) else 0.0)
        yield GaugeMetricFamily("nap_queue_depth", "events waiting for the writer",
                                value=writer.queued_events)
        yield GaugeMetricFamily("nap_wal_records_since_snapshot",
                                "log records a recovery would replay",
                                value=eng.sequence - eng.snapshot_sequence)
        p = eng.params
        info = GaugeMetricFamily("nap_build_info", "version, backend and the law's parameters",
                                 labels=["version", "backend", "lr", "gate", "decay"])
        info.add_metric([__version__, eng.backend, *(str(v) for v in p.float32())], 1.0)
        yield info
        guard = getattr(s, "guard", None)
        if guard is not None:
            yield GaugeMetricFamily("nap_open_connections", "HTTP connections open",
                                    value=len(guard.live))
            yield GaugeMetricFamily("nap_open_feedback_streams",
                                    "feedback streams open (/v1/feedback/stream)",
                                    value=guard.streams)
            yield GaugeMetricFamily("nap_max_connections", "HTTP connections open at most",
                                    value=guard.cap)
            closed = CounterMetricFamily("nap_connections_closed", "connections the service "
                                         "closed, by reason", labels=["reason"])
            for reason, count in guard.closed.items():
                closed.add_metric([reason], count)
            yield closed
            yield CounterMetricFamily("nap_accept_errors", "accept() failures (out of "
                                      "descriptors or memory)", value=guard.accept_errors)
        if eng.snapshot_time is not None:
            yield GaugeMetricFamily("nap_snapshot_age_seconds", "age of the newest snapshot",
                                    value=max(0.0, time.time() - eng.snapshot_time))
        yield from _gpu_families(s.gpu_status())


_GPU_GAUGES = (  # (metric, help, telemetry key, scale)
    ("nap_gpu_utilization_ratio", "GPU busy fraction", "utilization_percent", 0.01),
    ("nap_gpu_memory_used_bytes", "GPU memory used", "memory_used_bytes", 1),
    ("nap_gpu_memory_total_bytes", "GPU memory", "memory_total_bytes", 1),
    ("nap_gpu_temperature_celsius", "GPU temperature", "temperature_c", 1),
)


def _gpu_families(status: dict):
    """NVML readings per GPU; nothing at all where there is no GPU (or no NVML)."""
    devices = status.get("devices") or []
    for name, text, key, scale in _GPU_GAUGES if devices else ():
        family = GaugeMetricFamily(name, text, labels=["gpu"])
        for device in devices:
            if device.get(key) is not None:
                family.add_metric([str(device["index"])], float(device[key]) * scale)
        yield family


def throttled(read, period: float):
    """``read()`` at most once per ``period`` seconds; the last value in between (probes
    that cost milliseconds, asked by every scrape or readiness check)."""
    cache = {"at": -math.inf, "value": None}

    def cached():
        now = time.monotonic()
        if now - cache["at"] >= period:
            cache["value"], cache["at"] = read(), now
        return cache["value"]
    return cached


def gpu_status_cached(period: float = 5.0):
    """``telemetry.gpu_status`` at most once per ``period`` seconds (NVML calls cost ~ms)."""
    return throttled(telemetry.gpu_status, period)


# -- logs -------------------------------------------------------------------------------------
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class _MonitorFields(logging.Filter):
    """The SLA monitor logs each event as a JSON string: here its keys become the line's own
    fields (message "health check"), so log queries can filter on ``ok``, ``failures``..."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "nap_gpu.monitor" and isinstance(record.msg, str) \
                and record.msg.startswith("{") and not record.args:
            try:
                event = json.loads(record.msg)
            except ValueError:
                return True
            if isinstance(event, dict):
                record.msg = "health check" if event.get("ok", True) else "health check failed"
                for key, value in event.items():
                    if key == "time":
                        key = "check_time"
                    if key not in _STANDARD:
                        setattr(record, key, value)
        return True


class _Once(logging.Filter):
    """The backend choice is logged each time one is resolved (the service resolves several
    times at start-up): once per process is enough."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.name == "nap_gpu" and "backend" in text and "cho" in text:
            if text in self.seen:
                return False
            self.seen.add(text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and any ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


JsonFormatter.converter = time.gmtime


def configure_logging(level: str) -> None:
    """JSON lines on stdout for nap's loggers and uvicorn's (its access log is replaced by
    the service's own request log, which carries the request id)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_MonitorFields())
    handler.addFilter(_Once())
    logging.captureWarnings(True)  # e.g. a failed automatic snapshot: a JSON line too
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
