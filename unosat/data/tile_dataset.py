"""Tiles of a prepared dataset as a torch Dataset.

Band stacks and masks are memory-mapped (:func:`unosat.io.raster.memmap_geotiff`): fetching a 512 x 512 x 3
float32 tile is one copy of 3 MB. Files that cannot be mapped are read with rasterio windows instead.
Windows that pass the scene border are padded with NaN (image) and 255 (mask).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import Dataset

from unosat.bands import BandRecipe, Normalization
from unosat.classes import IGNORE_INDEX
from unosat.data.transforms import split_read_crop, starts_with_random_crop
from unosat.errors import UnosatError
from unosat.io.raster import memmap_geotiff
from unosat.prepared import PreparedDataset


class TileReader:
    """Reads ``(image, mask)`` windows of a prepared dataset's scenes.

    ``image`` is ``(h, w, C)`` float32 in the stack's units with NaN at nodata, ``mask`` ``(h, w)`` uint8
    (0, 1, 255). Files are opened lazily, once per process (safe with DataLoader workers).
    """

    def __init__(self, root: Path | str):
        self.layout = PreparedDataset(root)
        self._open: dict[str, tuple] = {}

    def __getstate__(self):
        return {"layout": self.layout, "_open": {}}

    def _sources(self, scene_id: str):
        if scene_id not in self._open:
            bands, mask = self.layout.bands_path(scene_id), self.layout.mask_path(scene_id)
            self._open[scene_id] = (_Source(bands, np.nan), _Source(mask, IGNORE_INDEX))
        return self._open[scene_id]

    def read(
        self, scene_id: str, row_off: int, col_off: int, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Image and mask of a window; the mask is 255 wherever a band is not finite (NaN or +-inf is nodata)."""
        bands, mask = self._sources(scene_id)
        image = bands.read(row_off, col_off, height, width)
        labels = mask.read(row_off, col_off, height, width)[..., 0]
        nodata = ~np.isfinite(image).all(axis=-1)
        if nodata.any():
            labels[nodata] = IGNORE_INDEX
            image[nodata] = np.nan
        return image, labels

    def read_image(self, scene_id: str, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        return self._sources(scene_id)[0].read(row_off, col_off, height, width)

    def read_labels(self, scene_id: str, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        """The stored mask of a window, ``(h, w)`` uint8, without reading the bands (so nodata of the bands is
        not marked in it)."""
        return self._sources(scene_id)[1].read(row_off, col_off, height, width)[..., 0]


class _Source:
    """One raster: a memory map when possible, else rasterio windowed reads; ``(h, w, C)`` windows."""

    def __init__(self, path: Path, fill):
        self.path = path
        self.fill = fill
        self.array = memmap_geotiff(path)
        self.dataset = None if self.array is not None else rasterio.open(path)
        if self.array is not None:
            self.height, self.width, self.count = self.array.shape
            self.dtype = self.array.dtype
        else:
            self.height, self.width, self.count = self.dataset.height, self.dataset.width, self.dataset.count
            self.dtype = np.dtype(self.dataset.dtypes[0])

    def read(self, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        if self.array is None:
            data = self.dataset.read(
                window=Window(col_off, row_off, width, height), boundless=True, fill_value=self.fill
            )
            return np.ascontiguousarray(data.transpose(1, 2, 0))
        r0, c0 = max(row_off, 0), max(col_off, 0)
        r1, c1 = min(row_off + height, self.height), min(col_off + width, self.width)
        if (r0, c0, r1, c1) == (row_off, col_off, row_off + height, col_off + width):
            return np.array(self.array[r0:r1, c0:c1])
        out = np.full((height, width, self.count), self.fill, dtype=self.dtype)
        if r1 > r0 and c1 > c0:
            out[r0 - row_off : r1 - row_off, c0 - col_off : c1 - col_off] = self.array[r0:r1, c0:c1]
        return out


def overlapping_tiles(tiles: pd.DataFrame) -> list[np.ndarray]:
    """For each tile (row of ``tiles``), the positions of the other tiles of the same scene whose windows
    overlap it."""
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(tiles)
    for _, group in tiles.groupby("scene_id", sort=False):
        idx = group.index.to_numpy()
        r0, c0 = group["row_off"].to_numpy(), group["col_off"].to_numpy()
        r1, c1 = r0 + group["height"].to_numpy(), c0 + group["width"].to_numpy()
        overlap = (
            (r0[:, None] < r1[None])
            & (r0[None] < r1[:, None])
            & (c0[:, None] < c1[None])
            & (c0[None] < c1[:, None])
        )
        np.fill_diagonal(overlap, False)
        for k, i in enumerate(idx):
            out[i] = idx[overlap[k]]
    return out


def owned_pixels(
    window: tuple[int, int, int, int],
    others: list[tuple[int, int, int, int]],
    index: int,
    other_indices: np.ndarray,
) -> np.ndarray:
    """``(h, w)`` bool: the pixels of ``window`` (row_off, col_off, height, width) that this tile *owns*.

    A pixel covered by several tiles of one scene belongs to the one whose centre is nearest (Euclidean, from
    the pixel's centre; ties go to the lower index). On a regular grid of overlapping tiles that splits each
    overlap at its middle, so every pixel of the scene that some tile covers is owned by exactly one tile,
    away from the tiles' edges when it can be.
    """
    r, c, h, w = window
    yy = 2 * (r + np.arange(h)) + 1  # doubled coordinates of pixel centres: integers
    xx = 2 * (c + np.arange(w)) + 1
    mine = (yy - (2 * r + h))[:, None] ** 2 + (xx - (2 * c + w))[None] ** 2
    owned = np.ones((h, w), dtype=bool)
    for (orow, ocol, oh, ow), j in zip(others, other_indices):
        rows = (yy >= 2 * orow) & (yy < 2 * (orow + oh))
        cols = (xx >= 2 * ocol) & (xx < 2 * (ocol + ow))
        theirs = (yy - (2 * orow + oh))[:, None] ** 2 + (xx - (2 * ocol + ow))[None] ** 2
        beaten = (theirs < mine) | ((theirs == mine) & (j < index))
        owned &= ~(beaten & rows[:, None] & cols[None])
    return owned


def derived_seed(*entropy: int) -> int:
    """A 32-bit seed mixed from integers (numpy ``SeedSequence``): distinct inputs give unrelated seeds."""
    return int(
        np.random.SeedSequence([int(e) % 2**63 for e in entropy]).generate_state(1, dtype=np.uint32)[0]
    )


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: gives each worker its own augmentation stream.

    A forked worker starts with a copy of the main process's random state, so without this every worker of
    an epoch, and every epoch (workers are forked again), would replay the same crops and flips. The
    worker's stream is seeded from torch's worker seed (``base_seed + worker_id``; the base seed is drawn
    afresh from the main process's torch generator for each epoch's iterator) and the dataset's epoch.
    """
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset
    if isinstance(dataset, TileDataset):
        dataset.reseed(info.seed, dataset.epoch)


class TileDataset(Dataset):
    """Tiles listed in ``tiles`` (rows of ``statistics.csv``) of the prepared dataset at ``root``.

    Each item is a dict: ``image`` (C, H, W) float32 normalised (nodata filled with the normalisation's
    ``fill``), ``mask`` (H, W) int64 (0 background, 1 building, 255 ignore), ``index`` (int).

    Order of operations: optional speckle noise (physical units), normalisation, then the geometric
    ``transform`` (an albumentations pipeline taking ``image`` (H, W, C) and ``mask`` (H, W)). When the
    pipeline starts with an always-applied ``RandomCrop`` or ``CenterCrop`` (the ``augment=...`` configs), that
    crop is made while reading (:func:`~unosat.data.transforms.split_read_crop`): only its window of the tile
    is read, checked and normalised, with the same distribution of crops; tiles smaller than the crop, and
    ``count_once`` datasets, go through the whole pipeline.

    ``foreground_p``: the probability that a read-time random crop is placed around a target pixel (nnU-Net's
    foreground oversampling): a pixel of a non-background class (1..254) drawn uniformly from the tile's mask,
    at a uniformly random place inside the crop as far as the tile's edges allow. Tiles without such a pixel
    get a uniform crop. 0 (the default) draws every crop uniformly, with the same random stream as before
    the option existed. It needs a pipeline that starts with an always-applied ``RandomCrop``.

    ``count_once``: pixels that another tile of the same scene owns (see :func:`owned_pixels`) are set to
    ignore in the mask, so that overlapping tiles count each pixel once in validation scores and losses.

    Random streams: :meth:`set_epoch` (called by the sampler every epoch) reseeds the transform and numpy's
    global generator (speckle) and the read-time crops' generator from ``(seed, rank, epoch)`` in the main
    process; DataLoader workers reseed themselves with :func:`seed_worker`. ``rank`` (the DDP rank) keeps ranks
    from drawing the same augmentations.
    """

    def __init__(
        self,
        root: Path | str,
        tiles: pd.DataFrame,
        recipe: BandRecipe,
        normalization: Normalization,
        transform: Callable | None = None,
        speckle: Callable | None = None,
        seed: int = 0,
        count_once: bool = False,
        foreground_p: float = 0.0,
    ):
        self.reader = TileReader(root)
        self.tiles = tiles.reset_index(drop=True)
        self._windows = self.tiles[["scene_id", "row_off", "col_off", "height", "width"]].to_records(
            index=False
        )
        self.recipe = recipe
        self.normalization = normalization
        self.transform = transform
        self.read_crop, self.after_crop = split_read_crop(transform)
        self.speckle = speckle
        self.count_once = bool(count_once)
        self._overlapping = overlapping_tiles(self.tiles) if self.count_once else None
        self.foreground_p = float(foreground_p)
        if not 0.0 <= self.foreground_p <= 1.0:
            raise UnosatError(f"data.crop_foreground must lie in [0, 1], got {foreground_p}")
        if self.foreground_p > 0 and (self.count_once or not starts_with_random_crop(transform)):
            raise UnosatError(
                f"data.crop_foreground={foreground_p} places random crops around buildings, but the training "
                "augmentations (data.augment) do not start with an always-applied albumentations.RandomCrop "
                "(augment=flips and the other augment configs do); set data.crop_foreground=0 or add the crop"
            )
        self.seed = int(seed)
        self.rank = 0
        self.epoch = 0
        self.crop_rng = np.random.default_rng(derived_seed(self.seed, self.rank, self.epoch))

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: the main process's augmentation stream restarts from ``(seed, rank, epoch)``."""
        self.epoch = int(epoch)
        self.reseed(self.epoch)

    def reseed(self, *entropy: int) -> None:
        """Seed the transform (and the part after a read-time crop), numpy's global generator and the read-time
        crops' generator from ``(seed, rank, *entropy)``."""
        seed = derived_seed(self.seed, self.rank, *entropy)
        pipelines = (
            (self.transform,) if self.after_crop is self.transform else (self.transform, self.after_crop)
        )
        for transform in pipelines:
            if transform is not None and hasattr(transform, "set_random_seed"):
                transform.set_random_seed(seed)
        np.random.seed(seed)
        self.crop_rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.tiles)

    def read_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The tile as stored: image ``(h, w, C)`` float32 (NaN nodata), mask ``(h, w)`` uint8 (with
        ``count_once``, 255 where another tile owns the pixel)."""
        sid, r, c, h, w = self._windows[index]
        image, mask = self.reader.read(str(sid), int(r), int(c), int(h), int(w))
        if self.count_once and len(self._overlapping[index]):
            others = [tuple(int(v) for v in list(self._windows[j])[1:]) for j in self._overlapping[index]]
            owned = owned_pixels((int(r), int(c), int(h), int(w)), others, index, self._overlapping[index])
            mask = np.where(owned, mask, np.uint8(IGNORE_INDEX)).astype(mask.dtype)
        return image, mask

    def read_cropped(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The pipeline's leading crop of the tile, read alone (as :meth:`read_raw`), or None when it cannot
        be made at read time (no such crop, ``count_once``, or a tile smaller than the crop)."""
        if self.read_crop is None or self.count_once:
            return None
        sid, r, c, h, w = self._windows[index]
        offsets = None
        if self.foreground_p > 0 and self.crop_rng.random() < self.foreground_p:
            offsets = self.foreground_offsets(index)
        if offsets is None:
            offsets = self.read_crop.offsets(int(h), int(w), self.crop_rng)
        if offsets is None:
            return None
        return self.reader.read(
            str(sid), int(r) + offsets[0], int(c) + offsets[1], self.read_crop.height, self.read_crop.width
        )

    def foreground_offsets(self, index: int) -> tuple[int, int] | None:
        """Offsets (px, inside the tile) of a read-time crop around one target pixel of tile ``index`` drawn
        uniformly, or None when the tile has no target pixel or is smaller than the crop."""
        sid, r, c, h, w = self._windows[index]
        labels = self.reader.read_labels(str(sid), int(r), int(c), int(h), int(w))
        target = np.flatnonzero((labels > 0) & (labels != IGNORE_INDEX))
        if target.size == 0:
            return None
        row, col = divmod(int(target[self.crop_rng.integers(target.size)]), int(w))
        return self.read_crop.offsets_around(row, col, int(h), int(w), self.crop_rng)

    def __getitem__(self, index: int) -> dict:
        cropped = self.read_cropped(index)
        transform = self.transform if cropped is None else self.after_crop
        image, mask = self.read_raw(index) if cropped is None else cropped
        if self.speckle is not None:
            image = self.speckle(image, self.recipe)
        image = self.normalization.apply(image)
        if transform is not None:
            out = transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        mask = torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))
        return {"image": image, "mask": mask, "index": index}
