"""Every segmentation model at the input resolution, windows padded to the model's size divisor, and a 1 px wide
building that comes back through ``predict_scene`` at the right place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unosat.bands import BandRecipe, Normalization
from unosat.models import FPN, GSCNN, LWRefineNet, UNet
from unosat.models.registry import NETWORKS
from unosat.predict.distributed import Runtime
from unosat.predict.ensemble import Ensemble, LoadedModel, forward_padded, size_divisor
from unosat.predict.inputs import ArrayReader
from unosat.predict.sliding_window import WindowConfig, predict_scene

RECIPE = BandRecipe("3b", ("vh", "vv", "mean"), "linear")
UNIT = Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

#: every segmentation network at its configured output layout, with small widths where that keeps the test fast
SEGMENTATION = {
    "unet": lambda: UNet(3, 2, widths=(8, 16, 32, 64)),
    "lwrefinenet": lambda: LWRefineNet(3, 2, output_stride=1),
    "gscnn": lambda: GSCNN(
        3,
        2,
        output_stride=1,
        aspp_channels=16,
        decoder_channels=16,
        low_level_channels=8,
        shape_channels=(8, 4, 4, 4),
    ),
    "fpn": lambda: FPN(3, 2, pyramid_channels=16, segmentation_channels=8, fine_channels=(8, 8)),
}


def test_every_registered_segmentation_network_is_covered() -> None:
    """Every network class of ``unosat.models`` in the registry (the tile classifier aside) is tested here."""
    networks = {name for name, cls in NETWORKS.items() if cls.__module__.startswith("unosat.models.")}
    assert networks - {"tile_classifier"} == set(SEGMENTATION)


@pytest.mark.parametrize("name", sorted(SEGMENTATION))
def test_logits_at_the_input_size_for_odd_sizes_and_multiples(name: str) -> None:
    torch.manual_seed(0)
    net = SEGMENTATION[name]().eval()
    assert size_divisor(net) in (8, 16, 32)
    for size in [(2 * net.size_divisor, 3 * net.size_divisor), (45, 29)]:
        with torch.inference_mode():
            out = net(torch.randn(1, 3, *size))
        seg = out[0] if isinstance(out, tuple) else out
        assert seg.shape == (1, 2, *size), name


class DivisorNet(nn.Module):
    """Refuses inputs whose sides are not multiples of 8 (as a network with exact 2x levels would need) and
    returns band 0 as the building logit, so misplaced pixels show."""

    size_divisor = 8

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0, tuple(x.shape)
        self.seen.append(tuple(x.shape[-2:]))
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], dim=1)


def test_forward_padded_pads_by_mirroring_and_crops_back() -> None:
    net = DivisorNet()
    x = torch.randn(2, 3, 20, 27)
    logits = forward_padded(net, x)
    assert net.seen == [(24, 32)] and logits.shape == (2, 2, 20, 27)
    torch.testing.assert_close(logits[:, 1], x[:, 0])
    tiny = torch.randn(1, 3, 3, 5)  # shorter than the padding: replicated
    assert forward_padded(net, tiny).shape == (1, 2, 3, 5) and net.seen[-1] == (8, 8)
    assert size_divisor(nn.Identity()) == 1


def test_a_window_size_off_the_divisor_predicts_every_pixel_in_place() -> None:
    """window.size=42 for a network that needs multiples of 8: windows are padded to 48, the scene comes back
    exactly (the network is per-pixel)."""
    rng = np.random.default_rng(0)
    stack = rng.normal(0, 1, (3, 70, 95)).astype(np.float32)
    net = DivisorNet()
    ensemble = Ensemble(
        [LoadedModel("divisor", net, RECIPE, UNIT)], Runtime(None, channels_last=False), "none"
    )
    config = WindowConfig(size=42, overlap=10, batch_size=3)
    prob = np.concatenate([p for _, p in predict_scene(ArrayReader(stack, RECIPE), ensemble, config)])
    assert set(net.seen) == {(48, 48)}
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-stack[0])), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ a 1 px wide building


def one_pixel_scene(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(stack (3, size, size) float32 in dB, standardised; mask (size, size) bool)``: gamma speckle (4 looks)
    over -12 dB land, and buildings 1 px wide (vertical and horizontal lines of 3-9 px, single pixels) 8 dB
    brighter (double bounce), with speckle of their own; buildings never touch."""
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(18):
        r, c = rng.integers(2, size - 11, 2)
        length = int(rng.integers(1, 10))
        if rng.random() < 0.5:
            cells = (slice(r, r + length), slice(c, c + 1))
        else:
            cells = (slice(r, r + 1), slice(c, c + length))
        around = (slice(cells[0].start - 2, cells[0].stop + 2), slice(cells[1].start - 2, cells[1].stop + 2))
        if not mask[around].any():
            mask[cells] = True
    db = np.where(mask, -4.0, -12.0)
    bands = [db + 10 * np.log10(rng.gamma(4.0, 1 / 4.0, (size, size))) for _ in range(2)]
    stack = np.stack([bands[0] - 6.0, bands[1], (bands[0] - 6.0 + bands[1]) / 2]).astype(np.float32)
    return (stack - stack.mean()) / stack.std(), mask


@pytest.mark.slow  # trains the network for 80 steps
def test_a_one_pixel_wide_building_comes_back_in_place() -> None:
    """A U-Net trained on scenes with 1 px wide buildings, predicted on a new scene through ``predict_scene``
    with overlapping windows: each building pixel is found at its own pixel, and its 1 px neighbours are not."""
    rng = np.random.default_rng(7)
    scenes = [one_pixel_scene(rng) for _ in range(4)]
    x = torch.from_numpy(np.stack([s for s, _ in scenes]))
    y = torch.from_numpy(np.stack([m for _, m in scenes]).astype(np.int64))
    torch.manual_seed(0)
    net = UNet(3, 2, widths=(8, 16, 32))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    weight = torch.tensor([1.0, 4.0])
    net.train()
    for _ in range(80):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y, weight=weight).backward()
        optimizer.step()

    stack, mask = one_pixel_scene(np.random.default_rng(99), size=80)  # a scene it never saw
    ensemble = Ensemble([LoadedModel("unet", net, RECIPE, UNIT)], Runtime(None, channels_last=False), "none")
    config = WindowConfig(size=38, overlap=12, batch_size=4)  # 38: not a multiple of the U-Net's 4 -> padded
    prob = np.concatenate([p for _, p in predict_scene(ArrayReader(stack, RECIPE), ensemble, config)])
    assert prob.shape == mask.shape and np.isfinite(prob).all()
    pred = prob >= 0.5
    iou = (pred & mask).sum() / (pred | mask).sum()
    assert iou > 0.8, iou
    # every 1 px line: its pixels are building, the pixels beside it (1 px off) are not
    rows, cols = np.nonzero(mask)
    assert prob[rows, cols].mean() > 0.8
    beside = np.zeros_like(mask)
    for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        beside[np.clip(rows + dr, 0, 79), np.clip(cols + dc, 0, 79)] = True
    beside &= ~mask
    assert prob[beside].mean() < 0.2 and (prob[beside] >= 0.5).mean() < 0.05
