"""Quicklook PNG of a prediction product: the scene's backscatter with predicted and true building outlines.

The image is one band of a raster (a band stack or a raw VV GeoTIFF), read decimated by an integer factor
``f = ceil(max(rows, cols) / max_px)`` with average resampling (a 10980 x 10980 scene reads as ~1000 px
without loading it), shown in dB (converted when ``units == "linear"``) with a 2-98 % percentile stretch;
nodata is dark blue. Outlines are drawn one PNG pixel wide: predicted buildings in red, true buildings in
green, yellow where both fall on the same pixel. A building smaller than a PNG pixel stays visible as a dot.
The PNG is exactly ``ceil(rows / f) x ceil(cols / f)`` pixels (its longest side at most ``max_px``), the
title drawn on it top left, a legend bottom left.
"""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import scipy.ndimage as ndi
import shapely
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.transform import Affine

from unosat.bands import to_db
from unosat.errors import UnosatError
from unosat.io.atomic import atomic_path
from unosat.io.labels import decimated_mask
from unosat.io.raster import Grid, gdal_env, open_raster
from unosat.io.vectors import read_polygons
from unosat.predict.vectorize import read_vectorized
from unosat.raw_input import UNITS

PREDICTED_RGB = (255, 32, 32)
TRUTH_RGB = (32, 230, 32)
BOTH_RGB = (255, 230, 0)
NODATA_RGB = (24, 24, 72)
#: a path with one of these suffixes is a mask GeoTIFF (1 = building), any other path a vector file
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")
DPI = 100


def quicklook(
    image_path,
    band: int,
    units: str,
    out_png,
    predicted=None,
    truth=None,
    max_px: int = 1024,
    title: str = "",
) -> None:
    """Write a quicklook PNG of band ``band`` (1-based) of ``image_path`` to ``out_png`` (atomically).

    Args:
        image_path: a band stack or a single-band backscatter GeoTIFF.
        band: the band shown.
        units: ``linear`` (shown as 10 log10) or ``db`` (shown as it is).
        predicted, truth: outlines to draw, each None, a GeoSeries (in the raster CRS when it has no CRS),
            a vector file path (any OGR format, reprojected; ``truth`` is read as labels are), or a mask
            GeoTIFF path on the image's grid (1 = building).
        max_px: longest side of the PNG, at most.
        title: text drawn top left.
    """
    if units not in UNITS:
        raise UnosatError(f"quicklook units must be one of {UNITS}, got '{units}'")
    if int(max_px) < 1:
        raise UnosatError(f"quicklook max_px must be positive, got {max_px}")
    with gdal_env(), open_raster(image_path) as src:
        if not 1 <= int(band) <= src.count:
            raise UnosatError(f"{image_path}: no band {band} (the raster has {src.count})")
        grid = Grid.of(src)
        factor = max(1, math.ceil(max(src.height, src.width) / int(max_px)))
        shape = (math.ceil(src.height / factor), math.ceil(src.width / factor))
        values = src.read(int(band), out_shape=shape, resampling=Resampling.average, masked=True)
    image = np.ma.filled(values.astype(np.float32), np.nan)
    rgb = gray_rgb(to_db(image) if units == "linear" else image)
    # GDAL scales the raster to `shape` exactly: that is where outlines go too
    transform = grid.transform * Affine.scale(grid.width / shape[1], grid.height / shape[0])

    legend = []
    drawn = {}
    for name, source, colour in (("predicted", predicted, "red"), ("truth", truth, "green")):
        if source is not None:
            drawn[name] = outline_pixels(source, grid, factor, shape, transform, is_truth=name == "truth")
            legend.append(f"{colour}: {name}")
    if "predicted" in drawn:
        rgb[drawn["predicted"]] = PREDICTED_RGB
    if "truth" in drawn:
        rgb[drawn["truth"]] = TRUTH_RGB
    if len(drawn) == 2:
        rgb[drawn["predicted"] & drawn["truth"]] = BOTH_RGB
        legend.append("yellow: both")
    save_png(rgb, title, ", ".join(legend), Path(out_png))


def gray_rgb(shown: np.ndarray) -> np.ndarray:
    """``(rows, cols, 3)`` uint8: a 2-98 % percentile stretch of ``shown``; non-finite pixels dark blue."""
    finite = np.isfinite(shown)
    lo, hi = np.percentile(shown[finite], [2, 98]) if finite.any() else (0.0, 1.0)
    scaled = np.clip((np.where(finite, shown, lo) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    rgb = np.repeat(np.rint(scaled * 255).astype(np.uint8)[..., None], 3, axis=2)
    rgb[~finite] = NODATA_RGB
    return rgb


def outline_pixels(
    source, grid: Grid, factor: int, shape: tuple[int, int], transform: Affine, is_truth: bool = False
) -> np.ndarray:
    """Boolean ``shape`` array of the PNG pixels on the outline of ``source``'s buildings (see
    :func:`quicklook` for what ``source`` may be)."""
    if isinstance(source, str | Path) and Path(source).suffix.lower() in RASTER_SUFFIXES:
        with open_raster(source) as src:
            diff = Grid.of(src).differences(grid)
            if diff:
                raise UnosatError(f"{source}: the mask is not on the grid of the image ({'; '.join(diff)})")
            building, _ = decimated_mask(src, factor)  # any building pixel in a cell: small ones stay visible
        return building & ~ndi.binary_erosion(building, structure=np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]]))
    if isinstance(source, gpd.GeoSeries):
        series = source if source.crs is None or grid.crs is None else source.to_crs(grid.crs)
        geoms = np.asarray(series.values, dtype=object)
    elif isinstance(source, str | Path):
        geoms = np.asarray(
            (read_polygons if is_truth else read_vectorized)(source, grid.crs).values, dtype=object
        )
    else:
        raise UnosatError(f"quicklook outlines: expected a path or a GeoSeries, got {type(source).__name__}")
    geoms = geoms[~shapely.is_missing(geoms)]
    lines = shapely.boundary(geoms[~shapely.is_empty(geoms)])
    if len(lines) == 0:
        return np.zeros(shape, dtype=bool)
    burnt = rasterize(
        ((g, 1) for g in lines), out_shape=shape, transform=transform, all_touched=True, dtype="uint8"
    )
    return burnt.astype(bool)


def save_png(rgb: np.ndarray, title: str, legend: str, path: Path) -> None:
    """Write ``rgb`` as a PNG of exactly its size, with ``title`` top left and ``legend`` bottom left."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.image import imsave

    h, w = rgb.shape[:2]
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    fig.figimage(rgb, xo=0, yo=0, origin="upper")
    style = {
        "color": "white",
        "fontsize": float(np.clip(w / 90, 5, 11)),
        "ha": "left",
        "bbox": {"facecolor": "black", "alpha": 0.55, "pad": 1.5, "edgecolor": "none"},
    }
    if title:
        fig.text(3 / w, 1 - 3 / h, title, va="top", **style)
    if legend:
        fig.text(3 / w, 3 / h, legend, va="bottom", **style)
    canvas.draw()
    drawn = np.asarray(canvas.buffer_rgba())[:h, :w, :3]
    out = rgb.copy()  # a canvas rounded one pixel short keeps the image's own last row/column
    out[: drawn.shape[0], : drawn.shape[1]] = drawn
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        imsave(tmp, out, format="png")
