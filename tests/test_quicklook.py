"""Quicklooks: PNG size from max_px, outlines where the polygons are, nodata colour, user errors."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio.transform import from_origin

from unosat.errors import UnosatError
from unosat.io.atomic import is_temporary
from unosat.predict.quicklook import BOTH_RGB, NODATA_RGB, PREDICTED_RGB, TRUTH_RGB, quicklook

CRS = "EPSG:32638"
TRANSFORM = from_origin(421000.0, 3693000.0, 10.0, 10.0)
SHAPE = (300, 240)  # rows, cols: with max_px=100 the decimation factor is 3 and the PNG 100 x 80


def write_raster(path, array, nodata, dtype="float32"):
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype=dtype,
        crs=CRS,
        transform=TRANSFORM,
        nodata=nodata,
    ) as dst:
        dst.write(array.astype(dtype), 1)
    return path


def px_box(col0, row0, col1, row1) -> shapely.Polygon:
    """A box given by raster pixel coordinates, in map coordinates."""
    (x0, y0), (x1, y1) = TRANSFORM * (col0, row0), TRANSFORM * (col1, row1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


@pytest.fixture
def scene(tmp_path):
    """Linear VV backscatter with a nodata corner (value 0, as in the raw files)."""
    rng = np.random.default_rng(0)
    vv = rng.gamma(4.4, 0.15 / 4.4, SHAPE).astype(np.float32)
    vv[:30, 210:] = 0.0
    return write_raster(tmp_path / "vv.tif", vv, nodata=0.0)


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_outlines_are_drawn_where_the_polygons_are(tmp_path, scene):
    # edges at raster pixel x.5 fall in the middle of PNG pixels (factor 3): PNG columns 20 and 50 for the
    # predicted box, 35 and 65 for the true box, rows 40 and 70 for both
    predicted = gpd.GeoSeries([px_box(61.5, 121.5, 151.5, 211.5)], crs=CRS)
    truth_file = tmp_path / "truth.gpkg"
    gpd.GeoDataFrame(geometry=[px_box(106.5, 121.5, 196.5, 211.5)], crs=CRS).to_crs("EPSG:4326").to_file(
        truth_file
    )
    out = tmp_path / "ql" / "scene.png"
    quicklook(scene, 1, "linear", out, predicted=predicted, truth=truth_file, max_px=100, title="T")
    image = png(out)
    assert image.shape == (100, 80, 3)
    assert tuple(image[55, 20]) == PREDICTED_RGB  # left edge of the prediction only
    assert tuple(image[40, 25]) == PREDICTED_RGB  # its top edge, left of the true box
    assert tuple(image[55, 65]) == TRUTH_RGB  # right edge of the truth only
    assert tuple(image[40, 45]) == BOTH_RGB  # top edges on the same pixels
    assert tuple(image[70, 45]) == BOTH_RGB
    inside = image[55, 43]
    assert inside[0] == inside[1] == inside[2]  # gray backscatter inside the outlines
    assert tuple(image[5, 75]) == NODATA_RGB
    assert not any(is_temporary(p) for p in out.parent.iterdir())


def test_mask_rasters_keep_small_buildings_visible(tmp_path, scene):
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[150:162, 30:42] = 1  # 12 x 12 px: PNG rows 50..53, columns 10..13
    mask[240, 150] = 1  # one pixel: still a dot at PNG (80, 50)
    mask[:30, 210:] = 255
    mask_path = write_raster(tmp_path / "mask.tif", mask, nodata=255, dtype="uint8")
    out = tmp_path / "mask.png"
    quicklook(scene, 1, "linear", out, predicted=mask_path, max_px=100)
    image = png(out)
    assert tuple(image[50, 10]) == PREDICTED_RGB
    assert tuple(image[53, 12]) == PREDICTED_RGB
    assert tuple(image[51, 11]) != PREDICTED_RGB  # the inside of a large building is not filled
    assert tuple(image[80, 50]) == PREDICTED_RGB


@pytest.mark.slow
def test_size_follows_max_px_and_db_images_are_shown_as_they_are(tmp_path):
    rng = np.random.default_rng(1)
    db = rng.normal(-10, 3, (700, 1000)).astype(np.float32)
    db[:, :50] = np.nan
    path = write_raster(tmp_path / "db.tif", db, nodata=np.nan)
    for max_px, expected in ((256, (175, 250)), (1000, (700, 1000)), (2000, (700, 1000))):
        out = tmp_path / f"db_{max_px}.png"
        quicklook(path, 1, "db", out, max_px=max_px, title="a long title that runs over the image")
        image = png(out)
        assert image.shape[:2] == expected
        assert max(image.shape[:2]) <= max_px
    assert tuple(image[350, 10]) == NODATA_RGB


def test_user_errors(tmp_path, scene):
    with pytest.raises(UnosatError, match="units"):
        quicklook(scene, 1, "dB!", tmp_path / "x.png")
    with pytest.raises(UnosatError, match="band 2"):
        quicklook(scene, 2, "linear", tmp_path / "x.png")
    with pytest.raises(UnosatError, match="missing.tif"):
        quicklook(tmp_path / "missing.tif", 1, "linear", tmp_path / "x.png")
    with pytest.raises(UnosatError, match="missing_labels.shp"):
        quicklook(scene, 1, "linear", tmp_path / "x.png", truth=tmp_path / "missing_labels.shp")
    assert not (tmp_path / "x.png").exists()
