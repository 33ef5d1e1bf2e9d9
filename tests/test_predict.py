"""predict.py: sliding window (seams, borders, skipped windows), TTA, city aggregation, ensembling, COG outputs
on the input grid, bad input, resume after a kill, overwrite refusal, DDP with 2 CPU processes."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import PRED, REPO, SAMAWAH, predict_cfg, train_cfg
from torch import nn

from unosat.bands import BandRecipe, Normalization
from unosat.config import compose_config
from unosat.errors import UnosatError
from unosat.io.raster import Grid
from unosat.predict.aggregate import AggregateConfig, check_same_grid, mean_probability, threshold_mask, vote
from unosat.predict.distributed import Runtime
from unosat.predict.ensemble import Ensemble, LoadedModel
from unosat.predict.inputs import ArrayReader
from unosat.predict.probability import UINT8_SCALE, decode_probability
from unosat.predict.run import run
from unosat.predict.sliding_window import NodataSkip, SceneStats, WindowConfig, axis_layout, predict_scene
from unosat.predict.tta import TTA_SETS, tta_transforms
from unosat.scenes import discover_scenes

RECIPE = BandRecipe("3b", ("vh", "vv", "mean"), "linear")
UNIT = Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
NODATA_SKIP = (NodataSkip(),)
#: the demo run also scores against the labels and draws quicklooks
DEMO = ["evaluate=true", "quicklooks=true", "quicklook.max_px=96"]


# ---------------------------------------------------------------------------------------- toy models


class ConstantNet(nn.Module):
    """Building probability ``p`` everywhere."""

    def __init__(self, p: float):
        super().__init__()
        self.logit = math.log(p / (1 - p))

    def forward(self, x):
        out = torch.zeros(x.shape[0], 2, *x.shape[2:], dtype=x.dtype)
        out[:, 1] = self.logit
        return out


class PixelNet(nn.Module):
    """Building probability ``sigmoid(band 0)`` of each pixel: any misplaced window shows."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], dim=1)


class ConvNet(nn.Module):
    """Two 3 x 3 convolutions (zero padding): a receptive field of 5 x 5 px."""

    def __init__(self, seed: int = 0, symmetric: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 3, padding=1)
        with torch.no_grad():
            for conv in (self.c1, self.c2):
                w = torch.randn(conv.weight.shape, generator=g)
                if symmetric:  # averaged over D4: the network commutes with rotations and flips
                    w = sum(torch.rot90(v, k, (2, 3)) for v in (w, torch.flip(w, (3,))) for k in range(4)) / 8
                conv.weight.copy_(w)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))

    def forward(self, x):
        return self.c2(torch.tanh(self.c1(x)))


