"""Focal loss (Lin et al., ICCV 2017) for pixel-wise segmentation, over valid pixels only.

Per valid pixel ``i`` with true class ``y``::

    loss_i = -w[y] * (1 - p_i[y]) ** gamma * log p_i[y]
    loss   = sum_i loss_i / sum_i w[y_i]

``gamma = 0`` is weighted cross-entropy. Well-classified pixels (p[y] near 1: the bulk of the background of
a SAR scene, where buildings are 1-4 % of the pixels) contribute little, so the rare hard pixels at building
edges and small buildings carry the gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unosat.classes import IGNORE_INDEX
from unosat.errors import UnosatError


class FocalLoss(nn.Module):
    """Focal loss, see the module docstring.

    Args:
        gamma: focusing exponent (>= 0; the paper's default 2).
        class_weights: ``w``, one weight per class (None: all 1), e.g. the paper's alpha as ``[1 - a, a]``.
        ignore_index: label of pixels that count nowhere (image nodata).

    Input: logits ``(N, C, H, W)``, target ``(N, H, W)`` int64. Output: a scalar (0 when no pixel is valid).
    """

    def __init__(
        self,
        gamma: float = 2.0,
        class_weights: Sequence[float] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ):
        super().__init__()
        if float(gamma) < 0:
            raise UnosatError(f"loss gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.ignore_index = int(ignore_index)
        weights = None if class_weights is None else torch.as_tensor(list(class_weights), dtype=torch.float32)
        if weights is not None and (weights.ndim != 1 or (weights < 0).any()):
            raise UnosatError(
                f"loss class_weights must be non-negative, one per class, got {list(class_weights)}"
            )
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, safe_target).squeeze(1)  # (N, H, W)
        per_pixel = -((1.0 - log_p.exp()).clamp_min(0.0) ** self.gamma) * log_p
        weight = valid.to(per_pixel.dtype)
        if self.class_weights is not None:
            if len(self.class_weights) != logits.shape[1]:
                raise UnosatError(
                    f"loss class_weights has {len(self.class_weights)} values for {logits.shape[1]} classes"
                )
            weight = weight * self.class_weights.to(per_pixel.dtype)[safe_target.squeeze(1)]
        total = weight.sum()
        if total == 0:
            return per_pixel.sum() * 0.0
        return (per_pixel * weight).sum() / total
