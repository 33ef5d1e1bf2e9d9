"""Scenes: one Sentinel-1 acquisition of one city, and their discovery under a raw-data directory.

The default naming is the UNOSAT challenge's (S1Tiling output)::

    <City>_2015/.../s1a_<MGRS>_<vh|vv>_<ASC|DES>_<YYYYMMDD>t<HHMMSS>.tif

(orbit direction and time may be missing: ``s1a_38SLF_vh_20150426.tif``). VV and VH files with the same
city, MGRS id, date, time and pass form one scene. Other datasets configure a filename pattern with named
groups, or one multi-band file per scene with a band order.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from unosat.bands import BandRecipe
from unosat.errors import UnosatError
from unosat.io.raster import Grid, open_raster
from unosat.label_areas import AreaLabels, label_areas
from unosat.label_areas import scene_area as area_of_scene
from unosat.raw_input import RawInput, UnitsCheck, check_file_units, check_units_name, default_nodata
from unosat.scene_metadata import MetadataConfig, read_scene_metadata

POLARISATIONS = ("vh", "vv")
#: orbit pass spellings -> ASC / DES
PASS_NAMES = {"A": "ASC", "ASCENDING": "ASC", "D": "DES", "DESCENDING": "DES", "DSC": "DES"}
#: how scenes lie on disk: a file per polarisation, a file per scene, or STAC items
LAYOUTS = ("pairs", "multiband", "stac")
#: where a scene's area (city) comes from: its folder, itself, or the label file that covers it
AREAS = ("folder", "scene", "label")
RASTER_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF")
#: Files that belong to a vector dataset but are not one (shapefile sidecars and the like).
VECTOR_SIDECARS = {".dbf", ".shx", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".xml", ".qmd", ".aux", ".lock"}


@dataclass(frozen=True)
class Scene:
    """One acquisition: where it is, what it is.

    ``date`` is ``YYYYMMDD``, ``time`` ``HHMMSS`` (or None), ``orbit_pass`` ``ASC``/``DES`` (or None).
    ``sources`` maps a polarisation to ``(path, band index)`` (1-based band index in that file), so paired
    files and multi-band files are read the same way.
    """

    city: str
    mgrs: str
    date: str
    time: str | None
    orbit_pass: str | None
    sources: dict[str, tuple[Path, int]] = field(compare=False, hash=False)

    @property
    def scene_id(self) -> str:
        """The identity that names every derived file: ``<MGRS or id>_<YYYYMMDD>[t<HHMMSS>][_<pass>]``
        (``<id>`` alone for a scene without a date)."""
        sid = f"{self.mgrs}_{self.date}" if self.date else self.mgrs
        if self.time:
            sid += f"t{self.time}"
        if self.orbit_pass:
            sid += f"_{self.orbit_pass}"
        return sid

    @property
    def vh(self) -> Path:
        return self.sources["vh"][0]

    @property
    def vv(self) -> Path:
        return self.sources["vv"][0]

    def fields(self) -> dict[str, str]:
        """Fields available to filename templates (``{city}``, ``{mgrs}``, ``{date}``, ``{scene_id}``...)."""
        return {
            "city": self.city,
            "mgrs": self.mgrs,
            "id": self.mgrs,
            "date": self.date,
            "time": self.time or "",
            "pass": self.orbit_pass or "",
            "scene_id": self.scene_id,
        }

    def to_record(self) -> dict:
        return {
            "scene_id": self.scene_id,
            "city": self.city,
            "mgrs": self.mgrs,
            "date": self.date,
            "time": self.time or "",
            "pass": self.orbit_pass or "",
            "vh_path": str(self.sources["vh"][0]) if "vh" in self.sources else "",
            "vh_band": self.sources["vh"][1] if "vh" in self.sources else 0,
            "vv_path": str(self.sources["vv"][0]) if "vv" in self.sources else "",
            "vv_band": self.sources["vv"][1] if "vv" in self.sources else 0,
        }


@dataclass(frozen=True)
class DiscoveryConfig:
    """How scenes are found under ``raw_dir``.

    Args:
        layout: ``pairs`` (one file per polarisation, the UNOSAT layout), ``multiband`` (one file per
            scene holding both polarisations) or ``stac`` (STAC item JSON files with VV and VH assets, see
            :mod:`unosat.stac_items`; ``pattern`` then selects item files).
        pattern: regular expression matched against each file name (``match: name``) or its path relative
            to ``raw_dir`` (``match: path``, POSIX separators). Named groups: a scene identity ``mgrs`` or
            ``id`` (a grid or product id; required but for ``stac``), ``pol`` (required for ``pairs``),
            ``date`` (YYYYMMDD), ``time``, ``pass``, ``city`` (optional; a scene without a date is named by
            its identity alone).
        match: ``name`` or ``path``: what ``pattern`` is matched against.
        city_pattern: regular expression with a ``city`` group, matched against the file's path relative to
            ``raw_dir`` (POSIX separators) when ``pattern`` has no ``city`` group.
        area: ``folder`` (the city from ``pattern`` or ``city_pattern``), ``scene`` (each scene is its own
            area, named by its identity: no city products across acquisitions) or ``label`` (the label file
            whose polygons meet the scene names its area, see :mod:`unosat.label_areas`).
        area_labels: for ``area: label``: where the label files are and what names the area
            (:class:`~unosat.label_areas.AreaLabels`).
        metadata: where a date, time or pass that the name (or STAC item) does not give is read: GeoTIFF
            tags, then JSON sidecars (:class:`~unosat.scene_metadata.MetadataConfig`).
        stac_assets: for ``stac``: the asset keys that may hold each polarisation (case-insensitive).
        polarisations: the polarisations every scene must have (``[vv]`` for a VV-only archive, read with
            a VV-only band recipe such as ``bands=vv_db``).
        band_order: for ``multiband``: the polarisation of each band, e.g. ``[vv, vh]``.
        exclude: substrings; files whose name contains one are skipped (e.g. ``_BorderMask``).
        units: units of the input rasters, ``linear`` (power; the UNOSAT data) or ``db``; None (predict.py
            only): the units the checkpoint was trained on.
        nodata_values: values meaning "no data" in either polarisation (NaN and infinity always do); None: 0
            and -99999 for linear inputs, -99999 for dB (0 dB is valid backscatter), see
            :mod:`unosat.raw_input`.
        file_nodata: each file's own nodata tag also means "no data"; None (predict.py only): as the
            checkpoint was trained.
        units_check: refuse files whose values contradict ``units`` (:class:`~unosat.raw_input.UnitsCheck`).
    """

    layout: str = "pairs"
    pattern: str = (
        r"(?i)^s1[ab]_(?P<mgrs>\d{2}[a-z]{3})_(?P<pol>vv|vh)(?:_(?P<pass>asc|des))?_(?P<date>\d{8})"
        r"(?:t(?P<time>\d{6}))?\.tiff?$"
    )
    match: str = "name"
    city_pattern: str = r"^(?P<city>[^/_]+)"
    area: str = "folder"
    area_labels: AreaLabels = field(default_factory=AreaLabels)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    stac_assets: dict = field(default_factory=lambda: {"vv": ["vv", "iw-vv"], "vh": ["vh", "iw-vh"]})
    band_order: tuple[str, ...] = ("vv", "vh")
    exclude: tuple[str, ...] = ("_BorderMask",)
    polarisations: tuple[str, ...] = POLARISATIONS
    units: str | None = "linear"
    nodata_values: tuple[float, ...] | None = None
    file_nodata: bool | None = True
    units_check: UnitsCheck = field(default_factory=UnitsCheck)

    def __post_init__(self):
        object.__setattr__(self, "band_order", tuple(self.band_order))
        object.__setattr__(self, "polarisations", tuple(str(p).lower() for p in self.polarisations))
        if not self.polarisations or not set(self.polarisations) <= set(POLARISATIONS):
            raise UnosatError(
                f"discovery.polarisations must list vh and/or vv, got {list(self.polarisations)}"
            )
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.nodata_values is not None:
            object.__setattr__(self, "nodata_values", tuple(float(v) for v in self.nodata_values))
        for name, kind in (("area_labels", AreaLabels), ("metadata", MetadataConfig)):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(
                    self, name, kind(**{k: v for k, v in value.items() if not str(k).startswith("_")})
                )
        if isinstance(self.units_check, Mapping):
            object.__setattr__(
                self,
                "units_check",
                UnitsCheck(**{k: v for k, v in self.units_check.items() if not str(k).startswith("_")}),
            )
        if self.units is not None:
            check_units_name(self.units, "discovery.units")
        object.__setattr__(
            self,
            "stac_assets",
            {
                str(k).lower(): [str(v).lower() for v in ([vs] if isinstance(vs, str) else vs)]
                for k, vs in dict(self.stac_assets).items()
            },
        )
        if self.layout not in LAYOUTS:
            raise UnosatError(f"discovery.layout must be one of {list(LAYOUTS)}, got '{self.layout}'")
        if self.match not in ("name", "path"):
            raise UnosatError(f"discovery.match must be 'name' or 'path', got '{self.match}'")
        if self.area not in AREAS:
            raise UnosatError(f"discovery.area must be one of {list(AREAS)}, got '{self.area}'")
        try:
            rx = re.compile(self.pattern)
            crx = re.compile(self.city_pattern)
        except re.error as err:
            raise UnosatError(f"discovery pattern is not a valid regular expression: {err}") from None
        if self.layout != "stac":
            required = {"pol"} if self.layout == "pairs" else set()
            missing = required - set(rx.groupindex)
            if not {"mgrs", "id"} & set(rx.groupindex):
                missing.add("mgrs or id")
            if missing:
                raise UnosatError(
                    f"discovery.pattern lacks the named group(s) {sorted(missing)}: {self.pattern}"
                )
        else:
            lacking = [p for p in POLARISATIONS if not self.stac_assets.get(p)]
            if lacking:
                raise UnosatError(f"discovery.stac_assets names no asset key for {lacking}")
        if self.area == "folder" and "city" not in rx.groupindex and "city" not in crx.groupindex:
            raise UnosatError(
                "discovery: neither pattern nor city_pattern has a named group 'city' (or set "
                "discovery.area=scene)"
            )
        if self.layout == "multiband":
            order = [b.lower() for b in self.band_order]
            if (
                len(order) != len(set(order))
                or not set(self.polarisations) <= set(order)
                or not set(order) <= set(POLARISATIONS)
            ):
                raise UnosatError(
                    f"discovery.band_order must name each of {list(self.polarisations)} once (and only vh/vv), "
                    f"got {list(self.band_order)}"
                )

    def raw_input(self, fallback: RawInput | None = None) -> RawInput:
        """The raw-input settings; unset ``units`` / ``nodata_values`` come from ``fallback`` (e.g. a
        checkpoint's), else the defaults."""
        units = self.units or (fallback.units if fallback else "linear")
        if self.nodata_values is not None:
            nodata = self.nodata_values
        elif fallback is not None and self.units in (None, fallback.units):
            nodata = fallback.nodata_values
        else:
            nodata = default_nodata(units)
        file_nodata = (
            self.file_nodata if self.file_nodata is not None else (fallback.file_nodata if fallback else True)
        )
        return RawInput(units, nodata, file_nodata)

    def settings(self) -> dict:
        """What a prepared dataset records of its discovery (the raw-input settings resolved)."""
        out = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("exclude", "units_check", "stac_assets", "area_labels", "metadata")
        }
        return out | self.raw_input().to_dict()