class TupleNet(nn.Module):
    """Returns ``(seg_logits, edge_logits)`` like GSCNN."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x[:, :1, ::2, ::2]


class CountingNet(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.windows, self.calls = net, 0, 0

    def forward(self, x):
        self.windows += x.shape[0]
        self.calls += 1
        return self.net(x)


def predict_array(stack: np.ndarray, nets, window: WindowConfig, tta: str = "none", skips=NODATA_SKIP):
    """Whole-scene probability ``(rows, cols)`` of an in-memory stack; checks the rows come top to bottom."""
    models = [LoadedModel(f"toy{i}", net, RECIPE, UNIT) for i, net in enumerate(nets)]
    ensemble = Ensemble(models, Runtime(None, channels_last=False), tta)
    stats = SceneStats()
    blocks = list(predict_scene(ArrayReader(stack, RECIPE), ensemble, window, skips, stats))
    starts = [r for r, _ in blocks]
    assert starts[0] == 0 and all(b == a + blocks[i][1].shape[0] for i, (a, b) in enumerate(zip(starts, starts[1:])))
    prob = np.concatenate([b for _, b in blocks])
    assert prob.shape == stack.shape[1:]
    return prob, stats


def random_stack(rows: int, cols: int, seed: int = 0, wedge: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stack = rng.normal(0, 1, (3, rows, cols)).astype(np.float32)
    if wedge:  # a nodata corner, as the swath leaves
        rr, cc = np.mgrid[:rows, :cols]
        stack[:, cc > cols - rr * 0.5 + rows * 0.1] = np.nan
    return stack


# ----------------------------------------------------------------------------------- sliding window

LAYOUTS = [
    (75, 130, WindowConfig(size=32, overlap=12, batch_size=3)),
    (64, 64, WindowConfig(size=32, overlap=8, margin=0, batch_size=2)),       # windows fit exactly
    (20, 27, WindowConfig(size=32, overlap=8, batch_size=2)),                 # scene smaller than a window
    (50, 90, WindowConfig(size=32, overlap=0, margin=0, batch_size=4)),       # no overlap
    (70, 41, WindowConfig(size=24, overlap=10, edge=2, pad_mode="constant")),  # zero weight at inner edges
    (1, 40, WindowConfig(size=16, overlap=4, margin=3)),                      # a single row
]


@pytest.mark.parametrize("length", [1, 5, 95, 96, 97, 160, 1000])
def test_windows_cover_the_extended_scene_and_overlap_enough(length):
    cfg = WindowConfig(size=96, overlap=32, margin=16)
    layout = axis_layout(length, cfg)
    assert layout.offsets[0] == -16
    assert layout.offsets[-1] + 96 >= length + 16
    if length + 32 >= 96:
        assert layout.offsets[-1] + 96 == length + 16
    assert all(b - a <= 96 - 32 for a, b in zip(layout.offsets, layout.offsets[1:]))
    total = np.zeros(layout.hi - layout.lo)
    for i, o in enumerate(layout.offsets):
        total[o - layout.lo : o - layout.lo + 96] += layout.weights(i, cfg.overlap, cfg.edge)
    assert (total > 0).all()


def test_weights_of_two_windows_overlapping_by_overlap_sum_to_one():
    cfg = WindowConfig(size=64, overlap=16, margin=0)
    layout = axis_layout(64 + 48, cfg)  # two windows, exactly 16 px of overlap
    assert layout.offsets == (0, 48)
    total = np.zeros(112)
    total[:64] += layout.weights(0, 16, 0)
    total[48:] += layout.weights(1, 16, 0)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    w = layout.weights(0, 16, 0)
    assert w[0] == 1.0 and w[-1] < 0.01 and np.all(np.diff(w[-16:]) < 0)


@pytest.mark.parametrize("rows,cols,cfg", LAYOUTS)
def test_a_constant_model_gives_that_probability_on_every_valid_pixel_and_nodata_elsewhere(rows, cols, cfg):
    stack = random_stack(rows, cols)
    prob, stats = predict_array(stack, [ConstantNet(0.75)], cfg)
    valid = np.isfinite(stack).all(axis=0)
    np.testing.assert_allclose(prob[valid], 0.75, rtol=0, atol=1e-6)  # nothing counted twice or lost
    assert np.isnan(prob[~valid]).all()


@pytest.mark.parametrize("rows,cols,cfg", LAYOUTS)
def test_every_pixel_is_predicted_in_its_place(rows, cols, cfg):
    stack = random_stack(rows, cols, seed=1)
    prob, _ = predict_array(stack, [PixelNet()], cfg)
    valid = np.isfinite(stack).all(axis=0)
    expected = 1 / (1 + np.exp(-stack[0].astype(np.float64)))
    np.testing.assert_allclose(prob[valid], expected[valid], rtol=0, atol=1e-6)


def test_sliding_window_equals_one_forward_pass_of_the_whole_scene_away_from_its_border():
    net = ConvNet(seed=3)
    stack = random_stack(75, 130, seed=2, wedge=False)
    radius = 2  # two 3 x 3 convolutions
    cfg = WindowConfig(size=32, overlap=12, edge=radius, margin=4, batch_size=5)
    prob, stats = predict_array(stack, [net], cfg)
    with torch.inference_mode():
        whole = torch.softmax(net(torch.from_numpy(stack)[None]), dim=1)[0, 1].numpy()
    inner = (slice(radius, -radius), slice(radius, -radius))
    assert stats.predicted > 6  # the scene is really cut into windows
    np.testing.assert_allclose(prob[inner], whole[inner], rtol=0, atol=1e-5)


def test_windows_without_valid_pixels_are_skipped_before_the_network_runs():
    stack = random_stack(200, 200, seed=4, wedge=False)
    stack[:, :, :100] = np.nan  # the left half is nodata
    stack[:, :30] = np.nan
    cfg = WindowConfig(size=64, overlap=16, margin=8, batch_size=3)
    counting = CountingNet(ConstantNet(0.25))
    prob, stats = predict_array(stack, [counting], cfg)
    offsets = axis_layout(200, cfg).offsets
    expected = sum(1 for r in offsets for c in offsets if r + 64 > 30 and c + 64 > 100)
    assert counting.windows == stats.predicted == expected
    assert stats.skipped == {"NodataSkip": len(offsets) ** 2 - expected}
    assert np.isnan(prob[:, :100]).all() and np.isnan(prob[:30]).all()
    np.testing.assert_allclose(prob[30:, 100:], 0.25, atol=1e-6)


def test_a_skip_predicate_can_call_windows_empty_without_running_the_network():
    class Everything:
        fill = 0.0  # e.g. a tile classifier: "no building here"

        def __call__(self, batch):
            return np.ones(len(batch.rows), dtype=bool)

    stack = random_stack(60, 70, seed=5)
    counting = CountingNet(ConstantNet(0.9))
    prob, stats = predict_array(stack, [counting], WindowConfig(size=32, overlap=8), skips=(NodataSkip(), Everything()))
    valid = np.isfinite(stack).all(axis=0)
    assert counting.calls == 0 and stats.predicted == 0
    assert (prob[valid] == 0).all() and np.isnan(prob[~valid]).all()


def test_a_model_with_several_outputs_is_read_through_its_segmentation_logits():
    stack = random_stack(40, 50, seed=6)
    cfg = WindowConfig(size=32, overlap=8)
    single, _ = predict_array(stack, [ConvNet(seed=1)], cfg)
    double, _ = predict_array(stack, [TupleNet(ConvNet(seed=1))], cfg)
    np.testing.assert_array_equal(single, double)


# ----------------------------------------------------------------------------------------------- TTA


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


def test_the_ensemble_of_toy_models_is_the_mean_of_their_probabilities():
    stack = random_stack(50, 60, seed=8)
    cfg = WindowConfig(size=32, overlap=8)
    a, _ = predict_array(stack, [ConvNet(seed=1)], cfg)
    b, _ = predict_array(stack, [ConvNet(seed=2)], cfg)
    both, _ = predict_array(stack, [ConvNet(seed=1), ConvNet(seed=2)], cfg)
    np.testing.assert_allclose(both, (a + b) / 2, atol=1e-6)


# ------------------------------------------------------------------------------------------ aggregation


def test_mean_and_vote_by_hand_with_nodata():
    n = np.nan
    probs = np.array([[[0.2, 0.8, n, n]], [[0.4, 0.7, 0.6, n]], [[0.9, n, 0.1, n]]], dtype=np.float32)
    np.testing.assert_allclose(mean_probability(probs)[0, :3], [0.5, 0.75, 0.35], atol=1e-6)
    assert np.isnan(mean_probability(probs)[0, 3])
    np.testing.assert_array_equal(threshold_mask(mean_probability(probs), 0.5), [[1, 1, 0, 255]])

    masks = np.array([[[1, 1, 0, 255, 1, 255]],
                      [[1, 0, 0, 255, 255, 1]],
                      [[1, 1, 1, 255, 255, 255]]], dtype=np.uint8)
    # k = 2 of 3: (3 votes) (2) (1) (no date) (1 of 1 date with data: needs min(2, 1)) (1 of 1)
    np.testing.assert_array_equal(vote(masks, 2), [[1, 1, 0, 255, 1, 1]])
    np.testing.assert_array_equal(vote(masks, 3), [[1, 0, 0, 255, 1, 1]])
    np.testing.assert_array_equal(vote(masks, 1), [[1, 1, 1, 255, 1, 1]])
    agg = AggregateConfig(method="vote", min_votes=-1)
    assert [agg.votes_needed(n) for n in (1, 2, 3, 4)] == [1, 1, 2, 3]  # N-1 of N, at least 1
    assert AggregateConfig(min_votes=0).votes_needed(4) == 4
    assert AggregateConfig(min_votes=2).votes_needed(4) == 2 and AggregateConfig(min_votes=9).votes_needed(4) == 4


def test_stored_probabilities_keep_their_side_of_the_threshold():
    from unosat.predict.probability import encode_probability

    p = np.array([0.4979, 0.498, 0.4999, 0.5, 0.5001, 0.3, 0.7, np.nan, 0.0, 1.0], dtype=np.float32)
    plain = decode_probability(encode_probability(p, "uint8"))
    assert plain[2] == 0.5  # 0.4999 rounds to 127/254 = 0.5 exactly: a building once stored
    for dtype, step in (("uint8", 1 / UINT8_SCALE), ("float16", 2.0 ** -10)):
        for thr in (0.5, 0.3, 0.7, 0.0, 1.0):
            stored = decode_probability(encode_probability(p, dtype, threshold=thr))
            valid = np.isfinite(p)
            np.testing.assert_array_equal(stored[valid] >= thr, p[valid] >= thr, err_msg=f"{dtype} {thr}")
            assert np.isnan(stored[~valid]).all()
            assert np.abs(stored[valid] - p[valid]).max() <= step  # at most one storage step off
    # the mean of two dates stored at 0.4999 is background, as the floats say
    two = np.stack([decode_probability(encode_probability(np.full((1, 2), 0.4999, np.float32), "uint8", 0.5))] * 2)
    np.testing.assert_array_equal(threshold_mask(mean_probability(two), 0.5), [[0, 0]])


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


# ---------------------------------------------------------------------------------- checkpoint, runs


@pytest.fixture(scope="module")
def trained(tiny_prepared_db, tmp_path_factory) -> Path:
    """A tiny LW-RefineNet trained by train.py on the dB demo; returns the log dir holding its run."""
    from unosat.training.run import run as train

    root = tmp_path_factory.mktemp("trained")
    # LW-RefineNet at output_stride 4: the layout sharpen() rescales (its classifier is decoder.classifier)
    train(train_cfg(tiny_prepared_db, root, "model=lwrefinenet", "model.output_stride=4", "baseline=false", "debug=limit", "trainer.max_epochs=1", "logger=none",
                    "callbacks.prediction_grid=null", "callbacks.learning_rate_monitor=null"))
    sharpen(next((root / "logs" / "train" / "runs" / "run" / "checkpoints").glob("best-*.ckpt")), tiny_prepared_db)
    return root / "logs"


def sharpen(path: Path, dataset: Path) -> None:
    """Give a checkpoint written by train.py a network whose map follows the input.

    The tiny demo trains too briefly here: that network's map is a constant plus a pattern fixed to the window
    (its encoder's last features no longer depend on the input). Its weights are replaced by PyTorch's
    default initialisation (features that follow the input), with the classifier scaled so the building
    logit varies with a std of 2 around 0 on a demo scene. Format and metadata stay train.py's."""
    from unosat.checkpoint import NET_PREFIX, build_model
    from unosat.prepared import PreparedDataset

    ckpt = torch.load(path, weights_only=True)
    torch.manual_seed(0)
    net = build_model(ckpt, path)
    for module in net.modules():
        if module is not net and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    net.eval()
    with rasterio.open(PreparedDataset(dataset).bands_path(SAMAWAH[0])) as src:
        stack = src.read()
    x = torch.from_numpy(Normalization.from_dict(ckpt["unosat"]["data"]["normalization"]).apply(stack, channel_axis=0))
    classifier = net.decoder.classifier
    with torch.inference_mode():
        logits = net(x[None])[0]
        from_weights = (logits[1] - logits[0] - (classifier.bias[1] - classifier.bias[0]))[torch.from_numpy(np.isfinite(stack).all(0))]
        k = 2.0 / float(from_weights.std())
        classifier.weight.mul_(k)
        classifier.bias.copy_(torch.tensor([0.0, -k * float(from_weights.mean())]))
    ckpt["state_dict"].update({NET_PREFIX + key: value for key, value in net.state_dict().items()})
    torch.save(ckpt, path)


@pytest.fixture(scope="module")
def best_ckpt(trained) -> Path:
    return next((trained / "train" / "runs" / "run" / "checkpoints").glob("best-*.ckpt"))


@pytest.mark.slow
def test_lwrefinenet_windows_blend_into_its_single_forward_pass(best_ckpt, tiny_prepared_db):
    """LW-RefineNet sees far (chained 5 x 5 poolings at 1/32): windows are close to, not equal to, one pass."""
    from unosat.predict.ensemble import load_model
    from unosat.prepared import PreparedDataset

    model = load_model(best_ckpt)
    with rasterio.open(PreparedDataset(tiny_prepared_db).bands_path(SAMAWAH[0])) as src:
        stack = src.read()
    ensemble = Ensemble([model], Runtime(None, channels_last=True), "none")
    whole = ensemble.probability([model.normalization.apply(stack, channel_axis=0)[None]])[0]
    cfg = WindowConfig(size=96, overlap=48, edge=8, margin=0, batch_size=4)  # no margin: the same border as one pass
    prob = np.concatenate([p for _, p in predict_scene(ArrayReader(stack, model.recipe), ensemble, cfg)])
    inner = (slice(8, -8), slice(8, -8))
    diff = np.abs(prob - whole)[inner][np.isfinite(stack).all(axis=0)[inner]]
    assert whole.std() > 0.1 and diff.mean() < 0.005 and diff.max() < 0.05


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def demo_run(trained, tiny_raw_session, tmp_path_factory) -> Path:
    """python predict.py with no input and no ckpt: the demo's test cities, the latest run's best checkpoint."""
    root = tmp_path_factory.mktemp("demo_run")
    (root / "demo").mkdir()
    (root / "demo" / "raw").symlink_to(tiny_raw_session, target_is_directory=True)
    run(predict_cfg(root / "out", f"paths.demo_dir={root / 'demo'}", *DEMO, log_dir=trained))
    return root / "out"


@pytest.mark.slow
def test_default_run_predicts_the_demo_test_cities_as_cogs_on_the_input_grid(demo_run, tiny_raw_session, best_ckpt):
    manifest = json.loads((demo_run / "predict.json").read_text())
    assert manifest["status"] == "complete"
    assert [s["scene_id"] for s in manifest["scenes"]] == list(SAMAWAH)  # the tiny demo's only test city
    assert manifest["checkpoints"][0]["checkpoint"] == str(best_ckpt.resolve())
    assert manifest["settings"]["tta"] == "none" and manifest["timings"]["total_s"] > 0
    scenes = {s.scene_id: s for s in discover_scenes(tiny_raw_session)}
    for sid in SAMAWAH:
        with rasterio.open(scenes[sid].vv) as vv_src, rasterio.open(scenes[sid].vh) as vh_src:
            vv, vh = vv_src.read(1), vh_src.read(1)
            nodata = (vv == vv_src.nodata) | (vh == vh_src.nodata)
            grid = Grid.of(vv_src)
        rasters = [demo_run / "scenes" / f"{sid}_{kind}.tif" for kind in ("probability", "mask")]
        rasters += [demo_run / "cities" / f"Samawah_{kind}.tif" for kind in ("probability", "mask")]
        for path in rasters:  # every raster output: the input's grid, a valid COG
            with rasterio.open(path) as src:
                assert src.crs == grid.crs and src.transform == grid.transform, path
                assert (src.width, src.height) == (grid.width, grid.height)
                assert src.profile["tiled"] and src.block_shapes == [(128, 128)]
                assert src.overviews(1) and src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
                assert src.nodata == 255
        prob = read(demo_run / "scenes" / f"{sid}_probability.tif")
        mask = read(demo_run / "scenes" / f"{sid}_mask.tif")
        assert nodata.any() and ((prob == 255) == nodata).all() and ((mask == 255) == nodata).all()
        # the mask thresholds the float probability, and the stored value keeps that side of 0.5 everywhere
        np.testing.assert_array_equal(mask[~nodata], decode_probability(prob)[~nodata] >= 0.5)
        assert decode_probability(prob)[~nodata].std() > 0.05 and 0 < mask[~nodata].mean() < 1  # a map, not a constant
    # city products: the mean of the dates' stored probabilities >= 0.5 (each stored value on its date's side
    # of the threshold), on the same grid, and polygons
    probs = np.stack([decode_probability(read(demo_run / "scenes" / f"{sid}_probability.tif")) for sid in SAMAWAH])
    city = read(demo_run / "cities" / "Samawah_mask.tif")
    np.testing.assert_array_equal(city, threshold_mask(mean_probability(probs), 0.5))
    masks = np.stack([read(demo_run / "scenes" / f"{sid}_mask.tif") for sid in SAMAWAH])
    assert (city[(masks == 0).all(axis=0)] == 0).all() and (city[(masks == 1).all(axis=0)] == 1).all()
    expected = {f"{name}_{kind}.tif" for name in (*SAMAWAH, "Samawah") for kind in ("probability", "mask")}
    assert {p.name for p in demo_run.rglob("*.tif")} == expected  # every raster output was checked above
    assert (demo_run / "cities" / "Samawah_buildings.gpkg").is_file() and manifest["products"][0]["polygons_count"] > 0
    # evaluation against the label vectors, and a quicklook
    evaluation = json.loads((demo_run / "evaluation.json").read_text())
    assert evaluation == manifest["evaluation"] and list(evaluation["cities"]) == ["Samawah"]
    assert 0 <= evaluation["overall"]["pixel"]["f1_building"] <= 1 and "f1" in evaluation["overall"]["object"]
    assert manifest["products"][0]["labels"].endswith("38RNV_Samawah.shp")
    assert (demo_run / "quicklooks" / "Samawah.png").stat().st_size > 1000


@pytest.mark.slow
def test_a_rerun_with_the_same_settings_skips_finished_scenes(demo_run, trained, tiny_raw_session, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in (demo_run / "scenes").iterdir()}
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "raw").symlink_to(tiny_raw_session, target_is_directory=True)
    manifest = run(predict_cfg(demo_run, f"paths.demo_dir={demo}", *DEMO, log_dir=trained))
    assert manifest["resumed"] and all(s["skipped"] for s in manifest["scenes"])
    assert before == {p: p.stat().st_mtime_ns for p in (demo_run / "scenes").iterdir()}


