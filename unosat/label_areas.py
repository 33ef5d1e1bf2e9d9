"""Areas (cities) named by label files: ``discovery.area=label``.

Each label vector file under ``discovery.area_labels.dirs`` (default: the raw directory) names an area: by
its file name (stem), or with ``field`` by the values of that attribute (one file holding several cities:
each value's polygons are one area). A scene belongs to the area whose label polygons intersect its
footprint; a scene that meets none, or the polygons of several areas, is refused naming them (use
``discovery.area=folder`` or ``scene`` then). The label step then finds a scene's labels with a template
that names the area, e.g. ``'labels.template="{city}"'`` on the command line (file stems) or the
file's own stem (``field``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from unosat.errors import UnosatError

#: vector formats searched for area labels (shapefile sidecars, rasters and JSON files are not)
VECTOR_SUFFIXES = (".shp", ".gpkg", ".geojson", ".fgb", ".kml", ".gml", ".sqlite")


@dataclass(frozen=True)
class AreaLabels:
    """Where ``discovery.area=label`` finds the label files that name areas.

    Args:
        dirs: folders searched recursively; empty: the raw directory being discovered.
        field: None: each file's stem names its area; an attribute name: each value names an area.
        suffixes: file suffixes that are label vectors (case-insensitive).
    """

    dirs: tuple[str, ...] = ()
    field: str | None = None
    suffixes: tuple[str, ...] = VECTOR_SUFFIXES

    def __post_init__(self):
        object.__setattr__(self, "dirs", tuple(str(d) for d in self.dirs))
        object.__setattr__(self, "suffixes", tuple(str(s).lower() for s in self.suffixes))
        if self.field is not None and not str(self.field).strip():
            raise UnosatError("discovery.area_labels.field must be an attribute name or null (the file name)")


@dataclass(frozen=True)
class LabelArea:
    """One area: its name, the file it comes from, and its polygons (in ``crs``, WKT)."""

    name: str
    path: Path
    crs: str
    geoms: np.ndarray


def label_areas(raw_dir: Path, config: AreaLabels) -> list[LabelArea]:
    """Every area the label files under ``config.dirs`` (or ``raw_dir``) name, sorted by name.

    Raises :class:`UnosatError` when there is no label file, a file cannot be read, has no CRS, lacks
    ``field``, or two files name the same area.
    """
    dirs = [Path(d).expanduser() for d in config.dirs] or [Path(raw_dir)]
    files = sorted(
        {
            p
            for d in dirs
            if d.is_dir()
            for p in d.rglob("*")
            if p.is_file() and p.suffix.lower() in config.suffixes and not p.name.startswith(".")
        }
    )
    if not files:
        raise UnosatError(
            f"discovery.area=label: no label file ({', '.join(config.suffixes)}) under "
            f"{', '.join(map(str, dirs))}; set discovery.area_labels.dirs"
        )
    areas: dict[str, LabelArea] = {}
    for path in files:
        for area in _file_areas(str(path), path.stat().st_mtime, config.field):
            if area.name in areas:
                raise UnosatError(
                    f"discovery.area=label: area '{area.name}' is named by two label files: "
                    f"{areas[area.name].path} and {area.path}"
                )
            areas[area.name] = area
    return [areas[k] for k in sorted(areas)]


@functools.lru_cache(maxsize=32)
def _file_areas(path: str, mtime: float, field: str | None) -> tuple[LabelArea, ...]:
    from unosat.io.vectors import read_label_frame

    frame = read_label_frame(path)
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    if len(frame) == 0:
        raise UnosatError(f"{path}: the label file holds no geometry: it cannot name an area")
    crs = frame.crs.to_wkt()
    if field is None:
        return (LabelArea(Path(path).stem, Path(path), crs, np.asarray(frame.geometry.values, dtype=object)),)
    if field not in frame.columns:
        raise UnosatError(
            f"{path}: no attribute '{field}' (discovery.area_labels.field); it has "
            f"{sorted(c for c in frame.columns if c != frame.geometry.name)}"
        )
    values = frame[field]
    if values.isna().any():
        raise UnosatError(
            f"{path}: {int(values.isna().sum())} feature(s) have no '{field}': each needs an area name"
        )
    return tuple(
        LabelArea(str(v), Path(path), crs, np.asarray(frame.geometry[values == v].values, dtype=object))
        for v in sorted(values.unique(), key=str)
    )


def scene_area(files: Sequence[Path], areas: Sequence[LabelArea]) -> str:
    """The area whose polygons meet the footprint of the raster ``files[0]`` (a scene's files share a grid).

    Raises :class:`UnosatError` naming the file when no area, or more than one, meets it.
    """
    import rasterio
    from rasterio.warp import transform_bounds

    from unosat.io.raster import gdal_env

    path = Path(files[0])
    try:
        with gdal_env(), rasterio.open(path) as src:
            bounds, crs = tuple(src.bounds), src.crs
    except rasterio.errors.RasterioIOError as err:
        raise UnosatError(f"{path}: cannot read the raster ({str(err).splitlines()[0]})") from None
    if crs is None:
        raise UnosatError(f"{path}: the raster has no CRS: its area cannot be found from the label files")
    hits = []
    for area in areas:
        box = shapely.box(
            *transform_bounds(crs, rasterio.crs.CRS.from_wkt(area.crs), *bounds, densify_pts=21)
        )
        if shapely.intersects(box, area.geoms).any():
            hits.append(area)
    if len(hits) == 1:
        return hits[0].name
    if not hits:
        raise UnosatError(
            f"{path}: no label polygon of the {len(areas)} area(s) "
            f"{[a.name for a in areas][:8]} meets this scene, so discovery.area=label cannot name its "
            "area (use discovery.area=scene for unlabelled scenes)"
        )
    raise UnosatError(
        f"{path}: the label polygons of several areas meet this scene: "
        f"{[f'{a.name} ({a.path.name})' for a in hits]}; one scene belongs to one area (use "
        "discovery.area=folder or discovery.area=scene)"
    )
