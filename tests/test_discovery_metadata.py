"""Discovery beyond file names: dates and passes from GeoTIFF tags and JSON sidecars (discovery.metadata), and
areas named by label files (discovery.area=label). Every file is written by these tests."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
import rasterio
import shapely
from conftest import HYP3, UTM, UTM_TRANSFORM, WGS84, backscatter, prepare_config
from conftest import write_product as write
from hydra.utils import instantiate
from rasterio.transform import Affine

from unosat.config import compose_config
from unosat.errors import UnosatError
from unosat.prepare import run as prepare
from unosat.scene_metadata import MetadataConfig, parse_datetime, parse_pass
from unosat.scenes import DiscoveryConfig, discover_scenes, find_label_file

#: a second HyP3 product, 20 km east of the first
HYP3_B = "S1B_IW_20190920T150102_DVP_RTC10_G_gpuned_9a2f"
EAST = Affine(10, 0, 441000, 0, -10, 3693000)


def discovery(*overrides: str) -> DiscoveryConfig:
    return instantiate(compose_config("prepare", list(overrides)).discovery)


def hyp3_pair(
    folder: Path, product: str = HYP3, transform: Affine = UTM_TRANSFORM, tags: dict | None = None
) -> Path:
    pols = backscatter(0)
    for pol in ("VV", "VH"):
        path = write(
            folder / product / f"{product}_{pol}.tif", [pols[pol.lower()]], UTM, transform, nodata=0.0
        )
        if tags:
            with rasterio.open(path, "r+") as dst:
                dst.update_tags(**tags)
    return folder / product


# ------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2019-09-17T03:09:00Z", ("20190917", "030900")),
        ("2019-09-17T03:09:00.123456", ("20190917", "030900")),
        ("2019-09-17T05:09:00+02:00", ("20190917", "030900")),  # converted to UTC
        ("2019-09-17", ("20190917", None)),
        ("2019:09:17 03:09:00", ("20190917", "030900")),  # TIFF's form
        ("17-SEP-2019 03:09:00.123456", ("20190917", "030900")),  # SNAP's abstracted metadata
        ("20190917T030900", ("20190917", "030900")),
        ("20190917", ("20190917", None)),
        (1568689740000, ("20190917", "030900")),  # GEE system:time_start, ms since 1970
    ],
)
def test_acquisition_times_in_the_forms_products_write(value, expected):
    assert parse_datetime(value, "x") == expected


def test_unreadable_values_name_where_they_are():
    with pytest.raises(UnosatError, match=r"^a.json \(key date\): 'last tuesday' is not a date-time"):
        parse_datetime("last tuesday", "a.json (key date)")
    with pytest.raises(UnosatError, match=r"unknown month 'SEX'"):
        parse_datetime("17-SEX-2019", "x")
    assert [parse_pass(v, "x") for v in ("ASCENDING", "descending", "A", "Des", "DSC")] == [
        "ASC",
        "DES",
        "ASC",
        "DES",
        "DES",
    ]
    with pytest.raises(UnosatError, match=r"^f.tif \(GeoTIFF tag PASS\): orbit pass 'LEFT' is not ascending"):
        parse_pass("LEFT", "f.tif (GeoTIFF tag PASS)")
    with pytest.raises(UnosatError, match=r"discovery.metadata.sources: unknown source\(s\) \['exif'\]"):
        MetadataConfig(sources=("tags", "exif"))


# ------------------------------------------------------------------------------------ tags, sidecars


def test_hyp3_pass_from_a_geotiff_tag(tmp_path):
    hyp3_pair(
        tmp_path / "raw" / "Mosul",
        tags={"PASS": "ASCENDING", "ACQUISITION_START_TIME": "2019-09-18T00:00:00"},
    )
    (scene,) = discover_scenes(tmp_path / "raw", discovery("discovery=hyp3"))
    # the pass the name lacks comes from the tag; the name's date and time stay (the tag's other date is ignored)
    assert (scene.date, scene.time, scene.orbit_pass) == ("20190917", "030900", "ASC")
    assert scene.scene_id == "7370_20190917t030900_ASC"


def test_hyp3_pass_from_the_products_asf_sidecar(tmp_path):
    product = hyp3_pair(tmp_path / "raw" / "Mosul")
    feature = {
        "type": "Feature",
        "properties": {"flightDirection": "DESCENDING", "startTime": "2019-09-17T03:09:00Z"},
    }
    (product / f"{HYP3}.json").write_text(
        json.dumps(feature)
    )  # an asf_search result saved beside the product
    (scene,) = discover_scenes(tmp_path / "raw", discovery("discovery=hyp3"))
    assert scene.orbit_pass == "DES"
    # sources=[] reads names only
    (bare,) = discover_scenes(tmp_path / "raw", discovery("discovery=hyp3", "discovery.metadata.sources=[]"))
    assert bare.orbit_pass is None


def test_precedence_name_then_tags_then_sidecar_and_the_order_is_configurable(tmp_path):
    product = hyp3_pair(tmp_path / "raw" / "Mosul", tags={"orbit_pass": "ascending"})
    for pol in ("VV", "VH"):
        (product / f"{HYP3}_{pol}.tif.json").write_text(json.dumps({"orbit_pass": "descending"}))
    assert discover_scenes(tmp_path / "raw", discovery("discovery=hyp3"))[0].orbit_pass == "ASC"
    swapped = discovery("discovery=hyp3", "discovery.metadata.sources=[sidecar,tags]")
    assert discover_scenes(tmp_path / "raw", swapped)[0].orbit_pass == "DES"
    # a pyroSAR name says the pass (A): neither the tag nor the sidecar overrides it
    raw = tmp_path / "pyro"
    name = "S1A__IW___A_20180829T170656_VV_NR_Orb_TC_db.tif"
    path = write(raw / "Oslo" / name, [backscatter(1, "db")["vv"]], UTM, UTM_TRANSFORM, nodata=-99.0)
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(PASS="DESCENDING")
    (raw / "Oslo" / f"{name}.json").write_text(json.dumps({"orbit_pass": "descending"}))
    (scene,) = discover_scenes(raw, discovery("discovery=pyrosar", "discovery.polarisations=[vv]"))
    assert scene.orbit_pass == "ASC"


@pytest.mark.slow
def test_a_multiband_file_without_a_date_gets_it_from_its_sidecar(tmp_path):
    raw = tmp_path / "raw"
    pols = backscatter(2, "db")
    write(
        raw / "Ghana_103272_S1Hand.tif", [pols["vv"], pols["vh"]], WGS84, Affine(9e-5, 0, -1.5, 0, -9e-5, 9.5)
    )
    (scene,) = discover_scenes(raw, discovery("discovery=sen1floods11"))
    assert (scene.date, scene.scene_id) == ("", "103272")
    (raw / "Ghana_103272_S1Hand.json").write_text(json.dumps({"date": "2017-04-21", "orbit_pass": "D"}))
    (scene,) = discover_scenes(raw, discovery("discovery=sen1floods11"))
    assert (scene.date, scene.time, scene.orbit_pass, scene.scene_id) == (
        "20170421",
        None,
        "DES",
        "103272_20170421_DES",
    )


def test_tifftag_datetime_only_when_asked_for(tmp_path):
    raw = tmp_path / "raw"
    write(
        raw / "Ghana_5_S1Hand.tif",
        list(backscatter(3, "db").values()),
        WGS84,
        Affine(9e-5, 0, -1.5, 0, -9e-5, 9.5),
    )
    with rasterio.open(raw / "Ghana_5_S1Hand.tif", "r+") as dst:
        dst.update_tags(TIFFTAG_DATETIME="2021:06:01 10:20:30")
    assert discover_scenes(raw, discovery("discovery=sen1floods11"))[0].date == ""  # the file's creation time
    keyed = discovery("discovery=sen1floods11", "discovery.metadata.datetime_keys=[TIFFTAG_DATETIME]")
    assert (discover_scenes(raw, keyed)[0].date, discover_scenes(raw, keyed)[0].time) == (
        "20210601",
        "102030",
    )


def test_a_bad_sidecar_is_refused_naming_file_and_key(tmp_path):
    product = hyp3_pair(tmp_path / "raw" / "Mosul")
    (product / f"{HYP3}_VV.json").write_text(json.dumps({"properties": {"flightDirection": "sideways"}}))
    with pytest.raises(
        UnosatError, match=rf"{HYP3}_VV.json \(properties key flightDirection\): orbit pass 'sideways'"
    ):
        discover_scenes(tmp_path / "raw", discovery("discovery=hyp3"))
    (product / f"{HYP3}_VV.json").write_text("{not json")
    with pytest.raises(UnosatError, match=rf"{HYP3}_VV.json: unreadable metadata sidecar"):
        discover_scenes(tmp_path / "raw", discovery("discovery=hyp3"))


# ------------------------------------------------------------------------------------ areas from labels


def footprints(path: Path, transform: Affine, crs=UTM, **columns) -> Path:
    """Two building boxes inside the 64 x 80 px raster at ``transform``, in ``crs``."""
    boxes = [
        shapely.box(*(transform * (c0, r1)), *(transform * (c1, r0)))
        for r0, c0, r1, c1 in [(5, 5, 12, 15), (30, 40, 36, 52)]
    ]
    frame = gpd.GeoDataFrame(columns, geometry=boxes, crs=UTM).to_crs(crs)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_file(path, engine="pyogrio")
    return path


@pytest.fixture
def flat_raw(tmp_path) -> Path:
    """Two HyP3 products side by side in one folder: nothing in the path says their city."""
    raw = tmp_path / "raw"
    hyp3_pair(raw, HYP3, UTM_TRANSFORM)
    hyp3_pair(raw, HYP3_B, EAST)
    return raw


def test_areas_named_by_the_label_files_that_cover_the_scenes(flat_raw, tmp_path):
    footprints(flat_raw / "labels" / "Mosul.gpkg", UTM_TRANSFORM)
    footprints(flat_raw / "labels" / "Raqqa.geojson", EAST, crs=WGS84)  # another CRS: compared in the file's
    found = discover_scenes(flat_raw, discovery("discovery=hyp3", "discovery.area=label"))
    assert [(s.city, s.mgrs) for s in found] == [("Mosul", "7370"), ("Raqqa", "9A2F")]
    # the label step finds each scene's file by the area's name
    assert [find_label_file([flat_raw], "{city}", s).name for s in found] == ["Mosul.gpkg", "Raqqa.geojson"]
    out = tmp_path / "prepared"
    prepare(
        prepare_config(
            flat_raw,
            out,
            "discovery=hyp3",
            "discovery.area=label",
            'labels.template="{city}"',
            "steps=[bands,labels]",
            "split.test_cities=[]",
        )
    )
    scenes = pd.read_csv(out / "scenes.csv")
    assert sorted(zip(scenes["city"], scenes["label_file"].map(lambda p: Path(p).name))) == [
        ("Mosul", "Mosul.gpkg"),
        ("Raqqa", "Raqqa.geojson"),
    ]
    assert (scenes["n_building"] > 0).all()


def test_areas_from_a_field_of_one_label_file(flat_raw, tmp_path):
    labels = tmp_path / "labels"
    a = gpd.read_file(footprints(labels / "a.gpkg", UTM_TRANSFORM, city=["Mosul", "Mosul"]))
    b = gpd.read_file(footprints(labels / "b.gpkg", EAST, city=["Raqqa", "Raqqa"]))
    pd.concat([a, b]).to_file(labels / "footprints.gpkg", engine="pyogrio")
    for p in ("a.gpkg", "b.gpkg"):
        (labels / p).unlink()
    config = discovery(
        "discovery=hyp3",
        "discovery.area=label",
        f"discovery.area_labels.dirs=[{labels}]",
        "discovery.area_labels.field=city",
    )
    assert [s.city for s in discover_scenes(flat_raw, config)] == ["Mosul", "Raqqa"]
    with pytest.raises(
        UnosatError,
        match=r"footprints.gpkg: no attribute 'name' \(discovery.area_labels.field\); it has \['city'\]",
    ):
        discover_scenes(
            flat_raw,
            discovery(
                "discovery=hyp3",
                "discovery.area=label",
                f"discovery.area_labels.dirs=[{labels}]",
                "discovery.area_labels.field=name",
            ),
        )


def test_area_label_refuses_scenes_it_cannot_place(flat_raw):
    config = discovery("discovery=hyp3", "discovery.area=label")
    with pytest.raises(UnosatError, match=r"discovery.area=label: no label file"):
        discover_scenes(flat_raw, config)
    footprints(flat_raw / "Mosul.gpkg", UTM_TRANSFORM)
    with pytest.raises(
        UnosatError,
        match=rf"{HYP3_B}_V[VH].tif: no label polygon of the 1 area\(s\) \['Mosul'\] meets "
        r"this scene",
    ):
        discover_scenes(flat_raw, config)
    footprints(flat_raw / "Raqqa.gpkg", EAST)
    footprints(flat_raw / "Both.gpkg", UTM_TRANSFORM)  # a second area over the first scene
    with pytest.raises(
        UnosatError,
        match=r"the label polygons of several areas meet this scene: \['Both \(Both.gpkg\)', "
        r"'Mosul \(Mosul.gpkg\)'\]",
    ):
        discover_scenes(flat_raw, config)
    (flat_raw / "Both.gpkg").unlink()
    footprints(flat_raw / "sub" / "Mosul.geojson", UTM_TRANSFORM)
    with pytest.raises(UnosatError, match=r"area 'Mosul' is named by two label files"):
        discover_scenes(flat_raw, config)
    with pytest.raises(
        UnosatError, match=r"discovery.area must be one of \['folder', 'scene', 'label'\], got 'file'"
    ):
        DiscoveryConfig(area="file")
