"""Edge ground truth from a label mask: pixels near a class boundary, computed with torch pooling.

A pixel is an **edge** when its ``(2 r + 1) x (2 r + 1)`` window (Chebyshev distance <= ``radius`` r) holds
two different valid labels, i.e. when it lies within ``radius`` pixels of a change of class (between
background 0 and building 1 here, between any two classes in general). Both sides of a boundary are marked,
so with ``radius`` 1 an isolated boundary gives an edge band 2 px wide. Pixels whose label is ``ignore_index``
count as no class (they make no edge by themselves) and are ``ignore_index`` in the result.

The window test is a max pooling and a min pooling of the labels (ignored pixels set to -inf / +inf so
that they never win), so it runs batched on any device, and after augmentation (inside the loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unosat.classes import IGNORE_INDEX
from unosat.errors import UnosatError


def edge_targets(mask: torch.Tensor, radius: int = 1, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Edge labels of a mask.

    Args:
        mask: (N, H, W) integer labels, ``ignore_index`` where unknown.
        radius: pixels (>= 1): how far from a class change a pixel still counts as edge.
        ignore_index: the unknown label.

    Returns:
        (N, H, W) int64: 1 edge, 0 not edge, ``ignore_index`` where ``mask`` is ``ignore_index``.
    """
    if int(radius) != radius or radius < 1:
        raise UnosatError(f"loss.edge_radius must be a whole number of pixels >= 1, got {radius}")
    radius = int(radius)
    if mask.ndim != 3:
        raise ValueError(f"edge_targets expects a (N, H, W) mask, got shape {tuple(mask.shape)}")
    ignored = mask == ignore_index
    labels = mask.to(torch.float32).unsqueeze(1)
    inf = torch.tensor(float("inf"), device=mask.device)
    window = dict(kernel_size=2 * radius + 1, stride=1, padding=radius)
    highest = F.max_pool2d(torch.where(ignored.unsqueeze(1), -inf, labels), **window)
    lowest = -F.max_pool2d(torch.where(ignored.unsqueeze(1), -inf, -labels), **window)
    edge = (highest > lowest).squeeze(1).to(torch.int64)  # (-inf > -inf) and (x > x) are False
    return torch.where(ignored, torch.full_like(edge, ignore_index), edge)