def discover_scenes(raw_dir: Path | str, config: DiscoveryConfig | None = None) -> list[Scene]:
    """All scenes under ``raw_dir``, sorted by city then scene id.

    Raises :class:`UnosatError` when ``raw_dir`` is missing or holds no scene, when a VV file has no VH
    partner (or the reverse), or when two files claim the same polarisation of one scene.
    """
    config = config or DiscoveryConfig()
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise UnosatError(f"raw_dir {raw_dir} does not exist or is not a directory")
    rx = re.compile(config.pattern)

    groups: dict[tuple, dict[str, tuple[Path, int]]] = defaultdict(dict)
    n_files = 0
    suffixes = (".json",) if config.layout == "stac" else RASTER_SUFFIXES
    for path in sorted(raw_dir.rglob("*")):
        if path.suffix not in suffixes or not path.is_file() or path.name.startswith("."):
            continue
        n_files += 1
        if any(x in path.name for x in config.exclude):
            continue
        rel = path.relative_to(raw_dir).as_posix()
        m = rx.search(rel if config.match == "path" else path.name)
        if not m:
            continue
        gd = m.groupdict()
        if config.layout == "stac":
            from unosat.stac_items import read_item

            item = read_item(path, config.stac_assets)
            if item is None:  # a catalogue, a collection, or another JSON file
                continue
            gd = {**{k: v for k, v in gd.items() if v}, **item.fields()}
            pols = item.sources
        elif config.layout == "pairs":
            pols = {gd["pol"].lower(): (path, 1)}
        else:
            order = [b.lower() for b in config.band_order]
            pols = {p: (path, order.index(p) + 1) for p in order}
        missing = [f for f in ("date", "time", "pass") if not gd.get(f)]
        if missing and config.metadata.sources:  # the name (or item) does not say: the files' own metadata
            files = list(dict.fromkeys(src[0] for src in pols.values()))
            gd = {**gd, **read_scene_metadata(files, missing, gd.get("date") or None, config.metadata)}
        identity = (gd.get("mgrs") or gd.get("id") or "").upper()
        key = (
            scene_area(config, gd, rel, path),
            identity,
            gd.get("date") or "",
            gd.get("time") or None,
            PASS_NAMES.get(gd["pass"].upper(), gd["pass"].upper()) if gd.get("pass") else None,
        )
        for pol, src in pols.items():
            if pol in groups[key]:
                other = groups[key][pol][0]
                raise UnosatError(
                    f"two files for the {pol.upper()} polarisation of one scene: {other} and {path}"
                )
            groups[key][pol] = src

    if not groups:
        what = "STAC item (*.json)" if config.layout == "stac" else "GeoTIFF (*.tif)"
        if n_files == 0:
            raise UnosatError(f"raw_dir {raw_dir} holds no {what} files")
        raise UnosatError(
            f"raw_dir {raw_dir}: none of its {n_files} {what} files matches discovery.pattern {config.pattern}"
            + (
                " (matched against the file name; discovery.match=path matches the relative path)"
                if config.match == "name"
                else ""
            )
        )
    if config.area == "scene":  # each scene is its own area, named by its identity
        groups = {
            (Scene("", mgrs, date, time, pss, {}).scene_id, mgrs, date, time, pss): src
            for (_, mgrs, date, time, pss), src in groups.items()
        }
    elif config.area == "label":  # the label file whose polygons meet the scene
        areas = label_areas(raw_dir, config.area_labels)
        groups = {
            (area_of_scene([p for p, _ in src.values()], areas), *key[1:]): src for key, src in groups.items()
        }

    scenes = []
    for (city, mgrs, date, time, orbit_pass), sources in groups.items():
        for pol in config.polarisations:
            if pol not in sources:
                other_pol = "vv" if pol == "vh" else "vh"
                if other_pol not in sources:  # a single-polarisation scene of the other polarisation
                    raise UnosatError(
                        f"{next(iter(sources.values()))[0]}: no {pol.upper()} for this scene; "
                        f"discovery.polarisations={list(config.polarisations)} requires it"
                    )
                raise UnosatError(
                    f"{sources[other_pol][0]}: no matching {pol.upper()} file for this {other_pol.upper()} file "
                    f"(expected the same name with '{pol}' in place of '{other_pol}'; "
                    f"for {other_pol.upper()}-only data "
                    f"set discovery.polarisations=[{other_pol}] and bands={other_pol}_db or bands={other_pol})"
                )
        scenes.append(Scene(city, mgrs, date, time, orbit_pass, dict(sources)))
    scenes.sort(key=lambda s: (s.city, s.scene_id))
    ids = [s.scene_id for s in scenes]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise UnosatError(f"scene id(s) {dupes} appear in more than one city folder under {raw_dir}")
    return scenes


