"""Label sources read as masks on a scene grid, window by window (0 background, 1 target, 255 ignore).

:class:`LabelsConfig` says where labels come from; :class:`VectorBurner` (polygon files, rasterized),
:class:`RasterAligner` (label rasters, aligned with nearest-neighbour resampling) and :class:`Unlabelled`
(255 everywhere) read one scene's labels through the same ``burn(window)`` interface. ``prepare.py`` writes
masks with them (:mod:`unosat.prepare.labels`) and ``predict.py evaluate=true`` scores predictions against
them (:mod:`unosat.predict.evaluate`).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform

from unosat.classes import IGNORE_INDEX, TARGET
from unosat.errors import UnosatError
from unosat.io.raster import Grid, open_raster, read_window
from unosat.io.vectors import read_polygons

#: where labels come from: polygon files, label rasters, or a prepared dataset's masks (evaluation only)
LABEL_SOURCES = ("vector", "raster", "prepared", "none")


@dataclass(frozen=True)
class LabelsConfig:
    """Where labels come from and how they are burnt.

    Args:
        source: ``vector`` (one polygon file per city), ``raster`` (one label GeoTIFF per scene), ``none``
            (unlabelled scenes, for prediction or pre-training: masks are 255 everywhere and training refuses
            the dataset), or, for ``predict.py evaluate=true`` on a prepared dataset only, ``prepared`` (its
            masks).
        dirs: directories searched (recursively) for label files.
        template: file stem (vector) or file name (raster) with ``{city}``, ``{mgrs}``, ``{date}``,
            ``{time}``, ``{pass}``, ``{scene_id}`` fields. UNOSAT: ``{mgrs}_{city}``.
        all_touched: vector only: burn every pixel a polygon touches (true) or whose centre it covers.
        raster_nodata: raster only: label value meaning "unknown" (ignored); None uses the file's nodata tag.
        positive_values: raster only: the label values of the target class (every other valid value is
            background); None: the raster must hold only 0, 1 and its nodata (anything else is refused).
    """

    source: str = "vector"
    dirs: tuple[str, ...] = ()
    template: str = "{mgrs}_{city}"
    all_touched: bool = True
    raster_nodata: float | None = None
    positive_values: tuple[float, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "dirs", tuple(str(d) for d in self.dirs))
        if self.positive_values is not None:
            object.__setattr__(self, "positive_values", tuple(float(v) for v in self.positive_values))
            if not self.positive_values:
                raise UnosatError(
                    "labels.positive_values is empty: list the label values of the target class, or null"
                )
        if self.source not in LABEL_SOURCES:
            raise UnosatError(f"labels.source must be one of {list(LABEL_SOURCES)}, got '{self.source}'")


class Unlabelled:
    """An unlabelled scene: every pixel is 255 (unknown), so nothing can be learnt or scored from it."""

    n_polygons = 0
    intersects = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def burn(self, window: Window) -> np.ndarray:
        return np.full((int(window.height), int(window.width)), IGNORE_INDEX, dtype=np.uint8)


class VectorBurner:
    """Rasterizes polygons window by window (only the polygons whose box meets the window)."""

    def __init__(self, path: Path, grid: Grid, all_touched: bool, scene_id: str):
        self.grid = grid
        self.all_touched = all_touched
        polygons = read_polygons(path, grid.crs)
        self.geoms = polygons.values
        self.tree = shapely.STRtree(self.geoms)
        scene_box = shapely.box(*grid.bounds)
        self.n_polygons = int(len(self.tree.query(scene_box, predicate="intersects")))
        self.intersects = self.n_polygons > 0
        if not self.intersects:
            message = (
                f"{path}: no label polygon intersects scene {scene_id} (scene bounds {grid.bounds}, "
                f"labels {tuple(polygons.total_bounds)} in {grid.crs}); its mask is all background"
            )
            logging.getLogger(__name__).warning(message)
            warnings.warn(message, stacklevel=2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def burn(self, window: Window) -> np.ndarray:
        shape = (int(window.height), int(window.width))
        idx = self.tree.query(shapely.box(*window_bounds(window, self.grid.transform)))
        if len(idx) == 0:
            return np.zeros(shape, dtype=np.uint8)
        return rasterize(
            ((g, TARGET) for g in self.geoms[np.sort(idx)]),
            out_shape=shape,
            transform=window_transform(window, self.grid.transform),
            fill=0,
            all_touched=self.all_touched,
            dtype="uint8",
        )


class RasterAligner:
    """Reads a label raster on the scene grid as a mask (0 background, 1 building, 255 ignore).

    A label raster on another grid (CRS, pixel size or origin, compared to 1/100 px, see
    :meth:`Grid.differences`) is warped to the scene's with nearest-neighbour resampling; scene pixels it
    does not cover are ignored. Its nodata is ``nodata`` (``labels.raster_nodata``) or, when None, the file's
    own nodata tag; NaN is always nodata. Values: 0 is background and 1 the target unless ``positive_values``
    lists the target values (every other value is then background); any other value is refused, naming it,
    so that e.g. an untagged -1 "unknown" never silently becomes a building.
    """

    def __init__(
        self, path: Path, grid: Grid, nodata: float | None, positive_values: tuple[float, ...] | None = None
    ):
        self.path = Path(path)
        self.grid = grid
        self._nodata_cfg = nodata
        self.positive_values = (
            tuple(float(v) for v in positive_values) if positive_values is not None else None
        )
        self.n_polygons = 0
        self.intersects = True

    def __enter__(self):
        self._ctx = open_raster(self.path)
        src = self._ctx.__enter__()
        if src.crs is None:
            self._ctx.__exit__(None, None, None)
            raise UnosatError(f"{self.path}: the label raster has no CRS")
        self.nodata = self._nodata_cfg if self._nodata_cfg is not None else src.nodata
        self.warped = bool(Grid.of(src).differences(self.grid))
        if self.warped:  # band 2 is the coverage: 0 where the label raster does not reach
            self.src = WarpedVRT(
                src,
                crs=self.grid.crs,
                transform=self.grid.transform,
                width=self.grid.width,
                height=self.grid.height,
                resampling=Resampling.nearest,
                src_nodata=self.nodata,
                add_alpha=True,
            )
        else:
            self.src = src
        return self

    def __exit__(self, *exc):
        if self.warped:
            self.src.close()
        self._ctx.__exit__(*exc)
        return False

    def burn(self, window: Window) -> np.ndarray:
        if self.warped:
            values, coverage = read_window(self.src, window, [1, 2])
            unknown = coverage == 0
        else:
            values = read_window(self.src, window, 1)
            unknown = np.zeros(values.shape, dtype=bool)
        if self.nodata is not None:
            unknown |= values == self.nodata
        if np.issubdtype(values.dtype, np.floating):
            unknown |= ~np.isfinite(values)
        if self.positive_values is None:
            target = values == TARGET  # a 0/1 label raster: 1 is the target class
            other = ~unknown & ~target & (values != 0)
            if other.any():
                found = np.unique(values[other])
                raise UnosatError(
                    f"{self.path}: the label raster holds values {found[:5].tolist()}"
                    f"{' (and more)' if len(found) > 5 else ''} besides 0 (background), 1 (target) and its nodata "
                    f"({self.nodata if self.nodata is not None else 'none: no nodata tag, labels.raster_nodata null'}"
                    "); "
                    "set labels.raster_nodata=<value> if a value means unknown, or labels.positive_values=[...] "
                    "to say which values are the target (the others are background)"
                )
        else:
            target = np.isin(values, self.positive_values)
        mask = target.astype(np.uint8) * TARGET
        mask[unknown] = IGNORE_INDEX
        return mask


def decimated_mask(src, factor: int, rows_per_read: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(building, nodata)`` booleans of a mask decimated by ``factor``, read by row blocks.

    A decimated pixel is building if any of its ``factor`` x ``factor`` pixels is (small buildings stay
    visible), nodata if most of them are ignore (255).
    """
    out_h, out_w = math.ceil(src.height / factor), math.ceil(src.width / factor)
    building = np.zeros((out_h, out_w), dtype=bool)
    nodata = np.zeros((out_h, out_w), dtype=bool)
    step = rows_per_read * factor
    for row_off in range(0, src.height, step):
        n = min(step, src.height - row_off)
        block = read_window(src, Window(0, row_off, src.width, n), 1)
        pad = np.full((math.ceil(n / factor) * factor, out_w * factor), IGNORE_INDEX, dtype=block.dtype)
        pad[:n, : src.width] = block
        cells = pad.reshape(pad.shape[0] // factor, factor, out_w, factor)
        r0 = row_off // factor
        building[r0 : r0 + cells.shape[0]] = (cells == TARGET).any(axis=(1, 3))
        nodata[r0 : r0 + cells.shape[0]] = (cells == IGNORE_INDEX).mean(axis=(1, 3)) > 0.5
    return building, nodata
