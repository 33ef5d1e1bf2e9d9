"""Weighted tile sampling: class proportions (statistically) and disjoint DDP shares."""

import numpy as np
import pytest

from unosat.data.sampler import DistributedWeightedSampler, epoch_seed, tile_weights
from unosat.errors import UnosatError


class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_original_weights_give_expected_proportion():
    ratio = np.array([0.0] * 60 + [0.05] * 40)  # 60 tiles without buildings, 40 with
    weights = tile_weights(ratio)  # 0.7 / 0.3
    sampler = DistributedWeightedSampler(_Sized(100), weights, num_samples=20000, seed=3)
    drawn = np.array(list(sampler))
    p_empty = 0.7 * 60 / (0.7 * 60 + 0.3 * 40)
    observed = np.mean(ratio[drawn] == 0)
    sigma = np.sqrt(p_empty * (1 - p_empty) / len(drawn))
    assert abs(observed - p_empty) < 4 * sigma


def test_bins_weight_tiles_by_target_ratio():
    ratio = np.array([0.0, 0.0005, 0.005, 0.5])
    w = tile_weights(ratio, bins=[0, 0.001, 0.01, 1.0], bin_weights=[1, 2, 3])
    np.testing.assert_array_equal(w, [1, 1, 2, 3])
    with pytest.raises(UnosatError):
        tile_weights(ratio, bins=[0, 1], bin_weights=[1, 2])


def test_ranks_draw_disjoint_shares_of_the_same_sample():
    weights = np.linspace(0.1, 1.0, 50)
    single = list(DistributedWeightedSampler(_Sized(50), weights, num_samples=40, seed=7))
    shares = [
        list(DistributedWeightedSampler(_Sized(50), weights, 40, num_replicas=2, rank=r, seed=7))
        for r in (0, 1)
    ]
    assert len(shares[0]) == len(shares[1]) == 20
    # interleaving the ranks' shares gives back the single-process sample, position by position
    assert [x for pair in zip(*shares) for x in pair] == single


def test_epochs_differ_and_are_reproducible():
    s = DistributedWeightedSampler(_Sized(30), np.ones(30), 30, seed=1)
    s.set_epoch(0)
    a = list(s)
    s.set_epoch(1)
    b = list(s)
    s.set_epoch(0)
    assert a != b and list(s) == a


def test_seed_and_epoch_do_not_collide():
    # with a generator seeded by seed + epoch, seed 5 at epoch 1 drew exactly what seed 6 draws at epoch 0
    weights = np.ones(1000)
    a = DistributedWeightedSampler(_Sized(1000), weights, 200, seed=5)
    a.set_epoch(1)
    b = DistributedWeightedSampler(_Sized(1000), weights, 200, seed=6)
    b.set_epoch(0)
    drawn_a, drawn_b = list(a), list(b)
    # two independent uniform draws of 200 out of 1000 agree at about 200 / 1000 positions, not all 200
    assert sum(x == y for x, y in zip(drawn_a, drawn_b)) < 20
    assert epoch_seed(5, 1) != epoch_seed(6, 0) and epoch_seed(5, 1) == epoch_seed(5, 1)
