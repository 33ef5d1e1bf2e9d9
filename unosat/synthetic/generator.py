"""Render synthetic Sentinel-1 scenes and write the demo dataset laid out as the UNOSAT challenge's test data.

::

    <raw_dir>/<City>_2015/<YYYYMMDD>_<MGRS>/s1a_<MGRS>_<vh|vv>_<ASC|DES>_<YYYYMMDD>t<HHMMSS>.tif
    <raw_dir>/labels/<MGRS>_<City>.<shp|gpkg|geojson>
    <raw_dir>/demo.json

GeoTIFFs are single-band float32 sigma0 in **linear** power on the city's grid (:func:`city_grid`), with the
nodata wedge set to the city's ``nodata_value`` (also the file's nodata tag). Labels are the footprint
polygons with ``DN=255``. Everything follows from ``DemoSpec.seed``: one random stream per city and purpose
(land cover, buildings, wedges, each acquisition), so the same spec writes byte-identical GeoTIFFs.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio

from unosat.bands import from_db
from unosat.errors import UnosatError
from unosat.io.atomic import atomic_path
from unosat.io.provenance import differing_keys
from unosat.io.raster import Grid, geotiff_profile
from unosat.synthetic.buildings import (
    Footprints,
    PointTargets,
    footprint_ids,
    layover_and_shadow,
    place_footprints,
    place_point_targets,
)
from unosat.synthetic.landcover import (
    ClassBackscatter,
    LandCoverMap,
    class_backscatter,
    land_cover_map,
    mean_backscatter_db,
)
from unosat.synthetic.spec import ORBIT_PASSES, Acquisition, CitySpec, DemoSpec
from unosat.synthetic.speckle import correlated_gamma_speckle
from unosat.synthetic.swath import Wedge, pass_wedges
from unosat.synthetic.tiles import city_grid

log = logging.getLogger(__name__)

MANIFEST_NAME = "demo.json"
LABELS_DIR = "labels"
#: Year in the city folder name, as in the challenge (``Mosul_2015``).
CITY_FOLDER_YEAR = "2015"
LABEL_VALUE = 255
LABEL_DRIVERS = {"shp": "ESRI Shapefile", "gpkg": "GPKG", "geojson": "GeoJSON"}
#: A valid pixel that happens to equal the nodata value exactly is moved off it by this much (linear power).
NODATA_COLLISION_OFFSET = 1e-9


def _rng(spec: DemoSpec, city: CitySpec, *purpose: str) -> np.random.Generator:
    """The random stream of one city and purpose: independent of the other cities and of the order of
    ``spec.cities``."""
    keys = [zlib.crc32(s.encode()) for s in (city.name, *purpose)]
    return np.random.default_rng(np.random.SeedSequence([spec.seed, *keys]))


@dataclass
class CityLayout:
    """What stays the same over a city's acquisitions: grid, land cover, buildings, bright points, wedges."""

    city: CitySpec
    grid: Grid
    landcover: LandCoverMap
    backscatter: ClassBackscatter
    footprints: Footprints
    building_ids: np.ndarray
    point_targets: PointTargets
    wedges: dict[str, Wedge]

    @property
    def buildings(self) -> np.ndarray:
        """``(rows, cols)`` bool: building pixels (pixel centre inside a footprint)."""
        return self.building_ids > 0

    @property
    def building_fraction(self) -> float:
        """Fraction of the scene's pixels that are building pixels (wedge included)."""
        return float(np.count_nonzero(self.building_ids)) / self.building_ids.size


def city_layout(spec: DemoSpec, city: CitySpec | str) -> CityLayout:
    """Draw the static part of ``city``'s scenes (no speckle, nothing written)."""
    city = spec.city(city) if isinstance(city, str) else city
    grid = city_grid(spec, city)
    landcover = land_cover_map(_rng(spec, city, "landcover"), spec, city.towns)
    backscatter = class_backscatter(_rng(spec, city, "backscatter"), landcover, spec)
    footprints = place_footprints(_rng(spec, city, "buildings"), landcover, grid, spec)
    ids = footprint_ids(footprints, grid)
    points = place_point_targets(_rng(spec, city, "point-targets"), landcover, spec)
    wedges = pass_wedges(_rng(spec, city, "wedges"), spec.wedge_fraction)
    return CityLayout(city, grid, landcover, backscatter, footprints, ids, points, wedges)


