"""unosat.predict.output_dir: a rerun skips finished scenes, an output of other settings (or not a prediction)
is refused, a failure is recorded and leaves a finished prediction alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import DEMO_RUN_OVERRIDES, SAMAWAH, predict_cfg, predict_demo

from unosat.errors import UnosatError
from unosat.predict.run import run
from unosat.scenes import discover_scenes


@pytest.fixture(scope="module")
def finished_run(trained_log_dir, tiny_raw_session, tmp_path_factory) -> Path:
    """A finished demo prediction (:func:`conftest.predict_demo`) of this module's own: its tests run
    predict.py on it again."""
    return predict_demo(tmp_path_factory.mktemp("finished_run"), trained_log_dir, tiny_raw_session)


@pytest.mark.slow
def test_a_rerun_with_the_same_settings_skips_finished_scenes(
    finished_run, trained_log_dir, tiny_raw_session, tmp_path
):
    before = {p: p.stat().st_mtime_ns for p in (finished_run / "scenes").iterdir()}
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "raw").symlink_to(tiny_raw_session, target_is_directory=True)
    manifest = run(
        predict_cfg(finished_run, f"paths.demo_dir={demo}", *DEMO_RUN_OVERRIDES, log_dir=trained_log_dir)
    )
    assert manifest["resumed"] and all(s["skipped"] for s in manifest["scenes"])
    assert before == {p: p.stat().st_mtime_ns for p in (finished_run / "scenes").iterdir()}


@pytest.mark.slow
def test_an_output_made_with_other_settings_or_not_a_prediction_is_refused(
    finished_run, best_ckpt, tiny_raw_session, tmp_path
):
    common = [f"ckpt={best_ckpt}", f"input={tiny_raw_session}", "cities=[Samawah]"]
    with pytest.raises(
        UnosatError,
        match=r"holds a prediction made with other settings .*tta: 'flips' -> 'none'.*overwrite=true",
    ):
        run(predict_cfg(finished_run, *common, "tta=none"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(
        UnosatError, match=r"foreign is not empty and holds no predict.json: it is not a unosat prediction"
    ):
        run(predict_cfg(foreign, *common))
    run(predict_cfg(foreign, *common, "overwrite=true", "aggregate.method=none", "vectorize=false"))
    assert (foreign / "notes.txt").read_text() == "mine" and (foreign / "predict.json").is_file()


@pytest.mark.slow
def test_a_failed_prediction_records_why_and_the_same_command_runs_after_the_fix(
    best_ckpt, tiny_raw, tmp_path
):
    scene = next(s for s in discover_scenes(tiny_raw) if s.scene_id == SAMAWAH[1])
    good = scene.vv.read_bytes()
    scene.vv.write_bytes(good[: len(good) * 2 // 3])  # a truncated input
    out = tmp_path / "o"
    args = [f"ckpt={best_ckpt}", f"input={tiny_raw}", "cities=[Samawah]", "vectorize=false"]
    with pytest.raises(UnosatError, match=rf"{scene.vv.name}"):
        run(predict_cfg(out, *args))
    manifest = json.loads((out / "predict.json").read_text())
    assert (
        manifest["status"] == "failed"
        and scene.vv.name in manifest["reason"]
        and "\n" not in manifest["reason"]
    )
    scene.vv.write_bytes(good)  # the fix
    assert run(predict_cfg(out, *args))["status"] == "complete"  # the same command, no overwrite=true

    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"")  # a bad checkpoint
    out = tmp_path / "o2"
    args = [f"ckpt={bad}", f"input={tiny_raw}", "cities=[Samawah]", "vectorize=false"]
    with pytest.raises(UnosatError, match="model.ckpt: not a readable PyTorch checkpoint"):
        run(predict_cfg(out, *args))
    manifest = json.loads((out / "predict.json").read_text())
    assert (
        manifest["status"] == "failed"
        and "model.ckpt: not a readable PyTorch checkpoint" in manifest["reason"]
    )
    shutil.copy(best_ckpt, bad)  # the fix: the right file under the same name
    assert run(predict_cfg(out, *args))["status"] == "complete"


@pytest.mark.slow
def test_a_failure_leaves_a_finished_prediction_alone(finished_run, tmp_path):
    before = (finished_run / "predict.json").read_bytes()
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(UnosatError, match="empty.ckpt"):
        run(predict_cfg(finished_run, f"ckpt={empty}"))
    assert (finished_run / "predict.json").read_bytes() == before
    assert not (finished_run / ".unosat.lock").exists()
