"""Tile classifier: "does this window hold building pixels?", to skip empty areas before segmentation.

The project's MobileNetV2 encoder (optionally only its first ``num_stages`` stages, which is cheaper) with a
pooled head: global average and global max of the last feature map (max pooling keeps the evidence of a
few small bright buildings), dropout, and a linear layer to one logit.
"""

from __future__ import annotations

import torch
from torch import nn

from unosat.errors import UnosatError
from unosat.models.init import init_reference_
from unosat.models.mobilenetv2 import MobileNetV2Encoder


class TileClassifier(nn.Module):
    """``(N, C, H, W)`` images -> ``(N, 1)`` logits of "the tile holds building pixels".

    Args:
        in_channels: bands of the input.
        num_classes: must be 2 (background / building); the output is the building logit.
        num_stages: encoder stages kept after the stem (1..7; 7 = the whole MobileNetV2 encoder).
        dropout: dropout before the linear layer.
        window_px: side (px) of the windows it was trained to judge (the training crop); ``predict.py``'s gate
            judges a larger window cell by cell at this size. None: whatever window it is given.
    """

    #: tells ``train.py`` which LightningModule trains it, and ``predict.py`` what it is
    task = "tile_classification"

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        num_stages: int = 7,
        dropout: float = 0.2,
        window_px: int | None = None,
    ):
        super().__init__()
        if num_classes != 2:
            raise UnosatError(
                f"the tile classifier predicts building / no building: num_classes must be 2, got {num_classes}"
            )
        encoder = MobileNetV2Encoder(in_channels)
        if not 1 <= num_stages <= len(encoder.stages):
            raise UnosatError(
                f"tile classifier: num_stages must be in 1..{len(encoder.stages)}, got {num_stages}"
            )
        self.stem = encoder.stem
        self.stages = nn.ModuleList(list(encoder.stages)[:num_stages])
        channels = encoder.stage_channels[num_stages]
        self.in_channels = in_channels
        if window_px is not None and window_px < 32:
            raise UnosatError(
                f"tile classifier: window_px must be at least 32 (the encoder's stride), got {window_px}"
            )
        self.window_px = None if window_px is None else int(window_px)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * channels, 1))
        init_reference_(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)
