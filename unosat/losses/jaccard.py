"""Soft Jaccard (IoU) loss on softmax probabilities, over valid pixels only.

Two reductions over the classes:

- ``per_class``: ``1 - mean_c (I_c + s) / (U_c + s)``, each class's soft IoU weighs the same (the building
  class, 1-3 % of the pixels, counts as much as the background);
- ``pooled``: ``1 - (sum_c I_c + s) / (sum_c U_c + s)``, one ratio of sums over the batch and the classes: the
  UNOSAT team's ``SoftmaxJaccardWithLogitsLoss`` (mean over batch and classes of the intersections, divided by
  the mean of the unions). With few building pixels the background dominates both sums, so the loss is
  smaller and its building gradients weaker than with ``per_class``.

``I_c = sum P_c Y_c`` and ``U_c = sum P_c + sum Y_c - I_c`` are summed over the valid pixels (label !=
``ignore_index``) of the whole batch (the original had no ignored pixels: nodata counted as background).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unosat.classes import IGNORE_INDEX
from unosat.errors import UnosatError

REDUCTIONS = ("per_class", "pooled")


class SoftJaccardLoss(nn.Module):
    """Soft Jaccard loss, see the module docstring.

    ``P_c`` are softmax probabilities of class ``c`` and ``Y_c`` its one-hot target, summed over the valid
    pixels (label != ``ignore_index``) of the whole batch.

    Args:
        classes: classes counted (None: all).
        smooth: ``s``, keeps the ratio defined when a class is absent.
        reduction: ``per_class`` (mean of the classes' IoUs) or ``pooled`` (ratio of the sums, the original's).
    """

    def __init__(
        self,
        classes: Sequence[int] | None = None,
        smooth: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        reduction: str = "per_class",
    ):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise UnosatError(f"loss.jaccard_reduction must be one of {REDUCTIONS}, got '{reduction}'")
        self.classes = None if classes is None else list(classes)
        self.smooth = float(smooth)
        self.ignore_index = int(ignore_index)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        valid = (
            (target != self.ignore_index)
            .unsqueeze(1)
            .to(logits.dtype if logits.is_floating_point() else torch.float32)
        )
        probs = F.softmax(logits.float(), dim=1) * valid
        onehot = F.one_hot(torch.where(target == self.ignore_index, 0, target), num_classes).permute(
            0, 3, 1, 2
        )
        onehot = onehot.to(probs.dtype) * valid
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        union = probs.sum(dims) + onehot.sum(dims) - inter
        if self.classes is not None:
            inter, union = inter[self.classes], union[self.classes]
        if self.reduction == "pooled":
            return 1.0 - (inter.sum() + self.smooth) / (union.sum() + self.smooth)
        return 1.0 - ((inter + self.smooth) / (union + self.smooth)).mean()
