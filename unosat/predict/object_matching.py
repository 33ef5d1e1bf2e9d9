"""One-to-one matching of predicted and true building polygons (SpaceNet-style object scores).

A predicted and a true polygon match when their IoU (area of intersection / area of union) is at least
the threshold (0.5). Matching is greedy by decreasing IoU: the pair with the highest IoU is taken, both
polygons leave the pool, and so on; ties are broken by predicted index, then true index. Each polygon is
used at most once, so duplicate or overlapping predictions of one building count one true positive and
false positives for the rest. Matched pairs are true positives; unmatched predictions false positives;
unmatched true polygons false negatives.

Candidate pairs come from a spatial index (shapely ``STRtree``) over the true polygons, so tens of thousands
of buildings match in seconds. Both sets must be in the same projected CRS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from unosat.errors import UnosatError


@dataclass(frozen=True)
class MatchResult:
    """Matched pairs ``(pred index, true index)`` with their IoU, and the sizes of both sets."""

    pairs: np.ndarray  # (n_matched, 2) int64
    ious: np.ndarray  # (n_matched,) float64
    n_pred: int
    n_true: int

    @property
    def tp(self) -> int:
        return len(self.pairs)

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_true - self.tp


def pair_ious(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pred_index, true_index, iou)`` of every pair whose interiors intersect (IoU > 0 possible)."""
    pred = np.asarray(pred, dtype=object)
    truth = np.asarray(truth, dtype=object)
    if len(pred) == 0 or len(truth) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    tree = shapely.STRtree(truth)
    i, j = tree.query(pred, predicate="intersects")
    inter = shapely.area(shapely.intersection(pred[i], truth[j]))
    union = shapely.area(pred)[i] + shapely.area(truth)[j] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    keep = iou > 0
    return i[keep].astype(np.int64), j[keep].astype(np.int64), iou[keep]


def match_polygons(pred, truth, iou_threshold: float = 0.5) -> MatchResult:
    """Greedy one-to-one matching of ``pred`` to ``truth`` polygons at IoU >= ``iou_threshold``."""
    if not 0 < iou_threshold <= 1:
        raise UnosatError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    pred = np.asarray(pred, dtype=object)
    truth = np.asarray(truth, dtype=object)
    i, j, iou = pair_ious(pred, truth)
    ok = iou >= iou_threshold
    i, j, iou = i[ok], j[ok], iou[ok]
    order = np.lexsort((j, i, -iou))  # decreasing IoU, then predicted index, then true index
    used_pred = [False] * len(pred)
    used_true = [False] * len(truth)
    taken = []
    pi, tj = i.tolist(), j.tolist()
    for k in order.tolist():
        a, b = pi[k], tj[k]
        if not used_pred[a] and not used_true[b]:
            used_pred[a] = used_true[b] = True
            taken.append(k)
    taken = np.asarray(taken, dtype=np.int64)
    return MatchResult(
        np.stack([i[taken], j[taken]], axis=1).reshape(-1, 2), iou[taken], len(pred), len(truth)
    )


def object_scores(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    """``tp``, ``fp``, ``fn`` and precision, recall, F1 (0 when a denominator is 0, as for pixel scores)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }
