"""End to end on the tiny demo: train.py trains a model that beats the one-VV-threshold baseline, and
predict.py (evaluate=true) on the validation city reproduces the validation score on the same pixels."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import prepare_config

from unosat.config import compose_config
from unosat.predict.run import run as predict
from unosat.prepare import run as prepare
from unosat.training.run import run as train

#: end-to-end: trains networks and predicts with them (``pytest -m "not slow"`` leaves them out)
pytestmark = pytest.mark.slow

#: a short CPU run of the full-resolution U-Net on 64 px tiles: whole tiles (no crop), flips and rot90,
#: CE + per-class soft Jaccard (pushes the rare building class from the first epochs), AdamW at 2e-3
TRAIN = [
    "model=unet",
    "augment=flips_rot90",
    "data.batch_size=8",
    "data.val_batch_size=8",
    "data.epoch_length=64",
    "data.crop_px=64",
    "loss=ce_jaccard",
    "loss.jaccard_weight=1.0",
    "trainer.max_epochs=6",
    "trainer.enable_progress_bar=false",
    "trainer.num_sanity_val_steps=0",
    "logger=csv",
    "callbacks.prediction_grid=null",
    "seed=1",
]


def test_training_beats_the_baseline_and_predict_reproduces_the_validation_score(tiny_raw_session, tmp_path):
    # every tile kept (min_valid_fraction 0): the validation tiles then cover every valid pixel of the
    # validation city's scenes, the pixels predict.py scores
    data = tmp_path / "prepared"
    prepare(
        prepare_config(
            tiny_raw_session,
            data,
            "bands=db",
            "steps=[bands,labels,tiles,stats]",
            "stats.min_valid_fraction=0",
            "labels.all_touched=true",
        )
    )
    run_dir = tmp_path / "logs" / "train" / "runs" / "run"
    best = train(
        compose_config(
            "train",
            [f"data.dir={data}", f"paths.log_dir={tmp_path / 'logs'}", f"paths.output_dir={run_dir}", *TRAIN],
        )
    )
    out = json.loads((run_dir / "summary.json").read_text())
    baseline = out["baseline"]["val_iou_building"]
    print(f"best validation building IoU {best:.4f}, VV-threshold baseline {baseline:.4f}")
    assert baseline > 0.05  # the baseline finds buildings: beating it means something
    assert best > baseline

    # the validation city (the last training fold: Najaf), both acquisitions, scored per scene over all their
    # valid pixels; windows of the tile size at the tiles' overlap, without a margin, so windows and tiles align
    evaluation = predict(
        compose_config(
            "predict",
            [
                f"ckpt={out['best_checkpoint']}",
                f"input={tiny_raw_session}",
                "cities=[Najaf]",
                f"output={tmp_path / 'pred'}",
                f"paths.output_dir={tmp_path / 'hydra'}",
                "aggregate.method=none",
                "evaluate=true",
                "tta=none",  # validation runs the network once per tile
                "window.size=64",
                "window.overlap=8",
                "window.margin=0",
                "cog.blocksize=128",
                "block_rows=64",
                "labels.all_touched=true",
            ],
        )
    )["evaluation"]
    predicted = evaluation["overall"]["pixel"]["iou_building"]
    print(f"predict.py on the validation city: pixel IoU {predicted:.4f}")
    # the same pixels and labels; the predictions differ only in the tiles' overlaps, where validation takes
    # the tile nearest the pixel and predict.py blends both windows (sin^2 weights)
    assert predicted == pytest.approx(best, abs=0.02)
    metrics = pd.read_csv(run_dir / "csv" / "metrics.csv")
    assert best == pytest.approx(metrics["val/iou_building"].max())
