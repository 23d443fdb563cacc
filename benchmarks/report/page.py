"""The scaling page: frames -> every section's data -> plots -> ``page.md.j2``."""

from __future__ import annotations

import pathlib

from .frames import Frames
from .plots import Plotter
from .render import page
from .sections.convergence import convergence
from .sections.dense import dense
from .sections.goals import goals
from .sections.growth import growth
from .sections.headline import headline
from .sections.machine import machine, tiers
from .sections.memory import memory
from .sections.metrics import metrics
from .sections.service import service, sharded, wal
from .sections.simple import simple
from .sections.sparse import sparse


def scaling_page(frames: Frames, command: str, plots: Plotter, rel_plots: str) -> tuple[str, list[str]]:
    """(the page's Markdown, the plot files written)."""
    b = frames.bench
    conv = convergence(b)
    drawn = {"dense": plots.dense(b), "sparse": plots.sparse(b),
             "convergence": plots.convergence(conv["curves"] if conv else None)}
    text = page(command=command, plot_error=plots.error, tiers=tiers(b), machine=machine(frames),
                headline=headline(b), goals=goals(b), dense=dense(b), sparse=sparse(b),
                decay=simple(b, "decay"), metrics=metrics(b),
                snapshot_save=simple(b, "snapshot-save"),
                snapshot_load=simple(b, "snapshot-load"), wal=wal(b), service=service(b),
                sharded=sharded(b), memory=memory(b), convergence=conv, growth=growth(b),
                plots={k: str(pathlib.PurePosixPath(rel_plots, v)) if v else None
                       for k, v in drawn.items()})
    return text, [v for v in drawn.values() if v]
