"""Raster labels as real datasets ship them (Sen1Floods11: int16 with -1 for unknown; masks with 255 for the
target), and grids compared in pixels: each silent failure of the issue is a clear error or a right mask.

Every fixture is written here: a scene pair in EPSG:4326 (10 m pixels in degrees), label rasters on its grid
and on a grid with 1 % larger pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import nothing_predicted, prepare_config
from rasterio.crs import CRS
from rasterio.transform import Affine

from unosat.errors import UnosatError
from unosat.io.raster import Grid
from unosat.prepare import run as prepare
from unosat.prepared import PreparedDataset

ROWS, COLS = 64, 80
#: about 10 m at 33 degrees north, in degrees
DEG = 9e-5
WGS84 = CRS.from_epsg(4326)
SCENE_ID = "38RNV_20200101"
SCENE_TRANSFORM = Affine(DEG, 0, 44.0, 0, -DEG, 33.0)


def write(path: Path, array: np.ndarray, transform: Affine, nodata=None, crs=WGS84) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype=array.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(array, 1)
    return path


@pytest.fixture
def scene_4326(tmp_path) -> Path:
    """A linear VV/VH pair in EPSG:4326 with the UNOSAT names, no nodata."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    for pol, level in (("vh", 0.014), ("vv", 0.15)):
        values = rng.gamma(4.4, level / 4.4, (ROWS, COLS)).astype("float32")
        write(raw / "Area_2020" / f"s1a_38RNV_{pol}_20200101.tif", values, SCENE_TRANSFORM)
    return raw


def labels_config(raw: Path, out: Path, *overrides: str):
    return prepare_config(
        raw, out, "labels=raster", "steps=[bands,labels]", "split.test_cities=[]", *overrides
    )


def prepared_mask(out: Path) -> np.ndarray:
    with rasterio.open(PreparedDataset(out).mask_path(SCENE_ID)) as src:
        return src.read(1)


def sen1floods_label() -> np.ndarray:
    """int16 water labels: 1 target, 0 background, -1 unknown."""
    label = np.zeros((ROWS, COLS), dtype="int16")
    label[10:30, 20:50] = 1
    label[40:, :8] = -1
    return label


def test_int16_labels_with_a_nodata_tag_of_minus_one(scene_4326, tmp_path):
    label = sen1floods_label()
    write(scene_4326 / f"{SCENE_ID}_mask.tif", label, SCENE_TRANSFORM, nodata=-1)
    prepare(labels_config(scene_4326, tmp_path / "out"))
    expected = np.where(label == -1, 255, label).astype("uint8")
    np.testing.assert_array_equal(prepared_mask(tmp_path / "out"), expected)


def test_untagged_minus_one_is_refused_not_made_a_building(scene_4326, tmp_path):
    label = sen1floods_label()
    path = write(scene_4326 / f"{SCENE_ID}_mask.tif", label, SCENE_TRANSFORM, nodata=None)
    with pytest.raises(UnosatError) as err:
        prepare(labels_config(scene_4326, tmp_path / "out"))
    message = str(err.value)
    assert str(path) in message and "[-1]" in message and "labels.raster_nodata" in message
    assert "labels.positive_values" in message and "\n" not in message
    assert not PreparedDataset(tmp_path / "out").mask_path(SCENE_ID).exists()
    # saying which value is unknown gives the same mask as the tag
    prepare(labels_config(scene_4326, tmp_path / "named", "labels.raster_nodata=-1"))
    np.testing.assert_array_equal(prepared_mask(tmp_path / "named"), np.where(label == -1, 255, label))


def test_positive_values_name_the_target(scene_4326, tmp_path):
    label = np.zeros((ROWS, COLS), dtype="uint8")
    label[5:15, 5:25] = 255  # DN=255 as the UNOSAT polygons carry
    label[30:40, 30:60] = 7  # another class: background for this target
    write(scene_4326 / f"{SCENE_ID}_mask.tif", label, SCENE_TRANSFORM, nodata=None)
    with pytest.raises(UnosatError, match=r"\[7, 255\]"):
        prepare(labels_config(scene_4326, tmp_path / "refused"))
    prepare(labels_config(scene_4326, tmp_path / "out", "labels.positive_values=[255]"))
    np.testing.assert_array_equal(prepared_mask(tmp_path / "out"), (label == 255).astype("uint8"))


