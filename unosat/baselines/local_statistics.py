"""Per-pixel features of the settlement-mapping classic: each band, and its local mean and standard
deviation in square windows of a few sizes (texture: built-up areas are bright and heterogeneous).

For an input (N, C, H, W) and window sizes ``w_1..w_K`` (odd, pixels) the features are (N, C * (1 + 2K), H, W):
the C bands, then for each window the C local means, then for each window the C local standard deviations
(``sqrt(max(E[x^2] - E[x]^2, 0))``). Windows are centred; the borders are mirrored (reflect padding,
replicate when the input is smaller than the window), as the sliding-window prediction mirrors scene borders.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from unosat.errors import UnosatError


def check_windows(windows: Sequence[int]) -> tuple[int, ...]:
    """The window sizes as a tuple of odd positive ints; :class:`UnosatError` otherwise."""
    out = tuple(int(w) for w in windows)
    if not out or any(w < 1 or w % 2 == 0 for w in out):
        raise UnosatError(f"local statistics: window sizes must be odd positive pixels, got {list(windows)}")
    return out


def box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of ``x`` (N, C, H, W) over the centred ``window`` x ``window`` square, mirrored borders."""
    r = window // 2
    if r == 0:
        return x
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    return F.avg_pool2d(F.pad(x, (r, r, r, r), mode=mode), window, stride=1)


def feature_count(in_channels: int, windows: Sequence[int]) -> int:
    return int(in_channels) * (1 + 2 * len(windows))


def local_statistics(x: torch.Tensor, windows: Sequence[int]) -> torch.Tensor:
    """(N, C, H, W) -> (N, C * (1 + 2K), H, W) float32 features (see the module docstring)."""
    x = x.float()
    means, stds = [], []
    for w in check_windows(windows):
        mean = box_mean(x, w)
        means.append(mean)
        stds.append((box_mean(x * x, w) - mean * mean).clamp_min(0.0).sqrt())
    return torch.cat([x, *means, *stds], dim=1)