def scene_area(config: DiscoveryConfig, groups: dict, rel: str, path: Path) -> str:
    """The area (city) of a file: the pattern's ``city`` group, else ``city_pattern`` on the relative path
    (``area: scene`` names it later by the scene identity, ``area: label`` by the label files)."""
    if config.area in ("scene", "label"):
        return ""
    if groups.get("city"):
        return groups["city"]
    cm = re.search(config.city_pattern, rel)
    if not cm or not cm.group("city"):
        raise UnosatError(
            f"{path}: cannot tell the city from its path with city_pattern '{config.city_pattern}' "
            "(or set discovery.area=scene: one area per scene)"
        )
    return cm.group("city")


def find_label_file(search_dirs: Sequence[Path | str], template: str, scene: Scene) -> Path | None:
    """The vector label file for ``scene``: a file whose stem is ``template`` filled with the scene's fields.

    The default template ``{mgrs}_{city}`` finds ``38SLF_Mosul.shp`` (or ``.gpkg``, ``.geojson``...).
    Shapefile sidecars are ignored. Returns None when there is none; raises when several formats compete.
    """
    stem = template.format(**scene.fields())
    found: list[Path] = []
    for d in search_dirs:
        d = Path(d)
        if d.is_dir():
            found += [
                p
                for p in d.rglob(f"{stem}.*")
                if p.is_file()
                and p.suffix.lower() not in VECTOR_SIDECARS
                and p.suffix not in RASTER_SUFFIXES
                and not p.name.startswith(".")
            ]
    found = sorted(set(found))
    if len(found) > 1:
        raise UnosatError(f"several label files for {scene.city} ({scene.mgrs}): {[str(p) for p in found]}")
    return found[0] if found else None


