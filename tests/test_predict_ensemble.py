"""unosat.predict.ensemble: the ensemble's probability is the mean of its models', each checkpoint with its
own band recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SAMAWAH, predict_cfg, read_band
from toy_networks import (
    ConvNet,
    predict_array,
    random_stack,
)

from unosat.predict.probability import UINT8_SCALE, decode_probability
from unosat.predict.run import run
from unosat.predict.sliding_window import WindowConfig


def test_the_ensemble_of_toy_models_is_the_mean_of_their_probabilities():
    stack = random_stack(50, 60, seed=8)
    cfg = WindowConfig(size=32, overlap=8)
    a, _ = predict_array(stack, [ConvNet(seed=1)], cfg)
    b, _ = predict_array(stack, [ConvNet(seed=2)], cfg)
    both, _ = predict_array(stack, [ConvNet(seed=1), ConvNet(seed=2)], cfg)
    np.testing.assert_allclose(both, (a + b) / 2, atol=1e-6)


@pytest.mark.slow
def test_ensemble_averages_the_probabilities_of_checkpoints_with_their_own_recipes(
    demo_run, best_ckpt, tiny_raw_session, tmp_path
):
    other = torch.load(best_ckpt, weights_only=True)
    g = torch.Generator().manual_seed(0)
    for k, v in other["state_dict"].items():
        if v.is_floating_point() and k.endswith("weight"):
            v.add_(0.05 * torch.randn(v.shape, generator=g) * v.std().nan_to_num(0))
    other["unosat"]["data"]["recipe"] = {"name": "3b", "bands": ["vh", "vv", "mean"], "units": "linear"}
    other["unosat"]["data"]["normalization"] = {"mean": [0.0] * 3, "std": [5.0] * 3, "fill": 0.0}
    second = tmp_path / "linear.ckpt"
    torch.save(other, second)
    common = [f"input={tiny_raw_session}", "cities=[Samawah]", "aggregate.method=none", "vectorize=false"]
    run(predict_cfg(tmp_path / "b", f"ckpt={second}", *common))
    manifest = run(predict_cfg(tmp_path / "ab", f"ckpt=[{best_ckpt},{second}]", *common))
    assert [c["recipe"]["units"] for c in manifest["checkpoints"]] == ["db", "linear"]
    for sid in SAMAWAH:
        a = decode_probability(read_band(demo_run / "scenes" / f"{sid}_probability.tif"))
        b = decode_probability(read_band(tmp_path / "b" / "scenes" / f"{sid}_probability.tif"))
        ab = decode_probability(read_band(tmp_path / "ab" / "scenes" / f"{sid}_probability.tif"))
        assert np.abs(a - b)[np.isfinite(a)].max() > 0.02  # two different models
        np.testing.assert_allclose(ab, (a + b) / 2, atol=1.01 / UINT8_SCALE, equal_nan=True)
