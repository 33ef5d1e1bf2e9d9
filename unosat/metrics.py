"""Segmentation scores from a confusion matrix (rows: true class, columns: predicted class).

Used by training (torchmetrics accumulates the matrix over valid pixels, synchronised under DDP) and by
evaluation (numpy matrices over whole scenes), so both report the same figures the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unosat.classes import CLASS_NAMES, TARGET


def scores_from_confusion(
    confusion, class_names: Sequence[str] = CLASS_NAMES, positive: int = TARGET
) -> dict[str, float]:
    """IoU per class, mean IoU, pixel accuracy, and precision/recall/F1 of the ``positive`` class.

    A ratio whose denominator is 0 (class absent and never predicted) is NaN, except precision/recall/F1
    which are 0 then. Keys: ``iou_<class>``, ``miou``, ``accuracy``, ``precision_<pos>``, ``recall_<pos>``,
    ``f1_<pos>``.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
    out = {f"iou_{name}": float(iou[i]) for i, name in enumerate(class_names)}
    out["miou"] = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    out["accuracy"] = float(tp.sum() / cm.sum()) if cm.sum() else float("nan")
    name = class_names[positive]
    p_den, r_den = tp[positive] + fp[positive], tp[positive] + fn[positive]
    precision = tp[positive] / p_den if p_den else 0.0
    recall = tp[positive] / r_den if r_den else 0.0
    out[f"precision_{name}"] = float(precision)
    out[f"recall_{name}"] = float(recall)
    out[f"f1_{name}"] = float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0
    return out


def confusion_matrix(
    target: np.ndarray, prediction: np.ndarray, num_classes: int, ignore_index: int
) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts over pixels whose target is not ``ignore_index``."""
    valid = target != ignore_index
    t = target[valid].astype(np.int64)
    p = prediction[valid].astype(np.int64)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )
