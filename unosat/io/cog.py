"""Cloud-Optimized GeoTIFFs written by streamed rows.

GDAL's COG driver cannot be written to directly (it only makes copies), so a COG is made in two steps:
the rows are streamed top to bottom into an uncompressed, internally tiled GeoTIFF (:func:`write_rows`,
memory bounded by GDAL's block cache), which GDAL then copies with the ``COG`` driver (compression,
overviews, the ``LAYOUT=COG`` ordering of IFDs and tiles). Both files live under temporary names next to
the output; the COG appears under its name only when complete (:mod:`unosat.io.atomic`). The grid (CRS,
transform, size), nodata value, metadata tags and band descriptions pass to the COG unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio.shutil
from rasterio.windows import Window

from unosat.errors import UnosatError
from unosat.io.atomic import atomic_path, temporary_sibling
from unosat.io.raster import Grid, gdal_env, geotiff_profile, write_rows

COMPRESSIONS = ("deflate", "zstd", "lzw", "none")
#: GDAL's tiles must be a multiple of 16 pixels; its COG driver wants at least 128.
BLOCK_MULTIPLE = 16
MIN_BLOCKSIZE = 128


@dataclass(frozen=True)
class CogOptions:
    """How COGs are written.

    Args:
        compress: ``deflate``, ``zstd``, ``lzw`` or ``none``.
        blocksize: tile size in pixels (a multiple of 16, >= 128); overviews are made down to this size.
        overview_resampling: GDAL resampling for continuous rasters' overviews (``average``, ``bilinear``...).
        mask_overview_resampling: resampling for class rasters' overviews (``nearest`` or ``mode``).
        predictor: use GDAL's horizontal/floating-point predictor (smaller files, same pixels).
    """

    compress: str = "deflate"
    blocksize: int = 512
    overview_resampling: str = "average"
    mask_overview_resampling: str = "nearest"
    predictor: bool = True

    def __post_init__(self):
        if self.compress.lower() not in COMPRESSIONS:
            raise UnosatError(f"cog.compress must be one of {COMPRESSIONS}, got '{self.compress}'")
        if self.blocksize < MIN_BLOCKSIZE or self.blocksize % BLOCK_MULTIPLE:
            raise UnosatError(
                f"cog.blocksize must be a multiple of {BLOCK_MULTIPLE} and at least {MIN_BLOCKSIZE}, "
                f"got {self.blocksize}"
            )


def tiled_profile(
    grid: Grid, count: int, dtype: str, nodata: float | int | None, blocksize: int, nbits: int | None = None
) -> dict:
    """Profile of the uncompressed, internally tiled GeoTIFF that rows are streamed into.

    ``nbits=16`` with ``dtype='float32'`` stores IEEE half floats (GDAL 3.10 has no Float16 type).
    """
    profile = geotiff_profile(grid, count, dtype, nodata) | {
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "interleave": "band",
    }
    if nbits is not None:
        profile["NBITS"] = nbits
    return profile


def cog_creation_options(options: CogOptions, categorical: bool, nbits: int | None) -> dict:
    """GDAL COG driver creation options for ``options`` (class rasters get the mask overview resampling)."""
    creation = {
        "BLOCKSIZE": options.blocksize,
        "COMPRESS": options.compress.upper(),
        "OVERVIEWS": "AUTO",
        "RESAMPLING": (
            options.mask_overview_resampling if categorical else options.overview_resampling
        ).upper(),
        "BIGTIFF": "IF_SAFER",
    }
    if options.predictor and options.compress.lower() != "none":
        creation["PREDICTOR"] = "YES"
    if nbits is not None:
        creation["NBITS"] = nbits
    return creation


def write_cog(
    path: Path | str,
    grid: Grid,
    dtype: str,
    nodata: float | int | None,
    blocks: Iterable[tuple[int, np.ndarray]],
    options: CogOptions,
    categorical: bool = False,
    tags: dict[str, str] | None = None,
    band_descriptions: list[str] | None = None,
    late_tags: Callable[[], dict[str, str]] | None = None,
    nbits: int | None = None,
    count: int = 1,
) -> None:
    """Write a ``count``-band COG at ``path`` from ``(row_off, (count, rows, width))`` blocks given top to
    bottom.

    ``categorical`` picks ``options.mask_overview_resampling`` for the overviews (classes must not be
    averaged). Nothing appears at ``path`` unless the whole file was written.
    """
    path = Path(path)
    profile = tiled_profile(grid, count, dtype, nodata, options.blocksize, nbits)
    creation = cog_creation_options(options, categorical, nbits)
    staging = temporary_sibling(path.with_name(path.stem + ".tiled" + path.suffix))
    try:
        write_rows(staging, profile, blocks, tags, band_descriptions, late_tags)
        with gdal_env(), atomic_path(path) as tmp:
            rasterio.shutil.copy(staging, tmp, driver="COG", **creation)
    finally:
        staging.unlink(missing_ok=True)


class CogRowWriter:
    """A single-band COG written from rows *pushed* top to bottom (``write(row_off, (rows, width) array)``):
    the counterpart of :func:`write_cog` for a second raster made in the same pass as another (a mask
    thresholded from the float probabilities that the probability COG stores quantised).

    Use as a context manager: rows go to an uncompressed tiled staging GeoTIFF; on a clean exit, with every
    row written, the COG is copied to ``path`` atomically; on an error nothing appears at ``path``.
    """

    def __init__(
        self,
        path: Path | str,
        grid: Grid,
        dtype: str,
        nodata: float | int | None,
        options: CogOptions,
        categorical: bool = False,
        tags: dict[str, str] | None = None,
        band_descriptions: list[str] | None = None,
    ):
        self.path = Path(path)
        self.height, self.width = grid.height, grid.width
        self.profile = tiled_profile(grid, 1, dtype, nodata, options.blocksize)
        self.creation = cog_creation_options(options, categorical, None)
        self.tags = tags
        self.band_descriptions = band_descriptions
        self.staging = temporary_sibling(self.path.with_name(self.path.stem + ".tiled" + self.path.suffix))
        self.next_row = 0

    def __enter__(self) -> CogRowWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._env = gdal_env()
        self._env.__enter__()
        self._dst = rasterio.open(self.staging, "w", **self.profile)
        if self.tags:
            self._dst.update_tags(**self.tags)
        for i, d in enumerate(self.band_descriptions or [], start=1):
            self._dst.set_band_description(i, d)
        return self

    def write(self, row_off: int, block: np.ndarray) -> None:
        """Rows ``row_off`` .. ``row_off + block.shape[0]`` (full width), in order."""
        if row_off != self.next_row:
            raise ValueError(f"rows must come top to bottom: expected row {self.next_row}, got {row_off}")
        self._dst.write(block[None], window=Window(0, row_off, self.width, block.shape[0]))
        self.next_row = row_off + block.shape[0]

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._dst.close()
            if exc_type is None:
                if self.next_row != self.height:
                    raise ValueError(f"{self.path}: rows covered {self.next_row} of {self.height}")
                with atomic_path(self.path) as tmp:
                    rasterio.shutil.copy(self.staging, tmp, driver="COG", **self.creation)
        finally:
            self.staging.unlink(missing_ok=True)
            self._env.__exit__(None, None, None)
