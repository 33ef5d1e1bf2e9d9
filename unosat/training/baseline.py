"""The trivial baseline every training run reports: one global threshold on the VV band.

The threshold is chosen on the training tiles (best building IoU, from per-class histograms of VV in dB over
valid pixels) and applied unchanged to the validation tiles. A model that does not clearly beat it has not
learned more than "bright means building".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unosat.bands import to_db
from unosat.classes import BUILDING, IGNORE_INDEX
from unosat.data.tile_dataset import TileDataset


@dataclass(frozen=True)
class ThresholdBaseline:
    threshold_db: float
    train_iou: float
    val_iou: float


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
        building += np.histogram(values[valid & (mask == BUILDING)], edges)[0]
        background += np.histogram(values[valid & (mask != BUILDING)], edges)[0]
    return building, background


def iou_above(building: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Building IoU of "building if value >= edge k" for every histogram edge k."""
    tp = np.cumsum(building[::-1])[::-1]
    fp = np.cumsum(background[::-1])[::-1]
    fn = building.sum() - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(tp / (tp + fp + fn))


def vv_threshold_baseline(train: TileDataset, val: TileDataset, band_name: str = "vv",
                          lo_db: float = -40.0, hi_db: float = 40.0, bins: int = 800) -> ThresholdBaseline:
    """Best single threshold on ``band_name`` (dB) over the training tiles, and its IoU on validation."""
    bands = train.recipe.bands
    band = bands.index(band_name) if band_name in bands else 0
    edges = np.linspace(lo_db, hi_db, bins + 1)
    edges[0], edges[-1] = -np.inf, np.inf
    iou_train = iou_above(*vv_histograms(train, edges, band))
    k = int(np.argmax(iou_train))
    iou_val = iou_above(*vv_histograms(val, edges, band))
    threshold = float(edges[k]) if np.isfinite(edges[k]) else float(lo_db)
    return ThresholdBaseline(threshold, float(iou_train[k]), float(iou_val[k]))