def find_raster_label(search_dirs: Sequence[Path | str], template: str, scene: Scene) -> Path | None:
    """The mask GeoTIFF for ``scene`` whose name is ``template`` filled with the scene's fields."""
    name = template.format(**scene.fields())
    for d in search_dirs:
        found = sorted(p for p in Path(d).rglob(name) if p.is_file())
        if len(found) > 1:
            raise UnosatError(f"several mask files named {name}: {[str(p) for p in found]}")
        if found:
            return found[0]
    return None


# Reading a scene's files: their grid, polarisations, nodata and units, checked the same way by prepare.py
# (the band stack step) and predict.py (raw scenes).


def scene_grid(scene: Scene) -> Grid:
    """The grid shared by a scene's VV and VH files; error naming both files if they differ."""
    grids = {}
    for pol in sorted(scene.sources):
        path, band = scene.sources[pol]
        with open_raster(path) as src:
            if band > src.count:
                raise UnosatError(
                    f"{path}: has {src.count} band(s), the {pol.upper()} band {band} does not exist"
                )
            grids[pol] = Grid.of(src)
    for pol, grid in grids.items():
        if grid.crs is None:
            raise UnosatError(f"{scene.sources[pol][0]}: the raster has no CRS")
    if len(grids) == 1:
        return next(iter(grids.values()))
    diff = grids["vh"].differences(grids["vv"])
    if diff:
        raise UnosatError(
            f"VH and VV of scene {scene.scene_id} are not on the same grid: {scene.vh} vs {scene.vv} differ in "
            + "; ".join(diff)
        )
    return grids["vv"]


