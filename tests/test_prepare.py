"""prepare.py: outputs against independent computations, bad input, atomic writes, re-runs, interruption."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from conftest import REPO, TINY_PREPARE, prepare_config
from rasterio.features import rasterize

from unosat.bands import BandRecipe, polarisations_to_stack
from unosat.errors import UnosatError
from unosat.io.raster import memmap_geotiff
from unosat.prepare import run
from unosat.prepared import PreparedDataset
from unosat.scenes import DiscoveryConfig, discover_scenes


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------- outputs


def test_layout_and_georeferencing(tiny_prepared, tiny_raw_session):
    ds = PreparedDataset(tiny_prepared)
    scenes = discover_scenes(tiny_raw_session)
    assert ds.manifest["scenes"] == [s.scene_id for s in scenes]
    for s in scenes:
        with (
            rasterio.open(s.vv) as raw,
            rasterio.open(ds.bands_path(s.scene_id)) as stack,
            rasterio.open(ds.mask_path(s.scene_id)) as mask,
        ):
            assert stack.crs == raw.crs == mask.crs
            assert stack.transform == raw.transform == mask.transform
            assert (stack.count, stack.dtypes[0], mask.dtypes[0]) == (3, "float32", "uint8")
            assert stack.descriptions == ("vh", "vv", "mean")
        # stacks and masks are memory-mappable GeoTIFFs
        assert memmap_geotiff(ds.bands_path(s.scene_id)) is not None
    assert (tiny_prepared / "report" / "report.md").is_file()
    for name in ("histograms.png", "target_ratio.png", "nodata.png"):
        assert (tiny_prepared / "report" / name).stat().st_size > 1000


@pytest.mark.parametrize("recipe", ["3b", "db", "5b"])
def test_stack_values_equal_the_recipe_on_the_raw_files(tiny_raw, tmp_path, recipe):
    out = tmp_path / "out"
    run(prepare_config(tiny_raw, out, f"bands={recipe}", "steps=[bands]"))
    ds = PreparedDataset(out)
    scene = discover_scenes(tiny_raw)[0]
    vh, vv = read(scene.vh)[0], read(scene.vv)[0]
    valid = (vh != 0) & (vv != 0) & (vh != -99999) & (vv != -99999)
    expected = ds.recipe.compute(vh, vv)
    stack = read(ds.bands_path(scene.scene_id))
    np.testing.assert_array_equal(stack[:, valid], expected[:, valid])
    assert np.isnan(stack[:, ~valid]).all()
    assert (
        ds.recipe.bands
        == {
            "3b": ("vh", "vv", "mean"),
            "db": ("vh", "vv", "mean"),
            "5b": ("vh", "vv", "mean", "diff", "norm"),
        }[recipe]
    )


def test_rasterization_equals_rasterio_on_the_same_geometries(tiny_prepared, tiny_raw_session):
    ds = PreparedDataset(tiny_prepared)
    for scene in discover_scenes(tiny_raw_session):
        label = _label_file(tiny_raw_session, scene)
        with rasterio.open(scene.vv) as src:
            polys = gpd.read_file(label).to_crs(src.crs)
            expected = rasterize(
                ((g, 1) for g in polys.geometry),
                out_shape=src.shape,
                transform=src.transform,
                all_touched=False,
                fill=0,
                dtype="uint8",
            )
        stack = read(ds.bands_path(scene.scene_id))
        mask = read(ds.mask_path(scene.scene_id))[0]
        nodata = np.isnan(stack[0])
        expected[nodata] = 255  # the nodata -> ignore rule
        np.testing.assert_array_equal(mask, expected)
        assert (mask == 255).sum() > 0 and (mask == 1).sum() > 0


def _label_file(raw: Path, scene) -> Path:
    found = [
        p
        for p in (raw / "labels").iterdir()
        if p.stem == f"{scene.mgrs}_{scene.city}" and p.suffix in (".shp", ".gpkg", ".geojson")
    ]
    assert len(found) == 1
    return found[0]


def test_epsg4326_labels_are_reprojected_onto_the_buildings(tiny_prepared, tiny_raw_session, tiny_spec):
    from unosat.synthetic import render_scene

    city = next(c for c in tiny_spec.cities if c.label_crs == "EPSG:4326")
    ds = PreparedDataset(tiny_prepared)
    for scene in discover_scenes(tiny_raw_session):
        if scene.city != city.name:
            continue
        acq = next(a for a in city.acquisitions if scene.date in str(a))
        truth = render_scene(tiny_spec, city, acq)
        mask = read(ds.mask_path(scene.scene_id))[0]
        valid = mask != 255
        # all-touched labels contain every true building pixel (pixel centre inside the footprint)
        assert np.all(mask[truth["buildings"] & valid] == 1)


def test_nodata_is_ignore_never_background_or_building(tiny_prepared):
    ds = PreparedDataset(tiny_prepared)
    for sid in ds.manifest["scenes"]:
        stack, mask = read(ds.bands_path(sid)), read(ds.mask_path(sid))[0]
        np.testing.assert_array_equal(mask == 255, np.isnan(stack).all(axis=0))
        assert not np.isnan(stack[:, mask != 255]).any()


def test_every_valid_pixel_is_in_a_train_tile(tiny_prepared):
    ds = PreparedDataset(tiny_prepared)
    tiles = pd.read_csv(ds.tiles_csv)
    scenes = ds.scenes()
    for rec in scenes.itertuples():
        covered = np.zeros((rec.height, rec.width), bool)
        t = tiles[(tiles.scene_id == rec.scene_id) & (tiles.scheme == "train")]
        assert len(t) == len(t.drop_duplicates(["row_off", "col_off"]))
        for w in t.itertuples():
            covered[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] = True
        assert covered.all()
    # the test city (and only it) also has test tiles
    assert set(tiles.loc[tiles.scheme == "test", "city"]) == {"Samawah"}


def test_statistics_columns_equal_numpy_on_the_same_tile(tiny_prepared):
    ds = PreparedDataset(tiny_prepared)
    stats = ds.statistics()
    rng = np.random.default_rng(0)
    for row in stats.iloc[rng.choice(len(stats), 12, replace=False)].itertuples():
        stack = read(ds.bands_path(row.scene_id))
        mask = read(ds.mask_path(row.scene_id))[0]
        window = (slice(row.row_off, row.row_off + row.height), slice(row.col_off, row.col_off + row.width))
        tile, tmask = stack[(slice(None), *window)], mask[window]
        valid = tmask != 255
        assert row.n_valid == valid.sum()
        assert row.nodata_ratio == pytest.approx(1 - valid.sum() / (row.height * row.width))
        if valid.sum():
            assert row.target_ratio == pytest.approx((tmask[valid] == 1).mean())
            for i, band in enumerate(("vh", "vv", "mean")):
                v = tile[i][valid].astype(np.float64)
                assert getattr(row, f"{band}_min") == pytest.approx(v.min(), rel=1e-6)
                assert getattr(row, f"{band}_max") == pytest.approx(v.max(), rel=1e-6)
                assert getattr(row, f"{band}_mean") == pytest.approx(v.mean(), rel=1e-6)
                assert getattr(row, f"{band}_std") == pytest.approx(v.std(), rel=1e-5)
    # folds by city: the challenge's map, the test city -1
    folds = stats.groupby("city")["fold"].unique().to_dict()
    assert {c: list(f) for c, f in folds.items()} == {"Mosul": [0], "Najaf": [2], "Samawah": [-1]}


def test_normalization_pools_the_training_tiles(tiny_prepared):
    ds = PreparedDataset(tiny_prepared)
    stats = ds.statistics()
    train = stats[(stats.split == "train") & (stats.scheme == "train") & ~stats.skip]
    # direct computation over the same tiles' valid pixels (overlaps counted once per tile)
    values = []
    for row in train.itertuples():
        stack = read(ds.bands_path(row.scene_id))
        mask = read(ds.mask_path(row.scene_id))[0]
        w = (slice(row.row_off, row.row_off + row.height), slice(row.col_off, row.col_off + row.width))
        values.append(stack[(slice(None), *w)][:, mask[w] != 255].astype(np.float64))
    values = np.concatenate(values, axis=1)
    norm = ds.normalization()
    np.testing.assert_allclose(norm.mean, values.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(norm.std, values.std(axis=1), rtol=1e-5)


# --------------------------------------------------------------------------- bad input


def test_missing_vh_names_the_vv_file(tiny_raw, tmp_path):
    vh = next(tiny_raw.rglob("*_vh_*.tif"))
    vh.unlink()
    with pytest.raises(UnosatError, match=r"no matching VH file") as err:
        run(prepare_config(tiny_raw, tmp_path / "out"))
    assert vh.name.replace("_vh_", "_vv_") in str(err.value)
    assert not (tmp_path / "out").exists()


def test_vv_vh_grid_mismatch_names_both_files(tiny_raw, tmp_path):
    vh = next(tiny_raw.rglob("*_vh_*.tif"))
    with rasterio.open(vh, "r+") as dst:
        t = dst.transform
        dst.transform = rasterio.Affine(t.a, t.b, t.c + 10, t.d, t.e, t.f)
    with pytest.raises(UnosatError, match="not on the same grid") as err:
        run(prepare_config(tiny_raw, tmp_path / "out", "steps=[bands]"))
    assert vh.name in str(err.value) and vh.name.replace("_vh_", "_vv_") in str(err.value)
    assert "transform" in str(err.value)
    assert not list((tmp_path / "out" / "bands").glob(f"*{_scene_id_of(vh)}*"))


def _scene_id_of(path: Path) -> str:
    return path.stem.split("_")[-1]


def test_crs_mismatch_is_reported(tiny_raw, tmp_path):
    vv = next(tiny_raw.rglob("*_vv_*.tif"))
    with rasterio.open(vv, "r+") as dst:
        dst.crs = "EPSG:32637"
    with pytest.raises(UnosatError, match=r"CRS EPSG:32638 vs EPSG:32637"):
        run(prepare_config(tiny_raw, tmp_path / "out", "steps=[bands]"))


def test_truncated_geotiff_is_reported_and_leaves_no_output(tiny_raw, tmp_path):
    vv = next(tiny_raw.rglob("*_vv_*.tif"))
    data = vv.read_bytes()
    vv.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnosatError) as err:
        run(prepare_config(tiny_raw, tmp_path / "out", "steps=[bands]"))
    assert vv.name in str(err.value) and ("truncated" in str(err.value) or "not a readable" in str(err.value))
    outputs = list((tmp_path / "out").rglob("*.tif"))
    assert all(vv.name.split("_")[-1].split(".")[0][:8] not in p.name for p in outputs)
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp-" in p.name]


@pytest.mark.slow
def test_garbage_file_named_like_a_scene_is_reported(tiny_raw, tmp_path):
    vv = next(tiny_raw.rglob("*_vv_*.tif"))
    vv.write_bytes(b"this is not a tiff")
    with pytest.raises(UnosatError, match="not a readable raster") as err:
        run(prepare_config(tiny_raw, tmp_path / "out", "steps=[bands]"))
    assert str(vv) in str(err.value)


def test_label_file_without_crs(tiny_raw, tmp_path):
    shp = next((tiny_raw / "labels").glob("*_Mosul.shp"))
    shp.with_suffix(".prj").unlink()
    with pytest.raises(UnosatError, match="has no CRS") as err:
        run(prepare_config(tiny_raw, tmp_path / "out", "steps=[bands,labels]"))
    assert shp.name in str(err.value)


def test_empty_label_file(tiny_raw, tmp_path):
    shp = next((tiny_raw / "labels").glob("*_Mosul.shp"))
    frame = gpd.read_file(shp)
    frame.iloc[:0].to_file(shp)
    with pytest.raises(UnosatError, match="empty") as err:
        run(prepare_config(tiny_raw, tmp_path / "out", "steps=[bands,labels]"))
    assert shp.name in str(err.value)


def test_missing_label_file(tiny_raw, tmp_path):
    for p in (tiny_raw / "labels").glob("*_Mosul.*"):
        p.unlink()
    with pytest.raises(UnosatError, match=r"no label file .* Mosul: expected 38SLF_Mosul"):
        run(prepare_config(tiny_raw, tmp_path / "out", "steps=[bands,labels]"))


def test_labels_outside_the_scene_warn_and_give_an_all_background_mask(tiny_raw, tmp_path):
    shp = next((tiny_raw / "labels").glob("*_Mosul.shp"))
    frame = gpd.read_file(shp)
    frame["geometry"] = frame.geometry.translate(xoff=500_000)
    frame.to_file(shp)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(prepare_config(tiny_raw, tmp_path / "out", "steps=[bands,labels]"))
    assert any("no label polygon intersects" in str(w.message) and shp.name in str(w.message) for w in caught)
    ds = PreparedDataset(tmp_path / "out")
    for sid in [s for s in ds.manifest["scenes"] if s.startswith("38SLF")]:
        mask = read(ds.mask_path(sid))[0]
        assert set(np.unique(mask)) <= {0, 255} and (mask == 0).any()
    assert not ds.scenes().set_index("scene_id").loc[sid, "intersects"]


@pytest.mark.slow
def test_nan_and_inf_backscatter_are_nodata_and_counted(tiny_raw, tmp_path):
    vv = next(tiny_raw.rglob("*_vv_*.tif"))
    with rasterio.open(vv, "r+") as dst:
        a = dst.read(1)
        a[50:53, 60:70] = np.nan
        a[80, 80:85] = np.inf
        dst.write(a, 1)
    out = tmp_path / "out"
    run(prepare_config(tiny_raw, out))
    ds = PreparedDataset(out)
    sid = next(s for s in discover_scenes(tiny_raw) if s.vv == vv).scene_id
    row = ds.scenes().set_index("scene_id").loc[sid]
    was_valid = 30 + 5  # all these pixels were inside the valid area of the scene
    assert row["n_nonfinite"] == was_valid
    mask = read(ds.mask_path(sid))[0]
    assert (mask[50:53, 60:70] == 255).all() and (mask[80, 80:85] == 255).all()
    assert "NaN/inf px" in (out / "report" / "report.md").read_text()


def test_raw_dir_missing_or_empty(tmp_path):
    with pytest.raises(UnosatError, match="does not exist"):
        run(prepare_config(tmp_path / "nowhere", tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnosatError, match="holds no GeoTIFF"):
        run(prepare_config(tmp_path / "empty", tmp_path / "out"))


@pytest.mark.slow
def test_unknown_step_and_unknown_config_key(tiny_raw, tmp_path):
    with pytest.raises(UnosatError, match="unknown step"):
        run(prepare_config(tiny_raw, tmp_path / "out", "steps=[bands,colour]"))
    proc = subprocess.run(
        [sys.executable, "prepare.py", f"raw_dir={tiny_raw}", f"out_dir={tmp_path / 'o'}", "no_such_key=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Key 'no_such_key' is not in struct" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_entry_point_prints_one_clear_error_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "prepare.py",
            f"raw_dir={tmp_path / 'nowhere'}",
            f"out_dir={tmp_path / 'o'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: raw_dir")
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------- nothing is lost


@pytest.mark.slow
def test_rerun_skips_finished_work_and_raw_inputs_are_untouched(tiny_raw, tmp_path):
    before = tree_digest(tiny_raw)
    out = tmp_path / "out"
    run(prepare_config(tiny_raw, out, "steps=[bands,labels,tiles,stats]"))
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")}
    run(prepare_config(tiny_raw, out, "steps=[bands,labels,tiles,stats]"))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")} == stamps  # nothing redone
    run(prepare_config(tiny_raw, out, "steps=[bands]", "overwrite=true"))
    assert all(p.stat().st_mtime_ns != stamps[p] for p in (out / "bands").glob("*.tif"))  # all redone
    assert tree_digest(tiny_raw) == before


@pytest.mark.slow
def test_other_settings_are_refused_without_overwrite(tiny_raw, tmp_path):
    out = tmp_path / "out"
    run(prepare_config(tiny_raw, out, "steps=[bands]"))
    with pytest.raises(
        UnosatError, match=r"dataset.json holds a dataset made with other settings \(.*recipe.*overwrite=true"
    ):
        run(prepare_config(tiny_raw, out, "steps=[bands]", "bands=db"))
    run(prepare_config(tiny_raw, out, "steps=[bands]", "bands=db", "overwrite=true"))
    assert PreparedDataset(out).recipe.units == "db"


def test_out_dir_inside_raw_dir_is_refused(tiny_raw):
    with pytest.raises(UnosatError, match="must not be inside raw_dir"):
        run(prepare_config(tiny_raw, tiny_raw / "prepared"))


@pytest.mark.slow
def test_interrupted_run_completes_when_run_again(tiny_raw, tmp_path):
    out, clean = tmp_path / "out", tmp_path / "clean"
    args = [
        sys.executable,
        "prepare.py",
        f"raw_dir={tiny_raw}",
        f"out_dir={out}",
        *TINY_PREPARE,
        f"hydra.run.dir={tmp_path / 'run'}",
        "steps=[bands,labels,tiles,stats]",
    ]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "bands").glob("*.tif")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # killed mid-step: some stacks done, others not
    proc.wait()
    n_done = len(list((out / "bands").glob("*.tif")))
    assert 1 <= n_done < 6
    subprocess.run(args, cwd=REPO, check=True, capture_output=True, timeout=300)
    run(prepare_config(tiny_raw, clean, "steps=[bands,labels,tiles,stats]"))
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    for sub in ("bands", "masks"):
        for p in (clean / sub).glob("*.tif"):
            np.testing.assert_array_equal(read(out / sub / p.name), read(p))
    pd.testing.assert_frame_equal(pd.read_csv(out / "statistics.csv"), pd.read_csv(clean / "statistics.csv"))
    assert json.loads((out / "normalization.json").read_text()) == json.loads(
        (clean / "normalization.json").read_text()
    )


def test_raster_labels_are_aligned_to_the_scene_grid(tiny_raw, tmp_path, tiny_prepared):
    """Raster masks (one per scene, here on a coarser grid) are resampled onto the scene grid."""
    ds = PreparedDataset(tiny_prepared)
    scene = discover_scenes(tiny_raw)[0]
    mask = read(ds.mask_path(scene.scene_id))[0]
    with rasterio.open(scene.vv) as src:
        profile = dict(
            driver="GTiff",
            width=src.width,
            height=src.height,
            count=1,
            dtype="uint8",
            crs=src.crs,
            transform=src.transform,
            nodata=200,
        )
    label_dir = tmp_path / "masks"
    label_dir.mkdir()
    raster = np.where(mask == 255, 0, mask).astype("uint8")
    raster[:5, :5] = 200  # unknown in the label file -> ignore
    with rasterio.open(label_dir / f"{scene.scene_id}_mask.tif", "w", **profile) as dst:
        dst.write(raster, 1)
    for other in discover_scenes(tiny_raw)[1:]:
        with rasterio.open(label_dir / f"{other.scene_id}_mask.tif", "w", **profile) as dst:
            dst.write(np.zeros_like(raster), 1)
    out = tmp_path / "out"
    run(prepare_config(tiny_raw, out, "labels=raster", f"labels.dirs=[{label_dir}]", "steps=[bands,labels]"))
    got = read(PreparedDataset(out).mask_path(scene.scene_id))[0]
    expected = mask.copy()
    expected[:5, :5] = 255
    np.testing.assert_array_equal(got, expected)


def test_multiband_layout_with_band_order(tiny_raw, tmp_path):
    """One file per scene holding [vv, vh] gives the same stack as the pair of files."""
    scene = discover_scenes(tiny_raw)[0]
    multi = tmp_path / "multi" / f"{scene.city}_2015"
    multi.mkdir(parents=True)
    with rasterio.open(scene.vv) as vv, rasterio.open(scene.vh) as vh:
        profile = vv.profile | {"count": 2}
        with rasterio.open(
            multi / f"S1_{scene.mgrs}_{scene.date}_{scene.orbit_pass}.tif", "w", **profile
        ) as dst:
            dst.write(np.stack([vv.read(1), vh.read(1)]))
    config = DiscoveryConfig(
        layout="multiband",
        band_order=("vv", "vh"),
        pattern=r"(?i)^s1_(?P<mgrs>\d{2}[a-z]{3})_(?P<date>\d{8})(?:_(?P<pass>asc|des))?\.tiff?$",
    )
    found = discover_scenes(tmp_path / "multi", config)
    assert len(found) == 1 and found[0].sources["vv"][1] == 1 and found[0].sources["vh"][1] == 2
    with rasterio.open(found[0].vv) as src:
        stack, _, _ = polarisations_to_stack(src.read(2), src.read(1), BandRecipe())
    np.testing.assert_array_equal(
        np.nan_to_num(stack, nan=-1),
        np.nan_to_num(polarisations_to_stack(read(scene.vh)[0], read(scene.vv)[0], BandRecipe())[0], nan=-1),
    )


# ------------------------------------------------------------------- step dependencies


def raster_content(path: Path) -> tuple:
    with rasterio.open(path) as src:
        return src.read().tobytes(), src.tags(), src.profile["dtype"], src.count


def dataset_content(root: Path) -> dict:
    """Everything a prepared dataset says, except run timings, figures' bytes and its own path."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if not p.is_file() or rel.startswith("report/") and p.suffix == ".png":
            continue
        if p.suffix == ".tif":
            out[rel] = raster_content(p)
        elif p.name == "dataset.json":
            out[rel] = {k: v for k, v in json.loads(p.read_text()).items() if k != "last_run_seconds"}
        else:
            out[rel] = p.read_bytes().replace(str(root).encode(), b"<dataset>")
    return out


