"""A tile-classifier gate: windows the classifier calls empty are written as background without running the
segmentation networks (their probability is 0, not nodata).

Buildings cover 1-4 % of a Sentinel-1 scene and most windows of a national mosaic hold none; a cheap
classifier (``python train.py model=tile_classifier``) saying "no building here" lets prediction skip most of
the work. ``threshold`` trades speed for recall: windows with p(buildings) below it are skipped; measure
the trade-off with ``benchmarks/gated_predict.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from unosat.errors import UnosatError
from unosat.predict.distributed import Runtime
from unosat.predict.ensemble import Ensemble, LoadedModel
from unosat.predict.sliding_window import WindowBatch


@dataclass
class TileGate:
    """A :class:`~unosat.predict.sliding_window.WindowSkip`: skips windows whose building probability from
    the tile classifier is below ``threshold``, giving their valid pixels probability ``fill`` (0)."""

    model: LoadedModel
    threshold: float
    runtime: Runtime
    group: int
    fill: float | None = 0.0
    net: torch.nn.Module = field(init=False)
    probabilities: list = field(default_factory=list, init=False)

    def __post_init__(self):
        if self.model.task != "tile_classification":
            raise UnosatError(f"gate.ckpt {self.model.path or self.model.name} is a {self.model.task} model, not a tile "
                              "classifier (train one with python train.py model=tile_classifier)")
        if not 0.0 <= self.threshold <= 1.0:
            raise UnosatError(f"gate.threshold must be in [0, 1], got {self.threshold}")
        self.net = self.runtime.prepare_module(self.model.net)

    @classmethod
    def attach(cls, model: LoadedModel, threshold: float, ensemble: Ensemble) -> TileGate:
        """A gate reading windows normalised for its own recipe (registered with the ensemble's inputs)."""
        return cls(model, threshold, ensemble.runtime, ensemble.input_group(model.recipe, model.normalization))

    def __call__(self, batch: WindowBatch) -> np.ndarray:
        with self.runtime.forward_context():
            logits = self.net(self.runtime.to_input(batch.inputs[self.group]))
        p = torch.sigmoid(logits.float()).reshape(-1).cpu().numpy()
        self.probabilities.extend(p.tolist())
        return p < self.threshold