def constant_checkpoint(best_ckpt: Path, p: float, out: Path) -> Path:
    """train.py's checkpoint with its classifier set to give building probability ``p`` on every pixel."""
    ckpt = torch.load(best_ckpt, weights_only=True)
    prefix = next(k for k in ckpt["state_dict"] if k.endswith("decoder.classifier.weight"))[: -len("weight")]
    ckpt["state_dict"][prefix + "weight"] = torch.zeros_like(ckpt["state_dict"][prefix + "weight"])
    ckpt["state_dict"][prefix + "bias"] = torch.tensor([0.0, math.log(p / (1 - p))])
    torch.save(ckpt, out)
    return out


@pytest.mark.slow
def test_masks_threshold_the_float_probability_not_the_stored_one(best_ckpt, tiny_raw_session, tmp_path):
    # p = 0.499 rounds to 127 of 254 = 0.5 exactly: thresholding that stored value made every pixel a building
    # at threshold 0.5. The mask thresholds the float, and the stored value keeps its side: 126
    ckpt = constant_checkpoint(best_ckpt, 0.499, tmp_path / "p0499.ckpt")
    out = tmp_path / "out"
    common = [f"ckpt={ckpt}", f"input={tiny_raw_session}", "cities=[Samawah]", "vectorize=false"]
    run(predict_cfg(out, *common))
    prob, mask = read(out / "scenes" / f"{SAMAWAH[0]}_probability.tif"), read(out / "scenes" / f"{SAMAWAH[0]}_mask.tif")
    valid = prob != 255
    assert valid.any() and (prob[valid] == 126).all() and (decode_probability(prob)[valid] < 0.5).all()
    assert (mask[valid] == 0).all() and (mask[~valid] == 255).all()
    assert (read(out / "cities" / "Samawah_mask.tif")[valid] == 0).all()  # the mean of the dates' stored values
    # a mask remade on its own (deleted here) comes from the network's floats again, not from the stored file
    (out / "scenes" / f"{SAMAWAH[0]}_mask.tif").unlink()
    manifest = run(predict_cfg(out, *common))
    assert (read(out / "scenes" / f"{SAMAWAH[0]}_mask.tif")[valid] == 0).all()
    assert [s["skipped"] for s in manifest["scenes"]] == [False, True]
    # and a threshold below p makes every valid pixel a building
    run(predict_cfg(tmp_path / "low", *common, "threshold=0.498"))
    assert (read(tmp_path / "low" / "scenes" / f"{SAMAWAH[0]}_mask.tif")[valid] == 1).all()