def test_grids_are_compared_in_pixels_not_crs_units():
    scene = Grid(WGS84, SCENE_TRANSFORM, COLS, ROWS)
    larger = Grid(WGS84, Affine(DEG * 1.01, 0, 44.0, 0, -DEG * 1.01, 33.0), COLS, ROWS)
    # 1 % larger pixels: the far corner lies 0.8 px off, though the transforms differ by 9e-7 degrees
    assert larger.transform.almost_equals(scene.transform, precision=1e-6)
    assert scene.offset_px(larger) == pytest.approx(0.01 * np.hypot(COLS, ROWS), rel=1e-6)
    assert any("px apart" in d for d in scene.differences(larger))
    nudged = Grid(WGS84, Affine(DEG, 0, 44.0 + DEG / 1000, 0, -DEG, 33.0), COLS, ROWS)  # 1/1000 px
    assert scene.differences(nudged) == []
    utm = Grid(CRS.from_epsg(32638), Affine(10, 0, 5e5, 0, -10, 4e6), COLS, ROWS)
    assert (
        utm.differences(Grid(utm.crs, Affine(10, 0, 5e5 + 0.05, 0, -10, 4e6), COLS, ROWS)) == []
    )  # 1/200 px
    assert utm.differences(Grid(utm.crs, Affine(10, 0, 5e5 + 0.5, 0, -10, 4e6), COLS, ROWS))  # 1/20 px


def test_labels_on_a_grid_with_one_percent_larger_pixels_are_warped(scene_4326, tmp_path):
    """Each scene pixel takes the label pixel under its centre; beyond the label raster it is ignored."""
    rng = np.random.default_rng(1)
    label = (rng.random((ROWS, COLS)) < 0.3).astype("uint8")
    coarse = Affine(DEG * 1.01, 0, 44.0, 0, -DEG * 1.01, 33.0)
    write(scene_4326 / f"{SCENE_ID}_mask.tif", label, coarse, nodata=None)
    prepare(labels_config(scene_4326, tmp_path / "out"))
    rows, cols = np.mgrid[0:ROWS, 0:COLS]
    r = np.floor((rows + 0.5) / 1.01).astype(int)
    c = np.floor((cols + 0.5) / 1.01).astype(int)
    expected = label[np.clip(r, 0, ROWS - 1), np.clip(c, 0, COLS - 1)]
    got = prepared_mask(tmp_path / "out")
    np.testing.assert_array_equal(got, expected)  # the label raster covers the whole scene (it is larger)
    assert (got != label).mean() > 0.2  # read as if on the scene grid, a quarter of the pixels would be wrong


