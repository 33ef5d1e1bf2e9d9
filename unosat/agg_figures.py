"""Matplotlib figures drawn on their own Agg canvas, saved as PNG atomically.

No pyplot state and no global backend switch (``matplotlib.use``): importing a module that draws leaves the
user's matplotlib as it was. Prepare's report and training's figures draw through these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from unosat.io.atomic import atomic_path


def subplots(
    nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None, squeeze: bool = True
) -> tuple[Figure, Any]:
    """A figure drawn by the Agg canvas and its axes, as ``plt.subplots`` returns them."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save_figure(fig: Figure, path: Path | str, dpi: int) -> None:
    """Save ``fig`` as a PNG at ``path`` (atomically), cropped to what is drawn."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
