"""unosat.predict.aggregate: city products from the dates' probabilities (mean, vote) and grids that cannot be
aggregated."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from conftest import REPO

from unosat.config import compose_config
from unosat.errors import UnosatError
from unosat.io.raster import Grid
from unosat.predict.aggregate import AggregateConfig, check_same_grid, mean_probability, threshold_mask, vote


def test_mean_and_vote_by_hand_with_nodata():
    n = np.nan
    probs = np.array([[[0.2, 0.8, n, n]], [[0.4, 0.7, 0.6, n]], [[0.9, n, 0.1, n]]], dtype=np.float32)
    np.testing.assert_allclose(mean_probability(probs)[0, :3], [0.5, 0.75, 0.35], atol=1e-6)
    assert np.isnan(mean_probability(probs)[0, 3])
    np.testing.assert_array_equal(threshold_mask(mean_probability(probs), 0.5), [[1, 1, 0, 255]])

    masks = np.array(
        [[[1, 1, 0, 255, 1, 255]], [[1, 0, 0, 255, 255, 1]], [[1, 1, 1, 255, 255, 255]]], dtype=np.uint8
    )
    # k = 2 of 3: (3 votes) (2) (1) (no date) (1 of 1 date with data: needs min(2, 1)) (1 of 1)
    np.testing.assert_array_equal(vote(masks, 2), [[1, 1, 0, 255, 1, 1]])
    np.testing.assert_array_equal(vote(masks, 3), [[1, 0, 0, 255, 1, 1]])
    np.testing.assert_array_equal(vote(masks, 1), [[1, 1, 1, 255, 1, 1]])
    agg = AggregateConfig(method="vote", min_votes=-1)
    assert [agg.votes_needed(n) for n in (1, 2, 3, 4)] == [1, 1, 2, 3]  # N-1 of N, at least 1
    assert AggregateConfig(min_votes=0).votes_needed(4) == 4
    assert (
        AggregateConfig(min_votes=2).votes_needed(4) == 2
        and AggregateConfig(min_votes=9).votes_needed(4) == 4
    )


def test_the_default_city_product_is_the_mean_and_the_vote_of_two_dates_is_their_union():
    from hydra.utils import instantiate

    agg = instantiate(compose_config("predict").aggregate)
    assert agg.method == "mean" and agg.threshold == 0.5
    probs = np.array([[[0.9, 0.2, 0.6, 0.1]], [[0.3, 0.7, 0.6, 0.45]]], dtype=np.float32)
    np.testing.assert_array_equal(threshold_mask(mean_probability(probs), agg.threshold), [[1, 0, 1, 0]])
    # vote: N-1 of N = 1 of 2 dates is the union of the dates' masks, not "both agree"
    vote_cfg = AggregateConfig(method="vote", min_votes=-1)
    dates = np.array([[[1, 0, 1, 0]], [[0, 1, 1, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(vote(dates, vote_cfg.votes_needed(2)), [[1, 1, 1, 0]])
    np.testing.assert_array_equal(vote(dates, AggregateConfig(min_votes=2).votes_needed(2)), [[0, 0, 1, 0]])
    readme = (REPO / "README.md").read_text()
    assert "both dates agree" not in readme and "for 2 dates that is 1 of 2, the union" in readme


def test_acquisitions_on_different_grids_are_not_aggregated():
    from rasterio.transform import from_origin

    a = Grid(rasterio.crs.CRS.from_epsg(32638), from_origin(0, 0, 10, 10), 20, 10)
    b = Grid(a.crs, from_origin(5, 0, 10, 10), 20, 10)
    assert check_same_grid("X", {"s1": a, "s2": a}) == a
    with pytest.raises(UnosatError, match=r"cannot aggregate the acquisitions of X: .*s1 vs s2: transform"):
        check_same_grid("X", {"s1": a, "s2": b})
