"""Soft Jaccard (IoU) loss on softmax probabilities, over valid pixels only."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unosat.classes import IGNORE_INDEX


class SoftJaccardLoss(nn.Module):
    """``1 - mean_c (|P_c . Y_c| + s) / (|P_c| + |Y_c| - |P_c . Y_c| + s)``.

    ``P_c`` are softmax probabilities of class ``c`` and ``Y_c`` its one-hot target, summed over the valid
    pixels (label != ``ignore_index``) of the whole batch.

    Args:
        classes: classes averaged (None: all).
        smooth: ``s``, keeps the ratio defined when a class is absent.
    """

    def __init__(self, classes: Sequence[int] | None = None, smooth: float = 1.0, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.classes = None if classes is None else list(classes)
        self.smooth = float(smooth)
        self.ignore_index = int(ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        valid = (target != self.ignore_index).unsqueeze(1).to(logits.dtype if logits.is_floating_point() else torch.float32)
        probs = F.softmax(logits.float(), dim=1) * valid
        onehot = F.one_hot(torch.where(target == self.ignore_index, 0, target), num_classes).permute(0, 3, 1, 2)
        onehot = onehot.to(probs.dtype) * valid
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        union = probs.sum(dims) + onehot.sum(dims) - inter
        iou = (inter + self.smooth) / (union + self.smooth)
        if self.classes is not None:
            iou = iou[self.classes]
        return 1.0 - iou.mean()