def render_scene(
    spec: DemoSpec, city: CitySpec | str, acquisition: Acquisition | str, layout: CityLayout | None = None
) -> dict[str, np.ndarray]:
    """One acquisition of ``city`` in memory; ``layout`` (from :func:`city_layout`) saves redrawing it.

    Returns ``(rows, cols)`` arrays:

    - ``vv``, ``vh``: float32 sigma0 in linear power as written to the GeoTIFFs (nodata wedge set to the
      city's ``nodata_value``; valid pixels may be slightly negative from thermal-noise removal);
    - ``buildings``: bool, true building pixels (footprint pixel centres; also inside the wedge);
    - ``valid``: bool, pixels the swath covers;
    - ``landcover``: uint8 :class:`~unosat.synthetic.landcover.LandCover` classes;
    - ``layover``, ``shadow``: bool, pixels brightened / darkened by the buildings on this pass;
    - ``sigma0_vv``, ``sigma0_vh``: float32 noise-free, speckle-free sigma0 (linear power), without the
      point targets.
    """
    city = spec.city(city) if isinstance(city, str) else city
    acq = acquisition if isinstance(acquisition, Acquisition) else Acquisition.parse(acquisition)
    if acq.key not in city.acquisitions:
        raise UnosatError(f"demo city {city.name} has no acquisition {acq.key}; it has {city.acquisitions}")
    if layout is not None and layout.city.name != city.name:
        raise ValueError(f"render_scene: the layout is {layout.city.name}'s, not {city.name}'s")
    layout = layout or city_layout(spec, city)
    date_rng, vv_rng, vh_rng, noise_rng = _rng(spec, city, "acquisition", acq.key).spawn(4)

    vv_db, vh_db = mean_backscatter_db(date_rng, layout.landcover, layout.backscatter, spec)
    ids, fp = layout.building_ids, layout.footprints
    building = ids > 0
    which = ids[building] - 1
    aspect = fp.aspect_db[ORBIT_PASSES.index(acq.orbit_pass)]
    vv_db[building] = fp.vv_db[which] + aspect[which]
    vh_db[building] = fp.vh_db[which] + aspect[which]
    layover, shadow = layover_and_shadow(ids, fp.shadow_px, acq.ascending)
    vv_db[layover] += np.float32(spec.layover_gain_db)
    vh_db[layover] += np.float32(spec.layover_gain_db)
    vv_db[shadow] = np.minimum(vv_db[shadow], np.float32(spec.shadow_vv_db))
    vh_db[shadow] = np.minimum(vh_db[shadow], np.float32(spec.shadow_vh_db))
    sigma0_vv, sigma0_vh = from_db(vv_db), from_db(vh_db)

    shape = spec.shape
    vv = sigma0_vv * correlated_gamma_speckle(vv_rng, shape, spec.looks, spec.speckle_correlation_px)
    vh = sigma0_vh * correlated_gamma_speckle(vh_rng, shape, spec.looks, spec.speckle_correlation_px)
    pts = layout.point_targets
    vv[pts.rows, pts.cols] = pts.vv
    vh[pts.rows, pts.cols] = pts.vh
    if spec.noise_floor_linear > 0:
        vv += spec.noise_floor_linear * noise_rng.standard_normal(shape, dtype=np.float32)
        vh += spec.noise_floor_linear * noise_rng.standard_normal(shape, dtype=np.float32)

    valid = ~layout.wedges[acq.orbit_pass].mask(shape)
    nodata = np.float32(city.nodata_value)
    for band in (vv, vh):
        band[valid & (band == nodata)] = nodata + np.float32(NODATA_COLLISION_OFFSET)
        band[~valid] = nodata
    return {
        "vv": vv,
        "vh": vh,
        "buildings": building,
        "valid": valid,
        "landcover": layout.landcover.classes,
        "layover": layover,
        "shadow": shadow,
        "sigma0_vv": sigma0_vv,
        "sigma0_vh": sigma0_vh,
    }


def scene_paths(raw_dir: Path | str, city: CitySpec, acquisition: Acquisition | str) -> dict[str, Path]:
    """``{"vh": path, "vv": path}`` of one acquisition's GeoTIFFs under ``raw_dir`` (the challenge's test
    layout: ``<City>_2015/<YYYYMMDD>_<MGRS>/s1a_<MGRS>_<pol>_<PASS>_<YYYYMMDD>t<HHMMSS>.tif``)."""
    acq = acquisition if isinstance(acquisition, Acquisition) else Acquisition.parse(acquisition)
    folder = Path(raw_dir) / f"{city.name}_{CITY_FOLDER_YEAR}" / f"{acq.date}_{city.mgrs}"
    return {
        pol: folder / f"s1a_{city.mgrs}_{pol}_{acq.orbit_pass}_{acq.date}t{acq.time}.tif"
        for pol in ("vh", "vv")
    }


def label_path(raw_dir: Path | str, city: CitySpec) -> Path:
    """``<raw_dir>/labels/<MGRS>_<City>.<ext>``."""
    return Path(raw_dir) / LABELS_DIR / f"{city.mgrs}_{city.name}.{city.label_format}"


