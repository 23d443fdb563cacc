"""The SLA monitor: the health rules of DESIGN.md §3 evaluated as a population trains, with a
bounded history, structured events and the incident playbook.

    mon = nap.Monitor(eng, labels, warmup=10, every=1, on_alert=callback,
                      latency_budget_ms=(5.0, 20.0))
    for q in qualities:
        mon.step(q)            # eng.step(q), timed after a device synchronise, then checked

Every evaluation is an event (a dict): it goes to the ``nap_gpu.monitor`` logger as one JSON
object per line, into ``mon.history`` (bounded), and — when a rule fails — to ``on_alert``.

The playbook (from the deployment guide), run by the monitor itself:
* the law never produces a non-finite weight or one outside [0, 1], so either means corruption
  in memory, or a logged call that produced it (``step(q, check_finite=False)`` with NaN
  qualities). A durable engine (``Engine.open``) is restored from its last good snapshot and
  log (``recover()``: nothing acknowledged is lost), then checked again: if the weights are
  good, writes go on; if the log replays to the same damage, or the restore fails, writes
  stop (``mon.step`` refuses, and so does the engine: ``DurableEngine.stop_writes``). A
  plain engine has nothing to restore from: out-of-bounds weights are clamped back
  (``Engine.clamp``); non-finite ones stop writes (``mon.step`` refuses). The event says
  what was done.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

from . import _inputs
from . import metrics as _metrics

if TYPE_CHECKING:
    from ._types import ArrayInput, Labels
    from .durable import DurableEngine
    from .engine import Engine

__all__ = ["Monitor", "WritesStoppedError"]

log = logging.getLogger("nap_gpu.monitor")


class WritesStoppedError(RuntimeError):
    """The monitor found corruption it could not repair; the engine takes no more writes."""


class _Rules(TypedDict):  # metrics.health's rule parameters
    warmup: int
    settle: int
    min_separation: float
    min_inversion: float


class Monitor:
    """Health rules over an engine, evaluated every ``every`` iterations.

    Parameters
    ----------
    engine : Engine (or a durable engine)
    labels : array
        One label per memory (1/True = reinforced R, 0/False = punished P).
    warmup : int
        Separation must exceed ``min_separation`` from this iteration on (default 10).
    settle : int
        The inversion ratio must exceed ``min_inversion`` from this iteration on (default 50).
    every : int
        Evaluate every ``every`` iterations (metrics cost a sort: O(n log n)).
    latency_budget_ms : (p50, p99), optional
        Step latency budget; the p50 and p99 over the latency window must stay within it.
    history : int
        Events kept (oldest dropped first).
    on_alert : callable(event), optional
        Called with every event whose rules failed.

    Examples
    --------
    >>> import nap_gpu as nap
    >>> work = nap.ReferenceWorkload(1000, seed=0)
    >>> mon = nap.Monitor(nap.Engine(1000, seed=0), work.labels, every=10)
    >>> for _ in range(50):
    ...     event = mon.step(work.next_quality())  # the event every 10th step, else None
    >>> event["iteration"], event["ok"], event["failures"], len(mon.history)
    (50, True, [], 5)
    """

    def __init__(self, engine: Engine | DurableEngine, labels: Labels, *, warmup: int = 10,
                 settle: int = 50, every: int = 1,
                 latency_budget_ms: tuple[float, float] | None = None, history: int = 1000,
                 latency_window: int = 1000, min_separation: float = 0.2,
                 min_inversion: float = 0.9,
                 on_alert: Callable[[dict[str, Any]], None] | None = None) -> None:
        if every < 1 or history < 1 or latency_window < 1:
            raise ValueError("every, history and latency_window must be >= 1")
        if latency_budget_ms is not None and not (0 < latency_budget_ms[0] <= latency_budget_ms[1]):
            raise ValueError(f"latency_budget_ms must be (p50, p99) with 0 < p50 <= p99, "
                             f"got {latency_budget_ms!r}")
        self.engine = engine
        self.labels = _inputs.labels(labels, engine.n)  # validated now, not at the first check
        self.rules = _Rules(warmup=warmup, settle=settle, min_separation=min_separation,
                            min_inversion=min_inversion)
        self.every, self.latency_budget_ms, self.on_alert = every, latency_budget_ms, on_alert
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=history)
        self._latencies: collections.deque[float] = collections.deque(maxlen=latency_window)
        self.writes_stopped = False
        self.last_step_ms: float | None = None

    def step(self, quality: ArrayInput, **kwargs: Any) -> dict[str, Any] | None:
        """``engine.step(quality)``, timed; returns the event when this iteration is checked."""
        if self.writes_stopped:
            raise WritesStoppedError("the monitor stopped writes after unrepaired corruption; "
                                     "see the last event in mon.history")
        start = time.perf_counter()
        self.engine.step(quality, **kwargs)
        self.engine.synchronize()
        self.observe_latency((time.perf_counter() - start) * 1e3)
        return self.check() if self.engine.iteration % self.every == 0 else None

    def observe_latency(self, ms: float) -> None:
        """Record one call's latency (``step`` does this itself; a service records its writes)."""
        self.last_step_ms = ms
        self._latencies.append(ms)

    def latency_ms(self) -> tuple[float, float] | None:
        """(p50, p99) of the step latencies in the window, or None before the first step.

        Each is the lower order statistic (NumPy's ``method="lower"``): the value at rank
        floor(f * (count - 1)). From two samples on, the single slowest call is never the
        p99, so one outlier (a page fault, a snapshot beside the step) cannot fail the budget
        while it stays in the window; slow calls that are over 1% of it (two in a hundred) do."""
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        pick = lambda f: ordered[math.floor(f * (len(ordered) - 1))]  # noqa: E731
        return pick(0.50), pick(0.99)

    def check(self, metrics: _metrics.Metrics | None = None, *,
              iteration: int | None = None) -> dict[str, Any]:
        """Evaluate the rules now, run the playbook if needed, and return the event.

        ``metrics``: the engine's metrics if already computed (a service computes them from a
        copy of the weights, so that writes need not wait for the sort). ``iteration``: what
        the warm-up and settle rules count (default ``engine.iteration``, the dense steps; a
        service counts its logged writes)."""
        iteration = self.engine.iteration if iteration is None else iteration
        m = self.engine.metrics(self.labels) if metrics is None else metrics
        verdict = _metrics.health(m, iteration, warmup=self.rules["warmup"],
                                  settle=self.rules["settle"],
                                  min_separation=self.rules["min_separation"],
                                  min_inversion=self.rules["min_inversion"])
        failures = list(verdict.failures)
        latency = self.latency_ms()
        if self.latency_budget_ms and latency:
            for name, value, budget in zip(("p50", "p99"), latency, self.latency_budget_ms):
                if value > budget:
                    failures.append(f"latency {name} {value:.3f} ms > budget {budget} ms")
        actions = self._playbook(m)
        event = {
            "event": "health", "time": time.time(), "iteration": iteration,
            "ok": not failures, "failures": failures, "actions": actions,
            "separation": _number(m.separation), "inversion_ratio": _number(m.inversion_ratio),
            "saturation": _number(m.saturation), "nonfinite": m.nonfinite,
            "min": _number(m.min), "max": _number(m.max),
            "latency_ms": None if latency is None else {"p50": latency[0], "p99": latency[1]},
            "writes_stopped": self.writes_stopped,
        }
        self.history.append(event)
        log.log(logging.INFO if event["ok"] else logging.WARNING, json.dumps(event))
        if failures and self.on_alert is not None:
            self.on_alert(event)
        return event

    def _playbook(self, m: _metrics.Metrics) -> list[str]:
        what = _corruption(m)
        if what is None:
            return []
        recover = getattr(self.engine, "recover", None)
        if recover is not None:  # a durable engine: every acknowledged call is on disk
            try:
                recover()
            except Exception as exc:  # noqa: BLE001 - whatever it is, the weights stay bad
                return [self._stop_writes(f"{what}: restoring from the last good snapshot and "
                                          f"the log failed ({exc}); writes stopped")]
            # The repair holds only if the log replays to good weights: a logged call that
            # produced the damage (step(q_nan, check_finite=False)) is replayed with the rest.
            still = _corruption(self.engine.metrics(self.labels))
            if still is None:
                return [f"{what}: restored from the last good snapshot and the log (checked: "
                        "finite, in [0, 1]); writes continue"]
            return [self._stop_writes(
                f"{what}: restored from the last good snapshot and the log, but the restored "
                f"weights still hold {still}: a logged call produces them (e.g. a step with "
                "check_finite=False and non-finite qualities), so the log cannot repair them; "
                "writes stopped")]
        clamp = getattr(self.engine, "clamp", None)
        if not m.nonfinite and clamp is not None:
            clamp()
            return [f"{what}: clamped"]
        if clamp is None:  # a ShardedEngine: no repair in place
            return [self._stop_writes(f"{what}: writes stopped (this engine can neither restore "
                                      "nor clamp its weights in place; load it again from its "
                                      "state or a save)")]
        return [self._stop_writes(f"{what}: writes stopped (this engine has no durable state "
                                  "to restore from; open it with Engine.open)")]

    def _stop_writes(self, reason: str) -> str:
        """Stop writes here (``step`` refuses) and, where the engine can, at the engine too,
        so that writes not made through the monitor (a service's) are refused as well."""
        self.writes_stopped = True
        stop = getattr(self.engine, "stop_writes", None)
        if stop is not None:
            stop(f"the monitor stopped writes: {reason}")
        return reason


def _corruption(m: _metrics.Metrics) -> str | None:
    """What is wrong with weights the law can never produce, or None."""
    if m.nonfinite:
        return f"{m.nonfinite} non-finite weights"
    if m.n and not (m.min >= 0.0 and m.max <= 1.0):
        return f"weights outside [0, 1] (min {m.min}, max {m.max})"
    return None


def _number(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no NaN
