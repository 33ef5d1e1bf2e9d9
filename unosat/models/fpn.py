"""Feature Pyramid Network (Lin et al., CVPR 2017; semantic head of Kirillov et al., CVPR 2019) on the
project's ResNet-50, with a full-resolution head: logits at the input resolution.

The UNOSAT team's best test F1 (0.743) came from an SE-ResNeXt50 FPN on dB bands; this is the same decoder
on the in-project ResNet-50 (:mod:`unosat.models.resnet`, output stride 32, no torchvision), followed by two
refinement levels so that 1-5 px buildings can be drawn.

For an input ``(N, in_channels, H, W)`` (sizes for 512 x 512 and the defaults: ``pyramid_channels`` P = 128,
``segmentation_channels`` S = 64, ``fine_channels`` = (F2, F1) = (32, 16)):

================================  ==========================================================  ===============
module                            what                                                        512 x 512 input
================================  ==========================================================  ===============
``backbone``                      ResNet-50: stem C1 64 @ 1/2, C2 256 @ 1/4, C3 512 @ 1/8,      2048 @ 16
                                  C4 1024 @ 1/16, C5 2048 @ 1/32
``lateral[k]``, k = 0..3          1x1 conv (bias) C{k+2} -> P                                  P @ 1/4..1/32
top-down                          ``P5 = lateral(C5)``; ``P_k = lateral(C_k) + up(P_{k+1})``   P @ 1/4..1/32
``smooth[k]``                     3x3 conv (bias) P -> P on each P_k
``segment[k]``                    3x3 conv (no bias), BN, ReLU, P -> S; bilinear up to 1/4;    S @ 128
                                  the four levels summed
``adapt_1_4``, ``lateral_1_2``    1x1 convs S -> F2 (up to 1/2) and C1 -> F2, summed, ReLU,     F2 @ 256
``refine_1_2``                    3x3 conv, BN, ReLU
``adapt_1_2``, ``input_branch``   1x1 conv F2 -> F1 (up to 1/1) and (3x3 conv, BN, ReLU) x 2    F1 @ 512
                                  on the input, summed, ReLU, ``refine_1_1`` 3x3 conv, BN, ReLU
``classifier_1_1``                1x1 conv (bias) F1 -> num_classes                            2 @ 512
================================  ==========================================================  ===============

All upsampling is bilinear (``align_corners=False``) to the exact size of the finer map, so any input size
works; :attr:`FPN.size_divisor` = 32 (the ResNet's deepest stride) is the side multiple at which every level
is exactly half the previous one. Parameters for 3 bands and 2 classes with the defaults: 24,904,882 (ResNet-50
23,508,032; the decoder 1,396,850, derived in ``tests/test_models_fpn.py``).
Initialisation: the ResNet's own (He, zero-gamma residual ends); decoder convs He-normal, biases 0, BN 1 / 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unosat.errors import UnosatError
from unosat.models.aspp import ConvBNReLU
from unosat.models.gscnn import load_backbone_weights
from unosat.models.init import init_he_
from unosat.models.resnet import resnet50

BACKBONE_OUTPUT_STRIDE = 32
FINE_CHANNELS = (32, 16)


def upsample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to the (H, W) of ``like`` (``align_corners=False``)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class FPN(nn.Module):
    """FPN on ResNet-50 with a full-resolution head, see the module docstring.

    Args:
        in_channels: input bands.
        num_classes: output classes (2: background, building).
        pretrained: path of a local state_dict for the ResNet-50 (see
            :func:`unosat.models.gscnn.load_backbone_weights`); None: from scratch. Nothing is downloaded.
        pyramid_channels: width P of the pyramid maps.
        segmentation_channels: width S of the per-level segmentation branches, summed at 1/4.
        fine_channels: widths (F2, F1) of the 1/2 and 1/1 refinement levels.

    Attributes: ``backbone``, ``lateral``, ``smooth``, ``segment`` (``nn.ModuleList``, finest level first),
    ``adapt_1_4``, ``lateral_1_2``, ``refine_1_2``, ``adapt_1_2``, ``input_branch``, ``refine_1_1``,
    ``classifier_1_1``, ``size_divisor``.
    """

    size_divisor = BACKBONE_OUTPUT_STRIDE

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        pretrained: str | None = None,
        pyramid_channels: int = 128,
        segmentation_channels: int = 64,
        fine_channels: Sequence[int] = FINE_CHANNELS,
    ) -> None:
        super().__init__()
        if in_channels is None or in_channels < 1 or num_classes < 1:
            raise UnosatError(
                f"model needs at least one input band and one class, got in_channels={in_channels}, "
                f"num_classes={num_classes}"
            )
        fine = tuple(int(c) for c in fine_channels)
        if len(fine) != 2 or min(fine) < 1 or pyramid_channels < 1 or segmentation_channels < 1:
            raise UnosatError(
                f"model pyramid_channels, segmentation_channels must be positive and fine_channels 2 "
                f"positive widths, got {pyramid_channels}, {segmentation_channels}, {list(fine)}"
            )
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        p, s, (f2, f1) = int(pyramid_channels), int(segmentation_channels), fine
        self.backbone = resnet50(self.in_channels, output_stride=BACKBONE_OUTPUT_STRIDE)
        stem_channels, *pyramid_inputs = self.backbone.stage_channels  # 64; 256, 512, 1024, 2048
        self.lateral = nn.ModuleList(nn.Conv2d(c, p, kernel_size=1) for c in pyramid_inputs)
        self.smooth = nn.ModuleList(nn.Conv2d(p, p, kernel_size=3, padding=1) for _ in pyramid_inputs)
        self.segment = nn.ModuleList(ConvBNReLU(p, s, kernel_size=3) for _ in pyramid_inputs)
        self.adapt_1_4 = nn.Conv2d(s, f2, kernel_size=1, bias=False)
        self.lateral_1_2 = nn.Conv2d(stem_channels, f2, kernel_size=1, bias=False)
        self.refine_1_2 = ConvBNReLU(f2, f2, kernel_size=3)
        self.adapt_1_2 = nn.Conv2d(f2, f1, kernel_size=1, bias=False)
        self.input_branch = nn.Sequential(
            ConvBNReLU(self.in_channels, f1, kernel_size=3), ConvBNReLU(f1, f1, kernel_size=3)
        )
        self.refine_1_1 = ConvBNReLU(f1, f1, kernel_size=3)
        self.classifier_1_1 = nn.Conv2d(f1, self.num_classes, kernel_size=1)
        self.reset_decoder()
        if pretrained is not None:
            load_backbone_weights(self.backbone, Path(pretrained).expanduser())

    @torch.no_grad()
    def reset_decoder(self) -> None:
        init_he_(m for name, m in self.named_modules() if not name.startswith("backbone"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> logits (N, num_classes, H, W)."""
        stem, *c = self.backbone(x)  # C1 at 1/2; C2..C5 at 1/4..1/32
        top = self.lateral[-1](c[-1])
        pyramid = [top]
        for k in range(len(c) - 2, -1, -1):
            top = self.lateral[k](c[k]) + upsample(top, c[k])
            pyramid.insert(0, top)
        quarter = pyramid[0]
        merged = sum(
            upsample(seg(smooth(level)), quarter)
            for level, smooth, seg in zip(pyramid, self.smooth, self.segment)
        )
        half = self.refine_1_2(F.relu(self.lateral_1_2(stem) + upsample(self.adapt_1_4(merged), stem)))
        full = self.input_branch(x)
        full = self.refine_1_1(F.relu(full + upsample(self.adapt_1_2(half), full)))
        return self.classifier_1_1(full)
