"""Atrous spatial pyramid pooling (ASPP, Chen et al., DeepLabV3), with optional guidance branches (GSCNN).

For deep features ``x`` (N, C_in, h, w), ASPP concatenates, each with ``C`` = ``out_channels`` channels:

- ``pool``: global average pooling -> 1x1 conv (with bias) -> ReLU -> broadcast back to (h, w)
  (no BatchNorm on this 1x1 map, so that a batch of one image still trains);
- ``conv1x1``: 1x1 conv -> BN -> ReLU;
- ``atrous[i]``: 3x3 conv with dilation ``rates[i]`` -> BN -> ReLU, one per rate;
- ``guidance`` (when ``guidance_channels`` > 0): a guidance map (N, guidance_channels, H', W') of any size,
  average-pooled to (h, w) (each cell keeps the mean of the map over its footprint) -> 1x1 conv -> BN -> ReLU.
  GSCNN feeds its fused edge map here.

and ``project`` maps the ``(2 + len(rates) + [1]) * C`` channels to ``C`` with a 1x1 conv -> BN -> ReLU.
Output (N, C, h, w). Convs before BatchNorm have no bias.

**Dead taps.** A 3x3 convolution with dilation ``r`` on an ``h x w`` map (zero padding ``r``) reads its
off-centre taps at ``+-r`` rows / columns. When ``r >= h`` (or ``w``) no output position has a real pixel
there: those taps read only padding, get exactly zero gradient, and never learn, yet at prediction on larger
windows they read real features with their untrained (initial) weights. :meth:`ASPP.dead_rates` names the
rates for which that happens; a network refuses to train with them (GSCNN: at its first training step).
The rates are in pixels of the feature map and must stay the same between training and prediction, so they
are chosen for the training crop: below ``crop / stride`` (DeepLab's 6/12/18 were set for 33 x 33 features;
about 1/6, 1/3 and 1/2 of the side).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unosat.errors import UnosatError


def pooling_matrix(size_in, size_out, like: torch.Tensor) -> torch.Tensor:
    """``(size_out, size_in)`` averaging weights of adaptive average pooling along one axis: row ``i`` is
    ``1 / n`` over input cells ``[floor(i * size_in / size_out), ceil((i + 1) * size_in / size_out))``."""
    out_idx = torch.arange(size_out, device=like.device)
    start = torch.div(out_idx * size_in, size_out, rounding_mode="floor")
    end = torch.div((out_idx + 1) * size_in + size_out - 1, size_out, rounding_mode="floor")
    in_idx = torch.arange(size_in, device=like.device)
    inside = ((in_idx[None, :] >= start[:, None]) & (in_idx[None, :] < end[:, None])).to(like.dtype)
    return inside / inside.sum(dim=1, keepdim=True)


def adaptive_avg_pool2d(x: torch.Tensor, size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)``; while exporting to ONNX, the same averages as two matrix products
    (the exporter cannot write adaptive pooling to an output size that depends on the input's)."""
    if not torch.onnx.is_in_onnx_export():
        return F.adaptive_avg_pool2d(x, size)
    rows = pooling_matrix(x.shape[-2], size[0], x)
    cols = pooling_matrix(x.shape[-1], size[1], x)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


class ConvBNReLU(nn.Sequential):
    """``conv`` (no bias, "same" padding for odd kernels, optional dilation) -> ``bn`` -> ``act`` (ReLU).

    (N, C_in, H, W) -> (N, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)


class ImagePooling(nn.Module):
    """Global context: (N, C_in, h, w) -> mean over (h, w) -> 1x1 conv -> ReLU -> (N, C_out, h, w)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.relu(self.conv(x.mean(dim=(2, 3), keepdim=True)))
        return pooled.expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling, see the module docstring.

    Args:
        in_channels: channels of the deep features.
        out_channels: channels of every branch and of the output.
        rates: dilation of the 3x3 branches, in pixels of the deep feature map (e.g. 6, 12, 18 at 1/32 or
            12, 24, 36 at output stride 8).
        guidance_channels: channels of an extra guidance input (1 for GSCNN's edge map; 0: none).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rates: Sequence[int] = (6, 12, 18),
        guidance_channels: int = 0,
    ) -> None:
        super().__init__()
        rates = tuple(int(r) for r in rates)
        if any(r < 1 for r in rates):
            raise UnosatError(f"model aspp_rates must be positive dilations, got {list(rates)}")
        self.rates = rates
        self.guidance_channels = int(guidance_channels)
        self.pool = ImagePooling(in_channels, out_channels)
        self.conv1x1 = ConvBNReLU(in_channels, out_channels, kernel_size=1)
        self.atrous = nn.ModuleList(
            ConvBNReLU(in_channels, out_channels, kernel_size=3, dilation=r) for r in rates
        )
        self.guidance = ConvBNReLU(self.guidance_channels, out_channels) if self.guidance_channels else None
        branches = 2 + len(rates) + (1 if self.guidance is not None else 0)
        self.project = ConvBNReLU(branches * out_channels, out_channels, kernel_size=1)

    def dead_rates(self, height: int, width: int) -> list[int]:
        """Rates whose off-centre taps see only zero padding on a ``height x width`` feature map (no gradient)."""
        return [r for r in self.rates if r >= min(height, width)]

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C_in, h, w) [+ guidance (N, guidance_channels, H', W')] -> (N, out_channels, h, w)."""
        branches = [self.pool(x), self.conv1x1(x), *(conv(x) for conv in self.atrous)]
        if self.guidance is not None:
            if guidance is None:
                raise ValueError("this ASPP has a guidance branch: forward needs the guidance map")
            branches.append(self.guidance(adaptive_avg_pool2d(guidance, x.shape[-2:])))
        return self.project(torch.cat(branches, dim=1))
