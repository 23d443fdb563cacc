"""The ``nap-gpu`` command: ``simulate`` runs the reference workload, ``info`` explains the
backends, ``snapshot inspect`` reads a snapshot's metadata and checks it.

    nap-gpu simulate --memories 1M --iterations 50 [--noise 0.1] [--backend auto] [--seed 0]
                     [--json run.json]
    nap-gpu info [--json]
    nap-gpu snapshot inspect FILE [--json]
    nap-gpu recover DIR [--json] [--accept-loss]
    nap-gpu report ...   (moved: python -m benchmarks.report, from a source checkout)
    nap-gpu serve [--state DIR] [--memories N] [--host H] [--port P] ...   (extra: serve)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from typing import TYPE_CHECKING, cast

from . import __version__, backends, snapshot
from ._config import config, show_config
from ._sizes import parse_count
from .engine import Engine
from .monitor import Monitor
from .workload import ReferenceWorkload

if TYPE_CHECKING:
    from .durable import DurableEngine

def count(text: str) -> int:
    """A count like ``10000``, ``10k``, ``1M``, ``1e6`` or ``1_000_000`` (argparse type)."""
    try:
        value = parse_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole count: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nap-gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"nap_gpu {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log backend selection")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="run the reference workload (docs/law.md §4)")
    sim.add_argument("--memories", type=count, default=10_000, help="population size (default 10k)")
    sim.add_argument("--iterations", type=int, default=50, help="dense steps (default 50)")
    sim.add_argument("--noise", type=float, default=0.0, help="std of Gaussian quality noise")
    sim.add_argument("--backend", default="auto", help="auto (default), cuda, cpp or numpy")
    sim.add_argument("--seed", type=int, default=0, help="seed of weights and qualities")
    sim.add_argument("--metrics-every", type=int, default=1, metavar="K",
                     help="compute metrics every K iterations (and at the last)")
    sim.add_argument("--json", metavar="FILE", help="also write the run as JSON to FILE")
    sim.add_argument("--state", metavar="DIR",
                     help="a durable engine in DIR (write-ahead log + snapshots): created on "
                          "first use, recovered and continued afterwards")
    sim.add_argument("--no-progress", action="store_true", help="no progress bar")

    info = sub.add_parser("info", help="list each backend and why it is or is not usable")
    info.add_argument("--json", action="store_true", help="print the same as JSON")

    snap = sub.add_parser("snapshot", help="work with snapshot files")
    snap_sub = snap.add_subparsers(dest="snapshot_command", required=True)
    inspect = snap_sub.add_parser("inspect", help="print a snapshot's metadata and checksum verdict")
    inspect.add_argument("file")
    inspect.add_argument("--json", action="store_true", help="print the same as JSON")

    recover = sub.add_parser("recover", help="dry run: what opening a durable state would do",
                             description="Without --accept-loss a dry run: reads and verifies "
                                         "everything open would use and changes nothing.")
    recover.add_argument("directory")
    recover.add_argument("--json", action="store_true", help="print the plan as JSON")
    recover.add_argument("--accept-loss", action="store_true",
                         help="when open refuses the state (corrupt log, forked segments, a "
                              "damaged snapshot the log does not reach), drop what stands in "
                              "the way so that it opens at its newest consistent point; loses "
                              "the dropped calls, which are logged (and kept aside as "
                              "*.dropped files)")

    serve = sub.add_parser("serve", help="run the HTTP service (extra: serve; docs/serving.md)",
                           description="Every option also reads NAP_<NAME> from the "
                                       "environment or a .env file; flags win. The API token "
                                       "is read from NAP_API_TOKEN (several: comma-separated) "
                                       "or a file (--api-token-file), never a flag.")
    for flag, kind, what in _SERVE_FLAGS:
        if kind is bool:
            serve.add_argument(flag, action="store_true", default=None, help=what)
        else:
            serve.add_argument(flag, type=kind, default=None, help=what)

    report = sub.add_parser("report", help="moved: python -m benchmarks.report RESULTS.json... "
                                           "(from a source checkout)", add_help=False)
    report.add_argument("args", nargs=argparse.REMAINDER)
    return parser


#: ``nap-gpu serve`` flags: each sets the Settings field of the same name (dashes: underscores).
_SERVE_FLAGS = (
    ("--state-dir", str, "durable state directory [NAP_STATE_DIR, default nap-state]"),
    ("--memories", count, "population size, used when the state is created [NAP_MEMORIES]"),
    ("--seed", int, "seed of the initial weights [NAP_SEED, default 0]"),
    ("--lr", float, "law: learning rate, set when the state is created [NAP_LR, default 0.05]"),
    ("--gate", float, "law: quality gate, set when the state is created [NAP_GATE, default 0.5]"),
    ("--decay", float, "law: passive decay per round, set when the state is created "
                       "[NAP_DECAY, default 0.02]"),
    ("--backend", str, "auto, cuda, cpp or numpy [NAP_BACKEND, default auto]"),
    ("--host", str, "address to bind [NAP_HOST, default 127.0.0.1]"),
    ("--port", int, "port [NAP_PORT, default 8000]"),
    ("--api-token-file", str, "file holding the bearer token(s), one a line; re-read on change "
                              "or SIGHUP [NAP_API_TOKEN_FILE]"),
    ("--public-reads", bool, "GET endpoints need no token [NAP_PUBLIC_READS]"),
    ("--fsync", str, "always (default) or group [NAP_FSYNC]"),
    ("--group-ms", float, "group commit period, ms [NAP_GROUP_MS, default 10]"),
    ("--snapshot-every", int, "snapshot every K log records [NAP_SNAPSHOT_EVERY, default 1000]"),
    ("--keep", int, "snapshots kept [NAP_KEEP, default 3]"),
    ("--wal-retention", str, "kept (default: the log back to the oldest kept snapshot) or "
                             "newest [NAP_WAL_RETENTION]"),
    ("--decay-every-s", float, "a passive decay every S seconds [NAP_DECAY_EVERY_S, default 0: "
                               "none]"),
    ("--max-body-bytes", int, "largest request body [NAP_MAX_BODY_BYTES, default 16 MiB]"),
    ("--max-queued-events", int, "events waiting for the writer before 503 "
                                 "[NAP_MAX_QUEUED_EVENTS, default 10M]"),
    ("--max-read-ids", int, "ids per weights/rank request [NAP_MAX_READ_IDS, default 100k]"),
    ("--max-connections", int, "open connections at most (less if RLIMIT_NOFILE is low) "
                               "[NAP_MAX_CONNECTIONS, default 1000]"),
    ("--header-timeout-s", float, "seconds a connection has to send a request head "
                                  "[NAP_HEADER_TIMEOUT_S, default 10]"),
    ("--body-timeout-s", float, "seconds a request has to send its body "
                                "[NAP_BODY_TIMEOUT_S, default 60]"),
    ("--keep-alive-s", float, "idle keep-alive connections close after S seconds "
                              "[NAP_KEEP_ALIVE_S, default 5]"),
    ("--http", str, "HTTP parser: httptools, h11 or auto (httptools where installed) "
                    "[NAP_HTTP, default auto]"),
    ("--labels", str, ".npy of R/P labels per memory, for the metrics [NAP_LABELS]"),
    ("--stats-interval", float, "seconds between health checks [NAP_STATS_INTERVAL, default 15]"),
    ("--health-warmup", int, "with labels: logged writes before the separation rule applies "
                             "[NAP_HEALTH_WARMUP, default 10]"),
    ("--health-settle", int, "with labels: logged writes before the inversion-ratio rule "
                             "applies [NAP_HEALTH_SETTLE, default 50]"),
    ("--log-level", str, "debug, info, warning or error [NAP_LOG_LEVEL, default info]"),
)


def serve(args) -> int:
    try:
        from pydantic import ValidationError  # noqa: PLC0415 - the serve extra

        from .serve import Settings, run  # noqa: PLC0415
    except ImportError as exc:
        raise ValueError(f"nap-gpu serve needs the serve extra (pip install 'nap_gpu[serve]'): "
                         f"{exc}") from None
    given = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
             for flag, _, _ in _SERVE_FLAGS}
    try:
        settings = Settings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                             for e in exc.errors())
        raise ValueError(f"bad configuration: {problems}") from None
    return run(settings)


#: Where the scaling report went: benchmark tooling, which the package never imports.
REPORT_MOVED = ("nap-gpu report has moved: the scaling report is benchmark tooling now. From a "
                "source checkout's root, run: python -m benchmarks.report RESULTS.json... "
                "[-o docs/SCALING.md] (python -m benchmarks.report targets RESULTS.json... for "
                "the dense-step targets); see benchmarks/README.md")


def report_moved() -> int:
    """``nap-gpu report``: a usage error naming the new command."""
    print(f"nap-gpu: error: {REPORT_MOVED}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:
        return report_moved()
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s", stream=sys.stderr)
    try:
        if args.command == "info":
            if args.json:
                print(json.dumps(config(), indent=2))
            else:
                show_config()
            return 0
        if args.command == "snapshot":
            return inspect_snapshot(args)
        if args.command == "recover":
            return recover(args)
        if args.command == "serve":
            return serve(args)
        return simulate(args)
    except (ValueError, TypeError, OSError, backends.BackendUnavailableError) as exc:
        print(f"nap-gpu: error: {exc}", file=sys.stderr)
        return 2


def _progress(total: int, disabled: bool):
    try:
        from tqdm import tqdm  # the `cli` extra; the table is printed either way
    except ImportError:
        return None
    return tqdm(total=total, unit="it", disable=disabled or None, file=sys.stderr, leave=False)


def simulate(args) -> int:
    if args.iterations < 1:
        raise ValueError(f"--iterations must be >= 1, got {args.iterations}")
    if args.metrics_every < 1:
        raise ValueError(f"--metrics-every must be >= 1, got {args.metrics_every}")
    workload = ReferenceWorkload(args.memories, sigma=args.noise, seed=args.seed)
    eng: Engine | DurableEngine
    if args.state:  # durable: created on first use, recovered (and continued) afterwards
        eng = Engine.open(args.state, n=args.memories, backend=args.backend, seed=args.seed)
    else:
        eng = Engine(args.memories, backend=args.backend, seed=args.seed)
    try:
        return _simulate(args, eng, workload)
    finally:
        if args.state:  # the durable engine Engine.open made
            cast("DurableEngine", eng).close()


def _simulate(args, eng, workload) -> int:
    labels = workload.labels
    print(f"nap-gpu simulate: {args.memories:,} memories, {args.iterations} iterations, "
          f"noise {args.noise}, seed {args.seed}, backend {eng.backend}, {eng.params}"
          + (f", state {args.state} (iteration {eng.iteration})" if args.state else ""))
    monitor = Monitor(eng, labels, every=args.metrics_every)
    header = (f"{'iter':>5} {'separation':>11} {'inversion':>10} {'saturation':>11} "
              f"{'ms/iter':>9}  monitor")
    bar = _progress(args.iterations, args.no_progress)
    emit = bar.write if bar is not None else print
    emit(header)
    rows: list[dict] = []
    event: dict | None = None
    for it in range(1, args.iterations + 1):
        checked = monitor.step(workload.next_quality())  # timed after a device synchronise
        if checked is None and it == args.iterations:
            checked = monitor.check()
        row = {"iteration": eng.iteration, "ms": monitor.last_step_ms}
        if checked is not None:
            event = checked
            row.update(separation=event["separation"], inversion_ratio=event["inversion_ratio"],
                       saturation=event["saturation"], ok=event["ok"])
            verdict = "ok" if event["ok"] else "ALERT: " + "; ".join(event["failures"])
            emit(f"{eng.iteration:>5} {_fmt(event['separation'], 11)} "
                 f"{_fmt(event['inversion_ratio'], 10)} {_fmt(event['saturation'], 11)} "
                 f"{monitor.last_step_ms:>9.3f}  {verdict}")
        rows.append(row)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    # iterations >= 1: a step was timed, and the last one is always checked
    latency = monitor.latency_ms()
    assert latency is not None and event is not None
    p50, p99 = latency
    print(f"latency: p50 {p50:.3f} ms/iter, p99 {p99:.3f} ms/iter")
    print("health: OK" if event["ok"] else "health: FAILED — " + "; ".join(event["failures"]))
    if args.json:
        final = eng.metrics(labels)
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"config": {k: v for k, v in vars(args).items() if k != "command"},
                       "backend": eng.backend, "params": dataclasses.asdict(eng.params),
                       "machine": config(), "iterations": _finite(rows),
                       "final": _finite(final.as_dict()),
                       "health": {"ok": event["ok"], "failures": event["failures"]}},
                      fh, indent=2)
    return 0 if event["ok"] else 1


def _fmt(value, width: int) -> str:
    return f"{value:>{width}.4f}" if value is not None else f"{'nan':>{width}}"


def inspect_snapshot(args) -> int:
    """Print a snapshot's metadata and whether its checksum holds; exit 1 when it does not."""
    info = snapshot.inspect(args.file)
    fields = dataclasses.asdict(info)
    fields["params"] = dataclasses.asdict(info.params)
    if args.json:
        print(json.dumps(fields, indent=2))
    else:
        for key, value in {**fields, "params": info.params}.items():
            print(f"{key:<16} {value}")
        print("checksum OK" if info.checksum_ok else "checksum MISMATCH: the weights are damaged")
    return 0 if info.checksum_ok else 1


