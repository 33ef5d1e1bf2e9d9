"""Step ``tiles``: the tile index of every scene (windows in pixels and their map bounds).

Train tiles are constant-size squares with at least ``min_overlap`` pixels of overlap, evenly spaced so
the first row/column starts at 0 and the last ends at the scene border (no duplicates; a scene smaller
than a tile gets one tile, padded). Test tiles are constant-stride squares from the top-left corner, the
last ones padded past the border; their side is ``test_size`` clipped to the scene's shorter side, so a
scene smaller than ``test_size`` (the 1024 px demo against 2048 px test tiles) is covered by tiles of its
own size instead of one tile three-quarters nodata. Windows may extend past the scene: readers pad them with nodata.
"""

from __future__ import annotations

from dataclasses import dataclass

import rasterio
from rasterio.windows import Window

from unosat.errors import UnosatError
from unosat.io.raster import Grid, train_offsets

SCHEMES = ("train", "test")


@dataclass(frozen=True)
class TilingConfig:
    """Tile sizes in pixels. ``train_min_overlap`` is the least overlap between neighbouring train tiles."""

    train_size: int = 512
    train_min_overlap: int = 32
    test_size: int = 2048

    def __post_init__(self):
        if self.train_size <= 0 or self.test_size <= 0:
            raise UnosatError(f"tile sizes must be positive: train {self.train_size}, test {self.test_size}")
        if not 0 <= self.train_min_overlap < self.train_size:
            raise UnosatError(
                f"tiling.train_min_overlap must be in [0, train_size): got {self.train_min_overlap} "
                f"for size {self.train_size}"
            )


def test_offsets(length: int, size: int) -> list[int]:
    """Start offsets of constant-stride test tiles along one axis (the last one may pass the border)."""
    return list(range(0, length, size))


def clipped_test_size(height: int, width: int, test_size: int) -> int:
    """Side of the test tiles of a ``height`` x ``width`` scene: ``test_size``, clipped to the shorter side."""
    return max(1, min(int(test_size), int(height), int(width)))


def tile_windows(height: int, width: int, scheme: str, config: TilingConfig) -> list[Window]:
    """Windows of one tiling ``scheme`` (``train`` or ``test``) over a ``height`` x ``width`` scene, row-major."""
    if scheme == "train":
        size = config.train_size
        rows = train_offsets(height, size, config.train_min_overlap)
        cols = train_offsets(width, size, config.train_min_overlap)
    elif scheme == "test":
        size = clipped_test_size(height, width, config.test_size)
        rows, cols = test_offsets(height, size), test_offsets(width, size)
    else:
        raise UnosatError(f"unknown tiling scheme '{scheme}', expected one of {SCHEMES}")
    return [Window(c, r, size, size) for r in rows for c in cols]


def tile_records(scene: dict, grid: Grid, schemes: tuple[str, ...], config: TilingConfig) -> list[dict]:
    """Rows of the tile index for one scene: identity, scheme, window (pixels) and bounds (scene CRS)."""
    records = []
    for scheme in schemes:
        for i, w in enumerate(tile_windows(grid.height, grid.width, scheme, config)):
            left, bottom, right, top = rasterio.windows.bounds(w, grid.transform)
            records.append(
                {
                    "tile_id": f"{scene['scene_id']}_{scheme}_{i:05d}",
                    "scene_id": scene["scene_id"],
                    "city": scene["city"],
                    "mgrs": scene["mgrs"],
                    "date": scene["date"],
                    "time": scene["time"],
                    "pass": scene["pass"],
                    "scheme": scheme,
                    "row_off": int(w.row_off),
                    "col_off": int(w.col_off),
                    "height": int(w.height),
                    "width": int(w.width),
                    "minx": left,
                    "miny": bottom,
                    "maxx": right,
                    "maxy": top,
                }
            )
    return records