@pytest.mark.slow
def test_mean_aggregation_float16_and_prepared_input(demo_run, best_ckpt, tiny_prepared_db, tmp_path):
    out = tmp_path / "out"
    run(predict_cfg(out, f"ckpt={best_ckpt}", f"input={tiny_prepared_db}", "dataset_split=test", "aggregate.method=mean",
                    "aggregate.threshold=0.4", "probability_dtype=float16", "vectorize=false"))
    probs = np.stack([read(out / "scenes" / f"{sid}_probability.tif") for sid in SAMAWAH])
    assert probs.dtype == np.float32  # float16 values, stored as 16-bit floats
    with rasterio.open(out / "scenes" / f"{SAMAWAH[0]}_probability.tif") as src:
        assert src.tags(1, ns="IMAGE_STRUCTURE").get("NBITS") == "16"
    # the prepared stacks hold the bands the checkpoint computes from the raw scenes: same probabilities
    raw_probs = np.stack([decode_probability(read(demo_run / "scenes" / f"{sid}_probability.tif")) for sid in SAMAWAH])
    np.testing.assert_array_equal(np.isnan(probs), np.isnan(raw_probs))
    # uint8 rounding (half a step; a whole step where a value keeps its side of the threshold, 0.5 there) + float16
    np.testing.assert_allclose(probs, raw_probs, atol=1 / UINT8_SCALE + 1e-3, equal_nan=True)
    city = read(out / "cities" / "Samawah_probability.tif")
    np.testing.assert_allclose(city, mean_probability(probs), atol=1e-3, equal_nan=True)
    # the city mask thresholds the mean of the dates' stored probabilities before it is stored (float16) again
    np.testing.assert_array_equal(read(out / "cities" / "Samawah_mask.tif"), threshold_mask(mean_probability(probs), 0.4))


