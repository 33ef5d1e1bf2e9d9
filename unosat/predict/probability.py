"""How building probabilities are stored in GeoTIFFs.

``uint8``: ``round(p * 254)``, 255 = nodata (a step of 1/254 is far below what a model's calibration
means). ``float16``: ``p`` itself, NaN = nodata. Decoding gives float32 probabilities with NaN at nodata.

Written with the mask's ``threshold``, a stored value keeps its pixel's side of it: where rounding would carry
``p`` across the threshold (uint8: ``p`` in [0.498, 0.5) stored as 127 = 0.5 exactly; float16 likewise, by
less), the value moves one step back to ``p``'s side. Everything made later from the stored values (the mean
of a city's dates, a re-read mask) then says what the network's float said for every single date.
"""

from __future__ import annotations

import numpy as np

from unosat.errors import UnosatError

PROB_DTYPES = ("uint8", "float16")
UINT8_SCALE = 254
UINT8_NODATA = 255


def probability_nodata(dtype: str) -> float:
    """The nodata value of a probability raster of ``dtype``."""
    check_dtype(dtype)
    return UINT8_NODATA if dtype == "uint8" else float("nan")


def check_dtype(dtype: str) -> str:
    if dtype not in PROB_DTYPES:
        raise UnosatError(f"probability dtype must be one of {PROB_DTYPES}, got '{dtype}'")
    return dtype


def encode_probability(p: np.ndarray, dtype: str, threshold: float | None = None) -> np.ndarray:
    """float probabilities in [0, 1] (NaN = nodata) -> stored values of ``dtype``; with ``threshold``, every
    stored value decodes to the same side of it (``>= threshold`` or not) as ``p`` itself."""
    check_dtype(dtype)
    p = np.asarray(p, dtype=np.float32)
    if dtype == "float16":
        out16 = p.astype(np.float16)
        if threshold is not None:
            above = p >= threshold
            wrong = np.isfinite(p) & (above != (out16.astype(np.float32) >= threshold))
            toward = np.where(above, np.float16(np.inf), np.float16(-np.inf))
            out16[wrong] = np.nextafter(out16[wrong], toward[wrong])
        return out16
    out = np.full(p.shape, UINT8_NODATA, dtype=np.uint8)
    valid = np.isfinite(p)
    codes = np.rint(np.clip(p[valid], 0.0, 1.0) * UINT8_SCALE).astype(np.int16)
    if threshold is not None:
        above = p[valid] >= threshold
        decoded_above = codes.astype(np.float32) / UINT8_SCALE >= threshold
        codes += (above & ~decoded_above).astype(np.int16) - (~above & decoded_above).astype(np.int16)
    out[valid] = np.clip(codes, 0, UINT8_SCALE).astype(np.uint8)
    return out


def decode_probability(values: np.ndarray) -> np.ndarray:
    """Stored values (uint8 or float16) -> float32 probabilities with NaN at nodata."""
    values = np.asarray(values)
    if values.dtype == np.uint8:
        out = values.astype(np.float32) / UINT8_SCALE
        out[values == UINT8_NODATA] = np.nan
        return out
    if values.dtype in (np.float16, np.float32, np.float64):
        return values.astype(np.float32)
    raise UnosatError(f"not a probability raster dtype: {values.dtype}")