def test_labels_that_cover_part_of_the_scene_leave_the_rest_ignored(scene_4326, tmp_path):
    label = np.ones((ROWS // 2, COLS), dtype="uint8")
    write(scene_4326 / f"{SCENE_ID}_mask.tif", label, SCENE_TRANSFORM, nodata=None)  # the top half only
    prepare(labels_config(scene_4326, tmp_path / "out"))
    got = prepared_mask(tmp_path / "out")
    assert (got[: ROWS // 2] == 1).all() and (got[ROWS // 2 :] == 255).all()


# ------------------------------------------------------------------------- evaluate=true with raster labels


def test_evaluation_against_a_label_raster_leaves_its_unknown_pixels_out(tmp_path):
    from conftest import MASK_TRANSFORM as TRANSFORM
    from conftest import numpy_confusion, write_mask

    from unosat.io.labels import LabelsConfig
    from unosat.predict.evaluate import evaluate_city
    from unosat.predict.vectorize import VectorizeConfig, vectorize

    truth = np.zeros((32, 40), dtype="int16")
    truth[2:6, 2:6] = truth[10:14, 16:26] = truth[20:23, 8:11] = 1
    truth[25:, 30:] = -1  # unknown
    pred = np.zeros((32, 40), dtype="uint8")
    pred[2:6, 2:6] = pred[10:14, 16:26] = 1  # two of three found
    pred[26:30, 32:36] = 1  # a false alarm where the truth is unknown: not counted
    pred[0, :] = 255  # prediction nodata
    mask = write_mask(tmp_path / "pred.tif", pred)
    polygons = tmp_path / "pred.gpkg"
    vectorize(mask, polygons, VectorizeConfig(block_rows=8))
    labels = write(tmp_path / "truth.tif", truth, TRANSFORM, nodata=-1, crs=CRS.from_epsg(32638))
    result = evaluate_city(mask, polygons, labels, block_rows=7, labels=LabelsConfig(source="raster"))
    known = truth != -1
    expected = numpy_confusion(np.where(known, truth, 0), np.where(known, pred, 255))
    assert result["pixel"]["confusion"] == expected.tolist()
    assert result["pixel"]["recall_building"] == pytest.approx(56 / 65)
    assert result["object"]["tp"] == 2 and result["object"]["fn"] == 1
    assert result["files"]["labels_source"] == "raster"


@pytest.fixture(scope="module")
def label_rasters(tiny_prepared_db, tmp_path_factory) -> Path:
    """The prepared masks of the dB demo copied as label rasters ``<scene_id>_mask.tif`` (255 tagged nodata)."""
    import shutil

    out = tmp_path_factory.mktemp("label_rasters")
    for path in sorted(PreparedDataset(tiny_prepared_db).masks_dir.glob("*.tif")):
        shutil.copy(path, out / f"{path.stem}_mask.tif")
    return out


def evaluate_run(tmp_path: Path, ckpt: Path, input_dir: Path, out: str, *overrides: str) -> dict:
    from unosat.config import compose_config
    from unosat.predict.run import run

    cfg = compose_config(
        "predict",
        [
            f"ckpt={ckpt}",
            f"input={input_dir}",
            f"output={tmp_path / out}",
            f"paths.output_dir={tmp_path / 'hydra'}",
            "cities=[Samawah]",
            "evaluate=true",
            "window.size=96",
            "window.overlap=32",
            "window.batch_size=4",
            "cog.blocksize=128",
            "block_rows=64",
            *overrides,
        ],
    )
    return run(cfg)


@pytest.mark.slow
def test_evaluate_accepts_label_rasters_and_prepared_masks(
    tiny_raw_session, tiny_prepared_db, label_rasters, tmp_path
):
    """The same prediction scored against the label vectors, the same labels as rasters, and the prepared
    masks: the same pixel confusion (all are the polygons burnt on the scene grid, nodata left out). Scene by
    scene: a city product would be scored against its first acquisition's raster, whose nodata differs."""
    from conftest import toy_checkpoint

    ckpt = toy_checkpoint(
        tmp_path / "toy.ckpt", {"units": "linear", "nodata_values": [0.0, -99999.0], "file_nodata": True}
    )
    per_scene = "aggregate.method=none"
    vector = evaluate_run(tmp_path, ckpt, tiny_raw_session, "vector", per_scene)["evaluation"]["overall"]
    raster = evaluate_run(
        tmp_path,
        ckpt,
        tiny_raw_session,
        "raster",
        per_scene,
        "labels=raster",
        f"labels.dirs=[{label_rasters}]",
    )["evaluation"]["overall"]
    prepared = evaluate_run(tmp_path, ckpt, tiny_prepared_db, "prepared", per_scene, "labels=prepared")[
        "evaluation"
    ]["overall"]
    assert vector["counts"]["true_building_pixels"] > 0
    assert raster["pixel"]["confusion"] == vector["pixel"]["confusion"] == prepared["pixel"]["confusion"]
    assert raster["object"] == prepared["object"]


@pytest.mark.slow
def test_every_input_is_checked_before_predicting(
    tiny_raw_session, tiny_prepared_db, label_rasters, tmp_path
):
    import shutil

    from conftest import toy_checkpoint

    ckpt = toy_checkpoint(
        tmp_path / "toy.ckpt", {"units": "linear", "nodata_values": [0.0, -99999.0], "file_nodata": True}
    )
    partial = Path(shutil.copytree(label_rasters, tmp_path / "partial"))
    next(partial.glob("38RNV_*_DES_mask.tif")).unlink()  # the second Samawah acquisition lacks its labels
    with pytest.raises(UnosatError, match=r"no label raster 38RNV_.*_DES_mask.tif for scene"):
        evaluate_run(
            tmp_path,
            ckpt,
            tiny_raw_session,
            "out",
            "labels=raster",
            f"labels.dirs=[{partial}]",
            "aggregate.method=none",
        )
    with pytest.raises(UnosatError, match="labels=prepared scores against a prepared dataset's masks"):
        evaluate_run(tmp_path, ckpt, tiny_raw_session, "out", "labels=prepared")
    no_crs = tmp_path / "no_crs"
    no_crs.mkdir()
    for path in label_rasters.glob("*.tif"):
        with rasterio.open(path) as src:
            with rasterio.open(no_crs / path.name, "w", **(src.profile | {"crs": None})) as dst:
                dst.write(src.read())
    with pytest.raises(UnosatError, match="has no CRS"):
        evaluate_run(tmp_path, ckpt, tiny_raw_session, "out", "labels=raster", f"labels.dirs=[{no_crs}]")
    assert nothing_predicted(tmp_path / "out")  # nothing predicted; at most the failed-run record
