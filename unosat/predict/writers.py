"""Product rasters written and read by row blocks: probability and mask COGs (each recording the
parameters it was made with), and the rows of several rasters on one grid read together.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from unosat.classes import CLASS_NAMES, TARGET
from unosat.io.cog import CogOptions, CogRowWriter, write_cog
from unosat.io.provenance import canonical
from unosat.io.raster import PARAMS_TAG, Grid, gdal_env, open_raster, read_window, row_windows
from unosat.predict.aggregate import MASK_NODATA, threshold_mask
from unosat.predict.probability import encode_probability, probability_nodata

#: float16 probabilities are stored as 16-bit IEEE floats in Float32 GeoTIFF bands (GDAL's NBITS=16)
HALF_FLOAT_BITS = 16


def _store_dtype(dtype: str) -> tuple[str, int | None]:
    """GeoTIFF band type and NBITS for a probability encoding."""
    return ("uint8", None) if dtype == "uint8" else ("float32", HALF_FLOAT_BITS)


def write_probability(
    path: Path,
    grid: Grid,
    blocks: Iterator[tuple[int, np.ndarray]],
    dtype: str,
    options: CogOptions,
    params: dict,
    extra_tags: dict | None = None,
    target: str = CLASS_NAMES[TARGET],
    threshold: float | None = None,
) -> None:
    """Probability COG from float32 ``(row_off, (rows, width))`` blocks (NaN = nodata); its band is described
    as ``<target>_probability``; with ``threshold``, stored values keep each pixel's side of it (see
    :func:`~unosat.predict.probability.encode_probability`)."""
    store, nbits = _store_dtype(dtype)
    encoded = (
        (r, encode_probability(p, dtype, threshold).astype(store, copy=False)[None]) for r, p in blocks
    )
    write_cog(
        path,
        grid,
        store,
        probability_nodata(dtype),
        encoded,
        options,
        tags={PARAMS_TAG: canonical(params), **(extra_tags or {})},
        band_descriptions=[f"{target}_probability"],
        nbits=nbits,
    )


def write_mask(
    path: Path,
    grid: Grid,
    blocks: Iterator[tuple[int, np.ndarray]],
    options: CogOptions,
    params: dict,
    target: str = CLASS_NAMES[TARGET],
) -> None:
    """Mask COG (0/1/255) from uint8 ``(row_off, (rows, width))`` blocks; its band is described as ``target``."""
    write_cog(
        path,
        grid,
        "uint8",
        MASK_NODATA,
        ((r, m[None]) for r, m in blocks),
        options,
        categorical=True,
        tags={PARAMS_TAG: canonical(params)},
        band_descriptions=[target],
    )


def read_rows(paths: Sequence[Path], grid: Grid, block_rows: int) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Band 1 of each raster (all on ``grid``), ``block_rows`` full-width rows at a time."""
    import contextlib

    with gdal_env(), contextlib.ExitStack() as stack:
        srcs = [stack.enter_context(open_raster(p)) for p in paths]
        for window in row_windows(grid.width, grid.height, block_rows):
            yield window.row_off, [read_window(src, window, 1) for src in srcs]


def masked_as_they_pass(
    blocks: Iterator[tuple[int, np.ndarray]], threshold: float, mask_out: CogRowWriter
) -> Iterator[tuple[int, np.ndarray]]:
    """Passes float probability blocks ``(row_off, (rows, width))`` on unchanged, writing their mask
    (``p >= threshold``, 255 where NaN) to ``mask_out`` on the way: the mask sees the float values."""
    for row_off, prob in blocks:
        mask_out.write(row_off, threshold_mask(prob, threshold))
        yield row_off, prob
