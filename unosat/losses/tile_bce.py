"""Binary cross-entropy of a tile classifier; the target comes from the segmentation mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unosat.classes import IGNORE_INDEX, TARGET


def tile_target(mask: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``(N, H, W)`` masks -> ``(N,)`` float: 1 where the tile holds at least one (valid) building pixel."""
    return ((mask == TARGET) & (mask != ignore_index)).flatten(1).any(dim=1).float()


class TileBCELoss(nn.Module):
    """``BCEWithLogits(logit, tile_target(mask))``, optionally with ``pos_weight`` for tiles with buildings.

    ``forward(logits (N, 1) or (N,), mask (N, H, W)) -> {"loss", "bce"}``.
    """

    def __init__(self, pos_weight: float | None = None, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.pos_weight = pos_weight
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        target = tile_target(mask, self.ignore_index)
        weight = None if self.pos_weight is None else torch.as_tensor(self.pos_weight, device=logits.device)
        bce = F.binary_cross_entropy_with_logits(logits.reshape(-1).float(), target, pos_weight=weight)
        return {"loss": bce, "bce": bce}
