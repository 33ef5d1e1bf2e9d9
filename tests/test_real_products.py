"""Real Sentinel-1 products as users have them, found, prepared and predicted without renaming: an ASF HyP3 RTC
pair, a STAC item with two COG assets, a Sen1Floods11 chip (VV+VH in dB in one EPSG:4326 file, NaN nodata,
int16 labels with -1). Every fixture is written by these tests, with the products' own names and metadata."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from conftest import COLS, HYP3, ROWS, UTM, UTM_TRANSFORM, WGS84, backscatter, prepare_config, toy_checkpoint
from conftest import write_product as write
from rasterio.crs import CRS
from rasterio.transform import Affine

from unosat.config import compose_config
from unosat.errors import UnosatError
from unosat.prepare import run as prepare
from unosat.prepared import PreparedDataset
from unosat.scenes import discover_scenes

DEG_TRANSFORM = Affine(9e-5, 0, -1.5, 0, -9e-5, 9.5)
PRED = ["window.size=64", "window.overlap=16", "window.batch_size=2", "cog.blocksize=128", "block_rows=32"]


def area_labels(path: Path, crs, transform) -> Path:
    boxes = [
        shapely.box(*(transform * (c0, r1)), *(transform * (c1, r0)))
        for r0, c0, r1, c1 in [(5, 5, 12, 15), (30, 40, 36, 52)]
    ]
    gpd.GeoDataFrame({"DN": [255, 255]}, geometry=boxes, crs=crs).to_file(path, engine="pyogrio")
    return path


def toy(tmp_path: Path, units: str) -> Path:
    nodata = [0.0, -99999.0] if units == "linear" else [-99999.0]
    return toy_checkpoint(
        tmp_path / f"toy_{units}.ckpt", {"units": units, "nodata_values": nodata, "file_nodata": True}
    )


def predict(tmp_path: Path, ckpt: Path, raw: Path, *overrides: str) -> dict:
    from unosat.predict.run import run

    return run(
        compose_config(
            "predict",
            [
                f"ckpt={ckpt}",
                f"input={raw}",
                f"output={tmp_path / 'pred'}",
                f"paths.output_dir={tmp_path / 'hydra'}",
                *PRED,
                *overrides,
            ],
        )
    )


def assert_on_grid(path: str, crs, transform) -> None:
    with rasterio.open(path) as src:
        assert src.crs == crs and src.transform.almost_equals(transform) and src.shape == (ROWS, COLS)


# ------------------------------------------------------------------------------------------------ HyP3


@pytest.fixture
def hyp3_raw(tmp_path) -> Path:
    raw = tmp_path / "raw"
    product = raw / "Mosul" / HYP3
    pols = backscatter(0)
    for pol in ("VV", "VH"):
        write(product / f"{HYP3}_{pol}.tif", [pols[pol.lower()]], UTM, UTM_TRANSFORM, nodata=0.0)
    for extra in ("dem", "ls_map", "area", "inc_map"):  # the product's other rasters are not scenes
        write(product / f"{HYP3}_{extra}.tif", [np.ones((ROWS, COLS), "float32")], UTM, UTM_TRANSFORM)
    (product / f"{HYP3}.README.md.txt").write_text("HyP3 RTC product")
    area_labels(raw / "Mosul.gpkg", UTM, UTM_TRANSFORM)
    return raw


@pytest.mark.slow  # discovered, prepared and predicted end to end
def test_hyp3_rtc_pair_found_prepared_and_predicted(hyp3_raw, tmp_path):
    from hydra.utils import instantiate

    discovery = instantiate(compose_config("prepare", ["discovery=hyp3"]).discovery)
    (scene,) = discover_scenes(hyp3_raw, discovery)
    assert (scene.city, scene.mgrs, scene.date, scene.time, scene.orbit_pass) == (
        "Mosul",
        "7370",
        "20190917",
        "030900",
        None,
    )
    assert scene.scene_id == "7370_20190917t030900" and scene.vv.name == f"{HYP3}_VV.tif"
    out = tmp_path / "prepared"
    prepare(
        prepare_config(
            hyp3_raw,
            out,
            "discovery=hyp3",
            "labels.template='{city}'",
            "split.test_cities=[]",
            "steps=[bands,labels]",
        )
    )
    with rasterio.open(PreparedDataset(out).mask_path(scene.scene_id)) as src:
        mask = src.read(1)
    assert mask[5:12, 5:15].all() and mask.sum() == 7 * 10 + 6 * 12
    manifest = predict(tmp_path, toy(tmp_path, "linear"), hyp3_raw, "discovery=hyp3")
    assert [s["scene_id"] for s in manifest["scenes"]] == [scene.scene_id]
    assert_on_grid(manifest["scenes"][0]["probability"], UTM, UTM_TRANSFORM)


def test_hyp3_product_without_an_area_folder_says_how_to_name_areas(hyp3_raw, tmp_path):
    from hydra.utils import instantiate

    flat = tmp_path / "flat"
    flat.mkdir()
    for path in (hyp3_raw / "Mosul" / HYP3).glob("*_V?.tif"):
        path.rename(flat / path.name)
    discovery = instantiate(compose_config("prepare", ["discovery=hyp3"]).discovery)
    with pytest.raises(UnosatError, match="discovery.area=scene"):
        discover_scenes(flat, discovery)
    (scene,) = discover_scenes(
        flat, instantiate(compose_config("prepare", ["discovery=hyp3", "discovery.area=scene"]).discovery)
    )
    assert scene.city == scene.scene_id == "7370_20190917t030900"


# ------------------------------------------------------------------------------------------------ STAC


def stac_item(folder: Path, item_id: str, when: str, state: str, assets: dict) -> Path:
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "properties": {"datetime": when, "sat:orbit_state": state, "platform": "SENTINEL-1A"},
        "geometry": None,
        "links": [],
        "assets": assets,
    }
    path = folder / f"{item_id}.json"
    path.write_text(json.dumps(item))
    return path


@pytest.fixture
def stac_raw(tmp_path) -> Path:
    raw = tmp_path / "raw"
    item_id = "S1A_IW_GRDH_1SDV_20200104T030912_20200104T030937_030656_038357_rtc"
    folder = raw / "Najaf" / item_id
    pols = backscatter(1)
    for pol in ("vv", "vh"):
        write(folder / f"{pol}.tif", [pols[pol]], UTM, UTM_TRANSFORM, driver="COG")
    stac_item(
        folder,
        item_id,
        "2020-01-04T03:09:12.345Z",
        "descending",
        {
            "vv": {"href": "vv.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized"},
            "vh": {"href": "./vh.tif"},
            "thumbnail": {"href": "preview.png"},
        },
    )
    (raw / "catalog.json").write_text(json.dumps({"type": "Catalog", "id": "local", "links": []}))
    area_labels(raw / "Najaf.gpkg", UTM, UTM_TRANSFORM)
    return raw


@pytest.mark.slow  # discovered, prepared and predicted end to end
def test_stac_item_with_two_cog_assets_found_prepared_and_predicted(stac_raw, tmp_path):
    from hydra.utils import instantiate

    (scene,) = discover_scenes(stac_raw, instantiate(compose_config("prepare", ["discovery=stac"]).discovery))
    assert (scene.city, scene.date, scene.time, scene.orbit_pass) == ("Najaf", "20200104", "030912", "DES")
    assert scene.scene_id == (
        "S1A-IW-GRDH-1SDV-20200104T030912-20200104T030937-030656-038357-RTC_20200104t030912_DES"
    )
    assert scene.vv.name == "vv.tif" and scene.vh.name == "vh.tif"
    out = tmp_path / "prepared"
    prepare(
        prepare_config(
            stac_raw,
            out,
            "discovery=stac",
            "labels.template='{city}'",
            "split.test_cities=[]",
            "steps=[bands,labels]",
        )
    )
    assert PreparedDataset(out).mask_path(scene.scene_id).is_file()
    manifest = predict(tmp_path, toy(tmp_path, "linear"), stac_raw, "discovery=stac")
    assert_on_grid(manifest["scenes"][0]["probability"], UTM, UTM_TRANSFORM)


@pytest.mark.slow
def test_stac_items_with_remote_or_missing_assets_are_refused(stac_raw):
    from hydra.utils import instantiate

    item_path = next((stac_raw / "Najaf").rglob("S1A*.json"))
    item = json.loads(item_path.read_text())
    discovery = instantiate(compose_config("prepare", ["discovery=stac"]).discovery)
    item["assets"]["vh"]["href"] = "https://example.org/vh.tif"
    item_path.write_text(json.dumps(item))
    with pytest.raises(UnosatError, match="remote .*local files only"):
        discover_scenes(stac_raw, discovery)
    del item["assets"]["vh"]
    item_path.write_text(json.dumps(item))
    with pytest.raises(UnosatError, match="no VH asset"):
        discover_scenes(stac_raw, discovery)


# ------------------------------------------------------------------------------------------ Sen1Floods11


@pytest.fixture
def chip_raw(tmp_path) -> Path:
    """Ghana_103272_S1Hand.tif: VV, VH in dB, NaN where no data (no nodata tag), EPSG:4326; its int16 label
    Ghana_103272_LabelHand.tif with -1 for unknown (tagged)."""
    raw = tmp_path / "raw"
    pols = backscatter(2, "db")
    pols["vv"][:6, :] = np.nan
    pols["vh"][:6, :] = np.nan
    write(raw / "S1Hand" / "Ghana_103272_S1Hand.tif", [pols["vv"], pols["vh"]], WGS84, DEG_TRANSFORM)
    label = np.zeros((ROWS, COLS), dtype="int16")
    label[20:40, 10:30] = 1
    label[:6, :] = -1
    write(
        raw / "LabelHand" / "Ghana_103272_LabelHand.tif",
        [label],
        WGS84,
        DEG_TRANSFORM,
        nodata=-1,
        dtype="int16",
    )
    return raw


@pytest.mark.slow  # discovered, prepared and predicted end to end
def test_sen1floods11_chip_found_prepared_and_predicted(chip_raw, tmp_path):
    from hydra.utils import instantiate

    (scene,) = discover_scenes(
        chip_raw, instantiate(compose_config("prepare", ["discovery=sen1floods11"]).discovery)
    )
    assert (scene.city, scene.scene_id, scene.sources["vv"][1], scene.sources["vh"][1]) == (
        "Ghana",
        "103272",
        1,
        2,
    )
    out = tmp_path / "prepared"
    prepare(
        prepare_config(
            chip_raw,
            out,
            "discovery=sen1floods11",
            "bands=db",
            "labels=raster",
            "labels.template='{city}_{id}_LabelHand.tif'",
            "split.test_cities=[]",
            "steps=[bands,labels]",
        )
    )
    dataset = PreparedDataset(out)
    with rasterio.open(dataset.bands_path("103272")) as src:
        stack = src.read()
    with rasterio.open(dataset.mask_path("103272")) as src:
        mask = src.read(1)
    assert np.isnan(stack[:, :6]).all() and np.isfinite(stack[:, 6:]).all()
    assert (mask[:6] == 255).all() and mask[20:40, 10:30].all() and mask[6:].sum() == 400
    manifest = predict(tmp_path, toy(tmp_path, "db"), chip_raw, "discovery=sen1floods11")
    assert_on_grid(manifest["scenes"][0]["probability"], WGS84, DEG_TRANSFORM)
    with rasterio.open(manifest["scenes"][0]["probability"]) as src:
        prob = src.read(1)
    assert (prob[:6] == 255).all() and (prob[6:] != 255).all()


@pytest.mark.slow
def test_scenes_prepared_without_labels_are_marked_and_refused_by_training(hyp3_raw, tmp_path):
    from unosat.data.datamodule import UnosatDataModule

    (hyp3_raw / "Mosul.gpkg").unlink()  # nothing to learn from: prediction only
    out = tmp_path / "prepared"
    prepare(
        prepare_config(hyp3_raw, out, "discovery=hyp3", "labels=none", "bands=db", "split.test_cities=[]")
    )
    dataset = PreparedDataset(out)
    (scene_id,) = dataset.manifest["scenes"]
    with rasterio.open(dataset.mask_path(scene_id)) as src:
        assert (src.read(1) == 255).all()
    assert dataset.scenes()["labelled"].tolist() == [False]
    stats = pd.read_csv(dataset.statistics_csv)
    assert stats["target_ratio"].isna().all() and (~stats["skip"]).any()  # unknown, not 0
    assert (out / "normalization.json").is_file() and not (out / "quality.csv").exists()
    with pytest.raises(UnosatError, match=r"prepared without labels \(labels=none\).*not training"):
        UnosatDataModule(out).setup()
    with pytest.raises(UnosatError, match="prepared without labels"):
        predict(tmp_path, toy(tmp_path, "linear"), out, "evaluate=true", "labels=prepared")


def test_a_pattern_may_match_the_relative_path(tmp_path):
    """STAC-style asset names (iw-vv.tiff) whose date is only in a folder name, as in the README."""
    from unosat.scenes import DiscoveryConfig

    raw = tmp_path / "raw"
    pols = backscatter(3)
    for date in ("20200104", "20200116"):
        for pol in ("vv", "vh"):
            write(raw / "Najaf" / "orbit079" / date / f"iw-{pol}.tiff", [pols[pol]], UTM, UTM_TRANSFORM)
    pattern = r"(?P<city>[^/]+)/(?P<id>[^/]+)/(?P<date>\d{8})/iw-(?P<pol>vv|vh)\.tiff?$"
    with pytest.raises(UnosatError, match="discovery.match=path"):
        discover_scenes(raw, DiscoveryConfig(pattern=pattern))  # matched against the file name: nothing
    scenes = discover_scenes(raw, DiscoveryConfig(pattern=pattern, match="path"))
    assert [(s.city, s.scene_id) for s in scenes] == [
        ("Najaf", "ORBIT079_20200104"),
        ("Najaf", "ORBIT079_20200116"),
    ]
    assert scenes[0].vv == raw / "Najaf" / "orbit079" / "20200104" / "iw-vv.tiff"


# -------------------------------------------------------------------------------------- pyroSAR, VV only

PYROSAR = "S1A__IW___D_20180829T053012_VV_Orb_Cal_TF_TC_dB.tif"
UTM31 = CRS.from_epsg(32631)


@pytest.fixture
def vv_only_raw(tmp_path) -> Path:
    """A pyroSAR VV-only file in dB, EPSG:32631, nodata tag -99 over a wedge."""
    vv = backscatter(4, "db")["vv"]
    rows, cols = np.indices(vv.shape)
    vv[cols > rows + 40] = -99.0
    write(tmp_path / "raw" / "Paris" / PYROSAR, [vv], UTM31, UTM_TRANSFORM, nodata=-99.0)
    return tmp_path / "raw"


def vv_only_checkpoint(path: Path) -> Path:
    import torch

    from unosat.models import LWRefineNet

    torch.manual_seed(0)
    net = LWRefineNet(1, 2)
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "unosat": {
                "model": {"name": "lwrefinenet", "args": {"in_channels": 1, "num_classes": 2}},
                "data": {
                    "recipe": {"name": "vv_db", "bands": ["vv"], "units": "db", "db_floor": 1e-8},
                    "normalization": {"mean": [-10.0], "std": [6.0], "fill": 0.0},
                    "classes": ["background", "building"],
                    "raw_input": {"units": "db", "nodata_values": [-99999.0], "file_nodata": True},
                },
                "task": "segmentation",
            },
        },
        path,
    )
    return path


@pytest.mark.slow  # discovered, prepared and predicted end to end
def test_a_vv_only_pyrosar_file_is_found_prepared_and_predicted(vv_only_raw, tmp_path):
    from hydra.utils import instantiate

    vv_only = ["discovery=pyrosar", "discovery.polarisations=[vv]"]
    with pytest.raises(UnosatError, match=r"discovery.polarisations=\[vv\] and bands=vv_db"):
        discover_scenes(vv_only_raw, instantiate(compose_config("prepare", ["discovery=pyrosar"]).discovery))
    (scene,) = discover_scenes(vv_only_raw, instantiate(compose_config("prepare", vv_only).discovery))
    assert (scene.city, scene.scene_id, sorted(scene.sources)) == ("Paris", "S1A_20180829t053012_DES", ["vv"])
    with pytest.raises(UnosatError, match=r"has only VV, but band recipe 'db' .* needs VH: use bands=vv_db"):
        prepare(prepare_config(vv_only_raw, tmp_path / "refused", *vv_only, "bands=db", "steps=[bands]"))
    out = tmp_path / "prepared"
    prepare(prepare_config(vv_only_raw, out, *vv_only, "bands=vv_db", "labels=none", "split.test_cities=[]"))
    with (
        rasterio.open(PreparedDataset(out).bands_path(scene.scene_id)) as src,
        rasterio.open(scene.vv) as raw,
    ):
        stack, vv = src.read(1), raw.read(1)
    assert src.count == 1
    np.testing.assert_array_equal(np.isnan(stack), vv == -99.0)
    np.testing.assert_allclose(stack[vv != -99.0], vv[vv != -99.0], atol=1e-4)
    manifest = predict(tmp_path, vv_only_checkpoint(tmp_path / "vv.ckpt"), vv_only_raw, *vv_only)
    assert_on_grid(manifest["scenes"][0]["probability"], UTM31, UTM_TRANSFORM)
    with rasterio.open(manifest["scenes"][0]["probability"]) as src:
        assert np.array_equal(src.read(1) == 255, vv == -99.0)
    with pytest.raises(UnosatError, match="needs VH"):  # a dual-polarisation checkpoint on VV-only scenes
        predict(tmp_path, toy(tmp_path, "db"), vv_only_raw, *vv_only, "output=" + str(tmp_path / "other"))


def test_a_multiband_db_file_with_a_nodata_tag(tmp_path):
    """One file per scene, VV and VH in dB, nodata tagged -32768 (an export with an integer-like fill): the tag is
    nodata in both bands, 0 dB stays valid."""
    from hydra.utils import instantiate

    pols = backscatter(5, "db")
    pols["vv"][:, :10] = pols["vh"][:, :10] = -32768.0
    pols["vv"][40, 40] = 0.0  # 0 dB: valid
    raw = tmp_path / "raw"
    write(
        raw / "Ghana" / "Ghana_200001_S1Hand.tif",
        [pols["vv"], pols["vh"]],
        WGS84,
        DEG_TRANSFORM,
        nodata=-32768.0,
    )
    (scene,) = discover_scenes(
        raw, instantiate(compose_config("prepare", ["discovery=sen1floods11"]).discovery)
    )
    out = tmp_path / "prepared"
    prepare(
        prepare_config(raw, out, "discovery=sen1floods11", "bands=db", "labels=none", "split.test_cities=[]")
    )
    with rasterio.open(PreparedDataset(out).bands_path(scene.scene_id)) as src:
        stack = src.read()
    assert np.isnan(stack[:, :, :10]).all() and np.isfinite(stack[:, :, 10:]).all()
    assert stack[1, 40, 40] == pytest.approx(0.0, abs=1e-5)
