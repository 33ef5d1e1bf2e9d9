"""Step ``labels``: building labels -> a mask on the scene grid (0 background, 1 building, 255 ignore).

Vector labels (any format OGR reads) are reprojected to the scene CRS, repaired, and rasterized block by
block (``all_touched`` as configured; the UNOSAT team used true). Raster labels (one mask per scene) are
aligned to the scene grid with nearest-neighbour resampling (:class:`RasterAligner`: their own nodata tag,
values other than 0/1/nodata refused unless ``positive_values`` says which are the target). Wherever the band stack is nodata the mask is
255 (ignored by losses and metrics), never 0 or 1: the label polygons also cover the swath's nodata wedge.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
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
from unosat.io.provenance import digest, file_identity, needs_work, stored_params
from unosat.io.raster import PARAMS_TAG, Grid, open_raster, read_window, row_blocks, stack_profile, write_rows
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
                raise UnosatError("labels.positive_values is empty: list the label values of the target class, or null")
        if self.source not in LABEL_SOURCES:
            raise UnosatError(f"labels.source must be one of {list(LABEL_SOURCES)}, got '{self.source}'")


@dataclass(frozen=True)
class LabelTask:
    scene_id: str
    stack_path: Path
    label_path: Path | None  # None: unlabelled (labels.source none)
    out_path: Path
    config: LabelsConfig
    block_rows: int
    overwrite: bool


def label_params(task: LabelTask) -> dict:
    return {
        "step": "labels",
        "scene_id": task.scene_id,
        "source": task.config.source,
        "label_file": file_identity(task.label_path) if task.label_path is not None else None,
        "all_touched": task.config.all_touched if task.config.source == "vector" else None,
        "raster_nodata": task.config.raster_nodata if task.config.source == "raster" else None,
        "positive_values": list(task.config.positive_values or []) if task.config.source == "raster" else None,
        "bands": digest(stored_params(task.stack_path) or {}),
    }


def make_label_mask(task: LabelTask) -> dict:
    """Write the scene's label mask (skipped when done with the same parameters); return its counts."""
    params = label_params(task)
    if not needs_work(task.out_path, params, task.overwrite):
        with open_raster(task.out_path) as src:
            counts = json.loads(src.tags()["UNOSAT_COUNTS"])
        return {"scene_id": task.scene_id, **counts, "skipped": True}

    with open_raster(task.stack_path) as stack:
        grid = Grid.of(stack)
        if task.config.source == "none":
            burner = Unlabelled()
        elif task.config.source == "vector":
            burner = VectorBurner(task.label_path, grid, task.config.all_touched, task.scene_id)
        else:
            burner = RasterAligner(task.label_path, grid, task.config.raster_nodata, task.config.positive_values)
        counts = {"n_background": 0, "n_building": 0, "n_ignore": 0, "n_polygons": burner.n_polygons,
                  "intersects": burner.intersects}

        def blocks() -> Iterator[tuple[int, np.ndarray]]:
            with burner:
                for row_off, rows in row_blocks(grid.height, task.block_rows):
                    window = Window(0, row_off, grid.width, rows)
                    mask = burner.burn(window)
                    valid = np.isfinite(read_window(stack, window, 1))
                    mask[~valid] = IGNORE_INDEX
                    counts["n_building"] += int(np.count_nonzero(mask == TARGET))
                    counts["n_ignore"] += int(np.count_nonzero(mask == IGNORE_INDEX))
                    counts["n_background"] += int(np.count_nonzero(mask == 0))
                    yield row_off, mask[None]

        write_rows(
            task.out_path,
            stack_profile(grid, 1, "uint8", IGNORE_INDEX),
            blocks(),
            {PARAMS_TAG: json.dumps(params, sort_keys=True), "UNOSAT_LABELS": str(task.label_path)},
            ["label: 0 background, 1 building, 255 ignore" if task.label_path is not None
             else "label: none (unlabelled scene), 255 everywhere"],
            late_tags=lambda: {"UNOSAT_COUNTS": json.dumps(counts)},
        )
    return {"scene_id": task.scene_id, **counts, "skipped": False}


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
            message = (f"{path}: no label polygon intersects scene {scene_id} (scene bounds {grid.bounds}, "
                       f"labels {tuple(polygons.total_bounds)} in {grid.crs}); its mask is all background")
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

    def __init__(self, path: Path, grid: Grid, nodata: float | None, positive_values: tuple[float, ...] | None = None):
        self.path = Path(path)
        self.grid = grid
        self._nodata_cfg = nodata
        self.positive_values = tuple(float(v) for v in positive_values) if positive_values is not None else None
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
            self.src = WarpedVRT(src, crs=self.grid.crs, transform=self.grid.transform, width=self.grid.width,
                                 height=self.grid.height, resampling=Resampling.nearest, src_nodata=self.nodata,
                                 add_alpha=True)
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
            target = values == 1
            other = ~unknown & ~target & (values != 0)
            if other.any():
                found = np.unique(values[other])
                raise UnosatError(
                    f"{self.path}: the label raster holds values {found[:5].tolist()}"
                    f"{' (and more)' if len(found) > 5 else ''} besides 0 (background), 1 (target) and its nodata "
                    f"({self.nodata if self.nodata is not None else 'none: no nodata tag, labels.raster_nodata null'}); "
                    "set labels.raster_nodata=<value> if a value means unknown, or labels.positive_values=[...] "
                    "to say which values are the target (the others are background)")
        else:
            target = np.isin(values, self.positive_values)
        mask = target.astype(np.uint8) * TARGET
        mask[unknown] = IGNORE_INDEX
        return mask
