"""Land cover of a synthetic scene (desert, cropland, water, towns) and its mean C-band backscatter.

The map is made of smooth random fields thresholded at quantiles (so the class fractions are exact): a
meandering river and a few lakes, cropland in rectangular parcels that favours the river banks, towns as
irregular blobs, bare soil elsewhere. Each class has a mean backscatter drawn once per city from the table
below, a mild smooth variation inside the class, and, for cropland parcels and water, a small change from
one date to the next (crop growth, wind on water).

Arrays are ``(rows, cols)``; backscatter is in dB here (linear power = 10^(dB/10)).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

from unosat.synthetic.spec import DemoSpec


class LandCover(IntEnum):
    """Land-cover classes of the synthetic map (values of :attr:`LandCoverMap.classes`)."""

    BARE_SOIL = 0
    CROPLAND = 1
    WATER = 2
    TOWN = 3


#: Mean sigma0 of each class, (min, max) in dB for VV and VH, C band (unosat-data-facts.md). A city draws
#: one value per class within these ranges. Towns take the lower part of the table's urban range
#: (-5..+5 VV, -15..-10 VH): that is the clutter between buildings, whose double bounce is brighter.
BACKSCATTER_DB: dict[LandCover, dict[str, tuple[float, float]]] = {
    LandCover.BARE_SOIL: {"vv": (-18.0, -12.0), "vh": (-27.0, -20.0)},
    LandCover.CROPLAND: {"vv": (-12.0, -8.0), "vh": (-20.0, -14.0)},
    LandCover.WATER: {"vv": (-25.0, -20.0), "vh": (-30.0, -25.0)},
    LandCover.TOWN: {"vv": (-5.0, 0.0), "vh": (-15.0, -11.0)},
}
#: Columns of :attr:`ClassBackscatter.base_db`.
BASE_DB_COLUMNS = ("vv", "vh")

#: Meander amplitude of the river, as a fraction of the scene's extent across the river.
RIVER_MEANDER_FRACTION = 0.12
#: How far (in landscape scales) the river favours cropland on its banks, and by how much (in std of the
#: crop field).
RIVER_CROP_AFFINITY = 1.0
#: Irregularity of town outlines: relative change of the town radius.
TOWN_OUTLINE_IRREGULARITY = 0.25
#: Standard deviation (dB) of the static mean offset of each crop parcel (different crops).
CROP_PARCEL_DB = 1.5


@dataclass(frozen=True)
class Town:
    """A town: centre ``(row, col)`` in pixels, nominal radius in pixels, street-grid orientation in degrees."""

    row: float
    col: float
    radius_px: float
    angle_deg: float


@dataclass
class LandCoverMap:
    """Land cover of one city's scene (static over its acquisitions).

    Attributes:
        classes: ``(rows, cols)`` uint8 :class:`LandCover` values.
        parcels: ``(rows, cols)`` int32 crop-parcel index (meaningful on cropland), ``0..n_parcels-1``.
        n_parcels: number of parcels.
        towns: the towns, whose pixels are :attr:`LandCover.TOWN`.
    """

    classes: np.ndarray
    parcels: np.ndarray
    n_parcels: int
    towns: list[Town]

    def fraction(self, cls: LandCover) -> float:
        """Fraction of the scene's pixels in class ``cls``."""
        return float(np.count_nonzero(self.classes == cls)) / self.classes.size


