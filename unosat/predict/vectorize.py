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

Streaming (:func:`polygonize_strips`): the mask is read in full-width strips of ``block_rows`` rows. Each
strip is labelled (4-connectivity); regions that fill their bounding box become rectangles directly, the
others are traced by GDAL's polygonize. A region touching the strip's first or last row is a *piece*, kept
in pixel coordinates (x = column, y = row: integers, so unions are exact). In the next strip, pieces are
joined to the open groups exactly where a building pixel of the previous strip's last row sits above a
building pixel of the new strip's first row (an edge on the border line, never a corner), with a union-find
over the groups and pieces at that border. A group that no longer reaches the current strip's last row is
complete: its pieces are unioned, its additive sums (pixels, probability sum and count, building pixels per
date) added, and it is written. Memory holds one strip, the open groups and one write batch, whatever the
raster's height.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import scipy.ndimage as ndi
import shapely
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.features import shapes
from rasterio.transform import Affine
from rasterio.windows import Window

from unosat.classes import TARGET
from unosat.errors import UnosatError
from unosat.io.atomic import atomic_path, temporary_sibling
from unosat.io.raster import Grid, gdal_env, open_raster, read_window, row_blocks
from unosat.predict.probability import decode_probability

#: Output drivers (OGR names) and the file suffix each expects.
VECTOR_SUFFIXES: dict[str, str] = {"GPKG": ".gpkg", "ESRI Shapefile": ".shp", "GeoJSON": ".geojson"}

#: Sidecar files a Shapefile may have besides ``.shp`` (spatial indexes included: a stale one would lie).
SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")

#: 4-connectivity (edge neighbours only), the default of ``rasterio.features.shapes``.
FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)

#: Features buffered before an append to the output file.
WRITE_BATCH = 100_000

#: ``(window, labels, n)`` -> ``(n, m)`` additive sums per label 1..n of a strip (row ``i`` is label ``i + 1``).
StripStats = Callable[[Window, np.ndarray, int], np.ndarray]


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
            raise UnosatError(f"vectorize simplify_tolerance must be >= 0 (metres), got {self.simplify_tolerance}")
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


# ------------------------------------------------------------------------------------------- polygonize
@dataclass
class _Group:
    """An open region: its pieces (pixel coordinates) and the sums of their statistics."""

    pieces: list = field(default_factory=list)
    stats: np.ndarray | None = None


