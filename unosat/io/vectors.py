"""Reading label vectors: any format OGR reads, reprojected to the scene CRS, geometries repaired."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import geopandas as gpd
import shapely
from rasterio.crs import CRS

from unosat.errors import UnosatError

log = logging.getLogger(__name__)


def read_polygons(path: Path | str, crs: CRS | str) -> gpd.GeoSeries:
    """Polygons of a vector file, reprojected to ``crs`` and repaired, as a GeoSeries.

    Invalid geometries are repaired with ``make_valid`` and only their polygonal parts are kept; empty and
    non-polygonal features (points, lines) are dropped. Raises :class:`UnosatError` naming the file when it
    cannot be read, has no CRS, or holds no feature at all.
    """
    return _read_polygons_cached(str(Path(path).resolve()), _mtime(path), CRS.from_user_input(crs).to_wkt())


def _mtime(path: Path | str) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        raise UnosatError(f"{path}: label file not found") from None


def read_label_frame(path: Path | str) -> gpd.GeoDataFrame:
    """A label vector file as it is (attributes and geometries, in its own CRS). Raises :class:`UnosatError`
    naming the file when it cannot be read, has no feature at all, or has no CRS."""
    try:
        frame = gpd.read_file(path)
    except Exception as err:  # pyogrio raises DataSourceError and friends; their text names the cause
        raise UnosatError(f"{path}: cannot read label vectors ({str(err).splitlines()[0]})") from None
    if len(frame) == 0:
        raise UnosatError(f"{path}: the label file is empty (no features)")
    if frame.crs is None:
        raise UnosatError(
            f"{path}: the label file has no CRS (add a .prj or set one, e.g. with ogr2ogr -a_srs)"
        )
    return frame


@functools.lru_cache(maxsize=8)
def _read_polygons_cached(path: str, mtime: float, crs_wkt: str) -> gpd.GeoSeries:
    geoms = read_label_frame(path).geometry
    geoms = geoms[geoms.notna() & ~geoms.is_empty]
    invalid = ~geoms.is_valid
    if invalid.any():
        log.info("%s: repairing %d invalid geometries", path, int(invalid.sum()))
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(geoms[invalid].values)
    geoms = geoms.to_crs(CRS.from_wkt(crs_wkt))
    polygons = gpd.GeoSeries([_polygonal_part(g) for g in geoms.values], crs=geoms.crs)
    polygons = polygons[~polygons.is_empty].reset_index(drop=True)
    if len(polygons) == 0:
        raise UnosatError(f"{path}: the label file holds no polygon (only points, lines or empty geometries)")
    return polygons


def _polygonal_part(geom: shapely.Geometry) -> shapely.Geometry:
    """The polygonal part of a geometry (after make_valid a polygon may come back as a collection)."""
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom if geom.is_valid else shapely.make_valid(geom)
    if geom.geom_type == "GeometryCollection":
        parts = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
        return shapely.union_all(parts) if parts else shapely.Polygon()
    return shapely.Polygon()
