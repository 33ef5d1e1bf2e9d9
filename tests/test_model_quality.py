"""benchmarks/model_quality.py end to end on the tiny demo: leave-one-city-out over its 2 training cities,
1 seed, 1 epoch of a few tiles; the baselines' scores against a direct computation on the same pixels, the
table's means and standard deviations against the runs, re-runs that skip finished jobs, clear errors."""

from __future__ import annotations

import importlib.util
import statistics

import numpy as np
import pytest
import rasterio
from conftest import REPO

from unosat.errors import UnosatError
from unosat.prepared import PreparedDataset


def load_benchmark():
    spec = importlib.util.spec_from_file_location("model_quality", REPO / "benchmarks" / "model_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: the fastest settings that still train, predict and score: one window per tiny scene
FAST = [
    "--seeds",
    "0",
    "--epochs",
    "1",
    "--epoch-length",
    "4",
    "--pixel-samples",
    "2000",
    "--pixel-windows",
    "3",
    "7",
    "--overrides",
    "data.batch_size=4",
    "data.val_batch_size=16",
    "data.augment.0.height=48",
    "data.augment.0.width=48",
    "trainer.num_sanity_val_steps=0",
    "++trainer.limit_val_batches=1",
    "~callbacks.prediction_grid",
    "~callbacks.learning_rate_monitor",
    "--predict-overrides",
    "window.size=224",
    "window.overlap=16",
]


def fmt_pair(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def direct_vv_confusion(data, fold: int, threshold_db: float) -> np.ndarray:
    """Confusion matrix of "VV (dB) >= threshold" over the valid pixels of the fold's whole scenes, straight
    from the prepared band stacks and masks."""
    ds = PreparedDataset(data)
    stats = ds.statistics()
    scenes = sorted(set(stats[(stats["fold"] == fold) & (stats["split"] == "train")]["scene_id"]))
    assert len(scenes) == 2
    band = ds.recipe.bands.index("vv")
    confusion = np.zeros((2, 2), dtype=np.int64)
    for scene in scenes:
        with rasterio.open(ds.bands_path(scene)) as src:
            vv = src.read(band + 1)
        with rasterio.open(ds.mask_path(scene)) as src:
            mask = src.read(1)
        valid = (mask != 255) & np.isfinite(vv)
        pred = (vv >= threshold_db).astype(np.int64)
        np.add.at(confusion, (mask[valid].astype(np.int64), pred[valid]), 1)
    return confusion


@pytest.mark.slow
def test_benchmark_end_to_end_on_the_tiny_demo(tiny_prepared_db, tmp_path, capsys):
    bench = load_benchmark()
    argv = [
        "--data",
        str(tiny_prepared_db),
        "--workdir",
        str(tmp_path / "work"),
        "--config",
        "lw",
        "model=lwrefinenet",
        "model.output_stride=4",
        *FAST,
    ]  # the cheapest network
    report = bench.main(argv)
    out = capsys.readouterr().out
    runs = report["runs"]
    assert sorted(report["folds"]) == [0, 2] and report["settings"]["test_cities"] == ["Samawah"]
    assert [(r["label"], r["fold"]) for r in runs if r["kind"] == "model"] == [("lw", 0), ("lw", 2)]
    assert len(runs) == 2 + 2 + 2  # VV threshold per fold, pixel classifier per fold and seed, the model

    # the VV baseline's whole-scene scores are a direct threshold of the prepared VV band, pixel for pixel
    vv_runs = [r for r in runs if r["label"] == bench.VV_THRESHOLD]
    direct_iou = []
    for r in vv_runs:
        confusion = direct_vv_confusion(tiny_prepared_db, r["fold"], r["fit"]["threshold_db"])
        assert r["val"]["confusion"] == confusion.tolist()
        direct_iou.append(confusion[1, 1] / (confusion[1, 1] + confusion[0, 1] + confusion[1, 0]))
        assert r["val"]["iou"] == pytest.approx(direct_iou[-1], abs=1e-12)
    mean, std = statistics.fmean(direct_iou), statistics.stdev(direct_iou)
    assert f"{mean:.3f} ± {std:.3f}" in next(
        line for line in out.splitlines() if line.startswith("| VV threshold")
    )

    # every method scored on the same pixels: per fold on the validation city, and on the test city
    assert report["same_pixels_problems"] == []
    for fold in (0, 2):
        assert len({r["val"]["valid_pixels"] for r in runs if r["fold"] == fold}) == 1
    assert len({r["test"]["valid_pixels"] for r in runs}) == 1 and runs[0]["test"]["cities"] == ["Samawah"]
    assert all(r["val"]["cities"] == [c] for r in runs for c in [report["folds"][r["fold"]][0]])

    # the table's mean +/- std are those of the runs (sample std)
    rows = {row["label"]: row for row in report["summary"]}
    for label, key in (("lw", "lw"), ("pixel logistic regression (baseline)", bench.PIXEL_LOGISTIC)):
        mine = [r for r in runs if r["label"] == key]
        for where, score in (("val", "iou"), ("val", "object_f1"), ("test", "f1")):
            values = [r[where][score] for r in mine]
            assert rows[label][f"{where}_{score}"] == pytest.approx((np.mean(values), np.std(values, ddof=1)))
        assert rows[label]["runs"] == 2
    best = max(rows[b]["val_iou"][0] for b in bench.BASELINE_LABELS.values())
    assert rows["lw"]["margin_over_best_baseline"]["iou"] == pytest.approx(rows["lw"]["val_iou"][0] - best)
    for r in runs:
        assert 0.0 <= r["val"]["iou"] <= r["val"]["f1"] <= 1.0 and r["train_seconds"] > 0
        assert r["train_cpu_seconds"] > 0 and r["predict_cpu_seconds"] > 0
    # the validation city's multi-date product under both aggregations: the union of 2 dates (vote N-1 of N)
    # holds every pixel whose mean probability is >= 0.5, so it never predicts fewer building pixels
    for r in runs:
        predicted = {
            m: r["val_city"][m]["confusion"][0][1] + r["val_city"][m]["confusion"][1][1]
            for m in ("mean", "vote")
        }
        assert predicted["vote"] >= predicted["mean"], r["label"]
        assert r["val_city"]["mean"]["products"] == report["folds"][r["fold"]]  # one city product, not scenes
    lw = [r for r in runs if r["label"] == "lw"]
    agg_line = next(
        line for line in out.split("multi-date city product")[1].splitlines() if line.startswith("| lw ")
    )
    assert fmt_pair([r["val_city"]["vote"]["object_f1"] for r in lw]) in agg_line
    assert (tmp_path / "work" / "model_quality.json").is_file()
    assert "| lw " in out and "same pixels for every method: yes" in out
    ceilings = {
        r["val"]["object_f1_ceiling"] for r in runs if r["fold"] == 0
    }  # the labels' own, not a model's
    assert len(ceilings) == 1 and 0.0 < ceilings.pop() <= 1.0
    ceiling_line = next(line for line in out.splitlines() if line.startswith("object F1 ceiling"))
    assert f"test {runs[0]['test']['object_f1_ceiling']:.3f}" in ceiling_line

    # a re-run with the same settings reads every finished job back
    again = bench.main(argv)
    assert [r["train_seconds"] for r in again["runs"]] == [r["train_seconds"] for r in runs]
    # other settings in the same directory are refused
    with pytest.raises(UnosatError, match="other settings"):
        bench.main([*argv, "--epochs", "2"])


@pytest.mark.slow
def test_a_configuration_that_does_not_compose_is_a_clear_error(tiny_prepared_db, tmp_path):
    bench = load_benchmark()
    base = ["--data", str(tiny_prepared_db), "--workdir", str(tmp_path / "work"), *FAST]
    with pytest.raises(UnosatError, match=r"configuration 'nope' \(model=no_such_model\) does not compose"):
        bench.main([*base, "--config", "ok", "model=lwrefinenet", "--config", "nope", "model=no_such_model"])
    with pytest.raises(UnosatError, match=r"configuration 'os' .*does not compose.*not_a_key"):
        bench.main([*base, "--config", "os", "model.not_a_key=4"])
    with pytest.raises(UnosatError, match="label"):
        bench.main([*base, "--config", "model=unet"])
    assert not (tmp_path / "work").exists()  # refused before any work
    # the time limit reaches Lightning as DD:HH:MM:SS, and composes
    assert bench.max_time(3) == "00:00:03:00" and bench.max_time(0.01) == "00:00:00:01"
    assert bench.max_time(60 * 24 + 90.5) == "01:01:30:30"
    job = {
        "overrides": [],
        "fold": 0,
        "seed": 0,
        "dir": str(tmp_path / "job"),
        "settings": {
            "data": str(tiny_prepared_db),
            "train_folds": [0, 2],
            "epochs": 1,
            "epoch_length": 4,
            "max_minutes": 2.5,
            "overrides": [],
            "predict_overrides": [],
        },
    }
    from unosat.config import compose_config

    cfg = compose_config("train", bench.training_overrides(job))
    assert (
        cfg.trainer.max_time == "00:00:02:30"
        and list(cfg.data.train_folds) == [2]
        and list(cfg.data.val_folds) == [0]
    )
