"""Label quality: a known misregistration and a known loss of contrast are measured and flagged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
from conftest import prepare_config

from unosat.prepare import run
from unosat.prepare.label_quality import QualityConfig, flag_acquisitions
from unosat.prepared import PreparedDataset
from unosat.scenes import discover_scenes

SHIFT = (2, 0)  # rows, cols: the content of one acquisition moved down by 2 rows


def _rewrite(path, func):
    with rasterio.open(path, "r+") as dst:
        dst.write(func(dst.read(1)), 1)


@pytest.fixture(scope="module")
def degraded(tiny_raw_session, tmp_path_factory):
    """The tiny demo with Mosul's ascending acquisition shifted and Najaf's descending one dulled."""
    import shutil

    root = tmp_path_factory.mktemp("quality")
    raw = shutil.copytree(tiny_raw_session, root / "raw")
    scenes = {(s.city, s.orbit_pass): s for s in discover_scenes(raw)}
    shifted, dull = scenes[("Mosul", "ASC")], scenes[("Najaf", "DES")]
    for pol in ("vh", "vv"):
        _rewrite(shifted.sources[pol][0], lambda a: np.roll(a, SHIFT, axis=(0, 1)))
    # dull: every pixel takes the median of the valid pixels (buildings no brighter than their surroundings)
    for pol in ("vh", "vv"):

        def flatten(a):
            valid = (a != 0) & (a != -99999)
            out = a.copy()
            out[valid] = np.median(a[valid]) * np.random.default_rng(0).gamma(4.4, 1 / 4.4, valid.sum())
            return out

        _rewrite(dull.sources[pol][0], flatten)
    out = root / "prepared"
    run(prepare_config(raw, out))
    return out, shifted.scene_id, dull.scene_id


@pytest.mark.slow
def test_known_shift_is_found_and_flagged(degraded):
    out, shifted, _ = degraded
    q = pd.read_csv(out / "quality.csv").set_index("scene_id")
    row = q.loc[shifted]
    assert (row.shift_rows - row.reference_rows, row.shift_cols - row.reference_cols) == SHIFT
    assert row.quality_flag and "shifted by" in row.quality_reason


@pytest.mark.slow
def test_known_contrast_is_measured_and_flagged(degraded):
    out, _, dull = degraded
    ds = PreparedDataset(out)
    q = pd.read_csv(out / "quality.csv").set_index("scene_id")
    # the contrast the step reports equals numpy on the prepared stack and mask
    with rasterio.open(ds.bands_path(dull)) as s, rasterio.open(ds.mask_path(dull)) as m:
        vv, mask = s.read(2), m.read(1)
    from scipy.ndimage import maximum_filter

    building = mask == 1
    ring = maximum_filter(building, size=7) & ~building & (mask != 255)
    expected = 10 * np.log10(vv[building].astype(np.float64).mean() / vv[ring].astype(np.float64).mean())
    assert q.loc[dull, "contrast_vv_db"] == pytest.approx(expected, abs=1e-6)
    assert abs(q.loc[dull, "contrast_vv_db"]) < 0.5  # flattened: no contrast left
    other = q[(q.city == "Najaf") & (q.index != dull)]["contrast_vv_db"].iloc[0]
    # pixel-centre labels (labels.all_touched=false) leave the partly covered, bright pixels around a footprint
    # in the ring: a clean acquisition's contrast is about 2 dB here (about 3.5 dB with all_touched=true)
    assert other > 1.5 > 0.5 > abs(q.loc[dull, "contrast_vv_db"])
    assert q.loc[dull, "quality_flag"] and "contrast" in q.loc[dull, "quality_reason"]


@pytest.mark.slow
def test_clean_acquisitions_are_not_flagged_and_flags_reach_statistics_and_training(degraded):
    out, shifted, dull = degraded
    q = pd.read_csv(out / "quality.csv").set_index("scene_id")
    assert set(q.index[q.quality_flag]) == {shifted, dull}
    stats = PreparedDataset(out).statistics()
    assert set(stats.loc[stats.quality_flag, "scene_id"]) == {shifted, dull}
    assert (out / "report" / "label_quality.png").stat().st_size > 1000
    assert "Label quality" in (out / "report" / "report.md").read_text()
    from unosat.data import UnosatDataModule

    dm = UnosatDataModule(out, exclude_flagged=True, val_folds=[2], train_folds=[0])
    dm.setup()
    assert shifted not in set(dm.train_tiles.scene_id) and dull not in set(dm.val_tiles.scene_id)
    assert len(dm.train_tiles) > 0


def test_shift_reference_zero_and_tolerance():
    records = [
        {
            "scene_id": f"s{i}",
            "city": "A",
            "pass": "ASC",
            "shift_rows": 0,
            "shift_cols": -1,
            "shift_score": 1.0,
            "contrast_vv_db": 4.0,
        }
        for i in range(3)
    ]
    table = flag_acquisitions(records, QualityConfig())
    assert not table.quality_flag.any()  # the pass median is (0, -1)
    assert flag_acquisitions(records, QualityConfig(shift_reference="zero")).quality_flag.all()
    assert not flag_acquisitions(
        records, QualityConfig(shift_reference="zero", shift_tolerance_px=1)
    ).quality_flag.any()
