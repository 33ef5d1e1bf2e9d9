"""U-Net (Ronneberger et al., MICCAI 2015), written here: logits at the input resolution.

At 10 m a building is 1-5 pixels, so the network must be able to draw a 1-pixel structure: the finest
decoder level works on the input grid and sees the first encoder level through a skip connection.

For an input ``(N, in_channels, H, W)`` and ``widths = (w_0, ..., w_{D-1})`` (D = ``len(widths)`` levels;
the default ``(16, 32, 64, 128)``), with sizes for a 512 x 512 input and the default widths:

===========================  ==============================================================  ==========================
module                       what                                                            output, 512 x 512 input
===========================  ==============================================================  ==========================
``encoder[0]``               DoubleConv in_channels -> w_0                                   16 @ 512 (1/1)
``encoder[k]``, k >= 1       2x2 max pooling stride 2 (ceil), DoubleConv w_{k-1} -> w_k      32 @ 256 ... 256 @ 32
``decoder[j]``, j = 0..D-2   bilinear up to the size of the skip ``encoder[D-2-j]``, concat  64 @ 128 ... 16 @ 512
                             it, DoubleConv w_{D-1-j} + w_{D-2-j} -> w_{D-2-j}
``classifier``               1x1 conv w_0 -> num_classes (with bias)                         2 @ 512 (1/1)
===========================  ==============================================================  ==========================

A DoubleConv is (3x3 conv without bias, BatchNorm, ReLU) twice. Upsampling is bilinear
(``align_corners=False``) to the exact size of the skip feature, not a transposed convolution: it has no
parameters, cannot print the checkerboard pattern a stride-2 transposed convolution leaves at the 1-pixel scale
the buildings live at, and works for any input size (a max pooling of an odd side rounds down; the upsampling
goes back to the skip's side; pooling rounds odd sides up). :attr:`UNet.size_divisor` = 2^(D-1) (8 by default)
is the side multiple at which every level is exactly half the previous one; other sizes work too and still give
(H, W) logits.

Parameters for 3 bands, 2 classes and the default widths: 488,018 (encoder 294,000, decoder 193,984, classifier
34); with a fifth level of 256 channels (the default until the read-time crops made more training steps fit the
Quickstart budget, see the README's model-quality section), 1,964,114. ``tests/test_models_unet.py`` derives
both from the table above.
Initialisation: convs He-normal (fan out, ReLU gain), BatchNorm weight 1 and bias 0, classifier bias 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unosat.errors import UnosatError
from unosat.models.init import init_he_

DEFAULT_WIDTHS = (16, 32, 64, 128)


class DoubleConv(nn.Sequential):
    """(N, C_in, H, W) -> (N, C_out, H, W): (3x3 conv without bias, BN, ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Decoder level: ``deep`` (N, C_deep, h, w) up to the size of ``skip`` (N, C_skip, H, W), concatenated
    (deep first), DoubleConv -> (N, C_out, H, W)."""

    def __init__(self, deep_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = DoubleConv(deep_channels + skip_channels, out_channels)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([up, skip], dim=1))


class UNet(nn.Module):
    """Plain U-Net, see the module docstring.

    Args:
        in_channels: input bands.
        num_classes: output classes (2: background, building).
        widths: channels of each encoder level, finest first; its length is the depth (at least 2 levels).

    Attributes:
        size_divisor: input sides that are multiples of it halve exactly at every level (2^(depth-1)).
        encoder, decoder (``nn.ModuleList``), classifier.
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 2, widths: Sequence[int] = DEFAULT_WIDTHS
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if in_channels is None or in_channels < 1 or num_classes < 1:
            raise UnosatError(
                f"model needs at least one input band and one class, got in_channels={in_channels}, "
                f"num_classes={num_classes}"
            )
        if len(widths) < 2 or min(widths) < 1:
            raise UnosatError(
                f"model widths must be at least 2 positive channel counts (one per level), got {list(widths)}"
            )
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.widths = widths
        self.size_divisor = 2 ** (len(widths) - 1)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)  # an odd side rounds up, never to 0
        self.encoder = nn.ModuleList(
            DoubleConv(self.in_channels if k == 0 else widths[k - 1], w) for k, w in enumerate(widths)
        )
        self.decoder = nn.ModuleList(
            UpBlock(widths[k + 1], widths[k], widths[k]) for k in reversed(range(len(widths) - 1))
        )
        self.classifier = nn.Conv2d(widths[0], self.num_classes, kernel_size=1, bias=True)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        init_he_(self.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> logits (N, num_classes, H, W)."""
        skips = []
        for k, block in enumerate(self.encoder):
            x = block(x if k == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up in self.decoder:
            x = up(x, skips.pop())
        return self.classifier(x)
