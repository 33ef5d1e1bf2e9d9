"""Test support for the segmentation models: one small tile of the project's synthetic SAR, and overfitting it.

The tile is a crop of a tiny-demo scene (:func:`unosat.synthetic.generator.render_scene`: speckled VV/VH with
double-bounce buildings of 1-5 px, layover and shadow), as the ``db`` recipe sees it (VH, VV, their mean, in
dB), standardised per band. :func:`overfit` trains a network on that one tile and returns the building IoU of
its prediction on it, with BatchNorm normalising by the tile's own statistics (training mode, no gradient): on a
single 48-64 px tile the deepest BatchNorms (1/32) see 2 x 2 px, so running statistics gathered over 60-150
steps of a changing network say little about the tile (LW-RefineNet reached IoU 0.96 in training mode and 0.81
with running statistics after 100 steps). What is tested is capacity and gradient flow down to the
full-resolution output; prediction with running statistics is tested by
``tests/test_models_full_resolution.py`` (a 1 px building through ``predict_scene``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unosat.synthetic.generator import render_scene

DB_FLOOR = 1e-8  # linear power clamped here before dB (as the db recipe)


def building_tile(
    spec, size: int = 64, city: str = "Mosul", step: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x (1, 3, size, size) float32, y (1, size, size) int64)``: the crop of ``city``'s first acquisition
    (fully inside the swath) with the most building pixels."""
    city_spec = spec.city(city)
    scene = render_scene(spec, city_spec, city_spec.acquisitions[0])
    buildings, valid = scene["buildings"], scene["valid"]
    best, best_count = None, -1
    for r in range(0, buildings.shape[0] - size + 1, step):
        for c in range(0, buildings.shape[1] - size + 1, step):
            if not valid[r : r + size, c : c + size].all():
                continue
            count = int(buildings[r : r + size, c : c + size].sum())
            if count > best_count:
                best, best_count = (r, c), count
    assert best is not None and best_count > 0, "the tiny demo has no fully valid crop with buildings"
    r, c = best
    vh, vv = (10 * np.log10(np.maximum(scene[b][r : r + size, c : c + size], DB_FLOOR)) for b in ("vh", "vv"))
    bands = np.stack([vh, vv, (vh + vv) / 2]).astype(np.float32)
    bands = (bands - bands.mean(axis=(1, 2), keepdims=True)) / bands.std(axis=(1, 2), keepdims=True)
    mask = buildings[r : r + size, c : c + size].astype(np.int64)
    return torch.from_numpy(bands)[None], torch.from_numpy(mask)[None]


def building_iou(logits: torch.Tensor, y: torch.Tensor) -> float:
    """IoU of the building class (1) of ``argmax(logits)`` (N, C, H, W) against ``y`` (N, H, W)."""
    pred = logits.argmax(dim=1) == 1
    truth = y == 1
    return float((pred & truth).sum()) / max(1, int((pred | truth).sum()))


def segmentation_output(out) -> torch.Tensor:
    """The segmentation logits of a network's output (GSCNN returns ``(seg, edge)``)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def overfit(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 3e-3, seed: int = 0
) -> float:
    """Train ``net`` on the batch ``(x, y)`` for ``steps`` Adam steps (cross-entropy), then return the building
    IoU of its logits on ``x`` (training-mode BatchNorm, no gradient; see the module docstring)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(segmentation_output(net(x)), y).backward()
        optimizer.step()
    with torch.no_grad():
        return building_iou(segmentation_output(net(x)), y)
