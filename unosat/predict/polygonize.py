"""Polygons of the connected regions of a raster band, streamed by row strips (:func:`polygonize_strips`).

Why hand-written rather than ``rasterio.features.shapes`` over the whole raster: ``shapes`` needs the band
in memory and returns every polygon of it at once, so a 10980 x 10980 scene (or a larger city mosaic) would
hold the full mask plus all its polygons; and running it per strip cuts every building that crosses a strip
border. This module keeps memory bounded (one strip and the regions still open at its border) and joins
the pieces exactly, whatever the raster's height; ``shapes`` still traces the regions inside each strip.

Streaming (:func:`polygonize_strips`): the mask is read in full-width strips of ``block_rows`` rows. Each
strip is labelled (4-connectivity); regions that fill their bounding box become rectangles directly, the
others are traced by GDAL's polygonize. A region touching the strip's first or last row is a *piece*, kept
in pixel coordinates (x = column, y = row: integers, so unions are exact). In the next strip, pieces are
joined to the open groups exactly where a building pixel of the previous strip's last row sits above a
building pixel of the new strip's first row (an edge on the border line, never a corner), with a union-find
over the groups and pieces at that border. A group that no longer reaches the current strip's last row is
complete: its pieces are unioned, its additive sums (pixels, probability sum and count, building pixels per
date) added, and it is yielded. Memory holds one strip and the open groups, whatever the raster's height.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import scipy.ndimage as ndi
import shapely
from rasterio.features import shapes
from rasterio.transform import Affine
from rasterio.windows import Window

from unosat.io.raster import read_window, row_windows

#: 4-connectivity (edge neighbours only), the default of ``rasterio.features.shapes``.
FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)

#: ``(window, labels, n)`` -> ``(n, m)`` additive sums per label 1..n of a strip (row ``i`` is label ``i + 1``).
StripStats = Callable[[Window, np.ndarray, int], np.ndarray]


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
    for window in row_windows(width, height, int(block_rows)):
        row_off, rows = window.row_off, window.height
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


def _strip_pieces(
    labels: np.ndarray, n: int, row_off: int, transform: Affine, in_pixels: np.ndarray
) -> np.ndarray:
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
        coords.append(
            np.fromiter(
                chain.from_iterable(chain.from_iterable(rings)), dtype=np.float64, count=2 * int(counts.sum())
            ).reshape(-1, 2)
        )
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
    traced_polygons = polygons[len(xs) :]
    invalid = ~shapely.is_valid(traced_polygons)
    if invalid.any():  # not seen from GDAL's polygonize, but unions need valid input
        traced_polygons[invalid] = shapely.make_valid(traced_polygons[invalid])
        polygons[len(xs) :] = traced_polygons
    out[polygon_labels - 1] = polygons
    return out


def _affine(xy: np.ndarray, transform: Affine) -> np.ndarray:
    """``(n, 2)`` pixel coordinates (x = column, y = row) -> map coordinates of ``transform``."""
    return np.stack(transform * (xy[:, 0], xy[:, 1]), axis=1)


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
