"""Raster reading and writing around windows and profiles.

Conventions: arrays are ``(bands, rows, cols)`` when they come from rasterio and ``(rows, cols, bands)``
when they come from a memory map of a pixel-interleaved stack. Windows are :class:`rasterio.windows.Window`
in pixel units of the raster they refer to.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window, subdivide

from unosat.errors import UnosatError, first_line

#: Two grids whose transforms place every corner within this many pixels of each other are the same grid.
GRID_TOLERANCE_PX = 0.01

#: GDAL block cache for streamed writes (bytes). GDAL's default (5 % of RAM) would let dirty blocks of a
#: large scene pile up in memory; streaming needs only a few rows of blocks.
GDAL_CACHE_BYTES = 64 * 1024 * 1024


def gdal_env(**options) -> rasterio.Env:
    """A rasterio environment with a bounded block cache (plus any GDAL ``options``)."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES, **options)


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform (map units per pixel) and size in pixels."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, src: rasterio.io.DatasetReader) -> Grid:
        return cls(src.crs, src.transform, src.width, src.height)

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)``."""
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in CRS units."""
        return tuple(rasterio.transform.array_bounds(self.height, self.width, self.transform))

    @property
    def pixel_size(self) -> float:
        """The smaller side of a pixel, in CRS units (degrees for a geographic CRS)."""
        t = self.transform
        return float(min(math.hypot(t.a, t.d), math.hypot(t.b, t.e)))

    def offset_px(self, other: Grid) -> float:
        """How far apart, in pixels of this grid, the two transforms put the corners of this grid (the
        largest of the four corners' distances, so a pixel size that differs slightly counts at the far edge)."""
        corners = [(0, 0), (self.width, 0), (0, self.height), (self.width, self.height)]
        pixel = self.pixel_size
        if pixel <= 0:
            return math.inf
        return (
            max(math.hypot(*(np.subtract(self.transform * c, other.transform * c))) for c in corners) / pixel
        )

    def differences(self, other: Grid, tolerance_px: float = GRID_TOLERANCE_PX) -> list[str]:
        """What differs between two grids, in words (empty when they are the same grid).

        Transforms are compared in pixels, not CRS units: they differ when they place any corner of this
        grid more than ``tolerance_px`` pixels apart (1e-6 degrees in EPSG:4326 would be about 1 % of a
        10 m pixel, 1e-6 m in UTM nothing at all).
        """
        out = []
        if (self.crs is None) != (other.crs is None) or (self.crs is not None and self.crs != other.crs):
            out.append(f"CRS {_crs_name(self.crs)} vs {_crs_name(other.crs)}")
        if (self.width, self.height) != (other.width, other.height):
            out.append(f"size {self.width}x{self.height} vs {other.width}x{other.height} px")
        offset = self.offset_px(other)
        if offset > tolerance_px:
            out.append(
                f"transform {tuple(self.transform)[:6]} vs {tuple(other.transform)[:6]} (corners up to "
                f"{offset:.3g} px apart)"
            )
        return out


def _crs_name(crs: CRS | None) -> str:
    if crs is None:
        return "none"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()


