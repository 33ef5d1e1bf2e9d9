"""Target-based weighted sampling of tiles, shared out between DDP ranks.

Every rank draws the same weighted sample (same seed and epoch) and keeps its own disjoint share (every
``world_size``-th index from its rank on), so no rank repeats another's work. The weights come from the
statistics table (``target_ratio``), not from reading tiles.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, DistributedSampler

from unosat.errors import UnosatError


def tile_weights(
    target_ratio: Sequence[float] | pd.Series,
    without_buildings: float = 0.7,
    with_buildings: float = 0.3,
    bins: Sequence[float] | None = None,
    bin_weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Sampling weight of each tile from its building (target) ratio.

    By default a tile with no building pixel weighs ``without_buildings`` and a tile with some weighs
    ``with_buildings`` (the UNOSAT team's 0.7 / 0.3). With ``bins`` (edges over the target ratio, e.g.
    ``[0, 0.001, 0.01, 1]``) and ``bin_weights`` (one per bin), a tile weighs its bin's weight instead
    (ratios outside the edges fall in the nearest bin).
    """
    ratio = np.asarray(target_ratio, dtype=np.float64)
    if bins is not None:
        bins = np.asarray(bins, dtype=np.float64)
        if bin_weights is None or len(bin_weights) != len(bins) - 1:
            raise UnosatError(
                f"sampling: {len(bins)} bin edges need {len(bins) - 1} bin_weights, got {bin_weights}"
            )
        if np.any(np.diff(bins) <= 0):
            raise UnosatError(f"sampling.bins must increase strictly, got {list(bins)}")
        which = np.clip(np.searchsorted(bins, ratio, side="right") - 1, 0, len(bins) - 2)
        weights = np.asarray(bin_weights, dtype=np.float64)[which]
    else:
        weights = np.where(ratio > 0, with_buildings, without_buildings).astype(np.float64)
    if np.any(weights < 0) or not np.isfinite(weights).all() or weights.sum() <= 0:
        raise UnosatError("sampling weights must be finite, non-negative, and not all zero")
    return weights


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed for ``(seed, epoch)``: distinct pairs give unrelated seeds.

    ``seed + epoch`` would make seed 5 at epoch 1 replay seed 6 at epoch 0; numpy's ``SeedSequence`` hashes
    the pair instead (the same pair always gives the same seed, on every rank and every run).
    """
    state = np.random.SeedSequence([int(seed) % 2**63, int(epoch)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class DistributedWeightedSampler(DistributedSampler):
    """Draws ``num_samples`` tile indices per epoch with replacement, proportionally to ``weights``,
    and yields this rank's share (``ceil(num_samples / num_replicas)`` indices).

    A subclass of :class:`~torch.utils.data.DistributedSampler`, so Lightning leaves it in place under DDP
    and calls :meth:`set_epoch` every epoch. With ``num_replicas=1`` it is a plain weighted sampler.
    """

    def __init__(
        self,
        dataset: Dataset,
        weights: Sequence[float],
        num_samples: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ):
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        if len(self.weights) != len(dataset):
            raise ValueError(f"{len(self.weights)} weights for {len(dataset)} tiles")
        total = int(num_samples) if num_samples else len(dataset)
        self.num_samples = math.ceil(total / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(epoch_seed(self.seed, self.epoch))
        drawn = torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator)
        return iter(drawn[self.rank : self.total_size : self.num_replicas].tolist())

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this before every epoch; the dataset's augmentation streams follow the epoch too."""
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_samples


class UnpaddedDistributedSampler(DistributedSampler):
    """Evaluation shares without padding: rank ``r`` of ``R`` gets tiles ``r, r + R, r + 2R...``, in order.

    torch's :class:`~torch.utils.data.DistributedSampler` repeats tiles so that every rank gets as many; in
    validation those repeats count twice in the scores. Shares here differ by at most one tile, and every tile
    is seen exactly once over all ranks. A ``DistributedSampler`` subclass, so Lightning keeps it.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.indices = list(range(rank, len(dataset), num_replicas))
        self.num_samples = len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples
