"""Running one call on every shard, and what happens when shards fail: the fault model of
docs/sharding.md.

Owns the list of shards and their acknowledged log sequences; starting them; finding the
shards lost (a failed call, a dead or stalled worker) and fencing workers that do not answer
(killed through their nanny); reopening lost shards from their durable state and finishing
their part exactly once; rolling a call cut short back on every shard; bringing the shards
of a reopened durable state to one point; and the errors this ends in (``ShardsLostError``,
``CallTimeoutError``), after which the engine is failed (``lost``).

Imports ``shards`` (placement, deadlines) and ``durable``'s public names; nothing of the
engine's API or of the formats.
"""

from __future__ import annotations

import os
import pathlib
import signal
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from ..durable import DurabilityWarning, RecoveryError
from .shards import Cluster, Shard, ShardCall, Stalled, answer

if TYPE_CHECKING:
    from ..params import Params
    from .seeding import ShardInit
    from .shards import Part

CALL_TIMEOUT = 60.0  # the default call_timeout, in seconds (public as nap_gpu.sharded.CALL_TIMEOUT)
_FENCE_WAIT = 10.0  # seconds a reopen waits for a killed worker's LOCK to be released


class ShardsLostError(RuntimeError):
    """Shards were lost (their worker died, or a call failed on them) and could not be
    recovered: without ``state=`` nothing else holds their weights. ``shards`` maps each lost
    shard to its id range, ``causes`` to what happened. The engine refuses every later call
    (and metrics) rather than answer from part of the population."""

    def __init__(self, shards: dict[int, range], causes: dict[int, str]) -> None:
        self.shards = dict(shards)
        self.causes = dict(causes)
        listed = "; ".join(f"shard {i} (ids {r.start}..{r.stop - 1}): {causes.get(i, 'lost')}"
                           for i, r in sorted(shards.items()))
        super().__init__(f"{len(shards)} shard(s) lost, the population is incomplete: {listed}")


class CallTimeoutError(TimeoutError):
    """A call did not finish within ``call_timeout``: some shards did not answer. With
    ``state=`` the engine has already fenced their workers (killed through their nanny, so a
    stalled process can never write again), reopened their shards elsewhere and rolled the
    call back on every shard: it had no effect, and the engine goes on. ``shards`` maps each
    shard that did not answer to its id range, ``workers`` says what became of each worker."""

    def __init__(self, message: str, shards: dict[int, range], workers: dict[str, str],
                 timeout: float) -> None:
        super().__init__(message)
        self.shards = dict(shards)
        self.workers = dict(workers)
        self.timeout = timeout


class _Unrecoverable(Exception):
    """A lost shard could not be brought back with nothing acknowledged lost (the reason)."""


def _stop_worker_process(pid: int | None, dask_worker: Any = None) -> bool:
    """Run on a worker's nanny (``client.run(..., nanny=True)``): SIGKILL its worker process
    if that is still ``pid``, the one that stopped answering. SIGKILL ends even a stopped
    process, and its flock on a shard's LOCK goes with it. False: not that process any more
    (it died, and the nanny may have started another)."""
    if pid is None or getattr(dask_worker, "pid", None) != pid:
        return False
    os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
    return True


