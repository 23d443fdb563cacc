"""The command line, run from the repository root:

    python -m benchmarks.report RESULTS.json... [-o docs/SCALING.md] [--plots-dir DIR] [--no-plots]
    python -m benchmarks.report targets RESULTS.json...

The first writes the scaling page (``docs/SCALING.md``, plots in ``docs/scaling/``); the second
prints the dense-step groups and the performance targets, met or missed, to stdout.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from nap_gpu._files import atomic_file

from . import frames as frames_
from .page import scaling_page
from .plots import Plotter
from .targets import targets_report

DEFAULT_OUTPUT = "docs/SCALING.md"
PLOTS_SUBDIR = "scaling"
PROG = "python -m benchmarks.report"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["targets"]:
        return _targets(argv[1:])
    return _page(argv)


def _load(paths: list[str]) -> frames_.Frames | None:
    """The frames, or None with the reason printed (missing, unreadable or empty JSON)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        print(f"{PROG}: no such file: {', '.join(missing)}", file=sys.stderr)
        return None
    try:
        frames = frames_.load(paths)
    except (OSError, ValueError, KeyError) as exc:
        print(f"{PROG}: cannot read the JSON: {exc}", file=sys.stderr)
        return None
    if frames.bench.empty:
        print(f"{PROG}: the JSON holds no benchmarks", file=sys.stderr)
        return None
    return frames


def _page(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Write docs/SCALING.md (and its PNG "
                                     "plots) from scale-suite JSON files; `targets` first: print "
                                     "the dense-step targets instead.")
    parser.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT,
                        help=f"the Markdown page to write (default {DEFAULT_OUTPUT})")
    parser.add_argument("--plots-dir", default=None,
                        help=f"where the PNGs go (default: {PLOTS_SUBDIR}/ beside the page)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    args = parser.parse_args(argv)
    frames = _load(args.json)
    if frames is None:
        return 2
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots_dir = None
    if not args.no_plots:
        plots_dir = pathlib.Path(args.plots_dir) if args.plots_dir else out.parent / PLOTS_SUBDIR
        plots_dir.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(plots_dir, out.parent) if plots_dir else PLOTS_SUBDIR
    plotter = Plotter(plots_dir)
    text, drawn = scaling_page(frames, _command(args), plotter, rel)
    with atomic_file(out) as fh:
        fh.write(text.encode("utf-8"))
    print(f"wrote {out}" + (f" and {len(drawn)} plots in {plots_dir}" if drawn else "")
          + (f" ({plotter.error})" if plotter.error else ""))
    return 0


def _command(args: argparse.Namespace) -> str:
    """The command line the page prints (how to regenerate it)."""
    names = " ".join(sorted({p if os.path.isabs(p) else os.path.relpath(p) for p in args.json}))
    return f"{PROG} {names}" + ("" if args.output == DEFAULT_OUTPUT else f" -o {args.output}")


def _targets(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    frames = _load(argv)
    if frames is None:
        return 2
    print(targets_report(frames, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