def polygonize_strips(
    src, value: int, block_rows: int, stats: StripStats | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Polygons of the 4-connected regions of pixels equal to ``value`` in band 1 of ``src``, by strips.

    Yields ``(polygons, sums)`` once per strip: the regions completed in that strip, as an object array of
    shapely Polygons in the map coordinates of ``src.transform``, and an ``(n, m)`` float64 array of the sums
    of ``stats`` over each region's pixels (``m = 0`` without ``stats``). Every region comes out exactly
    once, whole, however many strips it spans. Pieces at a strip border are kept in pixel coordinates
    (integers, so their unions are exact) until their region is complete.
    """
    height, width = src.height, src.width
    transform = src.transform
    open_groups: dict[int, _Group] = {}
    prev_bottom = np.zeros(width, dtype=np.int64)  # id of the open group at each column of the last row read
    next_gid = 1
    for row_off, rows in row_blocks(height, int(block_rows)):
        window = Window(0, row_off, width, rows)
        labels, n = ndi.label(read_window(src, window, 1) == value, structure=FOUR_CONNECTED)
        sums = np.asarray(stats(window, labels, n), dtype=np.float64) if stats else np.zeros((n, 0))

        top = labels[0]
        link = (prev_bottom > 0) & (top > 0)
        pairs = np.unique(np.stack([prev_bottom[link], top[link]], axis=1), axis=0) if link.any() else None
        continues = np.zeros(n + 1, dtype=bool)
        if row_off + rows < height:
            continues[labels[-1]] = True
            continues[0] = False
        linked = np.zeros(n + 1, dtype=bool)
        if pairs is not None:
            linked[pairs[:, 1]] = True
        at_border = (linked | continues)[1:]
        geoms = _strip_pieces(labels, n, row_off, transform, at_border)

        # regions wholly inside this strip are final as they are (already in map coordinates)
        out_geoms, out_sums = [geoms[~at_border]], [sums[~at_border]]

        # regions at a border: open groups (negative ids) and this strip's pieces, joined through the pairs
        components = _connected(pairs, [-g for g in open_groups] + (np.flatnonzero(at_border) + 1).tolist())
        new_open: dict[int, _Group] = {}
        gid_of_label = np.zeros(n + 1, dtype=np.int64)
        done_geoms, done_sums = [], []
        for nodes in components:
            labs = np.asarray([v for v in nodes if v > 0], dtype=np.int64)
            group = _Group(stats=sums[labs - 1].sum(axis=0))
            for v in nodes:
                if v < 0:
                    old = open_groups[-v]
                    group.pieces.extend(old.pieces)
                    group.stats = group.stats + old.stats
            group.pieces.extend(geoms[labs - 1])
            if continues[labs].any():
                new_open[next_gid] = group
                gid_of_label[labs] = next_gid
                next_gid += 1
            else:
                done_geoms.append(_union_pieces(group.pieces))
                done_sums.append(group.stats)
        if done_geoms:
            out_geoms.append(_to_map(_object_array(done_geoms), transform))
            out_sums.append(np.stack(done_sums))
        open_groups = new_open
        prev_bottom = gid_of_label[labels[-1]]
        yield np.concatenate(out_geoms), np.concatenate(out_sums)


def _connected(pairs: np.ndarray | None, nodes: list[int]) -> list[list[int]]:
    """Connected sets of ``nodes`` (union-find) given edges ``pairs`` of ``(gid, label)``, gid as ``-gid``."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    if pairs is not None:
        for gid, lab in pairs.tolist():
            a, b = find(-gid), find(lab)
            if a != b:
                parent[a] = b
    members: dict[int, list[int]] = {}
    for node in nodes:
        members.setdefault(find(node), []).append(node)
    return list(members.values())


def _object_array(items: Sequence) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _strip_pieces(labels: np.ndarray, n: int, row_off: int, transform: Affine, in_pixels: np.ndarray) -> np.ndarray:
    """Polygons of labels ``1..n`` of a strip starting at row ``row_off`` (object array, index ``i`` for
    label ``i + 1``): in pixel coordinates of the whole raster (x = column, y = row) where ``in_pixels[i]``,
    in map coordinates of ``transform`` elsewhere.

    Regions that fill their bounding box (most small buildings) become rectangles directly; the others are
    traced by GDAL (``rasterio.features.shapes``, 4-connectivity), holes included.
    """
    out = np.empty(n, dtype=object)
    if n == 0:
        return out
    width = labels.shape[1]
    flat = labels.ravel()
    pos = np.flatnonzero(flat)
    ids = flat[pos]
    order = np.argsort(ids, kind="stable")
    ids, pos = ids[order], pos[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])  # labels 1..n, each present
    rows, cols = np.divmod(pos, width)
    r0, r1 = np.minimum.reduceat(rows, starts), np.maximum.reduceat(rows, starts) + 1
    c0, c1 = np.minimum.reduceat(cols, starts), np.maximum.reduceat(cols, starts) + 1
    count = np.diff(np.r_[starts, len(pos)])
    rect = count == (r1 - r0) * (c1 - c0)

    # rectangles: one closed ring of 5 corners each, turning the way GDAL's exterior rings turn
    xs = np.stack([c0, c0, c1, c1, c0], axis=1)[rect]
    ys = np.stack([r0, r1, r1, r0, r0], axis=1)[rect] + row_off
    coords = [np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float64)]
    ring_counts = [np.full(len(xs), 5, dtype=np.int64)]
    ring_labels = [np.flatnonzero(rect) + 1]
    ring_polygon = [np.arange(len(xs))]

    if not rect.all():  # the other regions, traced by GDAL
        rings, owners, values = [], [], []
        shift = Affine(1.0, 0.0, 0.0, 0.0, 1.0, float(row_off))
        traced = np.r_[False, ~rect][labels]
        for geom, value in shapes(labels, mask=traced, connectivity=4, transform=shift):
            polygon_rings = geom["coordinates"]
            owners.extend([len(values)] * len(polygon_rings))
            rings.extend(polygon_rings)
            values.append(int(value))
        if len(values) != int((~rect).sum()) or len(set(values)) != len(values):
            raise RuntimeError(f"polygonize returned {len(values)} polygons for {int((~rect).sum())} regions")
        counts = np.fromiter((len(r) for r in rings), dtype=np.int64, count=len(rings))
        coords.append(np.fromiter(chain.from_iterable(chain.from_iterable(rings)), dtype=np.float64,
                                  count=2 * int(counts.sum())).reshape(-1, 2))
        ring_counts.append(counts)
        owners = np.asarray(owners, dtype=np.int64)
        ring_labels.append(np.asarray(values, dtype=np.int64)[owners])
        ring_polygon.append(owners + len(xs))

    coords = np.concatenate(coords)
    ring_counts = np.concatenate(ring_counts)
    ring_labels = np.concatenate(ring_labels)
    ring_polygon = np.concatenate(ring_polygon)
    to_map_coords = ~in_pixels[np.repeat(ring_labels, ring_counts) - 1]
    coords[to_map_coords] = _affine(coords[to_map_coords], transform)
    linear = shapely.linearrings(coords, indices=np.repeat(np.arange(len(ring_counts)), ring_counts))
    polygons = shapely.polygons(linear, indices=ring_polygon)
    polygon_labels = np.zeros(len(polygons), dtype=np.int64)
    polygon_labels[ring_polygon] = ring_labels
    traced_polygons = polygons[len(xs):]
    invalid = ~shapely.is_valid(traced_polygons)
    if invalid.any():  # not seen from GDAL's polygonize, but unions need valid input
        traced_polygons[invalid] = shapely.make_valid(traced_polygons[invalid])
        polygons[len(xs):] = traced_polygons
    out[polygon_labels - 1] = polygons
    return out