@pytest.mark.slow
def test_ensemble_averages_the_probabilities_of_checkpoints_with_their_own_recipes(demo_run, best_ckpt, tiny_raw_session,
                                                                                    tmp_path):
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
        a = decode_probability(read(demo_run / "scenes" / f"{sid}_probability.tif"))
        b = decode_probability(read(tmp_path / "b" / "scenes" / f"{sid}_probability.tif"))
        ab = decode_probability(read(tmp_path / "ab" / "scenes" / f"{sid}_probability.tif"))
        assert np.abs(a - b)[np.isfinite(a)].max() > 0.02  # two different models
        np.testing.assert_allclose(ab, (a + b) / 2, atol=1.01 / UINT8_SCALE, equal_nan=True)


# --------------------------------------------------------------------------------------------- bad input


def test_checkpoint_missing_or_not_unosat(tiny_raw_session, tmp_path):
    with pytest.raises(UnosatError, match=r"checkpoint .*nope.ckpt not found"):
        run(predict_cfg(tmp_path / "o", f"ckpt={tmp_path / 'nope.ckpt'}", f"input={tiny_raw_session}"))
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(UnosatError, match=r"plain.ckpt: not a unosat checkpoint"):
        run(predict_cfg(tmp_path / "o", f"ckpt={plain}", f"input={tiny_raw_session}"))
    text = tmp_path / "text.ckpt"
    text.write_text("hello")
    with pytest.raises(UnosatError, match=r"text.ckpt: not a readable PyTorch checkpoint"):
        run(predict_cfg(tmp_path / "o", f"ckpt={text}", f"input={tiny_raw_session}"))
    with pytest.raises(UnosatError, match=r"ckpt=null: no best-\*.ckpt .* python train.py"):
        run(predict_cfg(tmp_path / "o", f"input={tiny_raw_session}", log_dir=tmp_path / "no_logs"))
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["predict.json"]  # the failure, and nothing else
    manifest = json.loads((tmp_path / "o" / "predict.json").read_text())
    assert manifest["status"] == "failed" and manifest["reason"].startswith("ckpt=null: no best-*.ckpt")


@pytest.mark.slow
def test_checkpoint_recipe_must_match_a_prepared_dataset(best_ckpt, tiny_prepared, tmp_path):
    with pytest.raises(UnosatError, match=r"best-.*ckpt was trained on band recipe 'db' but the prepared dataset .* holds "
                                          r"recipe '3b' \(units db vs linear\).*input=<raw dir>"):
        run(predict_cfg(tmp_path / "o", f"ckpt={best_ckpt}", f"input={tiny_prepared}"))


