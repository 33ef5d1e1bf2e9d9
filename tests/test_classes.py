"""Class names from config (classes.names): metric keys, checkpoint, predict outputs and evaluation keys say
"water" when a user trains water; "building" stays the default."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from conftest import SAMAWAH, predict_cfg, prepare_config, train_cfg

from unosat.checkpoint import load_checkpoint
from unosat.classes import CLASS_NAMES, class_names, plural
from unosat.config import compose_config
from unosat.errors import UnosatError
from unosat.metrics import scores_from_confusion
from unosat.predict.evaluate import count_keys, evaluation_report, evaluation_table
from unosat.predict.run import run as predict
from unosat.predict.tracking import evaluation_metrics
from unosat.prepare import run as prepare
from unosat.training.run import run as train

WATER = ["classes=water"]


def test_names_are_checked_with_one_line_naming_the_key():
    assert class_names(None) == CLASS_NAMES == ("background", "building")
    assert class_names(["land", "water"]) == ("land", "water")
    with pytest.raises(UnosatError, match=r"classes.names must name two classes"):
        class_names(["a", "b", "c"])
    with pytest.raises(
        UnosatError, match=r"classes.names: class name\(s\) \['open water'\] must start with a letter"
    ):
        class_names(["land", "open water"])
    with pytest.raises(UnosatError, match=r"need different names"):
        class_names(["water", "water"])
    with pytest.raises(UnosatError, match=r"must be a list of two names"):
        class_names("water")
    assert [plural(n) for n in ("building", "water", "bus", "city", "day")] == [
        "buildings",
        "waters",
        "buses",
        "cities",
        "days",
    ]


def test_scores_and_evaluation_keys_follow_the_names():
    cm = np.array([[50, 10], [5, 35]])
    water = scores_from_confusion(cm, ("land", "water"))
    default = scores_from_confusion(cm)
    assert water["iou_water"] == default["iou_building"] == pytest.approx(35 / 50)
    assert water["iou_land"] == default["iou_background"] and water["f1_water"] == default["f1_building"]
    assert "iou_building" not in water
    assert count_keys(("land", "water"))[2:4] == ("true_water_pixels", "predicted_water_pixels")
    city = {
        "pixel": {"confusion": cm.tolist(), **water},
        "object": {"tp": 1, "fp": 0, "fn": 1, "precision": 1.0, "recall": 0.5, "f1": 2 / 3},
        "counts": dict.fromkeys(count_keys(("land", "water")), 1),
        "settings": {"iou_threshold": 0.5},
        "classes": ["land", "water"],
    }
    report = evaluation_report({"A": city})
    assert report["overall"]["pixel"]["iou_water"] == pytest.approx(0.7)
    assert report["overall"]["counts"]["true_water_pixels"] == 1 and report["overall"]["classes"] == [
        "land",
        "water",
    ]
    assert "0.7000" in evaluation_table(report)
    assert evaluation_metrics(report)["predict/overall/pixel_iou_water"] == pytest.approx(0.7)
    with pytest.raises(UnosatError, match="different class names"):
        evaluation_report({"A": city, "B": {**city, "classes": ["background", "building"]}})


@pytest.fixture(scope="module")
def water_dataset(tiny_raw_session, tmp_path_factory) -> Path:
    """The tiny demo prepared (dB) with classes [land, water]."""
    out = tmp_path_factory.mktemp("water") / "prepared"
    prepare(
        prepare_config(tiny_raw_session, out, "bands=db", "steps=[bands,labels,tiles,stats,report]", *WATER)
    )
    return out


@pytest.mark.slow
def test_prepare_records_the_names_and_the_report_uses_them(water_dataset):
    manifest = json.loads((water_dataset / "dataset.json").read_text())
    assert manifest["classes"] == ["land", "water"]
    report = (water_dataset / "report" / "report.md").read_text()
    assert "Classes: 0 land, 1 water" in report and "water % of valid" in report
    assert "Backscatter of waters vs land" in report and "with_waters" in report and "building" not in report


@pytest.fixture(scope="module")
def water_run(water_dataset, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("water_run")
    value = train(
        train_cfg(water_dataset, root, *WATER, "trainer.max_epochs=1", "callbacks.prediction_grid=null")
    )
    run_dir = root / "logs" / "train" / "runs" / "run"
    (run_dir / "returned.json").write_text(json.dumps(value))
    return run_dir


@pytest.mark.slow
def test_training_water_logs_water_metrics_and_records_the_names(water_run):
    metrics = pd.read_csv(water_run / "csv" / "metrics.csv")
    summary = json.loads((water_run / "summary.json").read_text())
    for key in (
        "val/iou_water",
        "val/iou_land",
        "val/precision_water",
        "val/recall_water",
        "val/f1_water",
        "train/iou_water",
    ):
        assert key in metrics.columns, key
    assert not [c for c in metrics.columns if "building" in c or "background" in c]
    assert "baseline/val_iou_water" in metrics.columns and "val_iou_water" in summary["baseline"]
    # the checkpoint monitors (and train.py returns) val/iou_water
    returned = json.loads((water_run / "returned.json").read_text())
    assert returned == pytest.approx(summary["best_score"]) == pytest.approx(metrics["val/iou_water"].max())
    best = Path(summary["best_checkpoint"])
    assert load_checkpoint(best)["unosat"]["data"]["classes"] == ["land", "water"]


def test_training_other_names_than_the_dataset_is_refused(water_dataset, tmp_path):
    with pytest.raises(
        UnosatError,
        match=r"prepared with classes \['land', 'water'\], not \['background', 'building'\]"
        r"; train with classes.names=\[land,water\]",
    ):
        train(train_cfg(water_dataset, tmp_path, "debug=fdr"))


@pytest.mark.slow
def test_predict_takes_the_checkpoints_names(water_run, tiny_raw_session, tmp_path):
    ckpt = Path(json.loads((water_run / "summary.json").read_text())["best_checkpoint"])
    out = tmp_path / "out"
    manifest = predict(
        predict_cfg(out, f"ckpt={ckpt}", f"input={tiny_raw_session}", "cities=[Samawah]", "evaluate=true")
    )
    assert manifest["settings"]["classes"] == ["land", "water"]
    assert (out / "cities" / "Samawah_waters.gpkg").is_file() and not list(out.rglob("*building*"))
    with rasterio.open(out / "cities" / "Samawah_mask.tif") as src:
        assert src.descriptions == ("water",)
    with rasterio.open(out / "scenes" / f"{SAMAWAH[0]}_probability.tif") as src:
        assert src.descriptions == ("water_probability",)
    evaluation = json.loads((out / "evaluation.json").read_text())
    pixel, counts = evaluation["overall"]["pixel"], evaluation["overall"]["counts"]
    assert {"iou_water", "iou_land", "precision_water", "recall_water", "f1_water"} <= set(pixel)
    assert not [k for k in pixel if "building" in k]
    assert counts["true_water_pixels"] == sum(pixel["confusion"][1]) > 0
    # an explicit classes.names must be the checkpoint's
    with pytest.raises(
        UnosatError,
        match=r"classes.names=\['background', 'building'\] but checkpoint .* was trained "
        r"on \['land', 'water'\]",
    ):
        predict(
            predict_cfg(
                tmp_path / "other",
                f"ckpt={ckpt}",
                f"input={tiny_raw_session}",
                "cities=[Samawah]",
                "classes.names=[background,building]",
            )
        )


def test_default_config_keeps_building():
    train_config = compose_config("train")
    assert train_config.optimized_metric == "val/iou_building"
    assert train_config.callbacks.model_checkpoint.monitor == "val/iou_building"
    assert list(train_config.data.class_names) == ["background", "building"]
    assert compose_config("predict").classes.names is None
    assert list(compose_config("train", WATER).data.class_names) == ["land", "water"]
    assert compose_config("train", ["classes.names=[dry,flood]"]).optimized_metric == "val/iou_flood"


@pytest.mark.slow
def test_a_dataset_is_renamed_by_the_report_step(water_dataset, tmp_path):
    """Renaming needs no re-preparation: steps=[report] with other names rewrites dataset.json and the report."""
    copy = Path(shutil.copytree(water_dataset, tmp_path / "copy"))
    raw = json.loads((copy / "dataset.json").read_text())["raw_dir"]
    prepare(prepare_config(Path(raw), copy, "bands=db", "steps=[report]", "classes.names=[dry,flood]"))
    assert json.loads((copy / "dataset.json").read_text())["classes"] == ["dry", "flood"]
    assert "Backscatter of floods vs dry" in (copy / "report" / "report.md").read_text()