@pytest.mark.slow  # prepares the tiny demo four times
def test_redoing_the_bands_in_another_recipe_redoes_every_step_downstream(tiny_raw_session, tmp_path):
    redone, fresh = tmp_path / "redone", tmp_path / "fresh"
    run(prepare_config(tiny_raw_session, redone))  # 3b, every step
    linear = json.loads((redone / "normalization.json").read_text())
    run(prepare_config(tiny_raw_session, redone, "bands=db", "overwrite=true", "steps=[bands]"))
    run(prepare_config(tiny_raw_session, fresh, "bands=db"))
    got, want = dataset_content(redone), dataset_content(fresh)
    assert sorted(got) == sorted(want)
    differ = [k for k in want if got[k] != want[k]]
    assert differ == []
    assert json.loads((redone / "normalization.json").read_text())["mean"] != linear["mean"]
    manifest = PreparedDataset(redone).manifest
    assert manifest["steps_done"] == ["bands", "labels", "quality", "tiles", "stats", "report"]
    # the dataset is consistent: a later full run without overwrite accepts it and redoes nothing
    stamps = {p: p.stat().st_mtime_ns for p in redone.rglob("*.tif")}
    run(prepare_config(tiny_raw_session, redone, "bands=db", "steps=[bands,labels,quality,tiles,stats]"))
    assert {p: p.stat().st_mtime_ns for p in redone.rglob("*.tif")} == stamps


