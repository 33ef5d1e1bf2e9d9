"""Scores from confusion matrices, and the training metrics against numpy with ignored pixels."""

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from unosat.metrics import confusion_matrix, scores_from_confusion


def test_scores_by_hand():
    cm = np.array([[50, 10], [5, 35]])  # rows true, cols predicted
    s = scores_from_confusion(cm)
    assert s["iou_building"] == pytest.approx(35 / (35 + 10 + 5))
    assert s["iou_background"] == pytest.approx(50 / (50 + 5 + 10))
    assert s["miou"] == pytest.approx((s["iou_building"] + s["iou_background"]) / 2)
    assert s["precision_building"] == pytest.approx(35 / 45)
    assert s["recall_building"] == pytest.approx(35 / 40)
    p, r = 35 / 45, 35 / 40
    assert s["f1_building"] == pytest.approx(2 * p * r / (p + r))


def test_torchmetrics_confusion_ignores_255_like_numpy():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, (4, 16, 16))
    target[rng.random(target.shape) < 0.2] = 255
    pred = rng.integers(0, 2, (4, 16, 16))
    metric = MulticlassConfusionMatrix(2, ignore_index=255)
    for i in range(4):  # accumulated over batches
        metric.update(torch.from_numpy(pred[i : i + 1]), torch.from_numpy(target[i : i + 1]))
    np.testing.assert_array_equal(metric.compute().numpy(), confusion_matrix(target, pred, 2, 255))
    # and against a direct count
    valid = target != 255
    tp = np.sum((pred == 1) & (target == 1) & valid)
    fp = np.sum((pred == 1) & (target == 0) & valid)
    fn = np.sum((pred == 0) & (target == 1) & valid)
    assert scores_from_confusion(metric.compute().numpy())["iou_building"] == pytest.approx(
        tp / (tp + fp + fn)
    )