def recover(args) -> int:
    """Print what opening the durable state would do; exit 1 when it would fail. With
    --accept-loss, first repair what open refuses (durable.accept_loss), saying what was
    dropped; exit 1 when even that cannot make it openable, 2 when it is open elsewhere."""
    from . import durable  # noqa: PLC0415

    if args.accept_loss:
        try:
            done = durable.accept_loss(args.directory)
        except durable.RecoveryError as exc:
            print(f"nap-gpu: error: {exc}", file=sys.stderr)
            return 1
        except RuntimeError as exc:  # the LOCK is held by a running engine
            print(f"nap-gpu: error: {exc}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(done, indent=2, default=str))
            return 1 if done["plan"]["status"] == "error" else 0
        if not done["dropped"]:
            print("accept-loss: nothing to drop (open does not refuse this state)")
        for entry in done["dropped"]:
            print(f"accept-loss: {entry['done']}")
            print(f"  because: {entry['refused_because']}")
            print(f"  kept aside: {', '.join(entry['evidence']) or 'nothing'}")
        if done["dropped"]:
            print(f"logged in {args.directory.rstrip('/')}/{durable.LOSS_JOURNAL}")
    plan = durable.dry_run(args.directory)  # (again, after a repair)
    print(json.dumps(plan.to_dict(), indent=2, default=str) if args.json
          else durable.recover_report(plan))
    return 1 if plan.status == "error" else 0


def _finite(obj):
    """JSON has no NaN: write null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