@pytest.mark.slow
def test_vv_and_vh_on_different_grids(best_ckpt, tiny_raw, tmp_path):
    scene = next(s for s in discover_scenes(tiny_raw) if s.city == "Samawah")
    shift(scene.vh, 10.0)
    with pytest.raises(UnosatError, match=rf"VH and VV of scene {scene.scene_id} are not on the same grid: .*{scene.vh.name} vs "
                                          rf".*{scene.vv.name} differ in transform"):
        run(predict_cfg(tmp_path / "o", f"ckpt={best_ckpt}", f"input={tiny_raw}"))
    scene.vh.unlink()
    with pytest.raises(UnosatError, match=rf"{scene.vv.name}: no matching VH file"):
        run(predict_cfg(tmp_path / "o", f"ckpt={best_ckpt}", f"input={tiny_raw}"))


@pytest.mark.slow
def test_acquisitions_of_a_city_on_different_grids(best_ckpt, tiny_raw, tmp_path):
    scene = next(s for s in discover_scenes(tiny_raw) if s.scene_id == SAMAWAH[1])
    shift(scene.vh, 20.0)
    shift(scene.vv, 20.0)
    with pytest.raises(UnosatError, match=rf"cannot aggregate the acquisitions of Samawah: .*{SAMAWAH[0]} vs {SAMAWAH[1]}: "
                                          r"transform .*aggregate.method=none"):
        run(predict_cfg(tmp_path / "o", f"ckpt={best_ckpt}", f"input={tiny_raw}", "cities=[Samawah]"))


def shift(path: Path, metres: float) -> None:
    """Move a raster by ``metres`` east (same pixels, another grid)."""
    with rasterio.open(path, "r+") as dst:
        t = dst.transform
        dst.transform = rasterio.Affine(t.a, t.b, t.c + metres, t.d, t.e, t.f)


@pytest.mark.slow
def test_empty_or_unmatched_input(best_ckpt, tiny_raw_session, tiny_prepared_db, tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        ([f"input={tmp_path / 'empty'}"], r"empty holds no GeoTIFF"),
        ([f"input={tmp_path / 'missing'}"], r"input .*missing does not exist"),
        ([f"input={tiny_raw_session}", "cities=[Atlantis]"], r"no scene of cities \['Atlantis'\] .* holds \['Mosul', 'Najaf', 'Samawah'\]"),
        ([f"input={tiny_raw_session}", "dataset_split=test"], r"dataset_split/fold select scenes of a prepared dataset"),
        ([f"input={tiny_prepared_db}", "fold=7"], r"no scene in split None / fold 7; its \(split, fold\) pairs are"),
    ]
    for overrides, message in cases:
        with pytest.raises(UnosatError, match=message):
            run(predict_cfg(tmp_path / "o", f"ckpt={best_ckpt}", *overrides))


# ------------------------------------------------------------------------ output directory, resume, DDP


