"""predict.py's input: VV and VH or acquisitions on different grids, empty or unmatched input."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
from conftest import SAMAWAH, predict_cfg

from unosat.errors import UnosatError
from unosat.predict.run import run
from unosat.scenes import discover_scenes


@pytest.mark.slow
def test_vv_and_vh_on_different_grids(best_ckpt, tiny_raw, tmp_path):
    scene = next(s for s in discover_scenes(tiny_raw) if s.city == "Samawah")
    shift(scene.vh, 10.0)
    with pytest.raises(
        UnosatError,
        match=rf"VH and VV of scene {scene.scene_id} are not on the same grid: .*{scene.vh.name} vs "
        rf".*{scene.vv.name} differ in transform",
    ):
        run(predict_cfg(tmp_path / "o", f"ckpt={best_ckpt}", f"input={tiny_raw}"))
    scene.vh.unlink()
    with pytest.raises(UnosatError, match=rf"{scene.vv.name}: no matching VH file"):
        run(predict_cfg(tmp_path / "o", f"ckpt={best_ckpt}", f"input={tiny_raw}"))


@pytest.mark.slow
def test_acquisitions_of_a_city_on_different_grids(best_ckpt, tiny_raw, tmp_path):
    scene = next(s for s in discover_scenes(tiny_raw) if s.scene_id == SAMAWAH[1])
    shift(scene.vh, 20.0)
    shift(scene.vv, 20.0)
    with pytest.raises(
        UnosatError,
        match=rf"cannot aggregate the acquisitions of Samawah: .*{SAMAWAH[0]} vs {SAMAWAH[1]}: "
        r"transform .*aggregate.method=none",
    ):
        run(predict_cfg(tmp_path / "o", f"ckpt={best_ckpt}", f"input={tiny_raw}", "cities=[Samawah]"))


def shift(path: Path, metres: float) -> None:
    """Move a raster by ``metres`` east (same pixels, another grid)."""
    with rasterio.open(path, "r+") as dst:
        t = dst.transform
        dst.transform = rasterio.Affine(t.a, t.b, t.c + metres, t.d, t.e, t.f)


@pytest.mark.slow
def test_empty_or_unmatched_input(best_ckpt, tiny_raw_session, tiny_prepared_db, tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        ([f"input={tmp_path / 'empty'}"], r"empty holds no GeoTIFF"),
        ([f"input={tmp_path / 'missing'}"], r"input .*missing does not exist"),
        (
            [f"input={tiny_raw_session}", "cities=[Atlantis]"],
            r"no scene of cities \['Atlantis'\] .* holds \['Mosul', 'Najaf', 'Samawah'\]",
        ),
        (
            [f"input={tiny_raw_session}", "dataset_split=test"],
            r"dataset_split/fold select scenes of a prepared dataset",
        ),
        (
            [f"input={tiny_prepared_db}", "fold=7"],
            r"no scene in split None / fold 7; its \(split, fold\) pairs are",
        ),
    ]
    for overrides, message in cases:
        with pytest.raises(UnosatError, match=message):
            run(predict_cfg(tmp_path / "o", f"ckpt={best_ckpt}", *overrides))
