"""City products: the acquisitions of one city combined, pixel by pixel, on their common grid.

Rules (``aggregate.method``):

- ``mean``: the city probability is the mean of the dates' probabilities over the dates with data at that
  pixel; a pixel is building where it is at least ``threshold``.
- ``vote``: each date says building where its own mask does; a pixel is building where at least ``k`` of
  the ``N`` acquisitions say so. ``min_votes`` gives ``k``: a positive value is ``k`` itself, zero or a
  negative value counts from ``N`` (``-1``: ``N - 1`` of ``N``, the original team's rule), never below 1.
  Dates without data at a pixel do not vote, and a pixel seen by fewer than ``k`` dates needs all of them:
  ``votes >= min(k, dates with data)``.

Either way the city probability raster is the mean probability (so the polygons can carry it), and a pixel
that no date covers is nodata. All acquisitions must be on one grid (same CRS, transform and size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unosat.classes import IGNORE_INDEX, TARGET
from unosat.errors import UnosatError
from unosat.io.raster import Grid
from unosat.predict.probability import decode_probability

METHODS = ("none", "mean", "vote")
#: a prediction mask holds the values of a prepared mask: 0 background, TARGET, IGNORE_INDEX where no data
MASK_NODATA = IGNORE_INDEX


@dataclass(frozen=True)
class AggregateConfig:
    """How the acquisitions of a city are combined (see the module docstring); ``block_rows`` rows are
    read and written at a time."""

    method: str = "mean"
    threshold: float = 0.5
    min_votes: int = -1
    block_rows: int = 1024

    def __post_init__(self):
        if self.method not in METHODS:
            raise UnosatError(f"aggregate.method must be one of {METHODS}, got '{self.method}'")
        if not 0.0 <= self.threshold <= 1.0:
            raise UnosatError(f"aggregate.threshold must be in [0, 1], got {self.threshold}")
        if self.block_rows <= 0:
            raise UnosatError(f"aggregate.block_rows must be positive, got {self.block_rows}")

    def votes_needed(self, n_dates: int) -> int:
        """``k`` for a city of ``n_dates`` acquisitions."""
        k = self.min_votes if self.min_votes > 0 else n_dates + self.min_votes
        return max(1, min(int(k), n_dates))

    def to_dict(self) -> dict:
        return {"method": self.method, "threshold": self.threshold, "min_votes": self.min_votes}


def threshold_mask(prob: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 mask of float probabilities: 1 where ``prob >= threshold``, 0 below, 255 where NaN."""
    out = np.full(prob.shape, MASK_NODATA, dtype=np.uint8)
    valid = np.isfinite(prob)
    out[valid] = (prob[valid] >= threshold).astype(np.uint8)
    return out


def mean_probability(probs: np.ndarray) -> np.ndarray:
    """``(N, ...)`` float probabilities with NaN = nodata -> their mean over the dates with data (NaN where
    none has)."""
    probs = np.asarray(probs, dtype=np.float32)
    valid = np.isfinite(probs)
    count = valid.sum(axis=0)
    total = np.where(valid, probs, 0.0).sum(axis=0, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    mean[count == 0] = np.nan
    return mean.astype(np.float32)


def vote(masks: np.ndarray, k: int) -> np.ndarray:
    """``(N, ...)`` uint8 masks (0, 1, 255 = nodata) -> 1 where ``votes >= min(k, dates with data)``, 0
    elsewhere, 255 where no date has data."""
    masks = np.asarray(masks)
    has = masks != MASK_NODATA
    n_valid = has.sum(axis=0)
    votes = (masks == TARGET).sum(axis=0)
    out = (votes >= np.minimum(k, n_valid)).astype(np.uint8)
    out[n_valid == 0] = MASK_NODATA
    return out


def decode_stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Stored probability rasters' values -> ``(N, ...)`` float32 with NaN at nodata."""
    return np.stack([decode_probability(a) for a in arrays])


def check_same_grid(city: str, grids: dict[str, Grid]) -> Grid:
    """The grid shared by a city's acquisitions (``scene_id -> grid``); error naming them otherwise."""
    items = list(grids.items())
    ref_id, ref = items[0]
    problems = []
    for sid, grid in items[1:]:
        diff = ref.differences(grid)
        if diff:
            problems.append(f"{ref_id} vs {sid}: {'; '.join(diff)}")
    if problems:
        raise UnosatError(
            f"cannot aggregate the acquisitions of {city}: they are not on one grid ({' | '.join(problems)}); "
            "resample them onto one grid, or predict without city products (aggregate.method=none)"
        )
    return ref
