"""unosat.predict.tta: the transform sets are groups; TTA keeps an equivariant model and makes any model
equivariant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_networks import (
    ConvNet,
    predict_array,
    random_stack,
)

from unosat.errors import UnosatError
from unosat.predict.sliding_window import WindowConfig
from unosat.predict.tta import TTA_SETS, tta_transforms


def test_tta_sets_are_groups_of_the_expected_size():
    assert {k: len(v) for k, v in TTA_SETS.items()} == {"none": 1, "flips": 4, "rot90": 4, "d4": 8}
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(1, 2, 5, 5)
    for name in TTA_SETS:
        images = [t.apply(x) for t in tta_transforms(name)]
        assert len({tuple(i.flatten().tolist()) for i in images}) == len(images)  # all different
        for t in tta_transforms(name):
            assert torch.equal(t.invert(t.apply(x)), x)
            for u in tta_transforms(name):  # closed under composition
                assert any(torch.equal(u.apply(t.apply(x)), image) for image in images)
    with pytest.raises(UnosatError, match="tta must be one of"):
        tta_transforms("rot45")


def test_tta_leaves_an_equivariant_model_unchanged_and_makes_any_model_equivariant():
    cfg = WindowConfig(size=48, overlap=0, margin=0)  # one window: the layout itself is symmetric
    stack = random_stack(48, 48, seed=7, wedge=False)
    symmetric = ConvNet(seed=2, symmetric=True)
    plain, _ = predict_array(stack, [symmetric], cfg)
    for name in ("flips", "rot90", "d4"):
        averaged, _ = predict_array(stack, [symmetric], cfg, tta=name)
        np.testing.assert_allclose(averaged, plain, atol=1e-6)
    net = ConvNet(seed=4)
    p, _ = predict_array(stack, [net], cfg, tta="d4")
    p_rot, _ = predict_array(np.ascontiguousarray(np.rot90(stack, 1, axes=(1, 2))), [net], cfg, tta="d4")
    np.testing.assert_allclose(p_rot, np.rot90(p, 1), atol=1e-6)
    p_none, _ = predict_array(stack, [net], cfg)
    p_rot_none, _ = predict_array(np.ascontiguousarray(np.rot90(stack, 1, axes=(1, 2))), [net], cfg)
    assert np.abs(p_rot_none - np.rot90(p_none, 1)).max() > 1e-3  # the model alone is not equivariant
