"""Acquisition date, time and orbit pass from a raster's own metadata: GeoTIFF tags and sidecar files.

Discovery takes a scene's date, time and pass from its file name (``discovery.pattern``) or, for STAC items,
from the item's properties. What those leave unsaid is looked up here, in the order of
``discovery.metadata.sources``:

``tags``
    the GeoTIFF's dataset-level metadata (GDAL's default domain, which includes a ``<file>.aux.xml``
    sidecar): the first of ``datetime_keys`` / ``pass_keys`` present (keys compared case-insensitively).
    SNAP's abstracted metadata (``first_line_time``, ``PASS``), GEE properties (``system:time_start`` in
    ms since 1970, ``orbitProperties_pass``), ASF's (``startTime``, ``flightDirection``) or a STAC item's
    (``datetime``, ``sat:orbit_state``) copied into tags are all read.
``sidecar``
    a JSON file next to the raster: ``<file>.json`` (``x_VV.tif.json``), ``<stem>.json`` (``x_VV.json``) or
    the product's ``<product>.json`` (the stem without a trailing ``_VV``/``_VH``, e.g. an ``asf_search``
    result saved beside a HyP3 product), with the same keys at its top level or under ``properties``
    (a GeoJSON feature or STAC item).

``TIFFTAG_DATETIME`` is not among the default keys: the TIFF standard makes it the file's creation time,
not the acquisition's. A field the name already gives is never overridden; a time is taken from metadata
only when its date is the scene's date.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from unosat.errors import UnosatError

#: where missing fields may come from, in the order tried
SOURCES = ("tags", "sidecar")
#: orbit pass spellings -> ASC / DES
PASS_VALUES = {
    "A": "ASC",
    "ASC": "ASC",
    "ASCENDING": "ASC",
    "D": "DES",
    "DES": "DES",
    "DSC": "DES",
    "DESCENDING": "DES",
}
#: month abbreviations of SNAP's ``17-SEP-2019 03:09:00.123456``
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), start=1
    )
}
_POL_SUFFIX = re.compile(r"(?i)[_-](vv|vh|hh|hv)$")


@dataclass(frozen=True)
class MetadataConfig:
    """Where a scene's missing date, time and pass are read (``discovery.metadata``).

    Args:
        sources: ``tags`` and/or ``sidecar``, in the order tried (``[]``: the name or STAC item only).
        datetime_keys: keys whose value is the acquisition (start) time: ISO 8601, ``YYYYMMDD[THHMMSS]``,
            ``YYYY:MM:DD HH:MM:SS``, SNAP's ``DD-MON-YYYY HH:MM:SS[.ffffff]`` or milliseconds since 1970 (UTC).
        pass_keys: keys whose value is the orbit pass (``ASCENDING``/``DESCENDING``, ``ASC``/``DES``, ``A``/``D``).
    """

    sources: tuple[str, ...] = SOURCES
    datetime_keys: tuple[str, ...] = (
        "ACQUISITION_START_TIME",
        "acquisition_start",
        "first_line_time",
        "startTime",
        "start_time",
        "start_datetime",
        "sensing_start",
        "system:time_start",
        "datetime",
        "acquisition_date",
        "date",
    )
    pass_keys: tuple[str, ...] = (
        "PASS",
        "orbit_pass",
        "ORBIT_DIRECTION",
        "orbitDirection",
        "flight_direction",
        "flightDirection",
        "orbitProperties_pass",
        "sat:orbit_state",
        "orbit_state",
    )

    def __post_init__(self):
        sources = tuple(str(s).lower() for s in self.sources)
        unknown = [s for s in sources if s not in SOURCES]
        if unknown:
            raise UnosatError(
                f"discovery.metadata.sources: unknown source(s) {unknown}; choose among {list(SOURCES)}"
            )
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "datetime_keys", tuple(str(k) for k in self.datetime_keys))
        object.__setattr__(self, "pass_keys", tuple(str(k) for k in self.pass_keys))


def read_scene_metadata(
    paths: Sequence[Path], wanted: Sequence[str], date: str | None, config: MetadataConfig
) -> dict[str, str]:
    """The ``wanted`` fields (of ``date``, ``time``, ``pass``) found in the metadata of ``paths`` (a scene's
    files), as discovery names them: ``date`` ``YYYYMMDD``, ``time`` ``HHMMSS``, ``pass`` ``ASC``/``DES``.

    ``date`` is the date already known (from the name), or None; a time is only taken from a date-time on
    that date. Raises :class:`UnosatError` naming the file and key for a value that cannot be read.
    """
    found: dict[str, str] = {}
    wanted = [w for w in wanted if w in ("date", "time", "pass")]
    for source in config.sources:
        for path in paths:
            if all(w in found for w in wanted):
                return found
            for values, where in _metadata_of(path, source):
                _take(values, where, wanted, date, found, config)
    return found


def _metadata_of(path: Path, source: str):
    """``(mapping, description)`` pairs of one source of ``path``'s metadata."""
    if source == "tags":
        import rasterio

        from unosat.io.raster import gdal_env

        try:
            with gdal_env(), rasterio.open(path) as src:
                tags = src.tags()
        except rasterio.errors.RasterioIOError:
            return  # an unreadable file is reported by the step that reads its pixels
        if tags:
            yield tags, f"{path} (GeoTIFF tag"
        return
    for sidecar in sidecar_paths(path):
        try:
            data = json.loads(sidecar.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UnosatError(
                f"{sidecar}: unreadable metadata sidecar ({str(err).splitlines()[0]})"
            ) from None
        if isinstance(data, Mapping):
            yield data, f"{sidecar} (key"
            if isinstance(data.get("properties"), Mapping):
                yield data["properties"], f"{sidecar} (properties key"


def sidecar_paths(path: Path) -> list[Path]:
    """The JSON sidecars of a raster that exist: ``<file>.json``, ``<stem>.json``, ``<product>.json``."""
    path = Path(path)
    candidates = [path.with_name(path.name + ".json"), path.with_suffix(".json")]
    product = _POL_SUFFIX.sub("", path.stem)
    if product != path.stem:
        candidates.append(path.with_name(product + ".json"))
    return [p for p in dict.fromkeys(candidates) if p.is_file()]


def _lookup(values: Mapping, keys: Sequence[str]):
    lowered = {str(k).lower(): k for k in values}
    for key in keys:
        actual = lowered.get(key.lower())
        if actual is not None and values[actual] not in (None, ""):
            return actual, values[actual]
    return None, None


def _take(
    values: Mapping, where: str, wanted: Sequence[str], date: str | None, found: dict, config: MetadataConfig
):
    if ("date" in wanted and "date" not in found) or ("time" in wanted and "time" not in found):
        key, value = _lookup(values, config.datetime_keys)
        if key is not None:
            day, time = parse_datetime(value, f"{where} {key})")
            if "date" in wanted and "date" not in found:
                found["date"] = day
            if "time" in wanted and "time" not in found and time and day == (date or found.get("date")):
                found["time"] = time
    if "pass" in wanted and "pass" not in found:
        key, value = _lookup(values, config.pass_keys)
        if key is not None:
            found["pass"] = parse_pass(value, f"{where} {key})")


def parse_pass(value, where: str) -> str:
    """``ASC`` or ``DES`` from an orbit-pass spelling; :class:`UnosatError` naming ``where`` otherwise."""
    text = str(value).strip().upper()
    if text not in PASS_VALUES:
        raise UnosatError(
            f"{where}: orbit pass '{value}' is not ascending or descending (ASCENDING/DESCENDING, "
            "ASC/DES, A/D)"
        )
    return PASS_VALUES[text]


def parse_datetime(value, where: str) -> tuple[str, str | None]:
    """``(YYYYMMDD, HHMMSS or None)`` in UTC from an acquisition time (formats: see :class:`MetadataConfig`).

    Raises :class:`UnosatError` naming ``where`` when the value is none of them.
    """
    text = str(value).strip()
    when: datetime | None = None
    has_time = True
    if re.fullmatch(r"\d{13}(\.\d+)?", text):  # milliseconds since 1970 (GEE's system:time_start)
        when = datetime.fromtimestamp(float(text) / 1000, tz=timezone.utc)
    elif m := re.fullmatch(r"(\d{8})(?:[T_ ]?(\d{6})(?:\.\d+)?Z?)?", text):
        has_time = m.group(2) is not None
        when = _checked(
            lambda: datetime.strptime(m.group(1) + (m.group(2) or "000000"), "%Y%m%d%H%M%S"), text, where
        )
    elif m := re.fullmatch(r"(\d{4}):(\d{2}):(\d{2}) (\d{2}):(\d{2}):(\d{2})", text):  # TIFF's form
        when = _checked(lambda: datetime(*map(int, m.groups())), text, where)
    elif m := re.fullmatch(
        r"(\d{1,2})-([A-Za-z]{3})-(\d{4})(?:[ T](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?)?", text
    ):  # SNAP
        month = _MONTHS.get(m.group(2).upper())
        if month is None:
            raise UnosatError(f"{where}: '{value}' is not a date (unknown month '{m.group(2)}')")
        has_time = m.group(4) is not None
        hms = [int(g) for g in m.groups()[3:]] if has_time else [0, 0, 0]
        when = _checked(lambda: datetime(int(m.group(3)), month, int(m.group(1)), *hms), text, where)
    else:
        iso = text.replace("Z", "+00:00").replace("z", "+00:00")
        has_time = bool(re.search(r"\d[T ]\d", iso))
        when = _checked(lambda: datetime.fromisoformat(iso), text, where)
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return when.strftime("%Y%m%d"), when.strftime("%H%M%S") if has_time else None


def _checked(make, text: str, where: str) -> datetime:
    try:
        return make()
    except ValueError:
        raise UnosatError(
            f"{where}: '{text}' is not a date-time (ISO 8601, YYYYMMDD[THHMMSS], YYYY:MM:DD HH:MM:SS, "
            "DD-MON-YYYY HH:MM:SS or milliseconds since 1970)"
        ) from None
