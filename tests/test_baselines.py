"""Classical baselines as networks: the VV threshold and the per-pixel logistic regression, their local
statistics, their fit, and their checkpoints read back by predict.py's loader (through the registry)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unosat.baselines.export import save_baseline_checkpoint
from unosat.baselines.local_statistics import local_statistics
from unosat.baselines.pixel_classifier import (
    PixelLogisticRegression,
    best_iou_threshold,
    fit_pixel_classifier,
)
from unosat.baselines.vv_threshold_net import VVThresholdNet, fit_vv_threshold_net
from unosat.errors import UnosatError
from unosat.predict.ensemble import load_model

RECIPE = {"bands": ["vh", "vv", "mean"], "units": "db", "mean": [-15.0, -8.0, -11.0], "std": [4.0, 5.0, 4.5]}


def test_vv_threshold_net_is_building_exactly_where_vv_db_reaches_the_threshold():
    rng = np.random.default_rng(0)
    vv_db = rng.uniform(-20, 5, size=(1, 1, 16, 16)).astype(np.float32)
    vv_db[0, 0, 0, :3] = [-3.7, -3.7001, -3.6999]  # at and next to the threshold
    x = torch.from_numpy(rng.normal(size=(1, 3, 16, 16)).astype(np.float32))
    x[:, 1:2] = (torch.from_numpy(vv_db) - RECIPE["mean"][1]) / RECIPE["std"][1]
    net = VVThresholdNet(3, -3.7, RECIPE)
    p = torch.softmax(net(x), dim=1)[:, 1].numpy()
    expected = (x[:, 1].numpy() * 5.0 - 8.0) >= -3.7  # the band as the network sees it, back in dB
    assert ((p >= 0.5) == expected).all()
    assert expected.sum() > 10 and (~expected).sum() > 10
    assert ((p > 0.9999) | (p < 0.0001)).all()  # a step: the uint8 encoding cannot move the decision
    with pytest.raises(UnosatError, match="in_channels=2"):
        VVThresholdNet(2, 0.0, RECIPE)


def test_local_statistics_are_box_means_and_stds():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 2, 12, 13)).astype(np.float32)
    f = local_statistics(torch.from_numpy(x), [1, 3]).numpy()
    assert f.shape == (1, 2 * (1 + 2 * 2), 12, 13)
    np.testing.assert_allclose(f[0, :2], x[0])
    padded = np.pad(x[0], ((0, 0), (1, 1), (1, 1)), mode="reflect")
    r, c = 5, 0
    box = padded[:, r : r + 3, c : c + 3]
    np.testing.assert_allclose(f[0, 2:4], x[0])  # window 1: the pixel itself
    np.testing.assert_allclose(f[0, 4:6, r, c], box.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(f[0, 8:10, r, c], box.std(axis=(1, 2)), rtol=1e-4, atol=1e-5)
    with pytest.raises(UnosatError, match="odd"):
        local_statistics(torch.from_numpy(x), [4])


def test_best_iou_threshold_matches_brute_force_and_never_cuts_inside_ties():
    rng = np.random.default_rng(2)
    d = np.round(rng.normal(size=300), 1)  # many ties
    y = (d + rng.normal(scale=0.8, size=300) > 1.0).astype(np.int64)
    cut, iou = best_iou_threshold(d, y)
    brute = {}
    for t in np.unique(d):
        pred = d >= t
        brute[t] = (pred & (y == 1)).sum() / ((pred | (y == 1)).sum())
    best = max(brute, key=brute.get)
    assert iou == pytest.approx(brute[best]) and brute[cut] == pytest.approx(iou)


def test_pixel_classifier_learns_a_texture_rule_and_round_trips_through_a_checkpoint(tmp_path):
    """Buildings are where the local std of band 0 is high (not its mean): a rule of the features."""
    rng = np.random.default_rng(3)
    items = []
    for _ in range(6):
        mask = np.zeros((32, 32), dtype=np.int64)
        mask[8:20, 10:24] = 1
        mask[0, :] = 255  # ignored
        image = rng.normal(size=(2, 32, 32)).astype(np.float32) * 0.1
        image[0][mask == 1] = rng.choice([-2.0, 2.0], size=int((mask == 1).sum()))  # texture, mean 0
        items.append({"image": torch.from_numpy(image), "mask": torch.from_numpy(mask), "index": 0})
    net, fit = fit_pixel_classifier(items, 2, windows=[3], samples=3000, seed=0)
    assert fit.samples == 6 * 500 and 0.1 < fit.building_fraction < 0.3
    assert fit.train_iou > 0.7
    with torch.no_grad():
        p = torch.softmax(net(items[0]["image"][None]), dim=1)[0, 1].numpy()
    truth = items[0]["mask"].numpy()
    inner = np.zeros_like(truth, dtype=bool)
    inner[10:18, 12:22] = True
    assert (p[inner] >= 0.5).mean() > 0.95 and (p[(truth == 0)] < 0.5).mean() > 0.9

    data = {
        "recipe": {"name": "db", "bands": ["vh", "vv"], "units": "db", "db_floor": 1e-8},
        "normalization": {"mean": [0.0, 0.0], "std": [1.0, 1.0]},
        "classes": ["background", "building"],
    }
    path = save_baseline_checkpoint(tmp_path / "pixel.ckpt", net, net.spec(), data, fit.to_dict())
    loaded = load_model(path)  # predict.py's loader: weights_only, built from the registry
    assert type(loaded.net) is PixelLogisticRegression and loaded.net.windows == (3,)
    with torch.no_grad():
        np.testing.assert_array_equal(
            loaded.net(items[0]["image"][None]).numpy(), net(items[0]["image"][None]).numpy()
        )


def test_pixel_classifier_refuses_one_class():
    items = [{"image": torch.zeros(1, 8, 8), "mask": torch.zeros(8, 8, dtype=torch.int64), "index": 0}]
    with pytest.raises(UnosatError, match="all background"):
        fit_pixel_classifier(items, 1, windows=[3], samples=10)


@pytest.mark.slow
def test_vv_threshold_fit_on_a_prepared_fold_is_the_training_runs_baseline(tiny_prepared_db, tmp_path):
    from hydra.utils import instantiate

    from unosat.config import compose_config
    from unosat.training.baseline import vv_threshold_baseline

    dm = instantiate(compose_config("train", [f"data.dir={tiny_prepared_db}", "paths.output_dir=."]).data)
    dm.setup("fit")
    net, info = fit_vv_threshold_net(dm)
    base = vv_threshold_baseline(dm.train_dataset, dm.val_dataset)
    assert info["threshold_db"] == base.threshold_db and info["val_tiles_iou"] == base.val_iou
    path = save_baseline_checkpoint(tmp_path / "vv.ckpt", net, net.spec(), dm.data_recipe(), info)
    loaded = load_model(path)
    assert type(loaded.net) is VVThresholdNet and loaded.net.threshold_db == base.threshold_db
    # the tiles' own IoU, recomputed through the exported network
    tp = fp = fn = 0
    for i in range(len(dm.val_dataset)):
        item = dm.val_dataset[i]
        with torch.no_grad():
            pred = (torch.softmax(loaded.net(item["image"][None]), 1)[0, 1] >= 0.5).numpy()
        m = item["mask"].numpy()
        valid = m != 255
        tp += int((pred & (m == 1) & valid).sum())
        fp += int((pred & (m == 0) & valid).sum())
        fn += int((~pred & (m == 1) & valid).sum())
    assert tp / (tp + fp + fn) == pytest.approx(base.val_iou, abs=1e-3)


@pytest.mark.parametrize("net", [VVThresholdNet(3, -3.0, RECIPE), PixelLogisticRegression(3, [3, 7])])
def test_baselines_give_logits_at_the_input_size_for_odd_sizes(net):
    for size in [(45, 29), (1, 1), (64, 96)]:
        with torch.inference_mode():
            assert net(torch.randn(2, 3, *size)).shape == (2, 2, *size)
