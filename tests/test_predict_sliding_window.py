"""unosat.predict.sliding_window: window layout and blending weights, every pixel in its place, seams and
borders, windows skipped before the network runs, networks with several outputs; a trained LW-RefineNet's
windows against its single forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from conftest import SAMAWAH
from toy_networks import (
    ConstantNet,
    ConvNet,
    CountingNet,
    PixelNet,
    TupleNet,
    predict_array,
    random_stack,
)

from unosat.predict.distributed import Runtime
from unosat.predict.ensemble import Ensemble
from unosat.predict.inputs import ArrayReader
from unosat.predict.sliding_window import NodataSkip, WindowConfig, axis_layout, predict_scene

LAYOUTS = [
    (75, 130, WindowConfig(size=32, overlap=12, batch_size=3)),
    (64, 64, WindowConfig(size=32, overlap=8, margin=0, batch_size=2)),  # windows fit exactly
    (20, 27, WindowConfig(size=32, overlap=8, batch_size=2)),  # scene smaller than a window
    (50, 90, WindowConfig(size=32, overlap=0, margin=0, batch_size=4)),  # no overlap
    (70, 41, WindowConfig(size=24, overlap=10, edge=2, pad_mode="constant")),  # zero weight at inner edges
    (1, 40, WindowConfig(size=16, overlap=4, margin=3)),  # a single row
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
    prob, stats = predict_array(
        stack, [counting], WindowConfig(size=32, overlap=8), skips=(NodataSkip(), Everything())
    )
    valid = np.isfinite(stack).all(axis=0)
    assert counting.calls == 0 and stats.predicted == 0
    assert (prob[valid] == 0).all() and np.isnan(prob[~valid]).all()


def test_a_model_with_several_outputs_is_read_through_its_segmentation_logits():
    stack = random_stack(40, 50, seed=6)
    cfg = WindowConfig(size=32, overlap=8)
    single, _ = predict_array(stack, [ConvNet(seed=1)], cfg)
    double, _ = predict_array(stack, [TupleNet(ConvNet(seed=1))], cfg)
    np.testing.assert_array_equal(single, double)


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
    cfg = WindowConfig(
        size=96, overlap=48, edge=8, margin=0, batch_size=4
    )  # no margin: the same border as one pass
    prob = np.concatenate([p for _, p in predict_scene(ArrayReader(stack, model.recipe), ensemble, cfg)])
    inner = (slice(8, -8), slice(8, -8))
    diff = np.abs(prob - whole)[inner][np.isfinite(stack).all(axis=0)[inner]]
    assert whole.std() > 0.1 and diff.mean() < 0.005 and diff.max() < 0.05