@dataclass
class ClassBackscatter:
    """Static mean backscatter of one city's classes.

    Attributes:
        base_db: ``(len(LandCover), 2)`` mean sigma0 in dB per class, columns (VV, VH).
        variation_db: ``(rows, cols)`` float32 smooth offset in dB added to every class (std
            ``DemoSpec.class_variation_db``).
        parcel_db: ``(n_parcels,)`` static offset in dB of each crop parcel.
    """

    base_db: np.ndarray
    variation_db: np.ndarray
    parcel_db: np.ndarray


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale_px: float) -> np.ndarray:
    """A smooth random field of ``shape`` (any dimensionality): features about ``scale_px`` pixels across,
    standardised to mean 0 and standard deviation 1 over the field (float32).

    White noise on a coarse grid (one node per half scale), smoothed, then cubic-spline interpolated to
    ``shape``: cheap for any scale.
    """
    step = max(float(scale_px) / 2.0, 1.0)
    coarse_shape = tuple(max(2, round(n / step)) for n in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 1.0, mode="reflect")
    zoom = tuple(n / c for n, c in zip(shape, coarse_shape))
    field = ndimage.zoom(coarse, zoom, order=3, grid_mode=True, mode="grid-mirror")
    field -= field.mean()
    std = field.std()
    if std > 0:
        field /= std
    return field.astype(np.float32)


