"""A tile-classifier gate: windows the classifier calls empty are written as background without running the
segmentation networks (their probability is 0, not nodata).

Buildings cover 1-4 % of a Sentinel-1 scene and most windows of a national mosaic hold none; a cheap
classifier (``python train.py model=tile_classifier``) saying "no building here" lets prediction skip most of
the work. ``threshold`` trades speed for recall: windows with p(buildings) below it are skipped; measure
the trade-off with ``benchmarks/gated_predict.py``.

The classifier judges windows of the size it was trained on (``window_px``, its training crop): a larger
prediction window is judged cell by cell (cells of that size, evenly spread to cover the window, overlapping
when it does not divide) and skipped only when every cell is called empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from unosat.errors import UnosatError
from unosat.predict.distributed import Runtime
from unosat.predict.ensemble import Ensemble, LoadedModel
from unosat.predict.sliding_window import WindowBatch


def cell_starts(size: int, cell: int) -> list[int]:
    """Offsets (px) of the fewest cells of side ``cell`` covering ``[0, size)``: first at 0, last at
    ``size - cell``, evenly spread. One cell (offset 0) when ``size <= cell``."""
    if size <= cell:
        return [0]
    n = math.ceil(size / cell)
    return [round(i * (size - cell) / (n - 1)) for i in range(n)]


def window_cells(x: np.ndarray, cell: int | None) -> np.ndarray:
    """``(N, C, H, W)`` windows -> ``(N, K, C, h, w)`` cells of side ``cell`` (``h = min(cell, H)``); K = 1
    and the whole window when ``cell`` is None."""
    if cell is None:
        return x[:, None]
    h, w = min(cell, x.shape[2]), min(cell, x.shape[3])
    cells = [
        x[:, :, r : r + h, c : c + w] for r in cell_starts(x.shape[2], h) for c in cell_starts(x.shape[3], w)
    ]
    return np.stack(cells, axis=1)


@dataclass
class TileGate:
    """A :class:`~unosat.predict.sliding_window.WindowSkip`: skips windows whose building probability from
    the tile classifier (the largest over the window's cells) is below ``threshold``, giving their valid
    pixels probability ``fill`` (0). ``probabilities`` keeps each window's."""

    model: LoadedModel
    threshold: float
    runtime: Runtime
    group: int
    fill: float | None = 0.0
    net: torch.nn.Module = field(init=False)
    probabilities: list = field(default_factory=list, init=False)

    def __post_init__(self):
        if self.model.task != "tile_classification":
            raise UnosatError(
                f"gate.ckpt {self.model.path or self.model.name} is a {self.model.task} model, not a tile "
                "classifier (train one with python train.py model=tile_classifier)"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise UnosatError(f"gate.threshold must be in [0, 1], got {self.threshold}")
        self.net = self.runtime.prepare_module(self.model.net)

    @classmethod
    def attach(cls, model: LoadedModel, threshold: float, ensemble: Ensemble) -> TileGate:
        """A gate reading windows normalised for its own recipe (registered with the ensemble's inputs)."""
        return cls(
            model, threshold, ensemble.runtime, ensemble.input_group(model.recipe, model.normalization)
        )

    def __call__(self, batch: WindowBatch) -> np.ndarray:
        cells = window_cells(batch.inputs[self.group], getattr(self.model.net, "window_px", None))
        n, k = cells.shape[:2]
        with self.runtime.forward_context():
            logits = self.net(self.runtime.to_input(cells.reshape(n * k, *cells.shape[2:])))
        p = (
            logits.float()
            if getattr(self.net, "returns_probabilities", False)
            else torch.sigmoid(logits.float())
        )
        p = p.reshape(n, k).amax(dim=1).cpu().numpy()
        self.probabilities.extend(p.tolist())
        return p < self.threshold
