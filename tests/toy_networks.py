"""Toy networks with known outputs for the tests of unosat.predict, and :func:`predict_array`: their
whole-scene probability of an in-memory stack through the sliding window."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from unosat.bands import BandRecipe, Normalization
from unosat.predict.distributed import Runtime
from unosat.predict.ensemble import Ensemble, LoadedModel
from unosat.predict.inputs import ArrayReader
from unosat.predict.sliding_window import NodataSkip, SceneStats, WindowConfig, predict_scene

RECIPE = BandRecipe("3b", ("vh", "vv", "mean"), "linear")
UNIT = Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
NODATA_SKIP = (NodataSkip(),)


class ConstantNet(nn.Module):
    """Building probability ``p`` everywhere."""

    def __init__(self, p: float):
        super().__init__()
        self.logit = math.log(p / (1 - p))

    def forward(self, x):
        out = torch.zeros(x.shape[0], 2, *x.shape[2:], dtype=x.dtype)
        out[:, 1] = self.logit
        return out


class PixelNet(nn.Module):
    """Building probability ``sigmoid(band 0)`` of each pixel: any misplaced window shows."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], dim=1)


class ConvNet(nn.Module):
    """Two 3 x 3 convolutions (zero padding): a receptive field of 5 x 5 px."""

    def __init__(self, seed: int = 0, symmetric: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 3, padding=1)
        with torch.no_grad():
            for conv in (self.c1, self.c2):
                w = torch.randn(conv.weight.shape, generator=g)
                if symmetric:  # averaged over D4: the network commutes with rotations and flips
                    w = sum(torch.rot90(v, k, (2, 3)) for v in (w, torch.flip(w, (3,))) for k in range(4)) / 8
                conv.weight.copy_(w)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))

    def forward(self, x):
        return self.c2(torch.tanh(self.c1(x)))


class TupleNet(nn.Module):
    """Returns ``(seg_logits, edge_logits)`` like GSCNN."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x[:, :1, ::2, ::2]


class CountingNet(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.windows, self.calls = net, 0, 0

    def forward(self, x):
        self.windows += x.shape[0]
        self.calls += 1
        return self.net(x)


def predict_array(stack: np.ndarray, nets, window: WindowConfig, tta: str = "none", skips=NODATA_SKIP):
    """Whole-scene probability ``(rows, cols)`` of an in-memory stack; checks the rows come top to bottom."""
    models = [LoadedModel(f"toy{i}", net, RECIPE, UNIT) for i, net in enumerate(nets)]
    ensemble = Ensemble(models, Runtime(None, channels_last=False), tta)
    stats = SceneStats()
    blocks = list(predict_scene(ArrayReader(stack, RECIPE), ensemble, window, skips, stats))
    starts = [r for r, _ in blocks]
    assert starts[0] == 0 and all(
        b == a + blocks[i][1].shape[0] for i, (a, b) in enumerate(zip(starts, starts[1:]))
    )
    prob = np.concatenate([b for _, b in blocks])
    assert prob.shape == stack.shape[1:]
    return prob, stats


def random_stack(rows: int, cols: int, seed: int = 0, wedge: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stack = rng.normal(0, 1, (3, rows, cols)).astype(np.float32)
    if wedge:  # a nodata corner, as the swath leaves
        rr, cc = np.mgrid[:rows, :cols]
        stack[:, cc > cols - rr * 0.5 + rows * 0.1] = np.nan
    return stack
