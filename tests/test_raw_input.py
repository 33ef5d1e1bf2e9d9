"""Raw-input settings (units, nodata) as real files have them: the file's own nodata tag, units checked from
the values, 0 nodata only for linear inputs, and the settings recorded in checkpoints and used by predict.py.

Fixtures are written here: the tiny demo's linear scenes rewritten in dB with a nodata tag of -99 (as pyroSAR
writes them), and a toy checkpoint whose data recipe records its raw-input settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import nothing_predicted, prepare_config, toy_checkpoint

from unosat.bands import to_db
from unosat.config import compose_config
from unosat.errors import UnosatError
from unosat.prepare import run as prepare
from unosat.prepared import PreparedDataset
from unosat.raw_input import RawInput, UnitsCheck, units_verdict

PYROSAR_NODATA = -99.0
CITY = "Samawah"
#: small windows for the tiny demo's 160 x 192 px scenes
PRED = [
    "window.size=96",
    "window.overlap=32",
    "window.batch_size=4",
    "cog.blocksize=128",
    "block_rows=64",
    "vectorize=false",
    "aggregate.method=none",
]


def rewrite(src_dir: Path, dst_dir: Path, convert, nodata: float | None, city: str = CITY) -> Path:
    """Copy one city's raw GeoTIFFs with ``convert`` applied to valid pixels, nodata pixels set to ``nodata``
    (tagged as such), or left as they are when ``nodata`` is None."""
    for path in sorted(src_dir.rglob("*.tif")):
        rel = path.relative_to(src_dir)
        if not rel.parts[0].startswith(city) or "_BorderMask" in path.name:
            continue
        with rasterio.open(path) as src:
            values, profile = src.read(1), src.profile
            valid = np.isfinite(values) & (values != src.nodata)
        out = np.array(values, dtype=np.float32)
        out[valid] = convert(values[valid])
        if nodata is not None:
            out[~valid] = nodata
        profile.update(nodata=nodata)
        target = dst_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(target, "w", **profile) as dst:
            dst.write(out, 1)
    for label in src_dir.glob(f"*_{city}.*"):
        shutil.copy(label, dst_dir / label.name)
    return dst_dir


@pytest.fixture(scope="module")
def db_raw(tiny_raw_session, tmp_path_factory) -> Path:
    """Samawah in dB, nodata wedge -99 with a nodata tag of -99 (pyroSAR's convention)."""
    return rewrite(
        tiny_raw_session, tmp_path_factory.mktemp("db") / "raw", lambda v: to_db(v), PYROSAR_NODATA
    )


def stack_of(out: Path) -> np.ndarray:
    dataset = PreparedDataset(out)
    with rasterio.open(dataset.bands_path(dataset.manifest["scenes"][0])) as src:
        return src.read()


def raw_pair(raw: Path) -> tuple[np.ndarray, np.ndarray]:
    vh = next(p for p in sorted(raw.rglob("*_vh_*.tif")))
    vv = Path(str(vh).replace("_vh_", "_vv_"))
    with rasterio.open(vh) as a, rasterio.open(vv) as b:
        return a.read(1), b.read(1)


# ------------------------------------------------------------------------------------------ units


def test_units_verdict_tells_db_from_linear_by_the_values():
    rng = np.random.default_rng(0)
    linear = rng.gamma(4.4, 0.15 / 4.4, 10_000)  # VV-like power, median about 0.14
    linear[:30] = -0.01  # thermal-noise residue: a few negative values
    db = 10 * np.log10(linear[30:])
    check = UnitsCheck()
    assert units_verdict(linear, "linear", check) is None
    assert units_verdict(db, "db", check) is None
    assert "look like dB" in units_verdict(db, "linear", check)
    assert "look like linear" in units_verdict(linear, "db", check)
    # dB read with 0 as data although 0 marks missing pixels: the message says so
    zeros = np.concatenate([np.zeros(9000), db[:1000]])
    assert "exactly 0" in units_verdict(zeros, "db", check)


def test_a_db_file_read_as_linear_is_refused_naming_the_setting(db_raw, tmp_path):
    with pytest.raises(UnosatError) as err:
        prepare(prepare_config(db_raw, tmp_path / "out", "steps=[bands]"))
    message = str(err.value)
    assert "discovery.units=db" in message and "_vh_" in message and "look like dB" in message
    assert not (tmp_path / "out" / "bands").exists() or not any((tmp_path / "out" / "bands").iterdir())


def test_a_linear_file_read_as_db_is_refused_naming_the_setting(tiny_raw_session, tmp_path):
    with pytest.raises(UnosatError) as err:
        prepare(prepare_config(tiny_raw_session, tmp_path / "out", "steps=[bands]", "discovery.units=db"))
    assert "discovery.units=linear" in str(err.value) and "look like linear power" in str(err.value)


def test_the_units_check_can_be_turned_off(db_raw, tmp_path):
    prepare(prepare_config(db_raw, tmp_path / "out", "steps=[bands]", "discovery.units_check.enabled=false"))
    assert stack_of(tmp_path / "out").shape[0] == 3


# ----------------------------------------------------------------------------------------- nodata


def test_the_files_own_nodata_tag_is_nodata_and_db_is_read_right(db_raw, tiny_raw_session, tmp_path):
    vh, vv = raw_pair(db_raw)
    tagged = (vh == PYROSAR_NODATA) | (vv == PYROSAR_NODATA)
    assert 0 < tagged.mean() < 0.9
    prepare(prepare_config(db_raw, tmp_path / "db", "steps=[bands]", "discovery.units=db", "bands=db"))
    stack = stack_of(tmp_path / "db")
    assert np.array_equal(np.isnan(stack).all(axis=0), tagged)
    assert np.allclose(stack[0][~tagged], vh[~tagged], atol=1e-4) and np.allclose(
        stack[1][~tagged], vv[~tagged], atol=1e-4
    )
    # the same scene prepared from the original linear files gives the same VH and VV in dB (not the mean band:
    # the dB files lost the negative thermal-noise residues, clamped to -80 dB)
    linear = rewrite(tiny_raw_session, tmp_path / "lin_raw", lambda v: v, 0.0)
    prepare(prepare_config(linear, tmp_path / "linear", "steps=[bands]", "bands=db"))
    assert np.allclose(stack_of(tmp_path / "linear")[:2], stack[:2], atol=1e-4, equal_nan=True)


def test_without_file_nodata_the_tag_is_ignored(db_raw, tmp_path):
    prepare(
        prepare_config(
            db_raw,
            tmp_path / "out",
            "steps=[bands]",
            "discovery.units=db",
            "bands=db",
            "discovery.file_nodata=false",
        )
    )
    vh, _ = raw_pair(db_raw)
    stack = stack_of(tmp_path / "out")
    assert np.isfinite(stack[0][vh == PYROSAR_NODATA]).all()  # -99 dB read as backscatter


def test_zero_is_valid_backscatter_in_db_but_nodata_in_linear_inputs(db_raw, tmp_path):
    raw = Path(shutil.copytree(db_raw, tmp_path / "raw"))
    vh_path = sorted(raw.rglob("*_vh_*.tif"))[0]  # the first scene, as stack_of reads
    with rasterio.open(vh_path, "r+") as src:
        vh = src.read(1)
        rows, cols = np.nonzero(vh != PYROSAR_NODATA)
        vh[rows[:50], cols[:50]] = 0.0  # 0 dB: a bright but valid pixel
        src.write(vh, 1)
    prepare(prepare_config(raw, tmp_path / "out", "steps=[bands]", "discovery.units=db", "bands=db"))
    stack = stack_of(tmp_path / "out")
    assert np.allclose(stack[0][rows[:50], cols[:50]], 0.0)
    settings = PreparedDataset(tmp_path / "out").manifest["settings"]["discovery"]
    assert (
        settings["nodata_values"] == [-99999.0]
        and settings["units"] == "db"
        and settings["file_nodata"] is True
    )
    assert PreparedDataset(tmp_path / "out").raw_input() == RawInput("db", (-99999.0,), True)


# ------------------------------------------------------------------------- checkpoint and predict.py


def test_the_data_recipe_records_the_raw_input_settings(tiny_prepared_db):
    from unosat.data.datamodule import UnosatDataModule

    dm = UnosatDataModule(tiny_prepared_db, epoch_length=8)
    dm.setup()
    assert dm.data_recipe()["raw_input"] == {
        "units": "linear",
        "nodata_values": [0.0, -99999.0],
        "file_nodata": True,
    }


DB_INPUT = {"units": "db", "nodata_values": [-99999.0], "file_nodata": True}


def predict(tmp_path: Path, ckpt: Path, raw: Path, out: str, *overrides: str) -> dict:
    from unosat.predict.run import run

    cfg = compose_config(
        "predict",
        [
            f"ckpt={ckpt}",
            f"input={raw}",
            f"output={tmp_path / out}",
            f"paths.output_dir={tmp_path / 'hydra'}",
            *PRED,
            *overrides,
        ],
    )
    return run(cfg)


def probability(manifest: dict) -> np.ndarray:
    with rasterio.open(manifest["scenes"][0]["probability"]) as src:
        return src.read(1)


@pytest.mark.slow
def test_predict_reads_raw_scenes_with_the_checkpoints_settings_by_default(
    db_raw, tiny_raw_session, tmp_path
):
    ckpt = toy_checkpoint(tmp_path / "db.ckpt", DB_INPUT)
    manifest = predict(tmp_path, ckpt, db_raw, "out_db")
    vh, vv = raw_pair(db_raw)
    prob = probability(manifest)
    assert np.array_equal(prob == 255, (vh == PYROSAR_NODATA) | (vv == PYROSAR_NODATA))  # the tag is nodata
    # the same model on the same scene in linear units (the checkpoint's settings overridden on purpose)
    linear = rewrite(tiny_raw_session, tmp_path / "lin_raw", lambda v: v, 0.0)
    other = predict(
        tmp_path,
        ckpt,
        linear,
        "out_lin",
        "discovery.units=linear",
        "discovery.nodata_values=[0]",
        "input_mismatch=allow",
    )
    assert np.abs(probability(other).astype(int) - prob.astype(int)).max() <= 1


def test_predict_refuses_settings_that_differ_from_the_checkpoints(db_raw, tiny_raw_session, tmp_path):
    ckpt = toy_checkpoint(tmp_path / "db.ckpt", DB_INPUT)
    with pytest.raises(UnosatError) as err:
        predict(tmp_path, ckpt, db_raw, "out", "discovery.units=linear")
    assert "discovery.units db vs linear" in str(err.value) and str(ckpt) in str(err.value)
    assert nothing_predicted(tmp_path / "out")
    # allowed, the values still contradict the units: refused before anything is written
    with pytest.raises(UnosatError, match="look like dB"):
        predict(tmp_path, ckpt, db_raw, "out", "discovery.units=linear", "input_mismatch=allow")
    assert nothing_predicted(tmp_path / "out")


def test_a_linear_checkpoint_on_db_files_is_refused_before_predicting(db_raw, tmp_path):
    ckpt = toy_checkpoint(
        tmp_path / "lin.ckpt", {"units": "linear", "nodata_values": [0.0, -99999.0], "file_nodata": True}
    )
    with pytest.raises(UnosatError, match="discovery.units=db"):
        predict(tmp_path, ckpt, db_raw, "out")
    assert nothing_predicted(tmp_path / "out")


@pytest.mark.slow
def test_checkpoints_that_disagree_need_explicit_settings(db_raw, tmp_path):
    a = toy_checkpoint(tmp_path / "a.ckpt", DB_INPUT)
    b = toy_checkpoint(tmp_path / "b.ckpt", {**DB_INPUT, "nodata_values": [-99999.0, 0.0]})
    with pytest.raises(UnosatError, match="different settings"):
        predict(tmp_path, f"[{a},{b}]", db_raw, "out")
    manifest = predict(
        tmp_path,
        f"[{a},{b}]",
        db_raw,
        "out",
        "discovery.units=db",
        "discovery.nodata_values=[-99999]",
        "discovery.file_nodata=true",
        "input_mismatch=allow",
    )
    assert manifest["status"] == "complete"


@pytest.mark.slow
def test_an_older_checkpoint_without_raw_input_settings_uses_the_config(db_raw, tmp_path):
    ckpt = toy_checkpoint(tmp_path / "old.ckpt", None)
    with pytest.raises(UnosatError, match="discovery.units=db"):  # default linear: the check catches dB files
        predict(tmp_path, ckpt, db_raw, "out")
    manifest = predict(tmp_path, ckpt, db_raw, "out2", "discovery.units=db")
    assert (
        json.loads((tmp_path / "out2" / "predict.json").read_text())["status"]
        == manifest["status"]
        == "complete"
    )
