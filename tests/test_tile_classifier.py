"""Tile classifier: model, target, loss, and training through train.py with precision/recall/AUROC."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from conftest import train_cfg
from hydra.utils import instantiate

from unosat.checkpoint import build_model, load_checkpoint
from unosat.config import compose_config
from unosat.errors import UnosatError
from unosat.losses.tile_bce import TileBCELoss, tile_target
from unosat.models.tile_classifier import TileClassifier
from unosat.training.module import SegmentationModule
from unosat.training.run import check_module_fits_network, run
from unosat.training.tile_module import TileClassificationModule


def test_output_shape_and_stages():
    net = TileClassifier(in_channels=5, num_stages=4).eval()
    with torch.inference_mode():
        assert net(torch.randn(3, 5, 70, 50)).shape == (3, 1)
    assert TileClassifier(num_stages=7).head[1].in_features == 2 * 320
    with pytest.raises(UnosatError, match="num_stages"):
        TileClassifier(num_stages=9)


def test_tile_target_ignores_nodata():
    mask = torch.zeros(4, 3, 3, dtype=torch.long)
    mask[1, 0, 0] = 1
    mask[2] = 255
    mask[3, 1, 1] = 1
    mask[3, 0] = 255
    assert tile_target(mask).tolist() == [0.0, 1.0, 0.0, 1.0]


def test_bce_by_hand():
    logits = torch.tensor([[2.0], [-1.0]])
    mask = torch.zeros(2, 2, 2, dtype=torch.long)
    mask[0, 0, 0] = 1  # tile 0 has a building, tile 1 none
    p0, p1 = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))
    expected = -(3.0 * math.log(p0) + math.log(1 - p1)) / 2
    assert TileBCELoss(pos_weight=3.0)(logits, mask)["loss"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_trains_with_train_py_and_logs_precision_recall_auroc(tiny_prepared_db, tmp_path):
    cfg = train_cfg(
        tiny_prepared_db,
        tmp_path,
        "model=tile_classifier",
        "trainer.max_epochs=2",
        "model.window_px=32",
        "data.augment.0.height=${model.window_px}",
        "data.augment.0.width=${model.window_px}",
    )
    assert (
        cfg.data.augment[0].height == 32 and cfg.data.val_augment[0].height == 32
    )  # trained and judged at 32 px
    value = run(cfg)
    run_dir = tmp_path / "logs" / "train" / "runs" / "run"
    metrics = pd.read_csv(run_dir / "csv" / "metrics.csv")
    for column in ("val/precision", "val/recall", "val/auroc", "val/f1", "train/bce_epoch"):
        assert column in metrics.columns
    assert value == pytest.approx(metrics["val/bce"].dropna().min())  # checkpoints keep the lowest val/bce
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["unosat"]["task"] == "tile_classification"
    assert build_model(ckpt).task == "tile_classification" and build_model(ckpt).window_px == 32
    assert not list((run_dir / "figures").glob("prediction_grid*"))  # no segmentation grid for a classifier


@pytest.mark.parametrize(
    "overrides, module_class, task",
    [
        ([], SegmentationModule, "segmentation"),
        (["model=tile_classifier"], TileClassificationModule, "tile_classification"),
    ],
)
def test_the_model_config_chooses_the_lightning_module(overrides, module_class, task):
    cfg = compose_config("train", overrides)
    module = instantiate(cfg.module, _partial_=True)(
        net=TileClassifier(in_channels=3), loss=TileBCELoss(), optimizer=None, metadata={"model": "spec"}
    )
    assert type(module) is module_class
    assert module.metadata == {
        "model": "spec",
        "task": task,
    }  # what checkpoints record for predict and export
    if task == "tile_classification":
        assert module.threshold == 0.5


def test_a_module_that_does_not_fit_the_network_is_refused():
    cfg = compose_config("train", ["model=tile_classifier", "module=segmentation"])
    module = instantiate(cfg.module, _partial_=True)(
        net=TileClassifier(in_channels=3), loss=TileBCELoss(), optimizer=None
    )
    with pytest.raises(
        UnosatError,
        match="the module unosat.training.module.SegmentationModule trains segmentation, "
        "but the network TileClassifier predicts tile classification",
    ):
        check_module_fits_network(module, module.net, cfg.module._target_)
