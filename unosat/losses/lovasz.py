"""Lovasz-softmax loss (Berman, Rannen Triki & Blaschko, CVPR 2018): a convex surrogate of 1 - IoU.

For class ``c`` let ``e_i = |y_i == c - p_i[c]|`` be the errors of the valid pixels, sorted in decreasing
order, and ``g`` the foreground indicators in that order. The Jaccard loss of the first ``k`` errors is
``J_k = 1 - (G - cumsum(g)_k) / (G + cumsum(1 - g)_k)`` with ``G = sum(g)``; the Lovasz extension is
``sum_k e_k (J_k - J_{k-1})`` (``J_0 = 0``). The loss averages it over the classes present in the batch's
valid pixels (``classes="present"``) or over the listed classes.

It optimises the IoU of the building class directly, which neither cross-entropy nor a soft Jaccard does
exactly; the paper pairs it with cross-entropy early in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unosat.classes import IGNORE_INDEX


def lovasz_jaccard_gradient(foreground_sorted: torch.Tensor) -> torch.Tensor:
    """``J_k - J_{k-1}`` for foreground indicators ``(P,)`` sorted by decreasing error (see the module)."""
    total = foreground_sorted.sum()
    intersection = total - foreground_sorted.cumsum(0)
    union = total + (1.0 - foreground_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


class LovaszSoftmaxLoss(nn.Module):
    """Lovasz-softmax over the valid pixels of the whole batch.

    Args:
        classes: ``"present"`` (classes present in the valid target pixels), ``"all"``, or a list of class
            indices (e.g. ``[1]``: the building class only).
        ignore_index: label of pixels that count nowhere.

    Input: logits ``(N, C, H, W)``, target ``(N, H, W)`` int64. Output: a scalar in [0, 1] (0 when no pixel
    is valid or no listed class is present).
    """

    def __init__(self, classes: str | Sequence[int] = "present", ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.classes = classes if isinstance(classes, str) else [int(c) for c in classes]
        self.ignore_index = int(ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        probs = F.softmax(logits.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, num_classes)
        labels = target.reshape(-1)
        valid = labels != self.ignore_index
        probs, labels = probs[valid], labels[valid]
        if labels.numel() == 0:
            return logits.sum() * 0.0
        if self.classes == "present":
            chosen = torch.unique(labels).tolist()
        elif self.classes == "all":
            chosen = list(range(num_classes))
        else:
            chosen = list(self.classes)
        losses = []
        for c in chosen:
            foreground = (labels == c).to(probs.dtype)
            if self.classes != "all" and foreground.sum() == 0:
                continue
            errors = (foreground - probs[:, c]).abs()
            errors_sorted, order = torch.sort(errors, descending=True)
            losses.append(torch.dot(errors_sorted, lovasz_jaccard_gradient(foreground[order])))
        if not losses:
            return logits.sum() * 0.0
        return torch.stack(losses).mean()