def _affine(xy: np.ndarray, transform: Affine) -> np.ndarray:
    a, b, c, d, e, f = tuple(transform)[:6]
    x, y = xy[:, 0], xy[:, 1]
    return np.stack([a * x + b * y + c, d * x + e * y + f], axis=1)


def _union_pieces(pieces: Sequence) -> shapely.Polygon:
    if len(pieces) == 1:
        return pieces[0]
    merged = shapely.union_all(_object_array(pieces))
    if merged.geom_type != "Polygon":  # pieces joined by edges are one polygon; anything else is a bug
        raise RuntimeError(f"merging {len(pieces)} pieces gave a {merged.geom_type}")
    return merged


def _to_map(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Geometries in pixel coordinates (x = column, y = row) -> map coordinates of ``transform``."""
    return shapely.transform(geoms, lambda xy: _affine(xy, transform))


# ------------------------------------------------------------------------------------------- attributes
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
            cols += [np.bincount(ids[ok], weights=p[ok].astype(np.float64), minlength=n),
                     np.bincount(ids[ok], minlength=n)]
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
    local = CRS.from_proj4(f"+proj=aeqd +lat_0={(bottom + top) / 2} +lon_0={(left + right) / 2} +datum=WGS84 +units=m")
    projected = gpd.GeoSeries(geoms, crs=grid.crs).to_crs(local)
    simplified = gpd.GeoSeries(shapely.simplify(projected.values, tolerance_m, preserve_topology=True), crs=local)
    return simplified.to_crs(grid.crs).values


def _geodesic_area_m2(geoms: np.ndarray, crs: CRS) -> np.ndarray:
    import pyproj

    geod = pyproj.CRS.from_wkt(crs.to_wkt()).get_geod()
    return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geoms], dtype=np.float64)


def _features(geoms: np.ndarray, sums: np.ndarray, grid: Grid, pixel_area: float | None, config: VectorizeConfig,
              out_crs: CRS, has_prob: bool) -> gpd.GeoDataFrame:
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


# ------------------------------------------------------------------------------------------- public entry
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
        with _atomic_vector(out_path, config.driver) as tmp, _writer(tmp, config.driver, out_path.stem, out_crs) as out:
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


# ------------------------------------------------------------------------------------------- writing
@contextlib.contextmanager
def _atomic_vector(path: Path, driver: str) -> Iterator[Path]:
    """A temporary path to write the output to, moved into place on success (all sidecars for Shapefiles)."""
    if driver != "ESRI Shapefile":
        with atomic_path(path) as tmp:
            yield tmp
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = temporary_sibling(path.with_suffix(""))
    tmp_dir.mkdir()
    try:
        yield tmp_dir / path.name
        written = {p.suffix.lower(): p for p in tmp_dir.iterdir()}
        if ".shp" not in written:
            raise RuntimeError(f"no .shp was written for {path}")
        for ext in SHAPEFILE_SIDECARS:  # stale sidecars (indexes above all) of an earlier output go first
            if ext not in written:
                path.with_suffix(ext).unlink(missing_ok=True)
        for ext, p in written.items():
            if ext != ".shp":
                os.replace(p, path.with_suffix(ext))
        os.replace(written[".shp"], path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


class _OgrWriter:
    """GPKG / Shapefile through pyogrio: the first batch creates the layer, later batches append."""

    def __init__(self, path: Path, driver: str, layer: str, crs: CRS):
        self.path, self.driver, self.layer, self.crs = path, driver, layer, crs
        self.buffer: list[gpd.GeoDataFrame] = []
        self.buffered = 0
        self.created = False

    def write(self, frame: gpd.GeoDataFrame) -> None:
        self.buffer.append(frame)
        self.buffered += len(frame)
        if self.buffered >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.buffer and self.created:
            return
        frame = gpd.GeoDataFrame(
            pd.concat(self.buffer, ignore_index=True) if self.buffer else _empty_frame(self.crs),
            crs=self.crs,
        )
        pyogrio.write_dataframe(frame, self.path, driver=self.driver, layer=self.layer, append=self.created,
                                geometry_type="Polygon", promote_to_multi=False)
        self.created = True
        self.buffer, self.buffered = [], 0

    def close(self) -> None:
        self.flush()


def _empty_frame(crs: CRS) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"id": np.array([], np.int64), "area_m2": np.array([], np.float64), "mean_prob": np.array([], np.float64),
         "n_dates": np.array([], np.int32)},
        geometry=gpd.GeoSeries([], crs=crs),
    )


class _GeoJSONWriter:
    """GeoJSON streamed as text, feature by feature (GDAL's GeoJSON driver rewrites the file to append).

    Like GDAL, a CRS other than WGS 84 is named in a ``crs`` member (``urn:ogc:def:crs:EPSG::<code>``);
    missing values are ``null``; exterior rings are counter-clockwise, holes clockwise (RFC 7946).
    """

    def __init__(self, path: Path, layer: str, crs: CRS):
        epsg = crs.to_epsg()
        if epsg is None:
            raise UnosatError(f"{path}: GeoJSON output needs a CRS with an EPSG code, got {crs.to_string()}")
        header = {"type": "FeatureCollection", "name": layer}
        if epsg != 4326:
            header["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.file.write(json.dumps(header)[:-1] + ', "features": [\n')
        self.first = True

    def write(self, frame: gpd.GeoDataFrame) -> None:
        if len(frame) == 0:
            return
        polygons = shapely.orient_polygons(np.asarray(frame.geometry.values, dtype=object))  # right-hand rule
        geometries = shapely.to_geojson(polygons).tolist()
        names = [c for c in frame.columns if c != frame.geometry.name]
        columns = [[f'"{name}": {token}' for token in _json_tokens(frame[name].to_numpy())] for name in names]
        lines = [f'{{"type": "Feature", "properties": {{{", ".join(props)}}}, "geometry": {geom}}}'
                 for *props, geom in zip(*columns, geometries)]
        self.file.write(("" if self.first else ",\n") + ",\n".join(lines))
        self.first = False

    def close(self) -> None:
        self.file.write("\n]}\n")
        self.file.close()


def _json_tokens(values: np.ndarray) -> list[str]:
    """JSON text of each value of a numeric or string column (non-finite numbers are ``null``)."""
    if np.issubdtype(values.dtype, np.integer):
        return [str(v) for v in values.tolist()]
    if np.issubdtype(values.dtype, np.floating):
        return [repr(v) if math.isfinite(v) else "null" for v in values.astype(np.float64).tolist()]
    return [json.dumps(v) for v in values.tolist()]


@contextlib.contextmanager
def _writer(path: Path, driver: str, layer: str, crs: CRS):
    writer = _GeoJSONWriter(path, layer, crs) if driver == "GeoJSON" else _OgrWriter(path, driver, layer, crs)
    ok = False
    try:
        yield writer
        ok = True
    finally:
        if ok:
            writer.close()
        elif isinstance(writer, _GeoJSONWriter):
            writer.file.close()
