"""Building polygons from a mask GeoTIFF, streamed by row strips.

A mask (uint8: 1 building, 0 background, 255 nodata; any size) becomes one polygon per 4-connected region
of building pixels (the connectivity of ``rasterio.features.shapes``; 255 is never building), holes kept,
written to a GeoPackage, Shapefile or GeoJSON with the attributes

==============  ==========================================================================================
``id``          1..n, in the order polygons are completed (top to bottom)
``area_m2``     building pixels x pixel area (m^2; exact pixel area, not the simplified outline's area)
``mean_prob``   mean building probability over the polygon's pixels (NaN/null without a probability
                raster; nodata probabilities are left out of the mean)
``n_dates``     how many per-date masks have at least one building pixel inside the polygon (0 if none)
==============  ==========================================================================================

Streaming: the mask is read in full-width strips (:func:`unosat.predict.polygonize.polygonize_strips`, which
says why it is hand-written: bounded memory) and the polygons are written in batches as they are completed
(:mod:`unosat.predict.vector_files`), so memory holds one strip, the open regions and one write batch,
whatever the raster's height.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.windows import Window

from unosat.classes import TARGET
from unosat.errors import UnosatError
from unosat.io.raster import Grid, gdal_env, open_raster, read_window
from unosat.predict.polygonize import StripStats, polygonize_strips
from unosat.predict.probability import decode_probability
from unosat.predict.vector_files import atomic_vector, feature_writer

#: Output drivers (OGR names) and the file suffix each expects.
VECTOR_SUFFIXES: dict[str, str] = {"GPKG": ".gpkg", "ESRI Shapefile": ".shp", "GeoJSON": ".geojson"}


@dataclass(frozen=True)
class VectorizeConfig:
    """How masks become polygon files.

    Args:
        driver: ``GPKG``, ``ESRI Shapefile`` or ``GeoJSON`` (case-insensitive).
        crs: CRS of the output (anything rasterio understands, e.g. ``EPSG:4326``); None keeps the raster's.
        simplify_tolerance: topology-preserving simplification, in metres whatever the raster CRS (in a
            geographic CRS the polygons are simplified in a local azimuthal equidistant projection centred on
            the raster); 0 keeps the exact pixel outlines. Applied per polygon, before any reprojection.
        min_area_m2: polygons with a smaller ``area_m2`` are dropped (0 keeps all); areas are m^2 whatever
            the CRS (geodesic in a geographic CRS).
        block_rows: rows per strip read from the mask.
    """

    driver: str = "GPKG"
    crs: str | None = None
    simplify_tolerance: float = 0.0
    min_area_m2: float = 0.0
    block_rows: int = 1024

    def __post_init__(self):
        names = {name.lower(): name for name in VECTOR_SUFFIXES}
        if str(self.driver).lower() not in names:
            raise UnosatError(f"vectorize driver must be one of {list(VECTOR_SUFFIXES)}, got '{self.driver}'")
        object.__setattr__(self, "driver", names[str(self.driver).lower()])
        if self.crs is not None:
            _parse_crs(self.crs)
        if not self.simplify_tolerance >= 0:
            raise UnosatError(
                f"vectorize simplify_tolerance must be >= 0 (metres), got {self.simplify_tolerance}"
            )
        if not self.min_area_m2 >= 0:
            raise UnosatError(f"vectorize min_area_m2 must be >= 0, got {self.min_area_m2}")
        if int(self.block_rows) <= 0:
            raise UnosatError(f"vectorize block_rows must be positive, got {self.block_rows}")

    @property
    def suffix(self) -> str:
        """File suffix of the output (``.gpkg``, ``.shp``, ``.geojson``)."""
        return VECTOR_SUFFIXES[self.driver]


def _parse_crs(crs: str | CRS) -> CRS:
    try:
        return CRS.from_user_input(crs)
    except (CRSError, ValueError, TypeError) as err:
        raise UnosatError(f"vectorize crs '{crs}' is not a CRS rasterio understands ({err})") from None


def _attribute_sums(prob_src, date_srcs: Sequence) -> StripStats:
    """Per-region sums: ``[pixels, prob_sum, prob_count, building pixels of date 1, ..., date k]``."""

    def sums(window: Window, labels: np.ndarray, n: int) -> np.ndarray:
        flat = labels.ravel()
        nz = np.flatnonzero(flat)
        ids = flat[nz] - 1
        cols = [np.bincount(ids, minlength=n)]
        if prob_src is not None:
            p = decode_probability(read_window(prob_src, window, 1)).ravel()[nz]
            ok = np.isfinite(p)
            cols += [
                np.bincount(ids[ok], weights=p[ok].astype(np.float64), minlength=n),
                np.bincount(ids[ok], minlength=n),
            ]
        else:
            cols += [np.zeros(n), np.zeros(n)]
        for src in date_srcs:
            hit = read_window(src, window, 1).ravel()[nz] == TARGET
            cols.append(np.bincount(ids[hit], minlength=n))
        return np.stack(cols, axis=1).astype(np.float64) if n else np.zeros((0, len(cols)))

    return sums


def _pixel_area_m2(grid: Grid) -> float | None:
    """Area of one pixel in m^2 for a projected CRS; None for a geographic CRS (areas are then geodesic)."""
    if grid.crs.is_geographic:
        return None
    try:
        _, factor = grid.crs.linear_units_factor
    except CRSError:
        factor = 1.0
    t = grid.transform
    return abs(t.a * t.e - t.b * t.d) * factor * factor


def simplify_metres(geoms: np.ndarray, tolerance_m: float, grid: Grid) -> np.ndarray:
    """Topology-preserving simplification of polygons in ``grid``'s CRS with a tolerance in metres.

    A projected CRS: the tolerance is converted to its linear unit. A geographic CRS: the polygons are
    simplified in a local azimuthal equidistant projection centred on the grid (distances true in metres
    from its centre; within a Sentinel-1 scene the scale error stays far below the tolerance's meaning) and
    projected back.
    """
    if not len(geoms):
        return geoms
    if not grid.crs.is_geographic:
        try:
            _, factor = grid.crs.linear_units_factor
        except CRSError:
            factor = 1.0
        return shapely.simplify(geoms, tolerance_m / factor, preserve_topology=True)
    left, bottom, right, top = grid.bounds
    local = CRS.from_proj4(
        f"+proj=aeqd +lat_0={(bottom + top) / 2} +lon_0={(left + right) / 2} +datum=WGS84 +units=m"
    )
    projected = gpd.GeoSeries(geoms, crs=grid.crs).to_crs(local)
    simplified = gpd.GeoSeries(
        shapely.simplify(projected.values, tolerance_m, preserve_topology=True), crs=local
    )
    return simplified.to_crs(grid.crs).values


def _geodesic_area_m2(geoms: np.ndarray, crs: CRS) -> np.ndarray:
    import pyproj

    geod = pyproj.CRS.from_wkt(crs.to_wkt()).get_geod()
    return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms], dtype=np.float64)


def _features(
    geoms: np.ndarray,
    sums: np.ndarray,
    grid: Grid,
    pixel_area: float | None,
    config: VectorizeConfig,
    out_crs: CRS,
    has_prob: bool,
) -> gpd.GeoDataFrame:
    """Polygons of one strip (map coordinates) -> output features (without ``id``), filtered/simplified."""
    area = sums[:, 0] * pixel_area if pixel_area is not None else _geodesic_area_m2(geoms, grid.crs)
    if config.min_area_m2 > 0:
        keep = area >= config.min_area_m2
        geoms, sums, area = geoms[keep], sums[keep], area[keep]
    if config.simplify_tolerance > 0:
        geoms = simplify_metres(geoms, config.simplify_tolerance, grid)
    if out_crs != grid.crs:
        geoms = gpd.GeoSeries(geoms, crs=grid.crs).to_crs(out_crs).values
    mean_prob = np.full(len(sums), np.nan)
    if has_prob:
        counted = sums[:, 2] > 0
        mean_prob[counted] = sums[counted, 1] / sums[counted, 2]
    return gpd.GeoDataFrame(
        {
            "area_m2": area.astype(np.float64),
            "mean_prob": mean_prob.astype(np.float64),
            "n_dates": (sums[:, 3:] > 0).sum(axis=1).astype(np.int32),
        },
        geometry=gpd.GeoSeries(geoms, crs=out_crs),
    )


def vectorize(mask_path, out_path, config: VectorizeConfig, prob_path=None, date_mask_paths=()) -> int:
    """Write the building polygons of a mask GeoTIFF to ``out_path``; return how many were written.

    Args:
        mask_path: uint8 mask (1 building, 0 background, 255 nodata), any size; must have a CRS.
        out_path: output file; its suffix must suit the driver for Shapefiles (``.shp``).
        config: driver, output CRS, simplification, minimum area, strip height.
        prob_path: optional probability raster on the same grid (see :mod:`unosat.predict.probability`),
            for ``mean_prob``.
        date_mask_paths: per-date masks on the same grid, for ``n_dates``.

    The file appears only when complete (for Shapefiles, the ``.shp`` is renamed into place last, after its
    sidecars). Raises :class:`UnosatError` naming the file for a missing/unreadable raster, a raster without
    CRS, or a probability/date raster on another grid.
    """
    mask_path, out_path = Path(mask_path), Path(out_path)
    if config.driver == "ESRI Shapefile" and out_path.suffix.lower() != ".shp":
        raise UnosatError(f"{out_path}: a Shapefile output must end in .shp")
    with gdal_env(), contextlib.ExitStack() as stack:
        src = stack.enter_context(open_raster(mask_path))
        grid = Grid.of(src)
        if grid.crs is None:
            raise UnosatError(f"{mask_path}: the mask has no CRS, its polygons cannot be georeferenced")
        out_crs = _parse_crs(config.crs) if config.crs is not None else grid.crs
        prob = _open_on_grid(stack, prob_path, grid, mask_path) if prob_path is not None else None
        dates = [_open_on_grid(stack, p, grid, mask_path) for p in date_mask_paths]
        sums = _attribute_sums(prob, dates)
        pixel_area = _pixel_area_m2(grid)
        n = 0
        with (
            atomic_vector(out_path, config.driver) as tmp,
            feature_writer(tmp, config.driver, out_path.stem, out_crs) as out,
        ):
            for geoms, strip_sums in polygonize_strips(src, TARGET, config.block_rows, sums):
                if len(geoms) == 0:
                    continue
                frame = _features(geoms, strip_sums, grid, pixel_area, config, out_crs, prob is not None)
                frame.insert(0, "id", np.arange(n + 1, n + 1 + len(frame), dtype=np.int64))
                out.write(frame)
                n += len(frame)
    return n


def _open_on_grid(stack: contextlib.ExitStack, path, grid: Grid, mask_path: Path):
    src = stack.enter_context(open_raster(path))
    diff = Grid.of(src).differences(grid)
    if diff:
        raise UnosatError(f"{path}: not on the grid of the mask {mask_path} ({'; '.join(diff)})")
    return src


def read_vectorized(path, crs: CRS | str) -> gpd.GeoSeries:
    """Polygons of a vector file (e.g. what :func:`vectorize` wrote), reprojected to ``crs`` and repaired.

    Unlike label reading, an empty file is fine (a prediction may find no building). Raises
    :class:`UnosatError` naming the file when it is missing, unreadable or has no CRS.
    """
    path = Path(path)
    if not path.exists():
        raise UnosatError(f"{path}: polygon file not found")
    try:
        frame = pyogrio.read_dataframe(path)
    except Exception as err:  # pyogrio's DataSourceError and friends; their text names the cause
        raise UnosatError(f"{path}: cannot read polygons ({str(err).splitlines()[0]})") from None
    if frame.crs is None:
        raise UnosatError(f"{path}: the polygon file has no CRS")
    geoms = frame.geometry[frame.geometry.notna() & ~frame.geometry.is_empty].to_crs(CRS.from_user_input(crs))
    values = np.asarray(geoms.values, dtype=object)
    invalid = ~shapely.is_valid(values)
    if invalid.any():
        values[invalid] = shapely.make_valid(values[invalid])
    return gpd.GeoSeries(values, crs=geoms.crs)
