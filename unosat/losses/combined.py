"""Cross-entropy + lambda x soft Jaccard (the UNOSAT team used lambda = 2), each term reported."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unosat.classes import IGNORE_INDEX
from unosat.losses.cross_entropy import SmoothedCrossEntropy
from unosat.losses.jaccard import SoftJaccardLoss


class CrossEntropyJaccardLoss(nn.Module):
    """``CE + jaccard_weight * SoftJaccard``; ``jaccard_weight = 0`` is plain (smoothed, weighted) CE.

    ``jaccard_reduction``: ``per_class`` (mean of the classes' soft IoUs) or ``pooled`` (the original's ratio
    of sums over batch and classes), see :mod:`unosat.losses.jaccard`.

    ``forward`` returns a dict: ``loss`` (the total, to optimise) and one entry per term (``ce``,
    ``jaccard``) for logging.
    """

    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        jaccard_weight: float = 0.0,
        jaccard_classes: Sequence[int] | None = None,
        jaccard_smooth: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        jaccard_reduction: str = "per_class",
    ):
        super().__init__()
        self.ce = SmoothedCrossEntropy(class_weights, label_smoothing, ignore_index)
        self.jaccard_weight = float(jaccard_weight)
        jaccard = SoftJaccardLoss(
            jaccard_classes, jaccard_smooth, ignore_index, jaccard_reduction
        )  # checks the settings
        self.jaccard = jaccard if self.jaccard_weight else None

    def forward(self, logits: torch.Tensor | tuple, target: torch.Tensor, **_) -> dict[str, torch.Tensor]:
        if isinstance(logits, tuple | list):  # multi-output models: the first output is the segmentation
            logits = logits[0]
        terms = {"ce": self.ce(logits, target)}
        total = terms["ce"]
        if self.jaccard is not None:
            terms["jaccard"] = self.jaccard(logits, target)
            total = total + self.jaccard_weight * terms["jaccard"]
        return {"loss": total, **terms}
