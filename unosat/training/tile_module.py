"""``TileClassificationModule``: trains a tile classifier ("does this tile hold building pixels?").

The target of each tile comes from its (augmented) mask; metrics are torchmetrics' binary precision,
recall, F1 and AUROC (synchronised under DDP), logged as ``<stage>/precision`` ... ``<stage>/auroc``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinaryStatScores,
)

from unosat.losses.tile_bce import tile_target
from unosat.training.lightning_base import STAGES, UnosatModule

log = logging.getLogger(__name__)


class TileClassificationModule(UnosatModule):
    """See :class:`~unosat.training.lightning_base.UnosatModule` for the shared arguments; ``threshold``
    turns probabilities into decisions for precision/recall/F1."""

    task = "tile_classification"

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        scheduler_interval: str = "step",
        channels_last: bool = False,
        metadata: dict | None = None,
        threshold: float = 0.5,
    ):
        super().__init__(net, loss, optimizer, scheduler, scheduler_interval, channels_last, metadata)
        self.threshold = float(threshold)
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_split": MetricCollection(
                    {
                        "precision": BinaryPrecision(threshold=self.threshold),
                        "recall": BinaryRecall(threshold=self.threshold),
                        "f1": BinaryF1Score(threshold=self.threshold),
                        "auroc": BinaryAUROC(),
                    }
                )
                for stage in STAGES
            }
        )
        self.counts = nn.ModuleDict(
            {f"{stage}_split": BinaryStatScores(threshold=self.threshold) for stage in STAGES}
        )
        self._warned: set[str] = set()

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        image, mask = batch["image"], batch["mask"]
        logits = self(image).reshape(-1)
        terms = self.loss(logits, mask)
        self.log_terms(stage, terms, image.shape[0])
        p, target = torch.sigmoid(logits.detach().float()), tile_target(mask).long()
        self.metrics[f"{stage}_split"].update(p, target)
        self.counts[f"{stage}_split"].update(p, target)
        return terms["loss"]

    def _epoch_end(self, stage: str) -> None:
        collection = self.metrics[f"{stage}_split"]
        tp, fp, tn, fn, _ = (int(v) for v in self.counts[f"{stage}_split"].compute())
        self.counts[f"{stage}_split"].reset()
        values = {k: float(v) for k, v in collection.compute().items()}
        collection.reset()
        if min(tp + fn, tn + fp) == 0:  # one class only: AUROC is undefined (torchmetrics says 0)
            values["auroc"] = math.nan
            if stage not in self._warned and not self.trainer.sanity_checking:
                self._warned.add(stage)
                log.warning(
                    "%s: all %d windows %s building pixels, so AUROC is undefined (logged as NaN) and the "
                    "classifier cannot learn to tell them apart; use a smaller model.window_px or data with "
                    "empty areas",
                    stage,
                    tp + fp + tn + fn,
                    "hold" if tn + fp == 0 else "lack",
                )
        if not self.trainer.sanity_checking:
            self.log_dict(
                {f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val", sync_dist=False
            )
