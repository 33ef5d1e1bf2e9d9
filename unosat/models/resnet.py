"""ResNet-50 (He et al., CVPR 2016) as a dilated segmentation backbone; built here, no torchvision.

For an input ``(N, in_channels, H, W)`` and ``output_stride`` 8 (the default), :meth:`ResNet.forward` returns
five features (last column: channels @ side for a 512 x 512 input):

=====  =============  ======  ========  =======================================
index  module         blocks  dilation  for a 512 x 512 input, output stride 8
=====  =============  ======  ========  =======================================
0      stem           -       -         64 @ 256 (1/2): 7x7 conv stride 2, BN, ReLU
1      ``layer1``     3       1         256 @ 128 (1/4), after a 3x3 max pooling stride 2
2      ``layer2``     4       1         512 @ 64 (1/8)
3      ``layer3``     6       2         1024 @ 64 (1/8): stride replaced by dilation
4      ``layer4``     3       4         2048 @ 64 (1/8): stride replaced by dilation
=====  =============  ======  ========  =======================================

With ``output_stride`` 16 only ``layer4`` is dilated (1/16), with 32 none is (1/32). Blocks are bottlenecks
(1x1 reduce, 3x3 with the stride and dilation, 1x1 expand x4, BN after each, ReLU, identity or a 1x1-conv
projection shortcut; the stride sits on the 3x3 conv, "ResNet v1.5"). A dilated stage's first block keeps the
previous dilation, the others take the new one. No classification head.

Module and tensor names follow the common PyTorch layout (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``...), so a ResNet-50 state_dict saved elsewhere loads into it (its ``fc.`` head
aside). Parameters for 3 input bands: 23,508,032.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unosat.errors import UnosatError
from unosat.models.init import init_he_

RESNET50_BLOCKS = (3, 4, 6, 3)
STAGE_WIDTHS = (64, 128, 256, 512)  # bottleneck (3x3) widths; stage outputs are EXPANSION times these
EXPANSION = 4
STEM_CHANNELS = 64
OUTPUT_STRIDES = (8, 16, 32)


class Bottleneck(nn.Module):
    """(N, C_in, H, W) -> (N, EXPANSION * width, H / stride, W / stride)."""

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(
            width, width, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A bottleneck ResNet without its classification head; returns the stem and every stage output.

    Args:
        in_channels: input bands.
        blocks: bottlenecks per stage (:data:`RESNET50_BLOCKS` for ResNet-50).
        output_stride: 8, 16 or 32: stride of the deepest features (the later stages are dilated instead).

    Attributes:
        stage_channels: channels of each feature of :meth:`forward`: ``(64, 256, 512, 1024, 2048)``.
        stage_strides: output stride of each feature, e.g. ``(2, 4, 8, 8, 8)`` at output stride 8.

    Initialisation: convs He-normal (fan out, ReLU gain), BN weight 1 and bias 0, and the last BN of every
    block weight 0, so that each residual block starts as the identity (trains from scratch more easily).
    """

    def __init__(
        self, in_channels: int = 3, blocks: Sequence[int] = RESNET50_BLOCKS, output_stride: int = 8
    ) -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise UnosatError(f"ResNet output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, STEM_CHANNELS, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels, strides = [STEM_CHANNELS], [2]
        stride_now, dilation = 4, 1  # after the max pooling
        layers = []
        for i, (n, width) in enumerate(zip(blocks, STAGE_WIDTHS, strict=True)):
            stride = 1 if i == 0 else 2
            previous_dilation = dilation
            if stride_now * stride > output_stride:  # replace the stride by dilation
                dilation *= stride
                stride = 1
            stride_now *= stride
            stage = [Bottleneck(channels[-1], width, stride, previous_dilation)]
            stage += [Bottleneck(width * EXPANSION, width, 1, dilation) for _ in range(n - 1)]
            layers.append(nn.Sequential(*stage))
            channels.append(width * EXPANSION)
            strides.append(stride_now)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.stage_channels: tuple[int, ...] = tuple(channels)
        self.stage_strides: tuple[int, ...] = tuple(strides)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        init_he_(self.modules())  # every conv here is bias-free
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_channels, H, W) -> the 5 features; feature ``i`` is
        (N, stage_channels[i], ~H / stage_strides[i], ~W / stage_strides[i]).
        """
        stem = self.relu(self.bn1(self.conv1(x)))
        features = [stem]
        x = self.maxpool(stem)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


def resnet50(in_channels: int = 3, output_stride: int = 8) -> ResNet:
    """ResNet-50 (3, 4, 6, 3 bottlenecks); 23,508,032 parameters for 3 input bands."""
    return ResNet(in_channels, RESNET50_BLOCKS, output_stride)
