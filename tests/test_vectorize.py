"""Vectorisation of masks: polygons rasterize back to their mask, whatever the strip height; attributes."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import scipy.ndimage as ndi
import shapely
from rasterio.enums import MergeAlg
from rasterio.features import rasterize
from rasterio.transform import from_origin

from unosat.errors import UnosatError
from unosat.io.atomic import is_temporary
from unosat.predict.probability import decode_probability, encode_probability
from unosat.predict.vectorize import VectorizeConfig, read_vectorized, vectorize

#: UTM 38N, 10 m x 10.0027 m pixels (one test city of the challenge has such pixels)
CRS = "EPSG:32638"
TRANSFORM = from_origin(421000.0, 3693000.0, 10.0, 10.0027)
PIXEL_AREA = 10.0 * 10.0027
FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


def write_raster(path, array, dtype="uint8", nodata=255, transform=TRANSFORM, crs=CRS, **options):
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype=dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        **options,
    ) as dst:
        dst.write(array.astype(dtype), 1)
    return path


def burn(geoms, shape, transform=TRANSFORM) -> np.ndarray:
    """How many polygons cover each pixel centre (all_touched=False)."""
    geoms = [g for g in geoms if not g.is_empty]
    if not geoms:
        return np.zeros(shape, dtype=np.uint8)
    return rasterize(
        ((g, 1) for g in geoms),
        out_shape=shape,
        transform=transform,
        all_touched=False,
        merge_alg=MergeAlg.add,
        dtype="uint8",
    )


def random_mask(seed: int, shape=(61, 53), density=0.42) -> np.ndarray:
    """Blobs, holes, diagonal contacts and nodata: random pixels near the percolation threshold plus a
    nodata wedge and nodata specks."""
    rng = np.random.default_rng(seed)
    mask = (rng.random(shape) < density).astype(np.uint8)
    mask[ndi.binary_dilation(rng.random(shape) < 0.01, iterations=2)] = 1  # larger blobs with holes around
    rows, cols = np.indices(shape)
    mask[cols > rows + shape[1] // 2] = 255  # a swath wedge
    mask[rng.random(shape) < 0.03] = 255
    return mask


def run(tmp_path, mask, name="out.gpkg", **config):
    mask_path = write_raster(tmp_path / "mask.tif", mask)
    out = tmp_path / name
    n = vectorize(mask_path, out, VectorizeConfig(**config))
    frame = read_vectorized(out, CRS)
    assert len(frame) == n
    return n, out


def canonical(geoms) -> set[bytes]:
    """Polygons as point sets (collinear vertices dropped, vertex order normalised), to compare runs."""
    return set(shapely.to_wkb(shapely.normalize(shapely.simplify(np.asarray(geoms), 0.0))).tolist())


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_polygons_rasterize_back_to_the_mask_for_any_strip_height(tmp_path, seed):
    import geopandas as gpd

    mask = random_mask(seed)
    building = mask == 1
    n_regions = ndi.label(building, structure=FOUR)[1]
    reference = None
    for block_rows in (1000, 7, 1, 2):
        n, out = run(tmp_path, mask, block_rows=block_rows)
        frame = gpd.read_file(out)
        geoms = frame.geometry.values
        assert n == n_regions  # one polygon per 4-connected region
        assert shapely.is_valid(geoms).all()
        assert set(shapely.get_type_id(geoms).tolist()) == {3}  # Polygon
        assert np.array_equal(burn(geoms, mask.shape), building)  # exact and disjoint, none over nodata
        assert frame["id"].tolist() == list(range(1, n + 1))
        assert np.isclose(frame["area_m2"].sum(), building.sum() * PIXEL_AREA)
        if reference is None:
            reference = canonical(geoms)
        else:  # the same polygons as a single-strip run, merged pieces included
            assert canonical(geoms) == reference


#: hand-made shapes (1 building, 0 background, 2 nodata, shown as 255 in the mask)
SHAPES = {
    "ring_with_hole_and_island": (["111111", "100001", "101101", "100001", "111111"], 2, [0, 1]),
    "u_reconnects_below": (["1001", "1001", "1001", "1001", "1111"], 1, [0]),
    "n_splits_below": (["1111", "1001", "1001", "1001", "1001"], 1, [0]),
    "serpentine": (["11111", "00001", "11111", "10000", "11111", "00001", "11111"], 1, [0]),
    "diagonal_only": (["1000", "0100", "0010", "0001"], 4, [0, 0, 0, 0]),
    "checkerboard": (["1010", "0101", "1010", "0101"], 8, [0] * 8),
    "hole_touching_at_a_corner": (["1111", "1001", "1010", "1110"], 1, [1]),
    "blobs_touching_at_corners": (["0110", "1001", "1010", "0110"], 4, [0] * 4),
    "nodata_beside_buildings": (["1122", "1122", "0211", "0011"], 2, [0, 0]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("block_rows", [1, 2, 3, 100])
def test_hand_made_shapes(tmp_path, name, block_rows):
    import geopandas as gpd

    rows, expected, holes = SHAPES[name]
    small = np.array([[int(c) for c in r] for r in rows], dtype=np.uint8)
    mask = np.zeros((small.shape[0] + 2, small.shape[1] + 2), dtype=np.uint8)
    mask[1:-1, 1:-1] = np.where(small == 2, 255, small)
    n, out = run(tmp_path, mask, block_rows=block_rows)
    geoms = gpd.read_file(out).geometry.values
    assert n == expected
    assert sorted(len(g.interiors) for g in geoms) == sorted(holes)
    assert np.array_equal(burn(geoms, mask.shape), mask == 1)


def test_attributes_area_mean_probability_and_dates(tmp_path):
    import geopandas as gpd

    rng = np.random.default_rng(5)
    mask = random_mask(3, density=0.35)
    p = rng.random(mask.shape).astype(np.float32)
    p[rng.random(mask.shape) < 0.05] = np.nan  # nodata probabilities are left out of the mean
    prob = write_raster(tmp_path / "prob.tif", encode_probability(p, "uint8"))
    # float16 probabilities are stored in Float32 bands with NBITS=16 (GDAL has no float16 type here)
    prob16 = write_raster(
        tmp_path / "prob16.tif", encode_probability(p, "float16"), dtype="float32", nodata=np.nan, NBITS=16
    )
    dates = [np.where(rng.random(mask.shape) < f, 1, 0).astype(np.uint8) for f in (0.02, 0.2, 0.6)]
    dates[2][:5] = 255
    date_paths = [write_raster(tmp_path / f"date{i}.tif", d) for i, d in enumerate(dates)]
    mask_path = write_raster(tmp_path / "mask.tif", mask)
    decoded = decode_probability(encode_probability(p, "uint8"))

    for prob_path in (prob, prob16):
        out = tmp_path / f"{prob_path.stem}.gpkg"
        n = vectorize(
            mask_path, out, VectorizeConfig(block_rows=7), prob_path=prob_path, date_mask_paths=date_paths
        )
        frame = gpd.read_file(out)
        assert n == len(frame) > 50
        values = decoded if prob_path == prob else decode_probability(encode_probability(p, "float16"))
        n_multi_date = 0
        for row in frame.itertuples():
            pixels = burn([row.geometry], mask.shape).astype(bool)
            assert row.area_m2 == pytest.approx(pixels.sum() * PIXEL_AREA, rel=1e-12)
            expected = np.nanmean(values[pixels]) if np.isfinite(values[pixels]).any() else np.nan
            np.testing.assert_allclose(row.mean_prob, expected, rtol=1e-6)
            n_dates = sum(int((d[pixels] == 1).any()) for d in dates)
            assert row.n_dates == n_dates
            n_multi_date += n_dates > 1
        assert n_multi_date > 5

    out = tmp_path / "bare.gpkg"
    vectorize(mask_path, out, VectorizeConfig(block_rows=7))
    frame = gpd.read_file(out)
    assert frame["mean_prob"].isna().all()
    assert (frame["n_dates"] == 0).all()


def test_min_area_drops_small_polygons_only(tmp_path):
    import geopandas as gpd

    mask = random_mask(1)
    labels, _ = ndi.label(mask == 1, structure=FOUR)
    sizes = np.bincount(labels.ravel())
    big = (sizes >= 3)[labels] & (labels > 0)
    n, out = run(tmp_path, mask, block_rows=5, min_area_m2=2.5 * PIXEL_AREA)
    frame = gpd.read_file(out)
    assert n == int((sizes[1:] >= 3).sum())
    assert (frame["area_m2"] >= 2.5 * PIXEL_AREA).all()
    assert np.array_equal(burn(frame.geometry.values, mask.shape), big)


def test_simplification_keeps_valid_polygons_and_pixel_areas(tmp_path):
    import geopandas as gpd

    mask = random_mask(2)
    _, exact = run(tmp_path, mask, name="exact.gpkg", block_rows=6)
    _, simple = run(tmp_path, mask, name="simple.gpkg", block_rows=6, simplify_tolerance=7.5)
    a, b = gpd.read_file(exact), gpd.read_file(simple)
    assert len(a) == len(b)
    assert shapely.is_valid(b.geometry.values).all()
    assert (
        shapely.get_num_coordinates(b.geometry.values).sum()
        < shapely.get_num_coordinates(a.geometry.values).sum()
    )
    np.testing.assert_array_equal(a["area_m2"], b["area_m2"])  # pixel areas, not simplified outlines


def test_reprojection_to_wgs84(tmp_path):
    import geopandas as gpd

    mask = random_mask(4)
    n, out = run(tmp_path, mask, block_rows=9, crs="EPSG:4326")
    frame = gpd.read_file(out)
    assert frame.crs.to_epsg() == 4326
    minx, miny, maxx, maxy = frame.total_bounds
    assert 44 < minx < maxx < 46 and 33 < miny < maxy < 34  # Iraq, UTM zone 38N
    back = frame.to_crs(CRS).geometry.values
    assert np.array_equal(burn(back, mask.shape), mask == 1)
    assert np.isclose(shapely.area(back).sum(), frame["area_m2"].sum(), rtol=1e-6)


def test_areas_are_geodesic_on_a_geographic_grid(tmp_path):
    import geopandas as gpd

    mask = np.zeros((12, 10), dtype=np.uint8)
    mask[2:8, 3:9] = 1
    transform = from_origin(44.0, 34.0, 1e-4, 1e-4)
    mask_path = write_raster(tmp_path / "mask4326.tif", mask, transform=transform, crs="EPSG:4326")
    vectorize(mask_path, tmp_path / "geo.gpkg", VectorizeConfig(block_rows=3))
    frame = gpd.read_file(tmp_path / "geo.gpkg")
    expected = (
        gpd.GeoSeries(frame.geometry, crs="EPSG:4326").to_crs(CRS).area.iloc[0]
    )  # ~ 36 x 9.2 m x 11.1 m
    assert len(frame) == 1
    assert frame["area_m2"].iloc[0] == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(
    "driver,name", [("GPKG", "b.gpkg"), ("ESRI Shapefile", "b.shp"), ("geojson", "b.geojson")]
)
@pytest.mark.slow
def test_drivers_write_the_same_polygons_atomically(tmp_path, driver, name):
    import geopandas as gpd

    mask = random_mask(0)
    p = np.random.default_rng(0).random(mask.shape).astype(np.float32)
    p[:3] = np.nan  # some polygons have no probability at all: NaN / null
    mask_path = write_raster(tmp_path / "mask.tif", mask)
    prob = write_raster(tmp_path / "prob.tif", encode_probability(p, "uint8"))
    out_dir = tmp_path / "out"
    out = out_dir / name
    for _ in range(2):  # the second run replaces the first output
        n = vectorize(mask_path, out, VectorizeConfig(driver=driver, block_rows=4), prob_path=prob)
    frame = gpd.read_file(out)
    reference = gpd.read_file(vectorize_reference(tmp_path, mask_path, prob))
    assert n == len(frame) == len(reference)
    assert frame.crs.to_epsg() == 32638
    assert canonical(frame.geometry.values) == canonical(reference.geometry.values)
    frame, reference = frame.sort_values("id"), reference.sort_values("id")
    np.testing.assert_array_equal(frame["id"], reference["id"])
    np.testing.assert_allclose(frame["area_m2"], reference["area_m2"])
    np.testing.assert_allclose(frame["mean_prob"], reference["mean_prob"], rtol=1e-9)  # NaN where NaN
    assert frame["mean_prob"].isna().any()
    np.testing.assert_array_equal(frame["n_dates"], reference["n_dates"])
    files = sorted(p.name for p in out_dir.iterdir())
    assert not any(is_temporary(out_dir / f) for f in files)
    if driver == "ESRI Shapefile":
        assert {"b.shp", "b.shx", "b.dbf", "b.prj"} <= set(files)
    else:
        assert files == [name]


def vectorize_reference(tmp_path, mask_path, prob):
    out = tmp_path / "reference.gpkg"
    if not out.exists():
        vectorize(mask_path, out, VectorizeConfig(block_rows=4), prob_path=prob)
    return out


@pytest.mark.parametrize(
    "driver,name", [("GPKG", "e.gpkg"), ("ESRI Shapefile", "e.shp"), ("GeoJSON", "e.geojson")]
)
def test_a_mask_without_buildings_gives_an_empty_file(tmp_path, driver, name):
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[:, :4] = 255
    n, out = run(tmp_path, mask, name=name, driver=driver, block_rows=7)
    assert n == 0
    assert len(read_vectorized(out, "EPSG:4326")) == 0


def test_user_errors_name_the_problem_and_leave_no_file(tmp_path):
    mask = random_mask(0)
    mask_path = write_raster(tmp_path / "mask.tif", mask)
    with pytest.raises(UnosatError, match="driver"):
        VectorizeConfig(driver="KML")
    with pytest.raises(UnosatError, match="crs"):
        VectorizeConfig(crs="EPSG:999999")
    with pytest.raises(UnosatError, match="block_rows"):
        VectorizeConfig(block_rows=0)
    with pytest.raises(UnosatError, match=r"\.shp"):
        vectorize(mask_path, tmp_path / "out.gpkg", VectorizeConfig(driver="ESRI Shapefile"))
    with pytest.raises(UnosatError, match="missing.tif"):
        vectorize(tmp_path / "missing.tif", tmp_path / "out.gpkg", VectorizeConfig())
    other = from_origin(421000.0, 3693000.0, 20.0, 20.0)
    prob = write_raster(tmp_path / "prob_other_grid.tif", np.zeros_like(mask), transform=other)
    with pytest.raises(UnosatError, match="prob_other_grid.tif"):
        vectorize(mask_path, tmp_path / "out.gpkg", VectorizeConfig(), prob_path=prob)
    no_crs = write_raster(tmp_path / "no_crs.tif", mask, crs=None)
    with pytest.raises(UnosatError, match="no CRS"):
        vectorize(no_crs, tmp_path / "out.gpkg", VectorizeConfig())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif", "no_crs.tif", "prob_other_grid.tif"]


def test_simplify_tolerance_and_min_area_are_metres_in_a_geographic_crs(tmp_path):
    """On an EPSG:4326 grid (9e-5 degree pixels, about 8.4 x 10 m at 33 N) the tolerance is metres: the outlines
    move by metres (measured in UTM: Douglas-Peucker keeps dropped vertices within the tolerance of the new
    outline; the Hausdorff distance between outlines can exceed it a little), and get fewer vertices. Read as
    degrees, 7.5 would have collapsed every polygon."""
    import geopandas as gpd

    mask = random_mask(3)
    mask[mask == 255] = 0
    wgs84 = from_origin(44.0, 33.5, 9e-5, 9e-5)
    mask_path = write_raster(tmp_path / "mask.tif", mask, transform=wgs84, crs="EPSG:4326")
    vectorize(mask_path, tmp_path / "exact.gpkg", VectorizeConfig(block_rows=7))
    vectorize(mask_path, tmp_path / "simple.gpkg", VectorizeConfig(block_rows=7, simplify_tolerance=7.5))
    exact, simple = (gpd.read_file(tmp_path / n).to_crs(CRS) for n in ("exact.gpkg", "simple.gpkg"))
    assert len(exact) == len(simple) and shapely.is_valid(simple.geometry.values).all()
    assert (
        shapely.get_num_coordinates(simple.geometry.values).sum()
        < 0.8 * shapely.get_num_coordinates(exact.geometry.values).sum()
    )
    moved = shapely.hausdorff_distance(exact.geometry.values, simple.geometry.values)
    assert 2.0 < moved.max() <= 7.5 * 1.25
    np.testing.assert_array_equal(exact["area_m2"], simple["area_m2"])
    # min_area_m2 in m^2 on the geodesic pixel area: a threshold of 2.5 pixels keeps regions of 3 pixels or more
    pixel_m2 = float(exact["area_m2"].min())  # the smallest region: one pixel (the random mask has many)
    assert 8.3 * 10.0 < pixel_m2 < 8.5 * 10.0
    n = vectorize(mask_path, tmp_path / "big.gpkg", VectorizeConfig(block_rows=7, min_area_m2=2.5 * pixel_m2))
    sizes = np.bincount(ndi.label(mask == 1, structure=FOUR)[0].ravel())[1:]
    assert n == int((sizes >= 3).sum())
