"""``TileClassificationModule``: trains a tile classifier ("does this tile hold building pixels?").

The target of each tile comes from its (augmented) mask; metrics are torchmetrics' binary precision,
recall, F1 and AUROC (synchronised under DDP), logged as ``<stage>/precision`` ... ``<stage>/auroc``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAUROC, BinaryF1Score, BinaryPrecision, BinaryRecall

from unosat.losses.tile_bce import tile_target
from unosat.training.lightning_base import UnosatModule

STAGES = ("train", "val", "test")


class TileClassificationModule(UnosatModule):
    """See :class:`~unosat.training.lightning_base.UnosatModule` for the arguments; ``threshold`` turns
    probabilities into decisions for precision/recall/F1."""

    def __init__(self, *args, threshold: float = 0.5, **kwargs):
        kwargs.pop("num_classes", None), kwargs.pop("ignore_index", None), kwargs.pop("class_names", None)
        super().__init__(*args, **kwargs)
        self.threshold = float(threshold)
        self.metrics = nn.ModuleDict({
            f"{stage}_split": MetricCollection({
                "precision": BinaryPrecision(threshold=self.threshold), "recall": BinaryRecall(threshold=self.threshold),
                "f1": BinaryF1Score(threshold=self.threshold), "auroc": BinaryAUROC(),
            }) for stage in STAGES
        })

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        image, mask = batch["image"], batch["mask"]
        logits = self(image).reshape(-1)
        terms = self.loss(logits, mask)
        self.log_terms(stage, terms, image.shape[0])
        self.metrics[f"{stage}_split"].update(torch.sigmoid(logits.detach().float()), tile_target(mask).long())
        return terms["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def _epoch_end(self, stage: str) -> None:
        collection = self.metrics[f"{stage}_split"]
        values = {k: float(v) for k, v in collection.compute().items()}
        collection.reset()
        if not self.trainer.sanity_checking:
            self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val", sync_dist=False)

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")
