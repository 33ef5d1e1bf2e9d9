"""Band recipes (VV/VH -> band stack) and normalisation, used by preparation, training and prediction.

A recipe names the bands computed from the two polarisations, in order, and their units:

=========  =======================  ==========================================
band       formula (linear power)   note
=========  =======================  ==========================================
``vh``     VH
``vv``     VV
``mean``   (VH + VV) / 2            the original team's third band
``diff``   VV - VH
``norm``   sqrt(VH^2 + VV^2)
``product`` VV * VH
``ratio``  VV / VH                  NaN where VH == 0
=========  =======================  ==========================================

A recipe of ``vv`` (or ``vh``) bands only needs that polarisation: ``bands=vv_db`` / ``vh_db`` / ``vv`` /
``vh`` read single-polarisation archives (with ``discovery.polarisations=[vv]``).

With ``units: db`` every band is ``10 * log10(max(band, db_floor))`` of its linear value (values below
``db_floor`` = 1e-8 are clamped, as the original did). Nodata pixels are NaN in every band of a stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from unosat.errors import UnosatError
from unosat.raw_input import DEFAULT_NODATA, UNITS, file_valid

if TYPE_CHECKING:
    import pandas as pd

BAND_FORMULAS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "vh": lambda vh, vv: vh,
    "vv": lambda vh, vv: vv,
    "mean": lambda vh, vv: (vh + vv) / 2,
    "diff": lambda vh, vv: vv - vh,
    "norm": lambda vh, vv: np.sqrt(vh * vh + vv * vv),
    "product": lambda vh, vv: vv * vh,
    "ratio": lambda vh, vv: np.divide(vv, vh, out=np.full_like(vv, np.nan), where=vh != 0),
}


#: the polarisations each band needs (bands not listed need both)
BAND_NEEDS: dict[str, tuple[str, ...]] = {"vh": ("vh",), "vv": ("vv",)}


def to_db(x: np.ndarray, floor: float = 1e-8) -> np.ndarray:
    """``10 * log10(max(x, floor))``; NaN stays NaN."""
    with np.errstate(invalid="ignore"):
        return (10.0 * np.log10(np.maximum(x, floor))).astype(np.float32, copy=False)


def from_db(x: np.ndarray) -> np.ndarray:
    """Linear power from dB."""
    return np.power(np.float32(10.0), x / np.float32(10.0), dtype=np.float32)


@dataclass(frozen=True)
class BandRecipe:
    """Which bands a stack holds, computed from VH and VV (linear power), and in which units.

    Args:
        name: a label for the recipe (``3b``, ``db``, ``5b``...), stored with datasets and checkpoints.
        bands: band names from :data:`BAND_FORMULAS`, in stack order.
        units: ``linear`` (power, as Sentinel-1 sigma0 is delivered) or ``db``.
        db_floor: linear values below this are clamped before taking dB.
    """

    name: str = "3b"
    bands: tuple[str, ...] = ("vh", "vv", "mean")
    units: str = "linear"
    db_floor: float = 1e-8

    def __post_init__(self):
        object.__setattr__(self, "bands", tuple(self.bands))
        unknown = [b for b in self.bands if b not in BAND_FORMULAS]
        if unknown:
            raise UnosatError(
                f"band recipe '{self.name}': unknown band(s) {unknown}; known bands: {sorted(BAND_FORMULAS)}"
            )
        if not self.bands:
            raise UnosatError(f"band recipe '{self.name}' has no bands")
        if self.units not in UNITS:
            raise UnosatError(f"band recipe '{self.name}': units must be one of {UNITS}, got '{self.units}'")

    @property
    def count(self) -> int:
        """Number of bands in the stack."""
        return len(self.bands)

    def needs(self) -> tuple[str, ...]:
        """The polarisations the recipe's bands are computed from (``("vv",)`` for a VV-only recipe)."""
        needed = {p for band in self.bands for p in BAND_NEEDS.get(band, ("vh", "vv"))}
        return tuple(p for p in ("vh", "vv") if p in needed)

    def compute(self, vh: np.ndarray | None, vv: np.ndarray | None) -> np.ndarray:
        """Band stack ``(count, *shape)`` float32 from VH and VV in linear power (NaN propagates); a
        polarisation the recipe does not need may be None."""
        missing = [p for p, a in (("vh", vh), ("vv", vv)) if a is None and p in self.needs()]
        if missing:
            raise UnosatError(
                f"band recipe '{self.name}' {list(self.bands)} needs {missing[0].upper()}, which this "
                "scene does not have"
            )
        vh = np.asarray(vh, dtype=np.float32) if vh is not None else None
        vv = np.asarray(vv, dtype=np.float32) if vv is not None else None
        shape = (vv if vv is not None else vh).shape
        out = np.empty((self.count, *shape), dtype=np.float32)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            for i, band in enumerate(self.bands):
                value = BAND_FORMULAS[band](vh, vv)
                out[i] = to_db(value, self.db_floor) if self.units == "db" else value
        return out

    def polarisation_indices(self) -> tuple[int, int]:
        """Indices of the ``vh`` and ``vv`` bands in the stack; error if the recipe lacks either."""
        if "vh" not in self.bands or "vv" not in self.bands:
            raise UnosatError(
                f"band recipe '{self.name}' {list(self.bands)} does not hold both 'vh' and 'vv'"
            )
        return self.bands.index("vh"), self.bands.index("vv")

    def polarisations(self, stack: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """VH and VV in linear power, taken back from a stack made with this recipe."""
        ivh, ivv = self.polarisation_indices()
        vh, vv = np.take(stack, ivh, axis=axis), np.take(stack, ivv, axis=axis)
        if self.units == "db":
            return from_db(vh), from_db(vv)
        return vh, vv

    def to_dict(self) -> dict:
        return {"name": self.name, "bands": list(self.bands), "units": self.units, "db_floor": self.db_floor}

    @classmethod
    def from_dict(cls, d: dict) -> BandRecipe:
        return cls(
            name=d["name"], bands=tuple(d["bands"]), units=d["units"], db_floor=float(d.get("db_floor", 1e-8))
        )

    def differences(self, other: BandRecipe) -> list[str]:
        """What differs between two recipes, in words (empty when the stacks they make are the same)."""
        out = []
        if self.bands != other.bands:
            out.append(f"bands {list(self.bands)} vs {list(other.bands)}")
        if self.units != other.units:
            out.append(f"units {self.units} vs {other.units}")
        if self.units == "db" and other.units == "db" and self.db_floor != other.db_floor:
            out.append(f"db_floor {self.db_floor} vs {other.db_floor}")
        return out


def valid_pixels(
    vh: np.ndarray | None,
    vv: np.ndarray | None,
    nodata_values: Sequence[float],
    vv_nodata_values: Sequence[float] | None = None,
) -> np.ndarray:
    """Boolean mask of pixels that hold data in both polarisations.

    A pixel is nodata when either polarisation is NaN, infinite, or equal to one of its nodata values:
    ``nodata_values`` for both (0 and -99999 in the UNOSAT data), or, when ``vv_nodata_values`` is given,
    ``nodata_values`` for VH and ``vv_nodata_values`` for VV (files with their own nodata tags, see
    :meth:`unosat.raw_input.RawInput.nodata_of`). A polarisation given as None (a single-polarisation scene)
    is left out.
    """
    vv_nodata = nodata_values if vv_nodata_values is None else vv_nodata_values
    if vh is None:
        return file_valid(vv, vv_nodata)
    if vv is None:
        return file_valid(vh, nodata_values)
    return file_valid(vh, nodata_values) & file_valid(vv, vv_nodata)


def polarisations_to_stack(
    vh: np.ndarray,
    vv: np.ndarray,
    recipe: BandRecipe,
    nodata_values: Sequence[float] = DEFAULT_NODATA["linear"],
    input_units: str = "linear",
    vv_nodata_values: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """VH/VV arrays as read from the scene -> ``(stack, valid, n_nonfinite)``; one of them may be None for a
    single-polarisation scene when the recipe does not need it (``bands=vv_db``...).

    ``stack`` is ``(recipe.count, *shape)`` float32 with NaN where ``valid`` is False; ``n_nonfinite``
    counts pixels that were NaN or infinite in either input (they are nodata too). ``input_units`` is
    ``linear`` or ``db`` (dB inputs are converted to linear power first; nodata values are compared in the
    input's own units; ``vv_nodata_values``: see :func:`valid_pixels`).
    """
    if input_units not in UNITS:
        raise UnosatError(f"input units must be one of {UNITS}, got '{input_units}'")
    vh = np.asarray(vh, dtype=np.float32) if vh is not None else None
    vv = np.asarray(vv, dtype=np.float32) if vv is not None else None
    present = [a for a in (vh, vv) if a is not None]
    n_nonfinite = int(np.count_nonzero(~np.logical_and.reduce([np.isfinite(a) for a in present])))
    valid = valid_pixels(vh, vv, nodata_values, vv_nodata_values)
    if input_units == "db":
        with np.errstate(over="ignore", invalid="ignore"):
            vh = from_db(vh) if vh is not None else None
            vv = from_db(vv) if vv is not None else None
    stack = recipe.compute(vh, vv)
    stack[:, ~valid] = np.nan
    return stack, valid, n_nonfinite


@dataclass(frozen=True)
class Normalization:
    """Per-band standardisation ``(x - mean) / std`` of a stack, NaN (nodata) filled with ``fill``.

    ``mean`` and ``std`` are in the stack's units (linear power or dB), one value per band.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    fill: float = 0.0
    source: str = field(default="config", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != len(self.std):
            raise UnosatError(f"normalisation: {len(self.mean)} means but {len(self.std)} stds")
        if any(not np.isfinite(s) or s <= 0 for s in self.std):
            raise UnosatError(f"normalisation: every std must be positive and finite, got {self.std}")

    @property
    def count(self) -> int:
        return len(self.mean)

    def apply(self, image: np.ndarray, channel_axis: int = -1) -> np.ndarray:
        """Standardise ``image`` (float32) along ``channel_axis``; NaN becomes ``fill``. Returns a new array."""
        if image.shape[channel_axis] != self.count:
            raise UnosatError(
                f"normalisation has {self.count} bands but the image has {image.shape[channel_axis]}"
            )
        shape = [1] * image.ndim
        shape[channel_axis] = self.count
        mean = np.asarray(self.mean, dtype=np.float32).reshape(shape)
        inv_std = (1.0 / np.asarray(self.std, dtype=np.float32)).reshape(shape)
        out = (image.astype(np.float32, copy=False) - mean) * inv_std
        np.nan_to_num(out, copy=False, nan=self.fill, posinf=self.fill, neginf=self.fill)
        return out

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "fill": self.fill, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(tuple(d["mean"]), tuple(d["std"]), float(d.get("fill", 0.0)), d.get("source", "config"))


def pooled_normalization(table: pd.DataFrame, band_names: Sequence[str], source: str) -> Normalization:
    """Per-band mean/std over all valid pixels of the tiles in ``table`` (exact pooling of tile moments)."""
    n = table["n_valid"].to_numpy(dtype=np.float64)
    if n.sum() == 0:
        raise UnosatError(f"no valid pixel in the tiles selected for normalisation ({source})")
    means, stds = [], []
    for name in band_names:
        m = table[f"{name}_mean"].to_numpy(dtype=np.float64)
        s = table[f"{name}_std"].to_numpy(dtype=np.float64)
        keep = n > 0
        total = n[keep].sum()
        mean = float((n[keep] * m[keep]).sum() / total)
        second = float((n[keep] * (s[keep] ** 2 + m[keep] ** 2)).sum() / total)
        means.append(mean)
        stds.append(float(np.sqrt(max(second - mean * mean, 0.0))))
    return Normalization(tuple(means), tuple(stds), source=source)
