"""The synthetic demo dataset: layout and names, grids, values (units, speckle, buildings, wedge), labels."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
from omegaconf import OmegaConf
from scipy import special, stats

from unosat.errors import UnosatError
from unosat.scenes import discover_scenes
from unosat.synthetic import (
    CitySpec,
    DemoSpec,
    city_grid,
    city_layout,
    generate_demo,
    label_path,
    render_scene,
    scene_paths,
)
from unosat.synthetic import generator as generator_module
from unosat.synthetic.landcover import LandCover
from unosat.synthetic.speckle import (
    autocorrelation,
    correlated_gamma_speckle,
    equivalent_number_of_looks,
    gamma_from_normal,
)
from unosat.synthetic.tiles import mgrs_square_corner

CONF_DEMO = Path(__file__).resolve().parents[1] / "conf" / "demo"
FILE_RX = re.compile(r"^s1a_(\d{2}[A-Z]{3})_(vh|vv)_(ASC|DES)_(\d{8})t(\d{6})\.tif$")


def load_spec(name: str, **overrides) -> DemoSpec:
    cfg = OmegaConf.load(CONF_DEMO / f"{name}.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    return DemoSpec.from_config(cfg)


@pytest.fixture(scope="module")
def default_layouts():
    spec = load_spec("default")
    return spec, {c.name: city_layout(spec, c) for c in spec.cities}


def _scenes(spec: DemoSpec):
    for city in spec.cities:
        for acq in city.parsed_acquisitions:
            yield city, acq


def _read(path: Path) -> tuple[np.ndarray, rasterio.profiles.Profile]:
    with rasterio.open(path) as src:
        return src.read(1), src.profile


# ---------------------------------------------------------------- layout, names, discovery


def test_layout_and_file_names(tiny_spec, tiny_raw_session):
    tifs = sorted(p.relative_to(tiny_raw_session) for p in tiny_raw_session.rglob("*.tif"))
    assert len(tifs) == 2 * sum(len(c.acquisitions) for c in tiny_spec.cities)
    for rel in tifs:
        city_folder, date_folder, name = rel.parts
        m = FILE_RX.match(name)
        assert m, name
        mgrs, _, _, date, _ = m.groups()
        city = tiny_spec.city(city_folder.split("_")[0])
        assert city_folder == f"{city.name}_2015" and date_folder == f"{date}_{mgrs}" and mgrs == city.mgrs
    for city, acq in _scenes(tiny_spec):
        paths = scene_paths(tiny_raw_session, city, acq)
        assert paths["vv"].is_file() and paths["vh"].is_file()
        assert paths["vv"].name == f"s1a_{city.mgrs}_vv_{acq.orbit_pass}_{acq.date}t{acq.time}.tif"
        assert label_path(tiny_raw_session, city).is_file()
    labels = sorted(p.name for p in (tiny_raw_session / "labels").iterdir())
    assert "38SLF_Mosul.shp" in labels and "38SMA_Najaf.gpkg" in labels and "38RNV_Samawah.shp" in labels

    manifest = json.loads((tiny_raw_session / "demo.json").read_text())
    assert manifest["seed"] == tiny_spec.seed and manifest["spec"]["height"] == tiny_spec.height
    assert len(manifest["scenes"]) == len(tifs) // 2
    assert all(0.01 <= s["building_fraction"] <= 0.04 for s in manifest["scenes"])
    assert {c["city"] for c in manifest["labels"]} == {c.name for c in tiny_spec.cities}


def test_discover_scenes_finds_every_scene(tiny_spec, tiny_raw_session):
    found = discover_scenes(tiny_raw_session)
    expected = {
        (c.name, c.mgrs, a.date, a.time, a.orbit_pass): scene_paths(tiny_raw_session, c, a)
        for c, a in _scenes(tiny_spec)
    }
    assert len(found) == len(expected)
    for scene in found:
        paths = expected[(scene.city, scene.mgrs, scene.date, scene.time, scene.orbit_pass)]
        assert scene.vv == paths["vv"] and scene.vh == paths["vh"]
    assert sorted({s.city for s in found if s.city in tiny_spec.test_cities}) == ["Samawah"]


def test_generate_skips_existing_and_refuses_foreign_dirs(tiny_spec, tiny_raw_session, tmp_path, caplog):
    stamp = {p: p.stat().st_mtime_ns for p in tiny_raw_session.rglob("*")}
    assert generate_demo(tiny_raw_session, tiny_spec) == tiny_raw_session
    assert "other settings" not in caplog.text
    assert (
        generate_demo(tiny_raw_session, dataclasses.replace(tiny_spec, hamlets_per_km2=0.5))
        == tiny_raw_session
    )
    assert (
        "generated with other settings (hamlets_per_km2 differ" in caplog.text
    )  # kept, but the user is told
    assert {p: p.stat().st_mtime_ns for p in tiny_raw_session.rglob("*")} == stamp
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("user data")
    with pytest.raises(UnosatError, match="not a demo dataset"):
        generate_demo(foreign, tiny_spec, overwrite=True)
    assert (foreign / "precious.txt").read_text() == "user data"
    with pytest.raises(UnosatError, match="not a directory"):
        generate_demo(foreign / "precious.txt", tiny_spec)


def test_generation_is_atomic(tiny_spec, tmp_path, monkeypatch):
    calls = []

    def failing_write(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(*args, **kwargs)

    original = generator_module.write_geotiff
    monkeypatch.setattr(generator_module, "write_geotiff", failing_write)
    with pytest.raises(OSError, match="disk full"):
        generate_demo(tmp_path / "raw", tiny_spec)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- grids and values


def test_grid_dtype_and_linear_units(tiny_spec, tiny_raw_session):
    origins = set()
    for city, acq in _scenes(tiny_spec):
        grid = city_grid(tiny_spec, city)
        origins.add((grid.transform.c, grid.transform.f))
        bands = {}
        for pol, path in scene_paths(tiny_raw_session, city, acq).items():
            bands[pol], profile = _read(path)
            assert profile["dtype"] == "float32" and profile["count"] == 1
            assert (profile["height"], profile["width"]) == (160, 192)
            assert profile["crs"].to_epsg() == 32638
            t = profile["transform"]
            assert (t.a, t.e, t.b, t.d) == (10.0, -10.0, 0.0, 0.0)
            assert (t.c, t.f) == mgrs_square_corner(city.mgrs)
            assert 300_000 <= t.c <= 700_000 and 3_400_000 <= t.f <= 4_100_000
            assert profile["nodata"] == city.nodata_value
        valid = (bands["vv"] != city.nodata_value) & (bands["vh"] != city.nodata_value)
        vv, vh = bands["vv"][valid], bands["vh"][valid]
        # typical real medians: VV 0.15 (-8 dB), VH 0.014 (-18.5 dB); the synthetic land covers sit a bit lower
        assert 0.04 <= np.median(vv) <= 0.3, (city.name, acq.key, np.median(vv))
        assert 0.005 <= np.median(vh) <= 0.05, (city.name, acq.key, np.median(vh))
        assert np.median(vv) > 3 * np.median(vh)
        assert 1e3 <= vv.max() <= 1e4  # bright point targets
    assert len(origins) == len(tiny_spec.cities)


def test_mgrs_corners_are_the_real_tiles():
    assert mgrs_square_corner("38SLF") == (300_000.0, 4_100_000.0)  # Mosul
    assert mgrs_square_corner("38RPV") == (600_000.0, 3_500_000.0)  # Nasiryah
    assert mgrs_square_corner("38SMA") == (400_000.0, 3_600_000.0)  # Najaf
    assert mgrs_square_corner("38SNE") == (500_000.0, 4_000_000.0)  # Souleimaniye
    assert mgrs_square_corner("38RNV") == (500_000.0, 3_500_000.0)  # Samawah


def test_wedge_is_exact_nodata_and_valid_pixels_go_negative(tiny_spec, tiny_raw_session):
    for city in tiny_spec.cities:
        layout = city_layout(tiny_spec, city)
        masks = {}
        for acq in city.parsed_acquisitions:
            scene = render_scene(tiny_spec, city, acq, layout)
            wedge = ~scene["valid"]
            assert 0.05 <= wedge.mean() <= 0.15
            paths = scene_paths(tiny_raw_session, city, acq)
            for pol in ("vv", "vh"):
                band, _ = _read(paths[pol])
                np.testing.assert_array_equal(band, scene[pol])  # the files hold what render_scene makes
                assert np.all(band[wedge] == city.nodata_value)
                assert not np.any(band[~wedge] == city.nodata_value)
            assert np.count_nonzero(scene["vh"][~wedge] < 0) > 0  # thermal-noise removal residue
            assert np.all(scene["vh"][~wedge] > -0.01)
            masks[acq.orbit_pass] = wedge
        assert not np.array_equal(masks["ASC"], masks["DES"])  # different corners


def test_same_seed_same_bytes_other_seed_other_scenes(tiny_spec, tiny_raw_session, tmp_path):
    def digests(root: Path) -> dict[str, str]:
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*.tif")
        }

    again = generate_demo(tmp_path / "again", tiny_spec)
    assert digests(again) == digests(tiny_raw_session)
    other = generate_demo(tmp_path / "other", load_spec("tiny", seed=1))
    other_digests = digests(other)
    assert set(other_digests) == set(digests(tiny_raw_session))
    assert not set(other_digests.values()) & set(digests(tiny_raw_session).values())


# ---------------------------------------------------------------- speckle


def test_speckle_has_the_gamma_enl_and_short_correlation():
    rng = np.random.default_rng(0)
    speckle = correlated_gamma_speckle(rng, (512, 512), looks=4.4, correlation_px=1.0)
    assert speckle.dtype == np.float32 and speckle.min() > 0
    assert abs(speckle.mean() - 1.0) < 0.02
    assert equivalent_number_of_looks(speckle) == pytest.approx(4.4, rel=0.1)
    assert autocorrelation(speckle, 1) > 0.5
    assert abs(autocorrelation(speckle, 4)) < 0.05
    white = correlated_gamma_speckle(rng, (256, 256), looks=4.4, correlation_px=0.0)
    assert abs(autocorrelation(white, 1)) < 0.05


def test_speckle_marginal_is_gamma():
    z = np.random.default_rng(1).standard_normal(100_000)
    exact = special.gammaincinv(4.4, special.ndtr(z)) / 4.4
    np.testing.assert_allclose(gamma_from_normal(z, 4.4), exact, rtol=1e-5)
    ks = stats.kstest(gamma_from_normal(z, 4.4), stats.gamma(4.4, scale=1 / 4.4).cdf)
    assert ks.pvalue > 0.01


@pytest.mark.slow  # the full-size default demo (5 cities of 1024 x 1024 px)
def test_rendered_scene_has_enl_4_4_over_homogeneous_areas(default_layouts):
    spec, layouts = default_layouts
    city = spec.cities[0]
    scene = render_scene(spec, city, city.acquisitions[0], layouts[city.name])
    plain = scene["valid"] & ~scene["buildings"] & ~scene["layover"] & ~scene["shadow"]
    plain[layouts[city.name].point_targets.rows, layouts[city.name].point_targets.cols] = False
    plain &= scene["sigma0_vv"] > 0.02  # where the additive noise floor is negligible
    ratio = scene["vv"][plain] / scene["sigma0_vv"][plain]  # the speckle alone
    assert equivalent_number_of_looks(ratio) == pytest.approx(4.4, rel=0.1)
    assert ratio.mean() == pytest.approx(1.0, abs=0.02)
    # a homogeneous 64 x 64 patch of bare soil, as one would measure ENL in an image (isolated buildings and
    # their layover/shadow left out)
    classes, plain = (
        scene["landcover"],
        plain | (scene["valid"] & (scene["landcover"] == LandCover.BARE_SOIL)),
    )
    plain &= ~scene["buildings"] & ~scene["layover"] & ~scene["shadow"]
    for r in range(0, spec.height - 64, 32):
        for c in range(0, spec.width - 64, 32):
            patch = (slice(r, r + 64), slice(c, c + 64))
            if np.all(classes[patch] == LandCover.BARE_SOIL) and np.mean(plain[patch]) > 0.95:
                sigma0 = scene["sigma0_vv"][patch][plain[patch]]
                assert sigma0.std() / sigma0.mean() < 0.1  # mild variation of the mean inside a class
                assert equivalent_number_of_looks(scene["vv"][patch][plain[patch]]) == pytest.approx(
                    4.4, rel=0.15
                )
                return
    pytest.fail("no homogeneous bare-soil patch in the scene")


# ---------------------------------------------------------------- land cover and buildings


@pytest.mark.slow  # the full-size default demo (5 cities of 1024 x 1024 px)
def test_building_fraction_on_the_default_spec(default_layouts):
    spec, layouts = default_layouts
    assert (spec.height, spec.width) == (1024, 1024)
    assert len(spec.cities) == 5 and spec.test_cities == ["Samawah"]
    for name, layout in layouts.items():
        assert 0.01 <= layout.building_fraction <= 0.04, name
        ids = layout.building_ids
        assert len(np.unique(ids[ids > 0])) == len(layout.footprints)  # every footprint holds a pixel
        sizes = np.bincount(ids[ids > 0])[1:]
        assert sizes.min() >= 1 and np.median(sizes) <= 5 and sizes.max() <= 30
        town = layout.landcover.classes == LandCover.TOWN
        assert np.count_nonzero(layout.buildings & town) > 0.8 * np.count_nonzero(layout.buildings)
        for cls in LandCover:
            assert layout.landcover.fraction(cls) > 0.005, (name, cls)


@pytest.mark.slow  # the full-size default demo (5 cities of 1024 x 1024 px)
def test_labels_also_cover_the_nodata_wedge(default_layouts):
    spec, layouts = default_layouts
    for name, layout in layouts.items():
        for wedge in layout.wedges.values():
            assert np.count_nonzero(layout.buildings & wedge.mask(spec.shape)) > 0, name


def test_acquisitions_differ_in_crops_and_water_only(tiny_spec):
    city = tiny_spec.cities[0]
    layout = city_layout(tiny_spec, city)
    a, b = (render_scene(tiny_spec, city, acq, layout) for acq in city.acquisitions)
    classes = a["landcover"]
    plain = ~a["buildings"] & ~a["layover"] & ~a["shadow"] & ~b["layover"] & ~b["shadow"]
    changed = ~np.isclose(a["sigma0_vv"], b["sigma0_vv"], rtol=1e-5)
    assert np.all(changed[plain & (classes == LandCover.CROPLAND)])
    assert not np.any(changed[plain & ((classes == LandCover.BARE_SOIL) | (classes == LandCover.TOWN))])
    assert not np.array_equal(a["vv"], b["vv"])  # independent speckle per date


def test_double_bounce_layover_and_shadow_follow_the_pass(tiny_spec):
    city = tiny_spec.cities[0]
    layout = city_layout(tiny_spec, city)
    building = layout.buildings
    west_of = np.zeros_like(building)
    west_of[:, :-1] = building[:, 1:]
    east_of = np.zeros_like(building)
    east_of[:, 1:] = building[:, :-1]
    only_west, only_east = west_of & ~east_of & ~building, east_of & ~west_of & ~building
    for acq in city.parsed_acquisitions:
        scene = render_scene(tiny_spec, city, acq, layout)
        vv, valid = scene["vv"], scene["valid"]
        west, east = np.median(vv[only_west & valid]), np.median(vv[only_east & valid])
        sensor_side = west_of if acq.ascending else east_of  # pixels with a building on their far side
        assert np.all(sensor_side[scene["layover"]]) and not np.any(scene["shadow"] & sensor_side)
        ratio = west / east if acq.ascending else east / west
        assert ratio > 5, (
            acq.key,
            west,
            east,
        )  # layover (+4 dB) on the sensor side, shadow (-20 dB) opposite
        town = (
            (scene["landcover"] == LandCover.TOWN) & valid & ~building & ~scene["layover"] & ~scene["shadow"]
        )
        db_vv = 10 * np.log10(np.median(vv[building & valid]))
        db_vh = 10 * np.log10(np.median(scene["vh"][building & valid]))
        assert np.median(vv[building & valid]) > 2 * np.median(vv[town])  # double bounce over town clutter
        assert -3 <= db_vv <= 8 and -14 <= db_vh <= -6


# ---------------------------------------------------------------- labels


def test_labels_have_dn_255_their_crs_and_match_the_building_pixels(tiny_spec, tiny_raw_session):
    crs_seen, formats = set(), set()
    for city in tiny_spec.cities:
        path = label_path(tiny_raw_session, city)
        gdf = gpd.read_file(path)
        formats.add(path.suffix)
        assert np.issubdtype(gdf["DN"].dtype, np.integer) and set(gdf["DN"]) == {255}
        assert set(gdf.geom_type) == {"Polygon"}
        expected_crs = city.label_crs or tiny_spec.crs
        assert gdf.crs.to_epsg() == int(expected_crs.split(":")[1])
        crs_seen.add(gdf.crs.to_epsg())
        layout = city_layout(tiny_spec, city)
        grid = layout.grid
        burnt = rasterio.features.rasterize(
            gdf.to_crs(grid.crs).geometry, out_shape=grid.shape, transform=grid.transform, all_touched=False
        ).astype(bool)
        truth = layout.buildings
        iou = np.count_nonzero(burnt & truth) / np.count_nonzero(burnt | truth)
        assert iou > (0.999 if city.label_crs is None else 0.9), (city.name, iou)
        assert len(gdf) == len(layout.footprints)
    assert {4326, 32638} <= crs_seen and ".gpkg" in formats


# ---------------------------------------------------------------- configuration


def test_config_group_composes_with_hydra(tmp_path):
    from hydra import compose, initialize_config_dir

    (tmp_path / "demo").symlink_to(CONF_DEMO)
    (tmp_path / "main.yaml").write_text("defaults:\n  - demo: default\n  - _self_\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        composed = DemoSpec.from_config(compose("main", overrides=["demo=tiny"]).demo)
    assert composed == load_spec("tiny")  # tiny.yaml read alone falls back on the same defaults
    assert [c.role for c in composed.cities] == ["train", "train", "test"]
    assert (composed.height, composed.width) == (160, 192)


def test_default_yaml_knobs_are_the_dataclass_defaults():
    spec = load_spec("default")
    bare = DemoSpec(cities=spec.cities, height=spec.height, width=spec.width)
    assert spec.to_dict() == bare.to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"unknown_knob": 1}, "unknown key"),
        ({"cities": []}, "at least one city"),
        ({"crs": "EPSG:4326"}, "projected"),
        ({"wedge_fraction": [0.2, 0.1]}, "min <= max"),
        ({"building_size_m": [5.0, 50.0]}, "below one pixel"),
        (
            {"cities": [{"name": "Mosul", "mgrs": "38SLF", "acquisitions": ["ASC_2015-04-26"]}]},
            "ASC_20150426t145805",
        ),
        ({"cities": [{"name": "Mosul", "mgrs": "XYZ", "acquisitions": ["ASC_20150426t145805"]}]}, "MGRS"),
        (
            {"cities": [{"name": "A", "mgrs": "38SLF", "acquisitions": ["ASC_20150426t145805"]}] * 2},
            "more than one",
        ),
        (
            {
                "cities": [
                    {"name": "A", "mgrs": "38SLF", "acquisitions": ["DES_20150426t030000"], "role": "val"}
                ]
            },
            "role",
        ),
    ],
)
def test_spec_errors_are_user_errors(change, message):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DEMO / "tiny.yaml"))
    cfg.update(change)
    with pytest.raises(UnosatError, match=message):
        DemoSpec.from_config(cfg)


def test_render_scene_rejects_an_unknown_acquisition(tiny_spec):
    with pytest.raises(UnosatError, match="no acquisition"):
        render_scene(tiny_spec, "Mosul", "ASC_20151231t145805")
    with pytest.raises(UnosatError, match="no demo city"):
        render_scene(tiny_spec, "Atlantis", "ASC_20150426t145805")
    assert isinstance(tiny_spec.city("Mosul"), CitySpec)


def test_rural_buildings_cluster_in_hamlets_leaving_empty_land():
    from unosat.synthetic.buildings import hamlet_weights

    rural = np.ones((200, 300), dtype=bool)
    rural[:, :10] = False
    spec = dataclasses.replace(load_spec("tiny"), hamlets_per_km2=1e-9, hamlet_radius_m=100.0)  # one hamlet
    w = hamlet_weights(np.random.default_rng(0), rural, spec)
    r, c = np.unravel_index(np.argmax(w), w.shape)
    assert w[r, c] == pytest.approx(1.0, abs=0.05) and rural[r, c]
    rr, cc = np.indices(w.shape)
    far = np.maximum(abs(rr - r), abs(cc - c)) > 4 * 10  # beyond 4 standard deviations (10 px) on an axis
    assert (w[far] == 0).all() and (w[~rural] == 0).all()
    uniform = hamlet_weights(np.random.default_rng(0), rural, dataclasses.replace(spec, hamlets_per_km2=0.0))
    np.testing.assert_array_equal(uniform, rural.astype(float))


@pytest.mark.slow  # the full-size default demo (5 cities of 1024 x 1024 px)
def test_default_demo_has_windows_without_buildings(default_layouts):
    """Real scenes are mostly empty land; the demo keeps some of that (what a tile-classifier gate skips)."""
    spec, layouts = default_layouts
    for name, layout in layouts.items():
        b = layout.buildings
        windows = [
            b[r : r + 256, c : c + 256].any()
            for r in range(0, spec.height, 256)
            for c in range(0, spec.width, 256)
        ]
        assert 0.1 <= windows.count(False) / len(windows) <= 0.6, name