@contextlib.contextmanager
def open_raster(path: Path | str) -> Iterator[rasterio.io.DatasetReader]:
    """Open a raster for reading; an unreadable file raises :class:`UnosatError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UnosatError(f"{path}: file not found")
    try:
        src = rasterio.open(path)
    except RasterioError as err:
        raise UnosatError(f"{path}: not a readable raster ({first_line(err)})") from None
    with src:
        yield src


def read_window(src: rasterio.io.DatasetReader, window: Window, indexes=None, **kwargs) -> np.ndarray:
    """``src.read`` that turns a truncated or corrupt file into :class:`UnosatError` naming the file."""
    try:
        return src.read(indexes, window=window, **kwargs)
    except RasterioError as err:
        raise UnosatError(
            f"{src.name}: cannot read pixels, the file is truncated or corrupt ({first_line(err)})"
        ) from None


def row_windows(width: int, height: int, rows: int) -> list[Window]:
    """Full-width windows of at most ``rows`` rows that cover ``height`` rows top to bottom
    (``rasterio.windows.subdivide``, which never ends for ``rows <= 0``: refused here)."""
    if rows <= 0:
        raise ValueError(f"block rows must be positive, got {rows}")
    return subdivide(Window(0, 0, width, height), rows, width)


def train_offsets(length: int, size: int, min_overlap: int) -> list[int]:
    """Start offsets of train tiles along one axis of ``length`` pixels.

    ``n = ceil((length - size) / (size - min_overlap)) + 1`` tiles, spread evenly from 0 to
    ``length - size`` (rounded), so neighbours overlap by at least ``min_overlap``. For the UNOSAT scenes
    (10980 px, 512/32) that is 23 tiles per axis.
    """
    if length <= size:
        return [0]
    n = math.ceil((length - size) / (size - min_overlap)) + 1
    return sorted({round(i * (length - size) / (n - 1)) for i in range(n)})


def geotiff_profile(grid: Grid, count: int, dtype: str, nodata: float | int | None) -> dict:
    """The rasterio profile of an uncompressed GeoTIFF of ``count`` bands on ``grid`` (BigTIFF when needed)."""
    return {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": dtype,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "compress": None,
        "BIGTIFF": "IF_SAFER",
    }


def stack_profile(grid: Grid, count: int, dtype: str, nodata: float | int | None) -> dict:
    """Profile of an uncompressed, pixel-interleaved, row-striped GeoTIFF.

    Written top to bottom with full-width windows, such a file keeps its pixels in one contiguous
    ``(rows, cols, bands)`` block, which :func:`memmap_geotiff` maps without decoding; GIS software opens
    it as any GeoTIFF.
    """
    return geotiff_profile(grid, count, dtype, nodata) | {"interleave": "pixel", "tiled": False}


def memmap_geotiff(path: Path | str) -> np.ndarray | None:
    """Memory-map the pixels of an uncompressed, contiguous, pixel-interleaved GeoTIFF.

    Returns a read-only ``(rows, cols, bands)`` array, or ``None`` when the file's pixels are not one
    contiguous block (compressed, tiled, band-interleaved, or strips written out of order): callers then
    fall back to rasterio windowed reads.
    """
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if (
                page.compression != 1
                or page.is_tiled
                or (page.samplesperpixel > 1 and page.planarconfig != 1)
            ):
                return None
            offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
            dtype = page.dtype.newbyteorder(tif.byteorder)
            rows, cols = page.imagelength, page.imagewidth
            bands = page.samplesperpixel
    except (tifffile.TiffFileError, OSError, ValueError, IndexError):
        return None
    if len(offsets) == 0 or not np.array_equal(offsets[1:], offsets[:-1] + counts[:-1]):
        return None
    if int(counts.sum()) != rows * cols * bands * dtype.itemsize:
        return None
    if path.stat().st_size < int(offsets[0]) + int(counts.sum()):
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=int(offsets[0]), shape=(rows, cols, bands))


#: GeoTIFF metadata tag holding the JSON parameters an output was made with (see :mod:`unosat.io.provenance`).
PARAMS_TAG = "UNOSAT_PARAMS"


def write_rows(
    path: Path | str,
    profile: dict,
    blocks: Iterator[tuple[int, np.ndarray]],
    tags: dict[str, str] | None = None,
    band_descriptions: list[str] | None = None,
    late_tags: Callable[[], dict[str, str]] | None = None,
) -> None:
    """Write a raster atomically from ``(row_off, array)`` blocks given top to bottom.

    ``array`` is ``(bands, rows, cols)`` with ``cols == profile['width']``. ``late_tags`` is called once
    every block is written (for figures known only then, e.g. pixel counts). The file appears under
    ``path`` only when complete (see :mod:`unosat.io.atomic`).
    """
    from unosat.io.atomic import atomic_path

    with gdal_env(), atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            if tags:
                dst.update_tags(**tags)
            if band_descriptions:
                for i, d in enumerate(band_descriptions, start=1):
                    dst.set_band_description(i, d)
            next_row = 0
            for row_off, block in blocks:
                if row_off != next_row:
                    raise ValueError(
                        f"blocks must come top to bottom: expected row {next_row}, got {row_off}"
                    )
                dst.write(block, window=Window(0, row_off, profile["width"], block.shape[-2]))
                next_row = row_off + block.shape[-2]
            if next_row != profile["height"]:
                raise ValueError(f"blocks covered {next_row} of {profile['height']} rows")
            if late_tags:
                dst.update_tags(**late_tags())
