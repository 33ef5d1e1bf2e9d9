"""The trivial baseline every training run reports: one global threshold on the VV band.

The threshold and its direction are chosen on the training tiles (best target IoU, from per-class histograms
of VV in dB over valid pixels): "target where VV >= t" for bright targets (buildings), "target where VV < t"
for dark ones (water), whichever the training data favour. Both are applied unchanged to the validation
tiles. A model that does not clearly beat it has not learned more than "bright (or dark) means target".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unosat.bands import to_db
from unosat.classes import IGNORE_INDEX, TARGET
from unosat.data.tile_dataset import TileDataset


@dataclass(frozen=True)
class ThresholdBaseline:
    """``direction``: ``above`` (target where the band >= ``threshold_db``) or ``below`` (< ``threshold_db``)."""

    threshold_db: float
    train_iou: float
    val_iou: float
    direction: str = "above"


def vv_histograms(dataset: TileDataset, edges: np.ndarray, band: int) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of the band (dB) over valid building and background pixels of every tile."""
    building = np.zeros(len(edges) - 1, dtype=np.int64)
    background = np.zeros(len(edges) - 1, dtype=np.int64)
    for i in range(len(dataset)):
        image, mask = dataset.read_raw(i)
        values = image[..., band]
        if dataset.recipe.units == "linear":
            values = to_db(values)
        valid = (mask != IGNORE_INDEX) & np.isfinite(values)
        building += np.histogram(values[valid & (mask == TARGET)], edges)[0]
        background += np.histogram(values[valid & (mask != TARGET)], edges)[0]
    return building, background


def iou_above(building: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Building IoU of "building if value >= edge k" for every histogram edge k."""
    tp = np.cumsum(building[::-1])[::-1]
    fp = np.cumsum(background[::-1])[::-1]
    fn = building.sum() - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(tp / (tp + fp + fn))


def iou_below(building: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Target IoU of "target if value < edge k" for every histogram edge k (``len(building) + 1`` values)."""
    tp = np.concatenate([[0], np.cumsum(building)])
    fp = np.concatenate([[0], np.cumsum(background)])
    fn = building.sum() - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(tp / (tp + fp + fn))


def vv_threshold_baseline(
    train: TileDataset,
    val: TileDataset,
    band_name: str = "vv",
    lo_db: float = -40.0,
    hi_db: float = 40.0,
    bins: int = 800,
) -> ThresholdBaseline:
    """Best single threshold and direction on ``band_name`` (dB) over the training tiles, and its IoU on
    validation."""
    bands = train.recipe.bands
    band = bands.index(band_name) if band_name in bands else 0
    edges = np.linspace(lo_db, hi_db, bins + 1)
    edges[0], edges[-1] = -np.inf, np.inf
    train_hist, val_hist = vv_histograms(train, edges, band), vv_histograms(val, edges, band)
    above, below = iou_above(*train_hist), iou_below(*train_hist)
    if below.max() > above.max():
        k, direction, iou_train, iou_val = int(np.argmax(below)), "below", below, iou_below(*val_hist)
    else:
        k, direction, iou_train, iou_val = int(np.argmax(above)), "above", above, iou_above(*val_hist)
    threshold = float(edges[k]) if np.isfinite(edges[k]) else float(lo_db if direction == "above" else hi_db)
    return ThresholdBaseline(threshold, float(iou_train[k]), float(iou_val[k]), direction)