def _river(
    rng: np.random.Generator, shape: tuple[int, int], width_px: float, scale_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """A meandering river across the scene: ``(water mask, distance to its centre line in px)``."""
    rows, cols = shape
    horizontal = rng.random() < 0.5
    along, across = (cols, rows) if horizontal else (rows, cols)
    meander = smooth_noise(rng, (along,), 2.0 * scale_px)
    centre = across * rng.uniform(0.25, 0.75) + RIVER_MEANDER_FRACTION * across * meander
    cross_coord = np.arange(across, dtype=np.float32)[:, None] + 0.5
    distance = np.abs(cross_coord - centre[None, :])  # (across, along)
    if not horizontal:
        distance = distance.T
    return distance < width_px / 2.0, distance


def _parcels(
    rng: np.random.Generator, shape: tuple[int, int], size_px: tuple[float, float]
) -> tuple[np.ndarray, int]:
    """Rectangular parcels: rows of fields of random heights, each row cut into fields of random widths."""
    rows, cols = shape

    def cuts(n: int) -> np.ndarray:
        sizes = rng.uniform(size_px[0], size_px[1], size=int(n / size_px[0]) + 2)
        return np.cumsum(sizes)

    row_band = np.searchsorted(cuts(rows), np.arange(rows) + 0.5)
    n_bands = int(row_band.max()) + 1
    parcels = np.empty(shape, dtype=np.int32)
    first = 0
    for band in range(n_bands):
        col_field = np.searchsorted(cuts(cols), np.arange(cols) + 0.5).astype(np.int32)
        parcels[row_band == band] = first + col_field
        first += int(col_field.max()) + 1
    return parcels, first


def _towns(
    rng: np.random.Generator, shape: tuple[int, int], n_towns: int, area_px: float, water: np.ndarray
) -> tuple[list[Town], np.ndarray]:
    """``n_towns`` towns sharing ``area_px`` pixels, centred on land and apart from each other."""
    rows, cols = shape
    mask = np.zeros(shape, dtype=bool)
    towns: list[Town] = []
    if n_towns == 0 or area_px <= 0:
        return towns, mask
    shares = rng.dirichlet(np.full(n_towns, 2.0))
    outline = smooth_noise(rng, shape, np.sqrt(area_px / n_towns / np.pi))
    rr = np.arange(rows, dtype=np.float32)[:, None] + 0.5
    cc = np.arange(cols, dtype=np.float32)[None, :] + 0.5
    for share in shares:
        radius = float(np.sqrt(share * area_px / np.pi))
        best = None
        for _ in range(50):
            r = rng.uniform(min(radius, rows / 2), max(rows - radius, rows / 2))
            c = rng.uniform(min(radius, cols / 2), max(cols - radius, cols / 2))
            clear = all(np.hypot(r - t.row, c - t.col) > 0.9 * (radius + t.radius_px) for t in towns)
            best = (r, c)
            if clear and not water[int(r), int(c)]:
                break
        town = Town(best[0], best[1], radius, float(rng.uniform(0.0, 90.0)))
        towns.append(town)
        distance = np.hypot(rr - town.row, cc - town.col) / radius
        mask |= distance < 1.0 + TOWN_OUTLINE_IRREGULARITY * outline
    return towns, mask & ~water


def land_cover_map(rng: np.random.Generator, spec: DemoSpec, n_towns: int) -> LandCoverMap:
    """The land-cover map of one city's scene, ``spec.height`` x ``spec.width`` pixels.

    Towns cover ``building_fraction * (1 - rural_building_share) / town_building_density`` of the scene, so
    that towns filled at ``town_building_density`` hold the requested building pixels at any scene size.
    """
    shape = spec.shape
    landscape_px = spec.landscape_scale_m / spec.pixel_size
    water = np.zeros(shape, dtype=bool)
    river_distance = None
    if spec.river_width_m > 0:
        water, river_distance = _river(rng, shape, spec.river_width_m / spec.pixel_size, landscape_px)
    if spec.lake_fraction > 0:
        lakes = smooth_noise(rng, shape, landscape_px / 2.0)
        water |= lakes > np.quantile(lakes, 1.0 - spec.lake_fraction)

    town_area = spec.building_fraction * (1.0 - spec.rural_building_share) / spec.town_building_density
    towns, town = _towns(rng, shape, n_towns, town_area * spec.height * spec.width, water)

    classes = np.full(shape, LandCover.BARE_SOIL, dtype=np.uint8)
    classes[water] = LandCover.WATER
    classes[town] = LandCover.TOWN
    land = classes == LandCover.BARE_SOIL
    crop_score = smooth_noise(rng, shape, landscape_px)
    if river_distance is not None:
        crop_score += RIVER_CROP_AFFINITY * np.exp(-river_distance / landscape_px)
    if land.any() and spec.cropland_fraction > 0:
        threshold = np.quantile(crop_score[land], 1.0 - spec.cropland_fraction)
        classes[land & (crop_score > threshold)] = LandCover.CROPLAND
    parcel_px = (spec.crop_parcel_m[0] / spec.pixel_size, spec.crop_parcel_m[1] / spec.pixel_size)
    parcels, n_parcels = _parcels(rng, shape, parcel_px)
    return LandCoverMap(classes, parcels, n_parcels, towns)


def class_backscatter(rng: np.random.Generator, landcover: LandCoverMap, spec: DemoSpec) -> ClassBackscatter:
    """Draw one city's class means within :data:`BACKSCATTER_DB` (VV and VH at the same relative position
    in their ranges, so a bright crop is bright in both), the smooth within-class variation and the static
    parcel offsets."""
    base = np.empty((len(LandCover), len(BASE_DB_COLUMNS)), dtype=np.float64)
    for cls in LandCover:
        u = rng.uniform()
        for j, pol in enumerate(BASE_DB_COLUMNS):
            lo, hi = BACKSCATTER_DB[cls][pol]
            base[cls, j] = lo + u * (hi - lo)
    variation = spec.class_variation_db * smooth_noise(
        rng, landcover.classes.shape, spec.landscape_scale_m / spec.pixel_size
    )
    parcel_db = rng.normal(0.0, CROP_PARCEL_DB, size=landcover.n_parcels)
    return ClassBackscatter(base, variation, parcel_db)


def mean_backscatter_db(
    rng: np.random.Generator, landcover: LandCoverMap, backscatter: ClassBackscatter, spec: DemoSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Mean sigma0 ``(vv_db, vh_db)``, each ``(rows, cols)`` float32 in dB, of one acquisition date.

    ``rng`` draws the date's changes: each crop parcel and the water surface move by
    ``spec.date_variation_db`` (std).
    """
    classes = landcover.classes
    crop = classes == LandCover.CROPLAND
    water = classes == LandCover.WATER
    parcel_today = backscatter.parcel_db + rng.normal(0.0, spec.date_variation_db, size=landcover.n_parcels)
    water_today = rng.normal(0.0, spec.date_variation_db)
    offset = backscatter.variation_db.copy()
    offset[crop] += parcel_today[landcover.parcels[crop]].astype(np.float32)
    offset[water] += np.float32(water_today)
    vv = backscatter.base_db[classes, 0].astype(np.float32) + offset
    vh = backscatter.base_db[classes, 1].astype(np.float32) + offset
    return vv, vh
