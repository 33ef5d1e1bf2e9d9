"""MobileNetV2 encoder (Sandler et al., CVPR 2018), the backbone of Light-Weight RefineNet.

The whole encoder is in this file. For an input ``(N, in_channels, H, W)``, :meth:`MobileNetV2Encoder.forward`
returns eight features (``stride``: of the module itself; last column: channels @ side (output stride)):

=====  ==============  =========  ========  ======  ======  =====================================
index  module          expansion  channels  blocks  stride  for a 512 x 512 input
=====  ==============  =========  ========  ======  ======  =====================================
0      ``stem``        -          32        -       2       32 @ 256 (1/2): 3x3 conv, BN, ReLU6
1      ``stages[0]``   1          16        1       1       16 @ 256 (1/2)
2      ``stages[1]``   6          24        2       2       24 @ 128 (1/4)
3      ``stages[2]``   6          32        3       2       32 @ 64 (1/8)
4      ``stages[3]``   6          64        4       2       64 @ 32 (1/16)
5      ``stages[4]``   6          96        3       1       96 @ 32 (1/16)
6      ``stages[5]``   6          160       3       2       160 @ 16 (1/32)
7      ``stages[6]``   6          320       1       1       320 @ 16 (1/32)
=====  ==============  =========  ========  ======  ======  =====================================

Each stage is a chain of inverted residual blocks; only the first block of a stage has the stage's stride.
A block is ``expand`` (1x1 conv to ``expansion * in`` channels, BN, ReLU6; kept even when the expansion is 1),
``depthwise`` (3x3 depthwise conv with the stride, BN, ReLU6) and ``project`` (1x1 conv to the output
channels, BN, no activation), plus the input when input and output shapes agree (same channels, stride 1).
Convolutions have no bias. There is no final 1x1 conv to 1280 channels (the classification head of the
original MobileNetV2): segmentation decoders take the stage outputs directly.

Sizes: a 3x3 conv with stride 2 and padding 1 maps a side of ``n`` pixels to ``ceil(n / 2)``, so any input
size works; the strides above are exact for multiples of 32.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn

from unosat.models.init import init_reference_


class StageSpec(NamedTuple):
    """One row of the MobileNetV2 architecture table."""

    expansion: int  # t: hidden channels of a block = expansion * its input channels
    channels: int  # c: output channels of every block of the stage
    repeats: int  # n: number of blocks
    stride: int  # s: stride of the first block (the others have stride 1)


STEM_CHANNELS = 32
STEM_STRIDE = 2
# The architecture (Sandler et al., table 2, without the final 1280-channel conv).
MOBILENETV2_STAGES: tuple[StageSpec, ...] = (
    StageSpec(expansion=1, channels=16, repeats=1, stride=1),
    StageSpec(expansion=6, channels=24, repeats=2, stride=2),
    StageSpec(expansion=6, channels=32, repeats=3, stride=2),
    StageSpec(expansion=6, channels=64, repeats=4, stride=2),
    StageSpec(expansion=6, channels=96, repeats=3, stride=1),
    StageSpec(expansion=6, channels=160, repeats=3, stride=2),
    StageSpec(expansion=6, channels=320, repeats=1, stride=1),
)
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


class ConvBN(nn.Sequential):
    """``conv`` (no bias, "same" padding) -> ``bn`` [-> ``act`` = ReLU6]: (N, C_in, H, W) -> (N, C_out, H/s, W/s)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            bn=nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
        )
        if activation:
            layers["act"] = nn.ReLU6(inplace=True)
        super().__init__(layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: (N, C_in, H, W) -> (N, C_out, H/stride, W/stride).

    ``expand`` (1x1, C_in -> t*C_in, ReLU6) -> ``depthwise`` (3x3, stride, ReLU6) -> ``project`` (1x1 -> C_out,
    linear), plus the input when ``use_residual`` (C_in == C_out and stride 1).
    """

    def __init__(self, in_channels: int, out_channels: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand = ConvBN(in_channels, hidden, kernel_size=1)
        self.depthwise = ConvBN(hidden, hidden, kernel_size=3, stride=stride, groups=hidden)
        self.project = ConvBN(hidden, out_channels, kernel_size=1, activation=False)
        self.use_residual = in_channels == out_channels and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.use_residual else out


class MobileNetV2Stage(nn.Module):
    """One row of :data:`MOBILENETV2_STAGES`: ``blocks``, a chain of ``spec.repeats`` inverted residual blocks.

    (N, in_channels, H, W) -> (N, spec.channels, H / spec.stride, W / spec.stride).
    """

    def __init__(self, in_channels: int, spec: StageSpec) -> None:
        super().__init__()
        self.spec = spec
        self.blocks = nn.Sequential(
            *(
                InvertedResidual(
                    in_channels if i == 0 else spec.channels,
                    spec.channels,
                    expansion=spec.expansion,
                    stride=spec.stride if i == 0 else 1,
                )
                for i in range(spec.repeats)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 without its classification head; returns every stage output.

    Args:
        in_channels: bands of the input image (3 for the UNOSAT team's 3-band stacks, 5 for ``5b``...).

    Attributes:
        stem: 3x3 conv stride 2, ``in_channels`` -> 32, BN, ReLU6.
        stages: the seven stages of :data:`MOBILENETV2_STAGES`; ``stages[k]`` gives feature ``k + 1``.
        stage_channels: channels of each feature of :meth:`forward`, stem first:
            ``(32, 16, 24, 32, 64, 96, 160, 320)``.
        stage_strides: output stride of each feature: ``(2, 2, 4, 8, 16, 16, 32, 32)``.

    Weights get the reference initialisation (:func:`unosat.models.init.init_reference_`).
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.stem = ConvBN(in_channels, STEM_CHANNELS, kernel_size=3, stride=STEM_STRIDE)
        stages = []
        channels, strides = [STEM_CHANNELS], [STEM_STRIDE]
        for spec in MOBILENETV2_STAGES:
            stages.append(MobileNetV2Stage(channels[-1], spec))
            channels.append(spec.channels)
            strides.append(strides[-1] * spec.stride)
        self.stages = nn.ModuleList(stages)
        self.stage_channels: tuple[int, ...] = tuple(channels)
        self.stage_strides: tuple[int, ...] = tuple(strides)
        init_reference_(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_channels, H, W) -> the 8 features, stem first; feature ``i`` is
        (N, stage_channels[i], ~H / stage_strides[i], ~W / stage_strides[i]).
        """
        x = self.stem(x)
        features = [x]
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