@pytest.mark.slow
def test_an_output_made_with_other_settings_or_not_a_prediction_is_refused(demo_run, best_ckpt, tiny_raw_session,
                                                                           tmp_path):
    common = [f"ckpt={best_ckpt}", f"input={tiny_raw_session}", "cities=[Samawah]"]
    with pytest.raises(UnosatError, match=r"holds a prediction made with other settings .*tta: 'none' -> 'flips'.*overwrite=true"):
        run(predict_cfg(demo_run, *common, "tta=flips"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UnosatError, match=r"foreign is not empty and holds no predict.json: it is not a unosat prediction"):
        run(predict_cfg(foreign, *common))
    run(predict_cfg(foreign, *common, "overwrite=true", "aggregate.method=none", "vectorize=false"))
    assert (foreign / "notes.txt").read_text() == "mine" and (foreign / "predict.json").is_file()


@pytest.mark.slow
def test_a_failed_prediction_records_why_and_the_same_command_runs_after_the_fix(best_ckpt, tiny_raw, tmp_path):
    scene = next(s for s in discover_scenes(tiny_raw) if s.scene_id == SAMAWAH[1])
    good = scene.vv.read_bytes()
    scene.vv.write_bytes(good[: len(good) * 2 // 3])  # a truncated input
    out = tmp_path / "o"
    args = [f"ckpt={best_ckpt}", f"input={tiny_raw}", "cities=[Samawah]", "vectorize=false"]
    with pytest.raises(UnosatError, match=rf"{scene.vv.name}"):
        run(predict_cfg(out, *args))
    manifest = json.loads((out / "predict.json").read_text())
    assert manifest["status"] == "failed" and scene.vv.name in manifest["reason"] and "\n" not in manifest["reason"]
    scene.vv.write_bytes(good)  # the fix
    assert run(predict_cfg(out, *args))["status"] == "complete"  # the same command, no overwrite=true

    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"")  # a bad checkpoint
    out = tmp_path / "o2"
    args = [f"ckpt={bad}", f"input={tiny_raw}", "cities=[Samawah]", "vectorize=false"]
    with pytest.raises(UnosatError, match="model.ckpt: not a readable PyTorch checkpoint"):
        run(predict_cfg(out, *args))
    manifest = json.loads((out / "predict.json").read_text())
    assert manifest["status"] == "failed" and "model.ckpt: not a readable PyTorch checkpoint" in manifest["reason"]
    shutil.copy(best_ckpt, bad)  # the fix: the right file under the same name
    assert run(predict_cfg(out, *args))["status"] == "complete"


@pytest.mark.slow
def test_a_failure_leaves_a_finished_prediction_alone(demo_run, tmp_path):
    before = (demo_run / "predict.json").read_bytes()
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(UnosatError, match="empty.ckpt"):
        run(predict_cfg(demo_run, f"ckpt={empty}"))
    assert (demo_run / "predict.json").read_bytes() == before
    assert not (demo_run / ".unosat.lock").exists()


def cli(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "predict.py", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def cli_args(out: Path, *extra: str) -> list[str]:
    return [f"output={out}", f"hydra.run.dir={out.parent / ('hydra_' + out.name)}", *PRED, *extra]


@pytest.fixture(scope="module")
def resumed_run(best_ckpt, tiny_raw_session, tmp_path_factory) -> tuple[Path, dict]:
    """All six tiny scenes predicted by predict.py killed after its first scene, then run again."""
    out = tmp_path_factory.mktemp("resume") / "out"
    args = cli_args(out, f"ckpt={best_ckpt}", f"input={tiny_raw_session}")
    proc = cli(args)
    deadline = time.monotonic() + 120
    while not list((out / "scenes").glob("*_mask.tif")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = {p.name: p.stat().st_mtime_ns for p in (out / "scenes").glob("*.tif")}
    state = json.loads((out / "predict.json").read_text())["status"]
    manifest = run(compose_config("predict", [a for a in args if not a.startswith("hydra.")]
                                  + [f"paths.output_dir={out.parent}"]))
    return out, {"interrupted": interrupted, "status_after_kill": state, "manifest": manifest}


@pytest.mark.slow
def test_an_interrupted_prediction_resumes_scene_by_scene(resumed_run, demo_run):
    out, info = resumed_run
    assert info["status_after_kill"] == "running"
    finished = {n for n in info["interrupted"] if n.endswith("_mask.tif")}
    assert 1 <= len(finished) < 6, "the kill did not land in the middle of the run"
    manifest = info["manifest"]
    assert manifest["status"] == "complete" and manifest["resumed"]
    skipped = {s["scene_id"] for s in manifest["scenes"] if s["skipped"]}
    assert skipped == {n.removesuffix("_mask.tif") for n in finished}
    for name, mtime in info["interrupted"].items():  # finished scenes were not redone
        if name.removesuffix("_mask.tif").removesuffix("_probability.tif") in skipped:
            assert (out / "scenes" / name).stat().st_mtime_ns == mtime
    assert len(list((out / "scenes").glob("*_mask.tif"))) == 6 and not list(out.rglob(".*tmp-*"))
    for sid in SAMAWAH:  # the same pixels as an uninterrupted run with the same settings
        for kind in ("probability", "mask"):
            np.testing.assert_array_equal(read(out / "scenes" / f"{sid}_{kind}.tif"),
                                          read(demo_run / "scenes" / f"{sid}_{kind}.tif"))


@pytest.mark.slow
def test_two_cpu_processes_predict_what_one_does(resumed_run, best_ckpt, tiny_raw_session, tmp_path):
    single, _ = resumed_run
    out = tmp_path / "ddp"
    proc = cli(cli_args(out, f"ckpt={best_ckpt}", f"input={tiny_raw_session}", "trainer=ddp", "trainer.accelerator=cpu",
                        "trainer.devices=2", "trainer.precision=32-true"),
               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    manifest = json.loads((out / "predict.json").read_text())
    assert manifest["runtime"]["world_size"] == 2 and {s["rank"] for s in manifest["scenes"]} == {0, 1}
    for path in sorted((single / "scenes").glob("*.tif")):
        a, b = read(path), read(out / "scenes" / path.name)
        if path.name.endswith("_probability.tif"):  # threads per process may differ: allow one step of 1/254
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, path.name
        else:
            assert (a != b).mean() < 1e-3, path.name
    for path in sorted((single / "cities").glob("*.tif")):
        assert (read(path) != read(out / "cities" / path.name)).mean() < 1e-3


@pytest.mark.slow
def test_two_runs_on_one_output_refuse_each_other_cleanly(best_ckpt, tiny_raw_session, tmp_path):
    out = tmp_path / "shared"
    args = cli_args(out, f"ckpt={best_ckpt}", f"input={tiny_raw_session}", "cities=[Samawah]")
    first = cli(args)
    deadline = time.monotonic() + 180
    while not (out / ".unosat.lock").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (out / ".unosat.lock").exists(), "the first run did not start"
    first.send_signal(signal.SIGSTOP)  # holds the lock for as long as the second run needs
    try:
        second = cli(args[:1] + [f"hydra.run.dir={tmp_path / 'hydra_second'}"] + args[2:])
        _, stderr = second.communicate(timeout=180)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert re.fullmatch(rf"error: {re.escape(str(out))} is in use by process {first.pid} since "
                        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC .*", lines[-1]), stderr[-2000:]
    assert "Traceback" not in stderr
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert json.loads((out / "predict.json").read_text())["status"] == "complete"
    assert not (out / ".unosat.lock").exists()


@pytest.mark.slow
def test_user_errors_end_with_one_line_and_status_1(tmp_path):
    proc = cli(cli_args(tmp_path / "o", f"ckpt={tmp_path / 'missing.ckpt'}"))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert stderr.strip().splitlines()[-1] == f"error: checkpoint {tmp_path / 'missing.ckpt'} not found"


def test_cog_writer_cleans_up_after_a_failure(tmp_path):
    from unosat.io.cog import CogOptions, write_cog

    grid = Grid(rasterio.crs.CRS.from_epsg(32638), rasterio.transform.from_origin(0, 0, 10, 10), 40, 30)

    def blocks():
        yield 0, np.zeros((1, 10, 40), dtype=np.uint8)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_cog(tmp_path / "x.tif", grid, "uint8", 255, blocks(), CogOptions(blocksize=128))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UnosatError, match="cog.blocksize"):
        CogOptions(blocksize=100)
    shutil.rmtree(tmp_path, ignore_errors=True)


# ------------------------------------------------------------------- tile-classifier gate (issue 6)


@pytest.fixture(scope="module")
def gate_ckpt(tiny_prepared_db, tmp_path_factory) -> Path:
    """A tiny tile classifier trained by train.py."""
    from unosat.training.run import run as train

    root = tmp_path_factory.mktemp("gate")
    train(train_cfg(tiny_prepared_db, root, "model=tile_classifier", "debug=limit", "trainer.max_epochs=1",
                    "logger=csv", "model.window_px=32",
                    "data.augment.0.height=${model.window_px}", "data.augment.0.width=${model.window_px}"))
    return next((root / "logs" / "train" / "runs" / "run" / "checkpoints").glob("best-*.ckpt"))


def test_gate_cells_cover_the_window():
    from unosat.predict.gate import cell_starts, window_cells

    assert cell_starts(512, 256) == [0, 256] and cell_starts(100, 256) == [0] and cell_starts(256, 256) == [0]
    assert cell_starts(600, 256) == [0, 172, 344]  # 3 cells, evenly spread, the last ends at the border
    x = np.arange(2 * 1 * 80 * 40, dtype=np.float32).reshape(2, 1, 80, 40)
    cells = window_cells(x, 32)
    assert cells.shape == (2, 3 * 2, 1, 32, 32)
    np.testing.assert_array_equal(cells[1, 5], x[1, :, 48:80, 8:40])  # last row, last column: bottom-right corner
    assert window_cells(x, None).shape == (2, 1, 1, 80, 40)


def test_gate_skips_a_window_only_when_every_cell_is_empty():
    """A classifier of 16 px windows that sees a building where any pixel is > 0.5: a 48 px window with one
    bright pixel is kept wherever the pixel lies, even where averaging over the window would dilute it."""
    from unosat.predict.gate import TileGate
    from unosat.predict.sliding_window import WindowBatch

    class BrightPixelClassifier(torch.nn.Module):
        task, window_px = "tile_classification", 16

        def forward(self, x):
            assert x.shape[-2:] == (16, 16)
            return (x.amax(dim=(1, 2, 3)) > 0.5).float()[:, None] * 20 - 10

    model = LoadedModel("bright", BrightPixelClassifier(), BandRecipe("vv", ("vv",), "db"), Normalization(mean=(0.0,), std=(1.0,)))
    gate = TileGate(model, threshold=0.5, runtime=Runtime(channels_last=False), group=0)
    x = np.zeros((4, 1, 48, 48), dtype=np.float32)
    x[1, 0, 47, 47] = 1.0   # bottom-right corner cell
    x[2, 0, 20, 30] = 1.0   # a middle cell
    x[3] = 0.4              # dim everywhere: no building
    batch = WindowBatch(rows=np.zeros(4, int), cols=np.zeros(4, int), valid=np.ones((4, 48, 48), bool), inputs=[x])
    assert gate(batch).tolist() == [True, False, False, True]
    assert gate.probabilities[1] > 0.99 and gate.probabilities[0] < 0.01


def _gated(out: Path, best_ckpt: Path, tiny_raw_session: Path, *overrides: str) -> dict:
    return run(predict_cfg(out, f"ckpt={best_ckpt}", f"input={tiny_raw_session}", "cities=[Samawah]",
                           "vectorize=false", *overrides))


@pytest.mark.slow
def test_gate_that_calls_every_window_empty_writes_background_without_segmenting(best_ckpt, gate_ckpt, tiny_raw_session,
                                                                                   tmp_path):
    manifest = _gated(tmp_path / "out", best_ckpt, tiny_raw_session, f"gate.ckpt={gate_ckpt}", "gate.threshold=1.0")
    assert manifest["gate"]["threshold"] == 1.0 and manifest["settings"]["gate"]["sha256"]
    for rec in manifest["scenes"]:
        assert rec["windows_predicted"] == 0 and rec["forward_passes"] == 0
        assert rec["windows_skipped"]["TileGate"] == rec["windows"] - rec["windows_skipped"].get("NodataSkip", 0)
        with rasterio.open(rec["probability"]) as src:
            prob = src.read(1)
        with rasterio.open(rec["mask"]) as src:
            mask = src.read(1)
        valid = prob != 255
        assert valid.any() and (prob[valid] == 0).all()  # probability 0, not nodata
        assert set(np.unique(mask)) <= {0, 255} and ((mask == 255) == ~valid).all()


@pytest.mark.slow
def test_gate_that_skips_nothing_changes_nothing(best_ckpt, gate_ckpt, tiny_raw_session, tmp_path):
    plain = _gated(tmp_path / "plain", best_ckpt, tiny_raw_session)
    gated = _gated(tmp_path / "gated", best_ckpt, tiny_raw_session, f"gate.ckpt={gate_ckpt}", "gate.threshold=0.0")
    for a, b in zip(plain["scenes"], gated["scenes"]):
        assert b["windows_skipped"].get("TileGate", 0) == 0
        with rasterio.open(a["probability"]) as sa, rasterio.open(b["probability"]) as sb:
            np.testing.assert_array_equal(sa.read(), sb.read())


@pytest.mark.slow
def test_gate_and_segmentation_checkpoints_are_not_confused(best_ckpt, gate_ckpt, tiny_raw_session, tmp_path):
    with pytest.raises(UnosatError, match="not a tile classifier"):
        _gated(tmp_path / "a", best_ckpt, tiny_raw_session, f"gate.ckpt={best_ckpt}")
    with pytest.raises(UnosatError, match="tile classification model, not a segmentation model"):
        _gated(tmp_path / "b", gate_ckpt, tiny_raw_session)


@pytest.mark.slow
def test_default_checkpoint_is_the_latest_segmentation_run(trained, gate_ckpt, best_ckpt, tmp_path):
    import shutil

    from unosat.predict.settings import resolve_checkpoints

    logs = Path(shutil.copytree(trained, tmp_path / "logs"))
    later = logs / "train" / "runs" / "z_tile_classifier" / "checkpoints"
    later.mkdir(parents=True)
    shutil.copy(gate_ckpt, later / gate_ckpt.name)  # newer, but a tile classifier
    (found,) = resolve_checkpoints(None, logs)
    assert found.name == best_ckpt.name and "z_tile_classifier" not in str(found)
