"""Light-Weight RefineNet (Nekrasov et al., BMVC 2018) on the MobileNetV2 encoder: the UNOSAT team's model.

The decoder refines top-down, from the coarsest features to the 1/4-resolution ones. For an input
``(N, C, H, W)`` and the encoder features named by their channels (see :mod:`unosat.models.mobilenetv2`):

- 1/32: ``relu6(lateral_320(f320) + lateral_160(f160))`` -> ``crp_1_32`` -> ``adapt_1_32`` -> bilinear up
  to the size of f96;
- 1/16: ``relu6(lateral_64(f64) + lateral_96(f96) + top)`` -> ``crp_1_16`` -> ``adapt_1_16`` -> up to f32;
- 1/8: ``relu6(top + lateral_32(f32))`` -> ``crp_1_8`` -> ``adapt_1_8`` -> up to f24;
- 1/4: ``relu6(lateral_24(f24) + top)`` -> ``crp_1_4`` -> ``classifier`` (3x3 conv with bias).

Every ``lateral_*`` and ``adapt_*`` is a 1x1 conv without bias; ``crp_*`` are :class:`ChainedResidualPooling`.
All decoder maps have :data:`DECODER_CHANNELS` = 256 channels. Upsampling goes to the size of the next finer
feature map (not a fixed factor of 2), so any input size works. The intermediate bilinear upsampling uses
``align_corners=True`` and the sums are in the reference order, so a checkpoint of the UNOSAT team's
implementation (:mod:`unosat.models.reference_checkpoint`) computes the same logits here.

The logits come out at 1/4 of the input size; :meth:`LWRefineNet.forward` interpolates them to the input size
(``bicubic`` by default, as the UNOSAT team did, ``align_corners=False``).

Parameters for 3 input bands and 2 classes: 3,240,770 (encoder 1,812,800, decoder 1,427,970, of which each
chained residual pooling block holds 262,144).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unosat.errors import UnosatError
from unosat.models.init import init_reference_
from unosat.models.mobilenetv2 import MobileNetV2Encoder

DECODER_CHANNELS = 256
CRP_STAGES = 4
CRP_POOL_SIZE = 5
UPSAMPLE_MODES = ("bicubic", "bilinear")


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear (``align_corners=True``, as the reference) resize of (N, C, h, w) to the (H, W) of ``like``."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


class ChainedResidualPooling(nn.Module):
    """Light-weight chained residual pooling: (N, C, H, W) -> (N, C, H, W).

    ``top = x``; then ``stages`` times: ``top = convs[i](maxpool_5x5_stride_1(top))``, ``x = x + top``.
    The 1x1 convs have no bias: ``stages * C * C`` parameters (262,144 for 4 x 256 x 256).
    """

    def __init__(self, channels: int, stages: int = CRP_STAGES) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=CRP_POOL_SIZE, stride=1, padding=CRP_POOL_SIZE // 2)
        self.convs = nn.ModuleList(conv1x1(channels, channels) for _ in range(stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = x
        for conv in self.convs:
            top = conv(self.pool(top))
            x = top + x
        return x


class LWRefineNetDecoder(nn.Module):
    """The Light-Weight RefineNet decoder over the eight MobileNetV2 features (see the module docstring).

    Args:
        encoder_channels: ``MobileNetV2Encoder.stage_channels`` (stem first, 8 entries).
        num_classes: output channels of ``classifier``.
    """

    def __init__(self, encoder_channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if len(encoder_channels) != 8:
            raise ValueError(f"expected the 8 MobileNetV2 feature channels, got {tuple(encoder_channels)}")
        _, _, c24, c32, c64, c96, c160, c320 = encoder_channels
        d = DECODER_CHANNELS
        # Lateral 1x1 convs: each encoder feature -> 256 channels (named after the MobileNetV2 channels).
        self.lateral_320 = conv1x1(c320, d)
        self.lateral_160 = conv1x1(c160, d)
        self.lateral_96 = conv1x1(c96, d)
        self.lateral_64 = conv1x1(c64, d)
        self.lateral_32 = conv1x1(c32, d)
        self.lateral_24 = conv1x1(c24, d)
        # One chained residual pooling per level, then a 1x1 adapter before upsampling to the next level.
        self.crp_1_32 = ChainedResidualPooling(d)
        self.crp_1_16 = ChainedResidualPooling(d)
        self.crp_1_8 = ChainedResidualPooling(d)
        self.crp_1_4 = ChainedResidualPooling(d)
        self.adapt_1_32 = conv1x1(d, d)
        self.adapt_1_16 = conv1x1(d, d)
        self.adapt_1_8 = conv1x1(d, d)
        self.classifier = nn.Conv2d(d, num_classes, kernel_size=3, padding=1, bias=True)
        init_reference_(self)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The 8 encoder features (stem first) -> logits (N, num_classes, H/4, W/4) at the size of f24."""
        _, _, f24, f32, f64, f96, f160, f320 = features
        top = F.relu6(self.lateral_320(f320) + self.lateral_160(f160))  # 1/32
        top = upsample_to(self.adapt_1_32(self.crp_1_32(top)), f96)
        top = F.relu6(self.lateral_64(f64) + self.lateral_96(f96) + top)  # 1/16
        top = upsample_to(self.adapt_1_16(self.crp_1_16(top)), f32)
        top = F.relu6(top + self.lateral_32(f32))  # 1/8
        top = upsample_to(self.adapt_1_8(self.crp_1_8(top)), f24)
        top = F.relu6(self.lateral_24(f24) + top)  # 1/4
        return self.classifier(self.crp_1_4(top))


class LWRefineNet(nn.Module):
    """Light-Weight RefineNet with a MobileNetV2 encoder; 3,240,770 parameters for 3 bands and 2 classes.

    Args:
        in_channels: input bands.
        num_classes: output classes (2: background, building).
        upsample_mode: how the 1/4-resolution logits are brought to the input size, one of
            :data:`UPSAMPLE_MODES` (``bicubic``: the UNOSAT team's choice).

    Attributes:
        encoder: :class:`~unosat.models.mobilenetv2.MobileNetV2Encoder`.
        decoder: :class:`LWRefineNetDecoder`.

    CPU inference is several times faster in the channels-last memory format (``model.to(memory_format=
    torch.channels_last)`` and a channels-last input): the 5x5 max pooling of the 1/4-resolution chained residual
    pooling dominates the default layout. The logits are the same.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, upsample_mode: str = "bicubic") -> None:
        super().__init__()
        if upsample_mode not in UPSAMPLE_MODES:
            raise UnosatError(
                f"model upsample_mode {upsample_mode!r} is not one of {', '.join(UPSAMPLE_MODES)}"
            )
        if in_channels < 1 or num_classes < 1:
            raise UnosatError(
                f"model needs at least one input band and one class, got in_channels={in_channels}, "
                f"num_classes={num_classes}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.upsample_mode = upsample_mode
        self.encoder = MobileNetV2Encoder(in_channels)
        self.decoder = LWRefineNetDecoder(self.encoder.stage_channels, num_classes)

    def forward_quarter(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> logits (N, num_classes, ceil(H/4), ceil(W/4)), before upsampling."""
        return self.decoder(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> logits (N, num_classes, H, W)."""
        logits = self.forward_quarter(x)
        return F.interpolate(logits, size=x.shape[-2:], mode=self.upsample_mode, align_corners=False)
