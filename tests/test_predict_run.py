"""predict.py's defaults end to end: the demo's test city with the latest run's best checkpoint, as COGs on the
input grid (scene and city products, polygons, evaluation, quicklook)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from conftest import SAMAWAH, read_band

from unosat.io.raster import Grid
from unosat.predict.aggregate import mean_probability, threshold_mask
from unosat.predict.probability import decode_probability
from unosat.scenes import discover_scenes


@pytest.mark.slow
def test_default_run_predicts_the_demo_test_cities_as_cogs_on_the_input_grid(
    demo_run, tiny_raw_session, best_ckpt
):
    manifest = json.loads((demo_run / "predict.json").read_text())
    assert manifest["status"] == "complete"
    assert [s["scene_id"] for s in manifest["scenes"]] == list(SAMAWAH)  # the tiny demo's only test city
    assert manifest["checkpoints"][0]["checkpoint"] == str(best_ckpt.resolve())
    assert manifest["settings"]["tta"] == "flips" and manifest["timings"]["total_s"] > 0
    scenes = {s.scene_id: s for s in discover_scenes(tiny_raw_session)}
    for sid in SAMAWAH:
        with rasterio.open(scenes[sid].vv) as vv_src, rasterio.open(scenes[sid].vh) as vh_src:
            vv, vh = vv_src.read(1), vh_src.read(1)
            nodata = (vv == vv_src.nodata) | (vh == vh_src.nodata)
            grid = Grid.of(vv_src)
        rasters = [demo_run / "scenes" / f"{sid}_{kind}.tif" for kind in ("probability", "mask")]
        rasters += [demo_run / "cities" / f"Samawah_{kind}.tif" for kind in ("probability", "mask")]
        for path in rasters:  # every raster output: the input's grid, a valid COG
            with rasterio.open(path) as src:
                assert src.crs == grid.crs and src.transform == grid.transform, path
                assert (src.width, src.height) == (grid.width, grid.height)
                assert src.profile["tiled"] and src.block_shapes == [(128, 128)]
                assert src.overviews(1) and src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
                assert src.nodata == 255
        prob = read_band(demo_run / "scenes" / f"{sid}_probability.tif")
        mask = read_band(demo_run / "scenes" / f"{sid}_mask.tif")
        assert nodata.any() and ((prob == 255) == nodata).all() and ((mask == 255) == nodata).all()
        # the mask thresholds the float probability, and the stored value keeps that side of 0.5 everywhere
        np.testing.assert_array_equal(mask[~nodata], decode_probability(prob)[~nodata] >= 0.5)
        assert (
            decode_probability(prob)[~nodata].std() > 0.05 and 0 < mask[~nodata].mean() < 1
        )  # a map, not a constant
    # city products: the mean of the dates' stored probabilities >= 0.5 (each stored value on its date's side
    # of the threshold), on the same grid, and polygons
    probs = np.stack(
        [decode_probability(read_band(demo_run / "scenes" / f"{sid}_probability.tif")) for sid in SAMAWAH]
    )
    city = read_band(demo_run / "cities" / "Samawah_mask.tif")
    np.testing.assert_array_equal(city, threshold_mask(mean_probability(probs), 0.5))
    masks = np.stack([read_band(demo_run / "scenes" / f"{sid}_mask.tif") for sid in SAMAWAH])
    assert (city[(masks == 0).all(axis=0)] == 0).all() and (city[(masks == 1).all(axis=0)] == 1).all()
    expected = {f"{name}_{kind}.tif" for name in (*SAMAWAH, "Samawah") for kind in ("probability", "mask")}
    assert {p.name for p in demo_run.rglob("*.tif")} == expected  # every raster output was checked above
    assert (demo_run / "cities" / "Samawah_buildings.gpkg").is_file() and manifest["products"][0][
        "polygons_count"
    ] > 0
    # evaluation against the label vectors, and a quicklook
    evaluation = json.loads((demo_run / "evaluation.json").read_text())
    assert evaluation == manifest["evaluation"] and list(evaluation["cities"]) == ["Samawah"]
    assert 0 <= evaluation["overall"]["pixel"]["f1_building"] <= 1 and "f1" in evaluation["overall"]["object"]
    assert manifest["products"][0]["labels"].endswith("38RNV_Samawah.shp")
    assert (demo_run / "quicklooks" / "Samawah.png").stat().st_size > 1000