@pytest.mark.slow
def test_a_redone_step_leaves_the_steps_it_does_not_feed_alone(tiny_raw_session, tmp_path):
    out = tmp_path / "out"
    run(prepare_config(tiny_raw_session, out, "steps=[bands,labels,tiles,stats]"))
    tiles_stamp = (out / "tiles.csv").stat().st_mtime_ns
    bands_stamps = {p: p.stat().st_mtime_ns for p in (out / "bands").glob("*.tif")}
    norm_stamp = (out / "normalization.json").stat().st_mtime_ns
    run(prepare_config(tiny_raw_session, out, "overwrite=true", "steps=[labels]"))
    assert (out / "tiles.csv").stat().st_mtime_ns == tiles_stamp  # tiles do not read the masks
    assert {p: p.stat().st_mtime_ns for p in (out / "bands").glob("*.tif")} == bands_stamps
    assert (out / "normalization.json").stat().st_mtime_ns != norm_stamp  # stats read the masks: redone
    assert PreparedDataset(out).manifest["steps_done"] == ["bands", "labels", "tiles", "stats"]


@pytest.mark.slow
def test_an_out_of_date_step_that_is_not_redone_is_refused_by_name(tiny_raw_session, tmp_path):
    out = tmp_path / "out"
    run(prepare_config(tiny_raw_session, out, "steps=[bands,labels,tiles,stats,report]"))
    before = json.loads((out / "dataset.json").read_text())
    with pytest.raises(
        UnosatError, match=r"step\(s\) \['stats'\] were done with other settings.*steps=\[stats,report\]"
    ):
        run(
            prepare_config(
                tiny_raw_session, out, "overwrite=true", "stats.min_valid_fraction=0.5", "steps=[report]"
            )
        )
    assert json.loads((out / "dataset.json").read_text()) == before  # refused before touching anything


def test_a_second_preparation_of_one_out_dir_is_refused_while_the_first_runs(tiny_raw_session, tmp_path):
    from unosat.io.lock import output_lock

    out = tmp_path / "out"
    with output_lock(out, "another prepare.py"):
        with pytest.raises(UnosatError, match=r"out is in use by process \d+ since .*\(another prepare.py\)"):
            run(prepare_config(tiny_raw_session, out, "steps=[bands]"))
    assert not (out / "dataset.json").exists()
    run(prepare_config(tiny_raw_session, out, "steps=[bands]"))  # free again
    assert not (out / ".unosat.lock").exists()
