"""The data module trusts a prepared dataset only when its files agree with its recorded recipe, and reads
statistics.csv strictly: a damaged file is one error naming the file and the line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from unosat.data import UnosatDataModule
from unosat.data.tile_dataset import TileReader
from unosat.errors import UnosatError
from unosat.prepared import PreparedDataset, read_statistics


@pytest.fixture
def db_copy(tiny_prepared_db, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_prepared_db, tmp_path / "db"))


def setup(path: Path) -> UnosatDataModule:
    dm = UnosatDataModule(path, batch_size=2)
    dm.setup("fit")
    return dm


def test_a_consistent_dataset_is_accepted(db_copy):
    dm = setup(db_copy)
    assert dm.recipe.name == "db" and len(dm.train_tiles) > 0


@pytest.mark.slow
def test_normalization_of_another_recipe_is_refused(db_copy, tiny_prepared):
    shutil.copy(tiny_prepared / "normalization.json", db_copy / "normalization.json")
    with pytest.raises(
        UnosatError, match=r"normalization.json: holds the normalisation of bands .*\(linear\).*'db'"
    ) as err:
        setup(db_copy)
    assert "\n" not in str(err.value)


def test_a_band_stack_of_another_recipe_is_refused(db_copy, tiny_prepared):
    scene = PreparedDataset(db_copy).manifest["scenes"][2]
    shutil.copy(tiny_prepared / "bands" / f"{scene}.tif", db_copy / "bands" / f"{scene}.tif")
    with pytest.raises(
        UnosatError, match=rf"bands/{scene}.tif: holds 3 band\(s\) of recipe '3b'.*records recipe 'db'"
    ):
        setup(db_copy)


def test_a_one_band_stack_is_a_one_line_error(db_copy):
    scene = PreparedDataset(db_copy).manifest["scenes"][0]
    path = db_copy / "bands" / f"{scene}.tif"
    with rasterio.open(path) as src:
        profile, band, tags = src.profile, src.read(1), src.tags()
    profile.update(count=1)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(band, 1)
        dst.update_tags(**tags)
    with pytest.raises(UnosatError, match=rf"{scene}.tif: holds 1 band\(s\).*3 bands") as err:
        setup(db_copy)
    assert "\n" not in str(err.value)


def test_a_mask_made_from_another_stack_is_refused(db_copy, tiny_prepared):
    scene = PreparedDataset(db_copy).manifest["scenes"][1]
    shutil.copy(tiny_prepared / "masks" / f"{scene}.tif", db_copy / "masks" / f"{scene}.tif")
    with pytest.raises(UnosatError, match=rf"masks/{scene}.tif: this mask was made from another bands file"):
        setup(db_copy)


def test_a_step_not_done_is_refused(db_copy):
    manifest = json.loads((db_copy / "dataset.json").read_text())
    manifest["steps_done"].remove("stats")
    (db_copy / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(
        UnosatError, match=r"dataset.json: step\(s\) \['stats'\] are not done.*steps=\[stats\]"
    ):
        setup(db_copy)


# ---------------------------------------------------------------------------- statistics.csv


def damage(path: Path, line: int, how: str) -> None:
    """Damage line ``line`` (1 = header) of a CSV file."""
    lines = path.read_bytes().split(b"\n")
    header = lines[0].decode().split(",")
    fields = lines[line - 1].decode().split(",")
    if how == "truncated":
        lines[line - 1] = lines[line - 1][: len(lines[line - 1]) // 2]
    elif how == "binary":
        lines[line - 1] = lines[line - 1][:10] + b"\xff\xfe\x00\x81" + lines[line - 1][14:]
    elif how == "not_a_number":
        fields[header.index("n_valid")] = "12a"
        lines[line - 1] = ",".join(fields).encode()
    elif how == "skip_maybe":
        fields[header.index("skip")] = "maybe"
        lines[line - 1] = ",".join(fields).encode()
    path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("truncated", r"line 5 has \d+ fields, the header \d+"),
        ("binary", r"line 5 is not text"),
        ("not_a_number", r"line 5 \(tile .*\): column 'n_valid' is '12a', not a finite number"),
        ("skip_maybe", r"line 5 \(tile .*\): column 'skip' is 'maybe', not True or False"),
    ],
)
def test_a_damaged_statistics_row_names_the_file_and_the_line(db_copy, how, expected):
    damage(db_copy / "statistics.csv", 5, how)
    with pytest.raises(UnosatError, match=expected) as err:
        setup(db_copy)
    assert str(db_copy / "statistics.csv") in str(err.value) and "\n" not in str(err.value)


def test_skip_false_is_false(tiny_prepared_db):
    text = pd.read_csv(tiny_prepared_db / "statistics.csv", dtype=str, keep_default_na=False)
    table = read_statistics(tiny_prepared_db / "statistics.csv")
    assert table["skip"].dtype == bool
    assert table["skip"].tolist() == [v == "True" for v in text["skip"]]
    assert 0 < table["skip"].sum() < len(table)  # both kinds present: "False" is not counted as skipped
    assert table["n_valid"].dtype.kind == "i" and table["target_ratio"].dtype.kind == "f"


def test_infinity_in_a_band_stack_is_nodata(db_copy):
    scene = PreparedDataset(db_copy).manifest["scenes"][0]
    path = db_copy / "bands" / f"{scene}.tif"
    _, before = TileReader(db_copy).read(scene, 0, 0, 64, 64)
    assert (before[10:20, 30:40] != 255).all()  # valid pixels before
    with rasterio.open(path, "r+") as dst:
        stack = dst.read()
        stack[1, 10:20, 30:40] = np.inf
        dst.write(stack)
    image, mask = TileReader(db_copy).read(scene, 0, 0, 64, 64)
    assert np.isnan(image[10:20, 30:40]).all()
    assert (mask[10:20, 30:40] == 255).all()
    assert np.isfinite(image).all(axis=-1).sum() == (mask != 255).sum()


def test_infinity_in_a_prepared_stack_is_nodata_for_prediction():
    from types import SimpleNamespace

    from unosat.bands import BandRecipe
    from unosat.predict.inputs import _PreparedBlock

    recipe = BandRecipe("3b", ("vh", "vv", "mean"), "linear")
    stack = np.ones((3, 4, 5), dtype=np.float32)
    stack[1, 2, 3] = np.inf
    stack[0, 0, 0] = np.nan
    block = _PreparedBlock(stack, SimpleNamespace(recipe=recipe))
    expected = np.ones((4, 5), dtype=bool)
    expected[2, 3] = expected[0, 0] = False
    np.testing.assert_array_equal(block.valid, expected)
    assert (
        np.isnan(block.bands(recipe)[:, ~expected]).all()
        and np.isfinite(block.bands(recipe)[:, expected]).all()
    )
