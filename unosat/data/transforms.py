"""Augmentations: speckle-like multiplicative noise in physical units, and geometric albumentations.

Geometric transforms (crops, flips, rot90...) come from config as albumentations objects and move the mask
with the image (nearest-neighbour for the mask, so 255 = ignore survives every transform).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ReadCrop:
    """A crop that a dataset can make while reading a tile instead of after: only the crop's pixels are read,
    checked for nodata and normalised (16x fewer than a 512 px tile for a 128 px crop).

    ``height``, ``width``: crop size in pixels; ``random``: a uniformly placed crop
    (``albumentations.RandomCrop``), else the centred one (``albumentations.CenterCrop``: offsets
    ``(tile - crop) // 2``).
    """

    height: int
    width: int
    random: bool

    def offsets(self, tile_height: int, tile_width: int, rng: np.random.Generator) -> tuple[int, int] | None:
        """Row and column offsets (px) of the crop inside a ``tile_height`` x ``tile_width`` tile, or None when
        the tile is smaller than the crop (the pipeline's own crop then pads it as configured)."""
        spare_rows, spare_cols = tile_height - self.height, tile_width - self.width
        if spare_rows < 0 or spare_cols < 0:
            return None
        if self.random:
            return int(rng.integers(0, spare_rows + 1)), int(rng.integers(0, spare_cols + 1))
        return spare_rows // 2, spare_cols // 2

    def offsets_around(
        self, row: int, col: int, tile_height: int, tile_width: int, rng: np.random.Generator
    ) -> tuple[int, int] | None:
        """Offsets (px) of a crop that contains pixel ``(row, col)`` of the tile, at a uniformly random place
        inside the crop as far as the tile's edges allow (a crop never leaves the tile); None when the tile is
        smaller than the crop."""
        if tile_height < self.height or tile_width < self.width:
            return None
        r0 = int(rng.integers(max(0, row - self.height + 1), min(row, tile_height - self.height) + 1))
        c0 = int(rng.integers(max(0, col - self.width + 1), min(col, tile_width - self.width) + 1))
        return r0, c0


def starts_with_random_crop(transform: A.Compose | None) -> bool:
    """Whether the pipeline's leading crop is a random one cut at read time (:func:`split_read_crop`): the crop
    that ``data.crop_foreground`` can place around a building pixel."""
    read_crop = split_read_crop(transform)[0]
    return read_crop is not None and read_crop.random


def split_read_crop(transform: A.Compose | None) -> tuple[ReadCrop | None, A.Compose | None]:
    """The leading crop of a pipeline, when it can be made at read time, and the pipeline after it.

    A pipeline whose first transform is an always-applied ``RandomCrop`` or ``CenterCrop`` (``p == 1``; the
    ``augment=...`` configs' crop of ``data.crop_px``) gives ``(ReadCrop, rest)``; ``rest`` is None when the
    crop was the whole pipeline. Any other pipeline gives ``(None, transform)``. The rest keeps the
    pipeline's seed; :meth:`~unosat.data.tile_dataset.TileDataset.reseed` reseeds both.
    """
    if transform is None or not transform.transforms:
        return None, transform
    first = transform.transforms[0]
    if type(first) not in (A.RandomCrop, A.CenterCrop) or first.p != 1.0:
        return None, transform
    crop = ReadCrop(int(first.height), int(first.width), isinstance(first, A.RandomCrop))
    rest = list(transform.transforms[1:])
    return crop, (A.Compose(rest, seed=transform.seed) if rest else None)
