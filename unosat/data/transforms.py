"""Augmentations: speckle-like multiplicative noise in physical units, and geometric albumentations.

Geometric transforms (crops, flips, rot90...) come from config as albumentations objects and move the mask
with the image (nearest-neighbour for the mask, so 255 = ignore survives every transform).
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np

from unosat.bands import BandRecipe


class SpeckleNoise:
    """Multiplies VH and VV (linear power) by independent Gamma(looks, 1/looks) noise, then rebuilds the
    stack with its recipe, so derived bands ((VH+VV)/2, dB...) stay consistent. Applied with probability
    ``p``; NaN (nodata) stays NaN. Uses numpy's global RNG (seeded per DataLoader worker by Lightning).

    Args:
        looks: equivalent number of looks of the added speckle (higher = weaker noise).
        p: probability of applying it to a tile.
    """

    def __init__(self, looks: float = 8.0, p: float = 0.5):
        if looks <= 0 or not 0 <= p <= 1:
            raise ValueError(f"SpeckleNoise needs looks > 0 and p in [0, 1], got looks={looks}, p={p}")
        self.looks = float(looks)
        self.p = float(p)

    def __call__(self, image: np.ndarray, recipe: BandRecipe) -> np.ndarray:
        """``image`` (H, W, C) in the recipe's units -> same shape, with speckle added."""
        if np.random.random() >= self.p:
            return image
        vh, vv = recipe.polarisations(image, axis=-1)
        shape = vh.shape
        vh = vh * np.random.gamma(self.looks, 1.0 / self.looks, shape).astype(np.float32)
        vv = vv * np.random.gamma(self.looks, 1.0 / self.looks, shape).astype(np.float32)
        return np.moveaxis(recipe.compute(vh, vv), 0, -1)


def compose(transforms: Sequence[A.BasicTransform] | None, seed: int | None = None) -> A.Compose | None:
    """An albumentations pipeline over ``image`` and ``mask`` (None when there is no transform)."""
    if not transforms:
        return None
    return A.Compose(list(transforms), seed=seed)