class Supervisor:
    """The shards of one engine, on ``cluster``, and their faults. With ``state`` (the
    durable state's directory) every shard is durable and a lost one is reopened from
    ``state/shard-XXXX`` with ``DurableEngine.open`` options ``state_options`` (and a
    checkpoint every ``snapshot_every`` calls); without it a lost shard fails the engine."""

    def __init__(self, cluster: Cluster, *, backend: str, state: pathlib.Path | None,
                 state_options: dict[str, Any], snapshot_every: int) -> None:
        self.cluster = cluster
        self.shards: list[Shard] = []
        #: Set when shards are lost: ``ShardsLostError``'s arguments, for every later call.
        self.lost: tuple[dict[int, range], dict[int, str]] | None = None
        self._backend = backend
        self._state = state
        self._state_options = state_options
        self._snapshot_every = snapshot_every

    # -- start, run, release ----------------------------------------------------------------
    def start(self, fills: dict[int, ShardCall]) -> dict[int, dict]:
        """Create one actor per shard, round-robin over the workers, and fill each with its
        part (``fills``), concurrently; on any failure, release what was made and raise."""
        workers = self.cluster.workers()
        count = len(self.cluster.ranges)
        try:
            spawned = self.cluster.spawn({i: workers[i % len(workers)] for i in range(count)})
            self.shards = [spawned[i] for i in range(count)]
            pending = {i: fill(self.shards[i]) for i, fill in fills.items()}
            deadline = self.cluster.deadline()
            reports = {}
            for i, future in pending.items():
                try:
                    reports[i] = answer(future, deadline)
                except Stalled:
                    raise TimeoutError(f"shard {i} (worker {self.shards[i].worker}) did not "
                                       f"answer within call_timeout = {self.cluster.call_timeout:g} s "
                                       "while starting") from None
        except BaseException:
            self.release()
            raise
        for i, report in reports.items():
            self.shards[i].adopt(report)
        return reports

    def run(self, parts: dict[int, Part], *, mutating: bool) -> dict:
        """Run each shard's part of one call concurrently; return their results once all
        acknowledged. Failures are recovered from (durable shards) or fail the engine; a
        shard that does not answer within ``call_timeout`` is stalled (``_cut_short``)."""
        launched, failures, results = {}, {}, {}
        for i, part in parts.items():
            try:
                launched[i] = part(self.shards[i])
            except Exception as exc:  # e.g. the actor's worker is already known to be lost
                failures[i] = exc
        deadline = self.cluster.deadline()  # one for the whole call: its shards run concurrently
        for i, future in launched.items():
            try:
                results[i] = answer(future, deadline)
            except Exception as exc:
                failures[i] = exc
        if failures:
            results.update(self._recover(failures, parts, mutating, results))
        if mutating and self._state is not None:
            for i, sequence in results.items():
                self.shards[i].sequence = sequence
        return results

    def release(self) -> None:
        """Close the shards that answer and release every actor."""
        self.cluster.release(self.shards)
        self.shards = []

    # -- a durable state ----------------------------------------------------------------------
    def open_state(self, inits: Callable[[range], ShardInit],
                   params: Params | None) -> tuple[int, Params]:
        """Open every shard's durable state (creating it on first use); returns the
        (iteration, params) they hold. The shards must agree on where they are; if the
        client stopped in the middle of a call, some have it and the others not: it was never
        acknowledged, and is rolled back where it was applied, so that every shard ends at
        the same point."""
        reports = self.start({i: ShardCall("open", str(self._shard_state(i)), inits(r), len(r),
                                           self._backend, params, self._state_options,
                                           self._snapshot_every)
                              for i, r in enumerate(self.cluster.ranges)})
        sequences = {i: r["sequence"] for i, r in reports.items()}
        low = min(sequences.values())
        ahead = {i: low for i, s in sequences.items() if s == low + 1}
        if ahead and max(sequences.values()) == low + 1:
            try:
                reports.update(self._roll_back(ahead))
            except Exception as exc:
                self.release()
                raise RecoveryError(f"{self._state}: a call was cut short across shards "
                                    f"(shard: log sequence {sequences}), and rolling it back "
                                    f"on shard(s) {sorted(ahead)} failed: {exc}") from exc
            warnings.warn(f"{self._state}: a call was cut short across shards (the client "
                          f"stopped mid-call): shard(s) {sorted(ahead)} had applied it, the "
                          f"others not; it was never acknowledged and was rolled back to log "
                          f"sequence {low}", DurabilityWarning, stacklevel=3)
        points = {(r["sequence"], r["iteration"], r["params"]) for r in reports.values()}
        if len(points) > 1:
            self.release()
            where = {i: (r["sequence"], r["iteration"]) for i, r in reports.items()}
            raise RecoveryError(f"{self._state}: the shards recovered at different points "
                                f"(shard: (log sequence, iteration)) {where}, more than one "
                                "call apart: acknowledged calls are missing from some "
                                "shards (e.g. fsync='group' lost a window), so the shards do "
                                "not hold one population")
        _, iteration, params = points.pop()
        return iteration, params

    def _shard_state(self, i: int) -> pathlib.Path:
        # Shard states and recovery exist only on a durable engine (state=).
        assert self._state is not None, "the ShardedEngine has no state="
        return self._state / f"shard-{i:04d}"

    # -- recovery -----------------------------------------------------------------------------
    def _recover(self, failures: dict, parts: dict[int, Part], mutating: bool,
                 results: dict) -> dict:
        """Find every shard lost (a failed call, or a worker gone or stalled), fence the
        workers that do not answer, then reopen each lost shard from its durable state and
        finish its part of the call exactly once, or fail the engine. A call with stalled
        shards is not finished but rolled back everywhere (``_cut_short``)."""
        stalled = {i for i, exc in failures.items() if isinstance(exc, Stalled)}
        lost, unreachable = self._find_lost(failures, stalled)
        if self._state is None:
            self._fail(lost)
        fenced = self._fence(unreachable)
        if stalled:
            self._cut_short(stalled, lost, unreachable, fenced, parts, mutating, results)
        done = {}
        for i in sorted(lost):
            try:
                result = self._recover_shard(i, parts.get(i), mutating, unreachable)
            except _Unrecoverable as exc:
                lost[i] = f"{lost[i]}; {exc}"
                self._fail(lost)
            if i in parts:
                done[i] = result
        return done

    def _recover_shard(self, i: int, part: Part | None, mutating: bool, unreachable: set) -> Any:
        """Reopen shard i from its state, then finish its part: a mutating call whose record
        reached the shard's log was applied by the replay; one that did not is run again."""
        acknowledged = self.shards[i].logged()
        shard = self._reopen_or_raise(i, unreachable)
        if mutating and part is not None and shard.sequence == acknowledged + 1:
            return shard.sequence
        if shard.sequence != acknowledged:
            raise _Unrecoverable(f"recovered at log sequence {shard.sequence}, but "
                                 f"{acknowledged} calls were acknowledged")
        if part is None:
            return None
        try:
            return answer(part(shard), self.cluster.deadline())
        except Exception as exc:
            raise _Unrecoverable(f"the call failed again after recovery: {exc!r}") from exc

    def _reopen_or_raise(self, i: int, unreachable: set) -> Shard:
        try:
            return self._reopen(i, unreachable)
        except Exception as exc:
            cause = "no answer in time" if isinstance(exc, Stalled) else repr(exc)
            raise _Unrecoverable(f"recovery from {self._shard_state(i)} failed: {cause}") from exc

    def _cut_short(self, stalled: set, lost: dict, unreachable: set, fenced: dict,
                   parts: dict[int, Part], mutating: bool, results: dict) -> NoReturn:
        """A call some shards did not answer in time: their workers are fenced already;
        reopen every lost shard, roll the call back on every shard that has it (its
        record is the last of their logs, never covered by a snapshot), and raise
        ``CallTimeoutError``: the call had no effect. Nothing partial is kept: the shards
        that answered had applied it too."""
        acknowledged = {i: s.logged() for i, s in enumerate(self.shards)}
        at = {i: results[i] for i in parts if i in results and mutating}
        for i in sorted(lost):
            try:
                at[i] = self._reopen_or_raise(i, unreachable).sequence
            except _Unrecoverable as exc:
                lost[i] = f"{lost[i]}; {exc}"
                if mutating:  # best effort: keep the reachable shards at what was acknowledged
                    try:
                        self._roll_back({j: acknowledged[j] for j, s in at.items()
                                         if j not in lost and s == acknowledged[j] + 1})
                    except Exception:
                        pass
                self._fail(lost)
        if mutating:
            behind = {i: s for i, s in at.items()
                      if s not in (acknowledged[i], acknowledged[i] + 1)}
            if behind:
                self._fail({i: f"{lost.get(i, 'shard')}; recovered at log sequence {s}, but "
                               f"{acknowledged[i]} calls were acknowledged"
                            for i, s in behind.items()})
            try:
                self._roll_back({i: acknowledged[i] for i, s in at.items()
                                 if s == acknowledged[i] + 1})
            except Exception as exc:
                self._fail({i: f"the call that timed out could not be rolled back: {exc!r}"
                            for i in parts})
        raise self._timed_out(stalled, lost, fenced, mutating)

    def _timed_out(self, stalled: set, lost: dict, fenced: dict, mutating: bool) -> CallTimeoutError:
        """The error of a call cut short, once it has been rolled back."""
        t = self.cluster.call_timeout
        assert t is not None, "only a call with a deadline has stalled shards"
        ranges = self.cluster.ranges
        listed = ", ".join(f"shard {i} (ids {ranges[i].start}..{ranges[i].stop - 1})"
                           for i in sorted(stalled))
        workers = "; ".join(f"{w}: {note}" for w, note in sorted(fenced.items()))
        moved = ", ".join(f"shard {i} -> {self.shards[i].worker}" for i in sorted(lost))
        effect = ("the call was rolled back on every shard: it had no effect" if mutating
                  else "nothing was changed")
        return CallTimeoutError(
            f"the call did not finish within call_timeout = {t:g} s: {listed} did not "
            f"answer. Their worker(s) were fenced ({workers}) and the shards on them reopened "
            f"from their state ({moved}); {effect}. The engine goes on.",
            {i: ranges[i] for i in stalled}, fenced, t)

    def _roll_back(self, targets: dict[int, int]) -> dict[int, dict]:
        """Roll shards back to the given log sequences (their last call was cut short);
        returns their reports."""
        futures = {i: self.shards[i].actor.rollback(sequence) for i, sequence in targets.items()}
        deadline = self.cluster.deadline()
        reports = {i: answer(future, deadline) for i, future in futures.items()}
        for i, report in reports.items():
            self.shards[i].adopt(report)
        return reports

    def _find_lost(self, failures: dict,
                   stalled: set[int] | frozenset[int] = frozenset()) -> tuple[dict[int, str], set[str]]:
        """({shard: cause} for shards whose call failed or whose worker does not answer,
        the workers that do not answer): all shards of a dead or stalled worker are lost,
        not only those this call reached."""
        suspects = {self.shards[i].worker for i in stalled}
        lost, unreachable = {}, set(suspects)
        for shard in self.shards:
            if shard.worker in suspects:
                lost[shard.index] = (f"worker {shard.worker} did not answer within "
                                     f"call_timeout = {self.cluster.call_timeout:g} s")
        probes = {}
        for shard in self.shards:
            if shard.worker in suspects:
                continue  # a stalled worker would only make the ping wait too
            try:
                probes[shard.index] = shard.actor.ping()
            except Exception as exc:  # the actor is already known to be lost
                probes[shard.index] = exc
        deadline = time.monotonic() + self.cluster.ping_timeout()
        for i, probe in probes.items():
            try:
                if isinstance(probe, Exception):
                    raise probe
                answer(probe, deadline)
            except Exception as exc:
                lost[i] = f"worker {self.shards[i].worker} lost ({failures.get(i, exc)!r})"
                unreachable.add(self.shards[i].worker)
        for i, failure in failures.items():
            lost.setdefault(i, f"failed on worker {self.shards[i].worker}: {failure!r}")
        return lost, unreachable

    def _fence(self, workers: set[str]) -> dict[str, str]:
        """Make sure no worker that stopped answering can write again before its shards are
        reopened elsewhere: its nanny SIGKILLs it (a stopped process too). The shards' LOCK
        (DurableEngine's flock) is then the arbiter: a reopen succeeds only once the old
        process is gone, and waits (``_FENCE_WAIT``) or fails while it holds the LOCK, e.g.
        a stalled worker without a nanny. Returns what was done, per worker."""
        notes = {}
        for worker in sorted(workers):
            pid = next((s.pid for s in self.shards if s.worker == worker and s.pid), None)
            try:
                answers = self.cluster.client.run(_stop_worker_process, pid, workers=[worker],
                                                  nanny=True,
                                                  callback_timeout=self.cluster.ping_timeout())
            except Exception as exc:  # e.g. the scheduler has already removed it
                notes[worker] = f"its nanny could not be asked to kill it ({type(exc).__name__})"
                continue
            if not answers:
                notes[worker] = "it has no nanny to kill it"
            elif any(answers.values()):
                notes[worker] = f"process {pid} killed by its nanny"
            else:
                notes[worker] = f"process {pid} already gone"
        return notes

    def _fail(self, lost: dict[int, str]) -> NoReturn:
        """Refuse this call and every later one: the population is incomplete."""
        self.lost = ({i: self.cluster.ranges[i] for i in lost}, dict(lost))
        raise ShardsLostError(*self.lost)

    def _reopen(self, i: int, avoid: set) -> Shard:
        """Shard i again, from its state, on the answering worker holding fewest shards.
        While a fenced worker's process still holds the shard's LOCK, the open is retried
        (for ``_FENCE_WAIT``); never opened beside a live old owner."""
        old = self.shards[i]
        self.cluster.retire(old, close=old.worker not in avoid)
        live = self.cluster.workers(frozenset(avoid))
        held = {w: sum(s.worker == w for s in self.shards if s is not old) for w in live}
        shard = self.cluster.spawn({i: min(live, key=lambda w: (held[w], w))}, frozenset(avoid))[i]
        self.shards[i] = shard
        give_up = time.monotonic() + _FENCE_WAIT
        reopen = ShardCall("open", str(self._shard_state(i)), None, len(old.ids), self._backend,
                           None, self._state_options, self._snapshot_every)
        while True:
            try:
                report = answer(reopen(shard), self.cluster.deadline())
                break
            except RuntimeError as exc:
                if "LOCK is held" not in str(exc) or time.monotonic() > give_up:
                    raise
        shard.adopt(report)
        return shard