def write_geotiff(path: Path, band: np.ndarray, grid: Grid, nodata: float) -> None:
    """Write a ``(rows, cols)`` float32 band as a single-band, uncompressed GeoTIFF on ``grid``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = geotiff_profile(grid, 1, "float32", nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(band.astype(np.float32, copy=False), 1)


def write_labels(path: Path, layout: CityLayout) -> int:
    """Write the city's footprints (``DN=255``, int32) to ``path`` in the city's label CRS and format;
    return the number of polygons."""
    city = layout.city
    path.parent.mkdir(parents=True, exist_ok=True)
    gdf = gpd.GeoDataFrame(
        {"DN": np.full(len(layout.footprints), LABEL_VALUE, dtype=np.int32)},
        geometry=gpd.GeoSeries(layout.footprints.polygons, crs=layout.grid.crs),
    )
    if city.label_crs is not None:
        gdf = gdf.to_crs(city.label_crs)
    gdf.to_file(path, driver=LABEL_DRIVERS[city.label_format], engine="pyogrio", layer=path.stem)
    return len(gdf)


def _warn_if_other_spec(raw_dir: Path, spec: DemoSpec) -> None:
    """Warn when an existing demo dataset was generated from other settings than ``spec``."""
    try:
        saved = json.loads((raw_dir / MANIFEST_NAME).read_text())["spec"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    wanted = json.loads(json.dumps(spec.to_dict()))
    differ = differing_keys(saved, wanted)
    if differ:
        log.warning(
            "demo dataset %s was generated with other settings (%s differ from the configured demo); "
            "delete it (and the prepared copies next to it) to generate the configured one",
            raw_dir,
            ", ".join(differ),
        )


def generate_demo(raw_dir: Path | str, spec: DemoSpec, overwrite: bool = False) -> Path:
    """Generate the synthetic dataset under ``raw_dir`` if missing; return ``raw_dir``.

    An existing non-empty ``raw_dir`` is left alone unless ``overwrite`` is true, in which case it is
    replaced only if it is a demo dataset (holds ``demo.json``). The dataset is written under a temporary
    sibling and renamed at the end, so ``raw_dir`` is either complete or absent.
    """
    raw_dir = Path(raw_dir)
    if raw_dir.exists():
        if not raw_dir.is_dir():
            raise UnosatError(f"demo raw_dir {raw_dir} exists and is not a directory")
        if any(raw_dir.iterdir()):
            if not overwrite:
                log.info("demo dataset: %s already exists, left as it is", raw_dir)
                _warn_if_other_spec(raw_dir, spec)
                return raw_dir
            if not (raw_dir / MANIFEST_NAME).is_file():
                raise UnosatError(
                    f"demo raw_dir {raw_dir} holds files but no {MANIFEST_NAME}: it is not a demo dataset, "
                    "refusing to overwrite it"
                )

    start = time.perf_counter()
    scenes, labels = [], []
    with atomic_path(raw_dir) as tmp:
        tmp.mkdir()
        for city in spec.cities:
            layout = city_layout(spec, city)
            lpath = label_path(tmp, city)
            n_polygons = write_labels(lpath, layout)
            labels.append(
                {"city": city.name, "path": lpath.relative_to(tmp).as_posix(), "polygons": n_polygons}
            )
            for acq in city.parsed_acquisitions:
                scene = render_scene(spec, city, acq, layout)
                paths = scene_paths(tmp, city, acq)
                for pol, path in paths.items():
                    write_geotiff(path, scene[pol], layout.grid, city.nodata_value)
                valid = scene["valid"]
                scenes.append(
                    {
                        "city": city.name,
                        "role": city.role,
                        "mgrs": city.mgrs,
                        "acquisition": acq.key,
                        "vh": paths["vh"].relative_to(tmp).as_posix(),
                        "vv": paths["vv"].relative_to(tmp).as_posix(),
                        "building_fraction": layout.building_fraction,
                        "building_fraction_valid": float(np.count_nonzero(scene["buildings"] & valid))
                        / max(int(np.count_nonzero(valid)), 1),
                        "nodata_fraction": float(np.count_nonzero(~valid)) / valid.size,
                    }
                )
        manifest = {
            "generator": "unosat.synthetic",
            "seed": spec.seed,
            "spec": spec.to_dict(),
            "scenes": scenes,
            "labels": labels,
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info(
        "demo dataset: %d scenes of %d cities written to %s in %.1f s",
        len(scenes),
        len(spec.cities),
        raw_dir,
        time.perf_counter() - start,
    )
    return raw_dir