def check_scene_polarisations(scene: Scene, recipe: BandRecipe, what: str = "band recipe") -> None:
    """Refuse a recipe that needs a polarisation the scene does not have, naming both."""
    missing = [p for p in recipe.needs() if p not in scene.sources]
    if missing:
        has = "/".join(p.upper() for p in sorted(scene.sources))
        raise UnosatError(
            f"scene {scene.scene_id} ({next(iter(scene.sources.values()))[0]}) has only {has}, but {what} "
            f"'{recipe.name}' {list(recipe.bands)} needs {missing[0].upper()}: use bands={has.lower()}_db "
            f"or bands={has.lower()} for single-polarisation data"
        )


def scene_nodata(scene: Scene, raw: RawInput) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nodata values of the scene's VH and VV bands: the configured ones plus each file's own tag."""
    out = []
    for pol in ("vh", "vv"):
        if pol not in scene.sources:
            out.append(())
            continue
        path, band = scene.sources[pol]
        with open_raster(path) as src:
            tag = src.nodatavals[band - 1] if band - 1 < len(src.nodatavals) else None
        out.append(raw.nodata_of(tag))
    return out[0], out[1]


def check_scene_units(
    scene: Scene, raw: RawInput, check: UnitsCheck, setting: str = "discovery.units"
) -> None:
    """Refuse a scene whose files' values contradict ``raw.units`` (see :func:`unosat.raw_input.check_file_units`)."""
    for path, band in sorted(set(scene.sources.values())):
        check_file_units(path, band, raw, check, setting)
