"""Export-time rewrite of U-Net decoder levels: ``conv(cat([up, skip]))`` as ``conv_up(up) + conv_skip(skip)``.

A convolution of a channel concatenation is the sum of two convolutions, one per part, whose kernels are the
matching input-channel slices of the original kernel (the first conv of a :class:`~unosat.models.unet.UpBlock`
has no bias, so nothing is counted twice); the batch norm that follows (running statistics: the exported
network is in eval mode) is folded into both, its shift into one:

    BN(W * [u; s]) = (k W[:, :C_u]) * u + ((k W[:, C_u:]) * s + b),   k = gamma / sqrt(var + eps),
                                                                    b = beta - mean k

so onnxruntime fuses the sum and the ReLU into the second convolution.

The upsampling doubles each side (``scale_factor=2``) instead of resizing to the skip's size: the same
bilinear weights when the input's sides are multiples of the network's ``size_divisor`` (every level then
halves exactly), and a constant scale lets onnxruntime upsample in its blocked layout. **The exported U-Net
therefore takes only such sides** (:func:`needs_size_multiples`; ``predict.py`` pads windows to them, and
Deepness's 512 px tiles are); the export checks it on its own inputs, and another side fails in onnxruntime.

Same values up to float rounding (measured: 3e-6 on probabilities), and no ``Concat`` in the graph. Why it is
worth it: onnxruntime's CPU provider runs convolutions in its blocked NCHWc layout, but its ``Concat`` and
``Resize`` to a computed size run in plain NCHW, so every decoder level paid a reorder out of NCHWc, the
concat, the resize and a reorder back. Profiled on the 2-core VM (1 thread, 2 x 512² windows, the U-Net
default, the recipe inside): Concat 13 %, Resize 9 %, reorders 8 % and Softmax 5 % of a run before (with the
two-class form of :func:`unosat.export.graph.class_probabilities`); after, convolutions are 74 % of a run about
20 % shorter, the rest mostly the blocked ``Upsample`` (10 %).

The checkpoint's network is not touched: :func:`split_decoder_concats` returns a rewritten deep copy, used only
for the exported graph (the export check compares it with the unmodified network).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from unosat.errors import UnosatError
from unosat.models.unet import UNet, UpBlock


class SplitUpBlock(nn.Module):
    """An :class:`UpBlock` (in eval mode) whose first convolution and batch norm read ``up`` and ``skip`` through two
    kernels summed, instead of their concatenation. Same inputs, outputs (``(N, C_out, H, W)``) and values as the
    block it was made from, whose later layers it takes over (give it a copy: :func:`split_decoder_concats` does)."""

    def __init__(self, block: UpBlock, deep_channels: int) -> None:
        super().__init__()
        first, norm = block.conv[0], block.conv[1]
        if not isinstance(first, nn.Conv2d) or first.bias is not None or first.groups != 1:
            raise TypeError(
                "SplitUpBlock needs an UpBlock whose first layer is a bias-free, ungrouped Conv2d"
            )
        if not isinstance(norm, nn.BatchNorm2d) or norm.running_var is None:
            raise TypeError(
                "SplitUpBlock needs the UpBlock's first convolution followed by a BatchNorm2d with statistics"
            )
        # BN(a + b) = scale * a + (scale * b + shift), with the running statistics (eval mode)
        scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).detach()
        shift = (norm.bias - norm.running_mean * scale).detach()
        weight = first.weight.detach() * scale.view(-1, 1, 1, 1)
        self.conv_up = self._part(first, weight[:, :deep_channels], None)
        self.conv_skip = self._part(first, weight[:, deep_channels:], shift)
        self.rest = nn.Sequential(*list(block.conv)[2:])  # ReLU, conv, BN, ReLU: the block's own layers

    @staticmethod
    def _part(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
        part = nn.Conv2d(
            weight.shape[1],
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=bias is not None,
        )
        part.weight.data.copy_(weight)
        if bias is not None:
            part.bias.data.copy_(bias)
        return part

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=False)
        if up.shape[-2:] != skip.shape[-2:]:  # evaluated when traced: the graph itself has no such check
            raise UnosatError(
                f"the exported U-Net takes sides that are multiples of its size divisor: a level of "
                f"{tuple(deep.shape[-2:])} px does not double to its skip's {tuple(skip.shape[-2:])} px"
            )
        return self.rest(self.conv_up(up) + self.conv_skip(skip))


def needs_size_multiples(net: nn.Module) -> bool:
    """Whether the exported form of ``net`` takes only sides that are multiples of its ``size_divisor`` (a U-Net,
    rewritten by :func:`split_decoder_concats`)."""
    return isinstance(net, UNet)


def split_decoder_concats(net: nn.Module) -> nn.Module:
    """A deep copy of ``net`` with every U-Net decoder level made a :class:`SplitUpBlock`; other networks are
    returned unchanged (not copied). ``net`` itself is not modified."""
    if not needs_size_multiples(net):  # the networks this rewrite applies to
        return net
    rewritten = copy.deepcopy(net)
    depth = len(rewritten.widths)
    for j, block in enumerate(rewritten.decoder):
        # decoder[j] concatenates w_{D-1-j} upsampled channels (deep first) with the skip's w_{D-2-j}
        rewritten.decoder[j] = SplitUpBlock(block, rewritten.widths[depth - 1 - j])
    return rewritten
