"""How raw backscatter files are read: their units, which values are nodata, and a check of the units.

These are the *raw-input settings*: they describe the user's files, and together with the band recipe they
decide what a network sees. ``prepare.py`` takes them from ``discovery`` (``discovery.units``,
``discovery.nodata_values``, ``discovery.file_nodata``), the prepared dataset records them, every checkpoint
stores them in its data recipe (``raw_input``), and ``predict.py`` uses the checkpoint's by default.

Nodata, per polarisation file: NaN and infinity always; each value of ``nodata_values``; and, with
``file_nodata`` (the default), the file's own nodata tag (e.g. pyroSAR's -99). The default ``nodata_values``
depend on the units: 0 and -99999 for linear power (0 is the swath's empty wedge in the UNOSAT data), only
-99999 for dB, where 0 dB is a valid backscatter value.

Units are checked from the values (:func:`check_units`): linear power is never mostly negative, and dB
backscatter is almost never mostly in [0, 1] (that is where linear power lies). A file read in the wrong
units is refused with a message naming the setting to use, instead of being clamped or exponentiated into
nonsense silently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from unosat.errors import UnosatError

#: backscatter units: linear power or dB
UNITS = ("linear", "db")

#: nodata values used when ``nodata_values`` is not set, by input units
DEFAULT_NODATA: dict[str, tuple[float, ...]] = {"linear": (0.0, -99999.0), "db": (-99999.0,)}


def default_nodata(units: str) -> tuple[float, ...]:
    """The nodata values of raw inputs in ``units`` when none are configured."""
    check_units_name(units, "discovery.units")
    return DEFAULT_NODATA[units]


def check_units_name(units: str, key: str) -> str:
    if units not in UNITS:
        raise UnosatError(f"{key} must be one of {list(UNITS)}, got '{units}'")
    return units


@dataclass(frozen=True)
class RawInput:
    """The settings that shape what is read from raw VV/VH files.

    Args:
        units: ``linear`` (power) or ``db`` (``10 log10`` of power).
        nodata_values: values meaning "no data" (compared in the file's own units); NaN and inf always are.
        file_nodata: whether each file's own nodata tag also means "no data".
    """

    units: str = "linear"
    nodata_values: tuple[float, ...] = DEFAULT_NODATA["linear"]
    file_nodata: bool = True

    def __post_init__(self):
        check_units_name(self.units, "raw input units")
        object.__setattr__(self, "nodata_values", tuple(float(v) for v in self.nodata_values))
        object.__setattr__(self, "file_nodata", bool(self.file_nodata))

    def to_dict(self) -> dict:
        return {
            "units": self.units,
            "nodata_values": list(self.nodata_values),
            "file_nodata": self.file_nodata,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> RawInput:
        """From a recorded dict; records made before ``file_nodata`` existed read as ``file_nodata=False``
        (what those datasets were made with)."""
        units = str(d.get("units", "linear"))
        values = d.get("nodata_values")
        return cls(
            units,
            tuple(values) if values is not None else default_nodata(units),
            bool(d.get("file_nodata", False)),
        )

    def differences(self, other: RawInput) -> list[str]:
        """What differs, in words naming the ``discovery`` keys (empty when the same)."""
        out = []
        if self.units != other.units:
            out.append(f"discovery.units {self.units} vs {other.units}")
        if sorted(self.nodata_values) != sorted(other.nodata_values):
            out.append(f"discovery.nodata_values {list(self.nodata_values)} vs {list(other.nodata_values)}")
        if self.file_nodata != other.file_nodata:
            out.append(f"discovery.file_nodata {self.file_nodata} vs {other.file_nodata}")
        return out

    def nodata_of(self, tag: float | None) -> tuple[float, ...]:
        """Nodata values of one file whose own nodata tag is ``tag`` (NaN tags are covered by the
        finiteness test)."""
        if (
            self.file_nodata
            and tag is not None
            and math.isfinite(tag)
            and float(tag) not in self.nodata_values
        ):
            return (*self.nodata_values, float(tag))
        return self.nodata_values


def file_valid(values: np.ndarray, nodata_values: Sequence[float]) -> np.ndarray:
    """Pixels of one polarisation that hold data: finite and not one of ``nodata_values``."""
    valid = np.isfinite(values)
    for v in nodata_values:
        valid &= values != v
    return valid


@dataclass(frozen=True)
class UnitsCheck:
    """Thresholds of the units check (shares of a file's valid pixels).

    Args:
        enabled: check at all.
        linear_max_negative: linear power is never negative but for thermal-noise residue (a few pixels):
            more than this share of negative values means the file holds dB.
        db_max_unit_interval: dB backscatter is mostly below 0 dB: more than this share of values in
            [0, 1] means the file holds linear power (VH about 0.014, VV about 0.15 over land).
        sample_px: the check reads at most ``sample_px`` x ``sample_px`` pixels of each file (decimated).
    """

    enabled: bool = True
    linear_max_negative: float = 0.5
    db_max_unit_interval: float = 0.8
    sample_px: int = 512


def units_verdict(values: np.ndarray, units: str, check: UnitsCheck) -> str | None:
    """Why ``values`` (valid pixels of one file) are not in ``units``, or None when they may be."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return None
    if units == "linear":
        negative = float(np.mean(values < 0))
        if negative > check.linear_max_negative:
            return (
                f"{negative:.0%} of its valid values are negative (median {np.median(values):.3g}): linear power is "
                "not negative, these look like dB"
            )
    else:
        unit = float(np.mean((values >= 0) & (values <= 1)))
        if unit > check.db_max_unit_interval:
            zeros = float(np.mean(values == 0))
            hint = (
                f"; {zeros:.0%} of them are exactly 0: if 0 marks missing data, add it to discovery.nodata_values"
                if zeros > 0.1
                else ""
            )
            return (
                f"{unit:.0%} of its valid values lie in [0, 1] (median {np.median(values):.3g}): dB backscatter is "
                f"mostly negative, these look like linear power{hint}"
            )
    return None


def check_file_units(
    path, band: int, raw: RawInput, check: UnitsCheck, setting: str = "discovery.units"
) -> None:
    """Refuse a file whose values contradict ``raw.units`` (reads a decimated sample of band ``band``).

    The message names the file, what was seen, and the setting to change.
    """
    if not check.enabled:
        return
    from rasterio.enums import Resampling

    from unosat.io.raster import open_raster, read_window

    with open_raster(path) as src:
        step = max(1, math.ceil(max(src.height, src.width) / max(1, check.sample_px)))
        shape = (max(1, src.height // step), max(1, src.width // step))
        values = read_window(src, None, band, out_shape=shape, resampling=Resampling.nearest).astype(
            np.float64
        )
        tag = src.nodatavals[band - 1] if band - 1 < len(src.nodatavals) else None
    values = values[file_valid(values, raw.nodata_of(tag))]
    why = units_verdict(values, raw.units, check)
    if why:
        other = "db" if raw.units == "linear" else "linear"
        raise UnosatError(
            f"{path}: read as {raw.units} ({setting}={raw.units}) but {why}; set {setting}={other} "
            f"(or discovery.units_check.enabled=false if these values are right)"
        )
