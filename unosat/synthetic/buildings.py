"""Building footprints and what the radar sees of them: double bounce, layover and shadow; bright points.

Footprints are rotated rectangles in map coordinates (scene CRS), 10-50 m a side, mostly packed in towns
along each town's street orientation, a few scattered over the land. A footprint's pixels are those whose
centre lies inside it (``rasterio.features.rasterize(all_touched=False)``), for the radar signal and for the
labels alike; each footprint holds at least the centre of the pixel it was placed on.

Radar geometry: Sentinel-1 looks right. On an ascending pass it flies north and looks east, so the sensor is
to the west: a building's layover (its top, imaged closer to the sensor) brightens the pixel west of it and
its shadow darkens the pixels east of it; a descending pass is the mirror image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import rasterio.features
import shapely
from scipy import ndimage

from unosat.io.raster import Grid
from unosat.synthetic.landcover import LandCover, LandCoverMap
from unosat.synthetic.spec import ORBIT_PASSES, DemoSpec

log = logging.getLogger(__name__)

#: Skew of footprint sizes toward the small end: side = min * (max/min)^(u^SIZE_SKEW), u uniform.
SIZE_SKEW = 1.5
#: Aspect ratio (short/long side) range of footprints.
ASPECT_RATIO = (0.5, 1.0)
#: Standard deviation (degrees) of a town building's orientation around its town's street grid.
TOWN_ANGLE_JITTER_DEG = 5.0
#: Largest offset (px, per axis) of a footprint's centre from the centre of the pixel it is placed on; 0.35 px
#: at most, below half the smallest side (>= 1 px), so that pixel's centre is always inside.
CENTRE_JITTER_PX = 0.25
#: Spread (in [0, 1] of the range) of a building's VH level around the VV level's relative position.
VH_VV_DECORRELATION = 0.15
#: Below this share of the asked building pixels, placement warns that there was no room for more.
SHORTFALL_WARNING = 0.9
#: Candidate footprints drawn at a time while packing (then tried one by one).
CANDIDATE_BATCH = 2048


@dataclass
class Footprints:
    """Building footprints of one city (static over its acquisitions).

    Attributes:
        polygons: ``(n,)`` shapely polygons in the scene CRS (map units, metres).
        vv_db, vh_db: ``(n,)`` double-bounce sigma0 of each building in dB.
        aspect_db: ``(len(ORBIT_PASSES), n)`` change of that level on each pass (ASC, DES) in dB: walls
            face one look direction better than the other.
        shadow_px: ``(n,)`` shadow length in pixels (the building's height over the ground range).
    """

    polygons: np.ndarray
    vv_db: np.ndarray
    vh_db: np.ndarray
    aspect_db: np.ndarray
    shadow_px: np.ndarray

    def __len__(self) -> int:
        return len(self.polygons)


@dataclass
class PointTargets:
    """Very bright point scatterers (masts, metal structures): pixel ``rows``, ``cols`` and their sigma0
    ``vv``, ``vh`` in linear power, static over a city's acquisitions. Shapes ``(n,)``."""

    rows: np.ndarray
    cols: np.ndarray
    vv: np.ndarray
    vh: np.ndarray


def _rectangles_px(
    centres: np.ndarray, length: np.ndarray, width: np.ndarray, angle_rad: np.ndarray
) -> np.ndarray:
    """Corners ``(n, 5, 2)`` (closed rings) of rotated rectangles in pixel coordinates ``(col, row)``."""
    u = np.stack([np.cos(angle_rad), np.sin(angle_rad)], axis=1) * (length / 2)[:, None]
    v = np.stack([-np.sin(angle_rad), np.cos(angle_rad)], axis=1) * (width / 2)[:, None]
    c = centres
    ring = [c + u + v, c - u + v, c - u - v, c + u - v, c + u + v]
    return np.stack(ring, axis=1)


def _pixel_masks(
    centres: np.ndarray,
    length: np.ndarray,
    width: np.ndarray,
    angle_rad: np.ndarray,
    origins: np.ndarray,
    size: int,
) -> np.ndarray:
    """``(n, size, size)`` bool: which pixels of the window starting at ``origins`` ``(n, 2)`` ``(row, col)``
    have their centre inside each rotated rectangle (the rule of ``rasterize(all_touched=False)``)."""
    offsets = np.arange(size) + 0.5
    dx = origins[:, 1, None] + offsets[None, :] - centres[:, 0, None]  # (n, size) along columns
    dy = origins[:, 0, None] + offsets[None, :] - centres[:, 1, None]  # (n, size) along rows
    cos, sin = np.cos(angle_rad)[:, None, None], np.sin(angle_rad)[:, None, None]
    along = dx[:, None, :] * cos + dy[:, :, None] * sin
    across = -dx[:, None, :] * sin + dy[:, :, None] * cos
    return (np.abs(along) <= (length / 2)[:, None, None]) & (np.abs(across) <= (width / 2)[:, None, None])


def _candidates(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
    """``n`` pixel indices (flat) drawn with probability proportional to ``weights``."""
    cdf = np.cumsum(weights.ravel(), dtype=np.float64)
    picks = np.searchsorted(cdf, rng.uniform(0.0, cdf[-1], size=n), side="right")
    return np.minimum(picks, cdf.size - 1)


def _pack(
    rng: np.random.Generator,
    weights: np.ndarray,
    target_px: float,
    angle_deg: np.ndarray | None,
    taken: np.ndarray,
    spec: DemoSpec,
) -> tuple[list[np.ndarray], int]:
    """Place footprints on pixels drawn from ``weights`` until they hold ``target_px`` pixels.

    ``weights`` ``(rows, cols)`` need not be normalised; ``angle_deg`` (per pixel) is the street orientation
    to follow, None for random orientations. ``taken`` is the building-pixel mask padded by
    :func:`_window_size` pixels of True on every side (so no footprint leaves the scene); a candidate is kept
    when no taken pixel lies within ``building_gap_px`` of its pixels, and then marks them taken. Returns
    ``(5, 2)`` rings in pixel coordinates ``(col, row)`` of the scene and the number of pixels they hold
    (fewer than asked when the free pixels run out).
    """
    gap = spec.building_gap_px
    lo, hi = (s / spec.pixel_size for s in spec.building_size_m)
    pad = _window_size(spec)
    half = pad // 2
    weights = np.pad(weights.astype(np.float64), pad)  # padded like ``taken``; zero weight outside the scene
    if angle_deg is not None:
        angle_deg = np.pad(angle_deg, pad)
    cols = weights.shape[1]
    dilate = np.ones((1, 3, 3), dtype=bool)
    rings: list[np.ndarray] = []
    placed = 0
    while placed < target_px and weights.sum() > 0:
        n = CANDIDATE_BATCH
        r, c = np.divmod(_candidates(rng, weights, n), cols)
        centres = (
            np.stack([c, r], axis=1) + 0.5 + rng.uniform(-CENTRE_JITTER_PX, CENTRE_JITTER_PX, size=(n, 2))
        )
        length = lo * (hi / lo) ** (rng.uniform(size=n) ** SIZE_SKEW)
        width = np.maximum(lo, length * rng.uniform(*ASPECT_RATIO, size=n))
        if angle_deg is None:
            angle = rng.uniform(0.0, 90.0, size=n)
        else:
            angle = angle_deg[r, c] + rng.normal(0.0, TOWN_ANGLE_JITTER_DEG, size=n)
        angle = np.deg2rad(angle)
        top, left = r - half, c - half
        masks = _pixel_masks(centres, length, width, angle, np.stack([top, left], axis=1), pad)
        corners = _rectangles_px(centres, length, width, angle)
        reach = ndimage.binary_dilation(masks, structure=dilate, iterations=gap) if gap else masks
        counts = masks.sum(axis=(1, 2))
        accepted = 0
        for i in range(n):
            window = (slice(top[i], top[i] + pad), slice(left[i], left[i] + pad))
            if (taken[window] & reach[i]).any():
                continue
            taken[window] |= masks[i]
            # a later candidate centred within this building's reach is bound to fail: stop drawing those
            weights[window][reach[i]] = 0.0
            rings.append(corners[i])
            placed += int(counts[i])
            accepted += 1
            if placed >= target_px:
                break
        if accepted == 0:  # saturated
            break
    return [ring - pad for ring in rings], placed


def _window_size(spec: DemoSpec) -> int:
    """Side (px, odd) of a window centred on a footprint's pixel that holds all its pixels and its gap."""
    hi = spec.building_size_m[1] / spec.pixel_size
    return 2 * int(np.ceil(hi / np.sqrt(2.0) + CENTRE_JITTER_PX + 1 + spec.building_gap_px)) + 1


def hamlet_weights(rng: np.random.Generator, rural_px: np.ndarray, spec: DemoSpec) -> np.ndarray:
    """Where rural buildings are drawn: ``(rows, cols)`` float64 weights, zero off ``rural_px`` (bool).

    ``max(1, round(hamlets_per_km2 * scene area))`` hamlet centres are drawn uniformly over the rural pixels;
    each adds a Gaussian bump of standard deviation ``hamlet_radius_m`` (cut at 4 standard deviations), so
    most of the land holds no building at all, as in the real scenes. ``hamlets_per_km2 == 0``: uniform.
    """
    weights = rural_px.astype(np.float64)
    if spec.hamlets_per_km2 <= 0 or not rural_px.any():
        return weights
    rows, cols = rural_px.shape
    area_km2 = rows * cols * spec.pixel_size**2 / 1e6
    n = max(1, round(spec.hamlets_per_km2 * area_km2))
    candidates = np.flatnonzero(rural_px)
    centres = np.divmod(rng.choice(candidates, size=n, replace=candidates.size < n), cols)
    sigma = spec.hamlet_radius_m / spec.pixel_size
    reach = int(np.ceil(4 * sigma))
    field = np.zeros_like(weights)
    for r, c in zip(*centres):
        r0, r1, c0, c1 = (
            max(0, r - reach),
            min(rows, r + reach + 1),
            max(0, c - reach),
            min(cols, c + reach + 1),
        )
        dr = np.arange(r0, r1)[:, None] - r
        dc = np.arange(c0, c1)[None, :] - c
        field[r0:r1, c0:c1] += np.exp(-(dr**2 + dc**2) / (2 * sigma**2))
    return weights * field


def place_footprints(
    rng: np.random.Generator, landcover: LandCoverMap, grid: Grid, spec: DemoSpec
) -> Footprints:
    """Footprints of one city covering about ``spec.building_fraction`` of the scene's pixels.

    Town buildings are drawn with a density that falls off from each town's centre (exp(-(d/r)^2)), the
    ``rural_building_share`` over bare soil and cropland in hamlets (:func:`hamlet_weights`), or uniformly when
    ``hamlets_per_km2`` is 0; some fall in the nodata wedge, as real labels do. Without towns every building
    is rural.
    """
    shape = landcover.classes.shape
    target = spec.building_fraction * shape[0] * shape[1]
    town_px = landcover.classes == LandCover.TOWN
    rural_px = (landcover.classes == LandCover.BARE_SOIL) | (landcover.classes == LandCover.CROPLAND)
    rural_target = target if not town_px.any() else target * spec.rural_building_share

    town_weight = np.zeros(shape, dtype=np.float64)
    town_angle = np.zeros(shape, dtype=np.float64)
    rr = np.arange(shape[0])[:, None] + 0.5
    cc = np.arange(shape[1])[None, :] + 0.5
    nearest = np.full(shape, np.inf)
    for town in landcover.towns:
        d = np.hypot(rr - town.row, cc - town.col) / town.radius_px
        closer = d < nearest
        nearest[closer] = d[closer]
        town_angle[closer] = town.angle_deg
    town_weight[town_px] = np.exp(-(nearest[town_px] ** 2))

    pad = _window_size(spec)
    taken = np.pad(np.zeros(shape, dtype=bool), pad, constant_values=True)  # the border blocks footprints
    rings, in_towns = _pack(rng, town_weight, target - rural_target, town_angle, taken, spec)
    rural_rings, rural = _pack(rng, hamlet_weights(rng, rural_px, spec), rural_target, None, taken, spec)
    rings += rural_rings
    if in_towns + rural < SHORTFALL_WARNING * target:
        log.warning(
            "demo: only %.2f %% building pixels placed of the %.2f %% asked (building_fraction): no room left "
            "for footprints; lower building_fraction, town_building_density (larger towns) or building_gap_px",
            100 * (in_towns + rural) / (shape[0] * shape[1]),
            100 * spec.building_fraction,
        )

    n = len(rings)
    ring_px = np.asarray(rings, dtype=np.float64).reshape(n, 5, 2)
    t = grid.transform
    x = t.a * ring_px[..., 0] + t.b * ring_px[..., 1] + t.c
    y = t.d * ring_px[..., 0] + t.e * ring_px[..., 1] + t.f
    polygons = shapely.polygons(np.stack([x, y], axis=-1)) if n else np.empty(0, dtype=object)

    u = rng.uniform(size=n)
    u_vh = np.clip(u + rng.normal(0.0, VH_VV_DECORRELATION, size=n), 0.0, 1.0)
    vv_lo, vv_hi = spec.double_bounce_vv_db
    vh_lo, vh_hi = spec.double_bounce_vh_db
    aspect = rng.uniform(
        -spec.double_bounce_aspect_db, spec.double_bounce_aspect_db, size=(len(ORBIT_PASSES), n)
    )
    shadow = rng.integers(spec.shadow_length_px[0], spec.shadow_length_px[1] + 1, size=n)
    return Footprints(
        polygons=np.asarray(polygons, dtype=object),
        vv_db=(vv_lo + u * (vv_hi - vv_lo)).astype(np.float32),
        vh_db=(vh_lo + u_vh * (vh_hi - vh_lo)).astype(np.float32),
        aspect_db=aspect.astype(np.float32),
        shadow_px=shadow.astype(np.int32),
    )


def footprint_ids(footprints: Footprints, grid: Grid) -> np.ndarray:
    """``(rows, cols)`` int32: ``i + 1`` on the pixels of footprint ``i`` (pixel centre inside), 0 elsewhere."""
    if len(footprints) == 0:
        return np.zeros(grid.shape, dtype=np.int32)
    # GeoJSON-like dicts of the exterior rings: rasterio reads them twice as fast as shapely objects
    exteriors = shapely.get_exterior_ring(footprints.polygons)
    rings = np.split(
        shapely.get_coordinates(exteriors), np.cumsum(shapely.get_num_coordinates(exteriors))[:-1]
    )
    shapes = (({"type": "Polygon", "coordinates": [ring.tolist()]}, i + 1) for i, ring in enumerate(rings))
    return rasterio.features.rasterize(
        shapes, out_shape=grid.shape, transform=grid.transform, fill=0, all_touched=False, dtype="int32"
    )


def _shift_cols(mask: np.ndarray, step: int) -> np.ndarray:
    """``mask`` moved by ``step`` columns (positive: east), without wrapping."""
    out = np.zeros_like(mask)
    if step > 0:
        out[:, step:] = mask[:, :-step]
    elif step < 0:
        out[:, :step] = mask[:, -step:]
    else:
        out[:] = mask
    return out


def layover_and_shadow(
    ids: np.ndarray, shadow_px: np.ndarray, ascending: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Layover and shadow masks ``(rows, cols)`` bool of the buildings in ``ids`` (see :func:`footprint_ids`).

    Layover: the one pixel next to a building on the sensor side (west when ``ascending``, east when
    descending). Shadow: ``shadow_px[i]`` pixels on the far side of building ``i``. Neither covers building
    pixels; where both would, layover wins.
    """
    building = ids > 0
    toward_sensor = -1 if ascending else 1
    layover = _shift_cols(building, toward_sensor) & ~building
    length = np.zeros(ids.shape, dtype=np.int32)
    length[building] = shadow_px[ids[building] - 1]
    shadow = np.zeros_like(building)
    for k in range(1, int(shadow_px.max(initial=0)) + 1):
        shadow |= _shift_cols(length >= k, -toward_sensor * k)
    return layover, shadow & ~building & ~layover


def place_point_targets(rng: np.random.Generator, landcover: LandCoverMap, spec: DemoSpec) -> PointTargets:
    """``spec.point_targets`` bright scatterers on town pixels (any land pixel when there is no town), VV
    log-uniform in ``spec.point_target_vv_linear``, VH ``spec.point_target_vh_below_db`` lower."""
    where = landcover.classes == LandCover.TOWN
    if not where.any():
        where = landcover.classes != LandCover.WATER
    flat = _candidates(rng, where.astype(np.float64), spec.point_targets) if where.any() else np.empty(0, int)
    rows, cols = np.divmod(flat, landcover.classes.shape[1])
    lo, hi = np.log10(spec.point_target_vv_linear)
    vv = 10.0 ** rng.uniform(lo, hi, size=rows.size)
    vh = vv * 10.0 ** (-rng.uniform(*spec.point_target_vh_below_db, size=rows.size) / 10.0)
    return PointTargets(rows, cols, vv.astype(np.float32), vh.astype(np.float32))
