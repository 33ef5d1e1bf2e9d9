"""What the synthetic demo dataset holds: :class:`CitySpec` per city and :class:`DemoSpec` for the whole set.

Every knob a user might turn is a field here (and a key of ``conf/demo/default.yaml``); the physical
constants of the backscatter table live in :mod:`unosat.synthetic.landcover`. Lengths are in metres unless
the name says ``_px`` (pixels); backscatter levels in dB (``_db``) or linear power (``_linear``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rasterio.crs import CRS
from rasterio.errors import CRSError

from unosat.errors import UnosatError

ROLES = ("train", "test")
LABEL_FORMATS = ("shp", "gpkg", "geojson")
ORBIT_PASSES = ("ASC", "DES")

_MGRS_RX = re.compile(r"^\d{2}[C-HJ-NP-X][A-HJ-NP-Z][A-HJ-NP-V]$")
_ACQUISITION_RX = re.compile(r"^(?P<pass>ASC|DES)_(?P<date>\d{8})t(?P<time>\d{6})$")


@dataclass(frozen=True)
class Acquisition:
    """One acquisition of a city: orbit pass (``ASC``/``DES``), date ``YYYYMMDD`` and UTC time ``HHMMSS``."""

    orbit_pass: str
    date: str
    time: str

    @classmethod
    def parse(cls, text: str) -> Acquisition:
        """Parse ``<ASC|DES>_<YYYYMMDD>t<HHMMSS>``, e.g. ``ASC_20150426t145805``."""
        m = _ACQUISITION_RX.match(str(text))
        if not m:
            raise UnosatError(
                f"demo acquisition '{text}' is not of the form <ASC|DES>_<YYYYMMDD>t<HHMMSS>, "
                "e.g. ASC_20150426t145805"
            )
        return cls(m["pass"], m["date"], m["time"])

    @property
    def key(self) -> str:
        """The acquisition as written in a spec: ``ASC_20150426t145805``."""
        return f"{self.orbit_pass}_{self.date}t{self.time}"

    @property
    def ascending(self) -> bool:
        return self.orbit_pass == "ASC"


@dataclass
class CitySpec:
    """One city of the demo: one MGRS tile, its acquisitions and its label file.

    Args:
        name: city name, the first part of its folder ``<name>_2015`` (no ``_`` or ``/``).
        mgrs: MGRS 100 km tile id such as ``38SLF``; it places the scene (see :mod:`unosat.synthetic.tiles`).
        role: ``train`` or ``test``.
        acquisitions: ``<ASC|DES>_<YYYYMMDD>t<HHMMSS>`` strings, one scene (a VV and a VH file) each.
        label_format: ``shp``, ``gpkg`` or ``geojson``: the format of ``labels/<mgrs>_<name>.<ext>``.
        label_crs: CRS of the label file (e.g. ``EPSG:4326``); None writes it in the scene CRS.
        nodata_value: value of the pixels the swath does not cover (0, or -99999 as in some real files);
            also the GeoTIFF nodata tag.
        towns: number of towns (clusters of buildings) in the scene.
    """

    name: str
    mgrs: str
    role: str = "train"
    acquisitions: list[str] = field(default_factory=list)
    label_format: str = "shp"
    label_crs: str | None = None
    nodata_value: float = 0.0
    towns: int = 2

    def __post_init__(self):
        self.name = str(self.name)
        self.mgrs = str(self.mgrs).upper()
        self.acquisitions = [str(a) for a in self.acquisitions]
        self.nodata_value = float(self.nodata_value)
        self.towns = int(self.towns)
        where = f"demo city '{self.name}'"
        if not self.name or "_" in self.name or "/" in self.name:
            raise UnosatError(
                f"{where}: the name must be non-empty without '_' or '/' (it names the folder <name>_2015)"
            )
        if not _MGRS_RX.match(self.mgrs):
            raise UnosatError(f"{where}: mgrs '{self.mgrs}' is not an MGRS tile id such as 38SLF")
        if self.role not in ROLES:
            raise UnosatError(f"{where}: role must be one of {ROLES}, got '{self.role}'")
        if self.label_format not in LABEL_FORMATS:
            raise UnosatError(
                f"{where}: label_format must be one of {LABEL_FORMATS}, got '{self.label_format}'"
            )
        if not self.acquisitions:
            raise UnosatError(f"{where}: no acquisitions")
        keys = [Acquisition.parse(a).key for a in self.acquisitions]
        if len(set(keys)) != len(keys):
            raise UnosatError(f"{where}: an acquisition is listed twice in {self.acquisitions}")
        if self.label_crs is not None:
            _parse_crs(self.label_crs, f"{where}: label_crs")
        if self.towns < 0:
            raise UnosatError(f"{where}: towns must be >= 0, got {self.towns}")

    @property
    def parsed_acquisitions(self) -> list[Acquisition]:
        return [Acquisition.parse(a) for a in self.acquisitions]


@dataclass
class DemoSpec:
    """The whole synthetic dataset: cities, scene grid and the knobs of the simulation.

    Scene grid: ``height`` x ``width`` pixels of ``pixel_size`` metres in ``crs`` (a projected CRS in metres,
    UTM 38N by default), north up; each city's upper-left corner comes from its MGRS id.

    Land cover (fractions of the scene's pixels): ``cropland_fraction`` of the land is cropland split into
    rectangular parcels of ``crop_parcel_m`` (min, max) metres; ``lake_fraction`` of the scene is lakes, plus
    a meandering river ``river_width_m`` wide (0: none); ``landscape_scale_m`` is the size of the crop/desert
    patches and of the mild variation of each class's mean, whose standard deviation is
    ``class_variation_db``. Cropland parcels and water change their mean by ``date_variation_db`` (std)
    from one date to the next.

    Buildings: ``building_fraction`` of the scene's pixels are building pixels (pixel centre inside a
    footprint), ``rural_building_share`` of them in hamlets over the land (``hamlets_per_km2``, each a
    Gaussian cluster of standard deviation ``hamlet_radius_m``; 0 hamlets: scattered uniformly) and the rest in
    towns covered at ``town_building_density``; footprint sides ``building_size_m`` (min, max) metres, at least
    ``building_gap_px`` pixels apart. Double bounce levels ``double_bounce_vv_db``/``double_bounce_vh_db``
    (min, max) per building, changing by up to ``double_bounce_aspect_db`` between passes; layover
    brightens the pixel next to a building on the sensor side by ``layover_gain_db``; the shadow on the far
    side is ``shadow_length_px`` (min, max) pixels long at ``shadow_vv_db``/``shadow_vh_db``.

    Sensor: speckle with ``looks`` (ENL) correlated over ``speckle_correlation_px`` (Gaussian sigma, px);
    zero-mean residual thermal noise of standard deviation ``noise_floor_linear``; ``point_targets``
    very bright scatterers per city at ``point_target_vv_linear`` (min, max), VH ``point_target_vh_below_db``
    (min, max) dB lower; a nodata wedge covering ``wedge_fraction`` (min, max) of the scene at a corner
    that depends on the pass.
    """

    cities: list[CitySpec]
    height: int = 1024
    width: int = 1024
    seed: int = 0
    pixel_size: float = 10.0
    crs: str = "EPSG:32638"
    # land cover
    cropland_fraction: float = 0.7
    lake_fraction: float = 0.015
    river_width_m: float = 150.0
    landscape_scale_m: float = 2500.0
    class_variation_db: float = 0.7
    crop_parcel_m: tuple[float, float] = (150.0, 400.0)
    date_variation_db: float = 1.0
    # buildings
    building_fraction: float = 0.012
    rural_building_share: float = 0.1
    hamlets_per_km2: float = 0.08
    hamlet_radius_m: float = 150.0
    town_building_density: float = 0.2
    building_size_m: tuple[float, float] = (10.0, 50.0)
    building_gap_px: int = 1
    double_bounce_vv_db: tuple[float, float] = (-3.0, 8.0)
    double_bounce_vh_db: tuple[float, float] = (-14.0, -6.0)
    double_bounce_aspect_db: float = 1.5
    layover_gain_db: float = 4.0
    shadow_length_px: tuple[int, int] = (1, 2)
    shadow_vv_db: float = -20.0
    shadow_vh_db: float = -27.0
    # sensor
    looks: float = 4.4
    speckle_correlation_px: float = 1.0
    noise_floor_linear: float = 1.0e-3
    point_targets: int = 5
    point_target_vv_linear: tuple[float, float] = (1.0e3, 1.0e4)
    point_target_vh_below_db: tuple[float, float] = (8.0, 14.0)
    wedge_fraction: tuple[float, float] = (0.05, 0.15)

    def __post_init__(self):
        self.cities = [c if isinstance(c, CitySpec) else _city_from_mapping(c) for c in self.cities]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type.startswith("tuple"):
                value = tuple(value)
                if len(value) != 2 or value[0] > value[1]:
                    raise UnosatError(
                        f"demo.{f.name} must be a (min, max) pair with min <= max, got {list(value)}"
                    )
                setattr(
                    self,
                    f.name,
                    tuple(int(v) for v in value) if "int" in f.type else tuple(float(v) for v in value),
                )
            elif f.type == "int":
                setattr(self, f.name, int(value))
            elif f.type == "float":
                setattr(self, f.name, float(value))
        self._validate()

    def _validate(self) -> None:
        if not self.cities:
            raise UnosatError("demo.cities is empty: the demo needs at least one city")
        for key in ("name", "mgrs"):
            values = [getattr(c, key) for c in self.cities]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise UnosatError(f"demo.cities: {key} {dupes} used by more than one city")
        if self.height < 16 or self.width < 16:
            raise UnosatError(
                f"demo.height and demo.width must be at least 16 px, got {self.height} x {self.width}"
            )
        if self.seed < 0:
            raise UnosatError(f"demo.seed must be >= 0, got {self.seed}")
        if self.pixel_size <= 0:
            raise UnosatError(f"demo.pixel_size must be positive (metres), got {self.pixel_size}")
        crs = _parse_crs(self.crs, "demo.crs")
        if not crs.is_projected:
            raise UnosatError(f"demo.crs must be a projected CRS in metres (e.g. EPSG:32638), got {self.crs}")
        for name in ("cropland_fraction", "lake_fraction", "building_fraction", "rural_building_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UnosatError(f"demo.{name} must be within [0, 1], got {getattr(self, name)}")
        if self.hamlets_per_km2 < 0 or self.hamlet_radius_m < self.pixel_size:
            raise UnosatError(
                f"demo.hamlets_per_km2 must be >= 0 and demo.hamlet_radius_m at least one pixel "
                f"({self.pixel_size} m), got {self.hamlets_per_km2} and {self.hamlet_radius_m}"
            )
        if not 0.0 < self.town_building_density < 1.0:
            raise UnosatError(
                f"demo.town_building_density must be within (0, 1), got {self.town_building_density}"
            )
        if not (0.0 <= self.wedge_fraction[0] and self.wedge_fraction[1] <= 0.5):
            raise UnosatError(
                f"demo.wedge_fraction must lie within [0, 0.5], got {list(self.wedge_fraction)}"
            )
        if self.building_size_m[0] < self.pixel_size:
            raise UnosatError(
                f"demo.building_size_m minimum {self.building_size_m[0]} m is below one pixel ({self.pixel_size} m): "
                "such footprints may hold no pixel centre"
            )
        if self.looks <= 0 or self.speckle_correlation_px < 0 or self.noise_floor_linear < 0:
            raise UnosatError(
                "demo.looks must be positive, speckle_correlation_px and noise_floor_linear >= 0"
            )
        if self.point_targets < 0 or self.building_gap_px < 0 or self.shadow_length_px[0] < 0:
            raise UnosatError("demo.point_targets, building_gap_px and shadow_length_px must be >= 0")
        if min(self.landscape_scale_m, self.crop_parcel_m[0]) < self.pixel_size or self.river_width_m < 0:
            raise UnosatError(
                "demo.landscape_scale_m and crop_parcel_m must be at least one pixel, river_width_m >= 0"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """Scene shape ``(rows, cols)``."""
        return (self.height, self.width)

    @property
    def test_cities(self) -> list[str]:
        return [c.name for c in self.cities if c.role == "test"]

    def city(self, name: str) -> CitySpec:
        """The city called ``name``."""
        for c in self.cities:
            if c.name == name:
                return c
        raise UnosatError(f"no demo city named '{name}'; cities: {[c.name for c in self.cities]}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for pairs), as ``conf/demo/*.yaml`` writes it."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_config(cls, cfg: Mapping | Any) -> DemoSpec:
        """Build from a dict or an OmegaConf ``DictConfig`` laid out as ``conf/demo/default.yaml``.

        Keys ``_target_`` and ``defaults`` (Hydra's) are ignored; an unknown key raises
        :class:`UnosatError` (a typo would otherwise be silently ignored).
        """
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                cfg = OmegaConf.to_container(cfg, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf is a dependency
            pass
        if not isinstance(cfg, Mapping):
            raise UnosatError(f"demo config must be a mapping, got {type(cfg).__name__}")
        d = {k: v for k, v in cfg.items() if k not in ("_target_", "defaults")}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UnosatError(f"demo config: unknown key(s) {unknown}; known keys: {sorted(known)}")
        if "cities" not in d:
            raise UnosatError("demo config has no 'cities' list")
        return cls(**d)


def _city_from_mapping(d: Any) -> CitySpec:
    if not isinstance(d, Mapping):
        raise UnosatError(f"demo.cities entries must be mappings with name, mgrs, ..., got {d!r}")
    known = {f.name for f in dataclasses.fields(CitySpec)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UnosatError(
            f"demo city {d.get('name', '?')}: unknown key(s) {unknown}; known keys: {sorted(known)}"
        )
    missing = sorted({"name", "mgrs"} - set(d))
    if missing:
        raise UnosatError(f"demo city {dict(d)}: missing {missing}")
    return CitySpec(**d)


def _parse_crs(text: str, where: str) -> CRS:
    try:
        return CRS.from_user_input(text)
    except CRSError as err:
        raise UnosatError(f"{where}: '{text}' is not a CRS rasterio understands ({err})") from None
