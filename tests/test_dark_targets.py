"""Dark targets (water, for users who train on floods): the VV-threshold baseline and the label-quality
contrast take their sign from the data instead of assuming bright buildings."""

from __future__ import annotations

import numpy as np
import pytest

from unosat.bands import BandRecipe
from unosat.prepare.label_quality import QualityConfig, flag_acquisitions
from unosat.training.baseline import iou_above, iou_below, vv_threshold_baseline


class Tiles:
    """The part of a TileDataset the baseline reads: ``recipe``, ``len``, ``read_raw(i) -> (image, mask)``."""

    def __init__(self, target_db: float, background_db: float, seed: int, n: int = 3, size: int = 32):
        rng = np.random.default_rng(seed)
        self.recipe = BandRecipe("vv_db", ("vv",), "db")
        self.tiles = []
        for _ in range(n):
            mask = (rng.random((size, size)) < 0.2).astype(np.uint8)
            image = np.where(mask == 1, target_db, background_db) + rng.normal(0, 1.0, (size, size))
            mask[:2] = 255  # ignored pixels never count
            image[:2] = target_db if target_db > background_db else background_db + 30
            self.tiles.append((image[..., None].astype(np.float32), mask))

    def __len__(self):
        return len(self.tiles)

    def read_raw(self, i):
        return self.tiles[i]


def test_threshold_ious_by_hand():
    building, background = np.array([3, 1, 0]), np.array([0, 2, 5])  # 3 bins, 4 edges
    np.testing.assert_allclose(iou_above(building, background), [4 / 11, 1 / 11, 0 / 5])
    np.testing.assert_allclose(iou_below(building, background), [0, 3 / 4, 4 / 6, 4 / 11])


@pytest.mark.parametrize(
    "target_db, background_db, direction", [(-22.0, -10.0, "below"), (0.0, -12.0, "above")]
)
def test_the_baseline_picks_the_side_of_the_threshold_from_the_training_tiles(
    target_db, background_db, direction
):
    base = vv_threshold_baseline(Tiles(target_db, background_db, 0), Tiles(target_db, background_db, 1))
    assert base.direction == direction
    assert min(target_db, background_db) < base.threshold_db < max(target_db, background_db)
    assert base.val_iou > 0.99  # 6 standard deviations apart: one threshold separates them


def test_dark_targets_are_not_all_flagged_for_low_contrast():
    """Water is about 10 dB darker than its banks: contrast -10 dB is a good label, -1 dB a poor one."""
    records = [
        {
            "scene_id": f"s{i}",
            "city": "A",
            "pass": "ASC",
            "shift_rows": 0,
            "shift_cols": 0,
            "shift_score": 1.0,
            "contrast_vv_db": c,
        }
        for i, c in enumerate([-10.0, -9.5, -11.0, -0.5])
    ]
    table = flag_acquisitions(records, QualityConfig(shift_reference="zero"))
    assert table.quality_flag.tolist() == [False, False, False, True]
    assert (table.target_sign == -1).all() and "dark target" in table.quality_reason.iloc[3]
    bright = [dict(r, contrast_vv_db=-r["contrast_vv_db"]) for r in records]
    table = flag_acquisitions(bright, QualityConfig(shift_reference="zero"))
    assert table.quality_flag.tolist() == [False, False, False, True] and (table.target_sign == 1).all()
