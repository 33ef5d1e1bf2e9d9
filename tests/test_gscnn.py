"""GSCNN: shapes, the gated convolution, the image gradient, the ResNet-50 backbone, and training runs through
``train.py``'s ``run`` (its loss: tests/test_losses_gscnn.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import summary, train_cfg
from hydra.utils import instantiate

from unosat.checkpoint import build_model, load_checkpoint
from unosat.classes import IGNORE_INDEX
from unosat.config import compose_config
from unosat.errors import UnosatError
from unosat.losses import GSCNNLoss
from unosat.models import GSCNN, GatedConv2d, LWRefineNet, MobileNetV2Encoder, ResNet, resnet50
from unosat.models.gscnn import load_backbone_weights
from unosat.models.image_gradient import gradient_for_recipe
from unosat.training.prediction_grid import PredictionGrid
from unosat.training.run import run

#: small heads (the MobileNetV2 backbone is the real one): fast models for the unit tests
#: (rate 1: these tests train on 64 px inputs and 48 px crops, whose 1/32 features are 2 x 2; larger rates
#: would leave ASPP taps on zero padding, which GSCNN refuses: tests/test_models_gscnn.py)
SMALL = dict(
    aspp_channels=16, decoder_channels=16, low_level_channels=8, shape_channels=(8, 4, 4, 4), aspp_rates=(1,)
)
GSCNN_RUN = ["model=gscnn", "loss=gscnn", "model.aspp_rates=[1]"]
X = IGNORE_INDEX  # short for the tables below


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet50"])
def test_both_outputs_have_the_input_size_whatever_it_is(backbone):
    torch.manual_seed(0)
    net = GSCNN(3, 2, backbone=backbone, **SMALL).eval()
    for size in [(64, 64), (70, 50)]:  # 70 x 50: not multiples of 32 (nor of 8)
        with torch.inference_mode():
            seg, edge = net(torch.randn(2, 3, *size))
        assert seg.shape == (2, 2, *size) and edge.shape == (2, 1, *size)
        assert torch.isfinite(seg).all() and torch.isfinite(edge).all()


def test_parameter_counts():
    assert n_params(resnet50(3)) == 23_508_032  # torchvision's resnet50 minus its 2,049,000-parameter fc head
    paper = GSCNN(3, 2)  # the constructor's defaults: the paper's widths on MobileNetV2
    assert n_params(paper.backbone) == 1_812_800
    # regression pins, taken from the code's output (backbone and shape stream are derived independently
    # above and in test_shape_stream_parameter_count_derived_by_hand): they catch an accidental layer change
    assert n_params(paper) == 5_982_738  # "about 5.9 M" for the light variant
    cfg = compose_config("train", ["model=gscnn", "loss=gscnn"])
    assert n_params(instantiate({**cfg.model, "in_channels": 3, "output_stride": 4})) == 3_460_318
    # the CPU default of the config (output stride 1): the stride-4 count plus the full-resolution head, whose
    # difference tests/test_models_gscnn.py derives by hand
    assert n_params(instantiate({**cfg.model, "in_channels": 3})) == 3_483_998


def _bn(x: torch.Tensor, mean, var, weight, bias, eps) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps) * weight.view(shape) + bias.view(shape)


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    out = torch.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_gated_convolution_is_the_formula(mode):
    torch.manual_seed(1)
    gate = GatedConv2d(3).double()
    with torch.no_grad():
        for p in gate.parameters():
            p.normal_()
        for bn in (gate.gate[0], gate.gate[4]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    gate.train(mode == "train")
    f, s = torch.randn(2, 3, 2, 3, dtype=torch.double), torch.randn(2, 1, 2, 3, dtype=torch.double)
    bn0, conv1, _, conv2, bn1, _ = gate.gate

    def stats(x):  # this batch's mean and (biased) variance per channel: BatchNorm in training mode
        return x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)

    cat = torch.cat([f, s], dim=1)
    mean, var = (bn0.running_mean, bn0.running_var) if mode == "eval" else stats(cat)
    h = torch.relu(_conv1x1(_bn(cat, mean, var, bn0.weight, bn0.bias, bn0.eps), conv1.weight, conv1.bias))
    a = _conv1x1(h, conv2.weight, conv2.bias)
    mean, var = (bn1.running_mean, bn1.running_var) if mode == "eval" else stats(a)
    alpha = torch.sigmoid(_bn(a, mean, var, bn1.weight, bn1.bias, bn1.eps))
    expected = _conv1x1(f * (alpha + 1), gate.conv.weight)
    with torch.no_grad():
        torch.testing.assert_close(gate(f, s), expected)


def test_every_learnable_parameter_of_the_shape_stream_gets_a_gradient():
    """Every parameter that can learn receives a gradient. A conv bias that feeds a BatchNorm cannot (the
    normalisation removes any constant), so those convolutions are built without one."""
    torch.manual_seed(2)
    net = GSCNN(3, 2, **SMALL).train()
    target = torch.zeros(1, 64, 64, dtype=torch.int64)
    target[:, 20:40, 10:30] = 1
    target[:, :4] = X
    loss = GSCNNLoss()(net(torch.randn(1, 3, 64, 64)), target)  # a batch of one trains too
    loss["loss"].backward()
    params = dict(net.shape_stream.named_parameters())
    assert {
        "input_proj.weight",
        "res.0.conv1.weight",
        "reduce.2.weight",
        "gate_proj.0.weight",
        "gates.2.gate.1.weight",
        "gates.2.gate.1.bias",
        "gates.2.conv.weight",
        "head.weight",
    } <= set(params)
    assert not any(name.startswith("gate_proj.") and name.endswith(".bias") for name in params)
    assert all(gate.gate[3].bias is None for gate in net.shape_stream.gates)
    for name, p in params.items():
        assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    assert net.fusion.weight.grad.abs().sum() > 0


def test_shape_stream_parameter_count_derived_by_hand():
    # widths (c0..c3) = (64, 32, 16, 8) from 24 input channels, gated by 3 features of (32, 64, 96) channels
    c, inp, gates = (64, 32, 16, 8), 24, (32, 64, 96)
    input_proj = inp * c[0]
    res = sum(2 * (9 * w * w) + 2 * (2 * w) for w in c[:3])  # two 3x3 convs (no bias) + two BN (weight, bias)
    reduce = sum(a * b for a, b in zip(c[:3], c[1:]))
    gate_proj = sum(gates)  # 1x1 to one channel, no bias
    gated = sum(2 * (w + 1) + (w + 1) * (w + 1) + (w + 1) + (w + 1) + 2 + w * w for w in c[1:])
    head = c[3] + 1
    from unosat.models.gscnn import ShapeStream

    assert n_params(ShapeStream(inp, gates, c)) == input_proj + res + reduce + gate_proj + gated + head


def test_resnet50_output_stride_8_feature_strides():
    net = resnet50(3, output_stride=8).eval()
    assert net.stage_strides == (2, 4, 8, 8, 8)
    assert net.stage_channels == (64, 256, 512, 1024, 2048)
    with torch.inference_mode():
        features = net(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in features] == [
        (64, 32, 32),
        (256, 16, 16),
        (512, 8, 8),
        (1024, 8, 8),
        (2048, 8, 8),
    ]
    assert net.layer4[1].conv2.dilation == (4, 4) and net.layer3[1].conv2.dilation == (2, 2)
    assert net.layer3[0].conv2.stride == (1, 1) and net.layer2[0].conv2.stride == (2, 2)
    assert ResNet(3, blocks=(1, 1, 1, 1), output_stride=16).stage_strides == (2, 4, 8, 16, 16)
    with pytest.raises(UnosatError, match="output_stride must be one of"):
        resnet50(3, output_stride=4)


def test_pretrained_backbone_is_loaded_from_a_local_file_or_refused_clearly(tmp_path):
    torch.manual_seed(3)
    source = MobileNetV2Encoder(3)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    torch.save(source.state_dict(), tmp_path / "mbv2.pt")
    net = GSCNN(3, 2, pretrained=str(tmp_path / "mbv2.pt"), **SMALL)
    torch.testing.assert_close(net.backbone.stem.conv.weight, source.stem.conv.weight)
    # a whole LW-RefineNet's state_dict: its encoder is taken
    lw = LWRefineNet(3)
    torch.save({"state_dict": lw.state_dict()}, tmp_path / "lw.pt")
    net = GSCNN(3, 2, pretrained=str(tmp_path / "lw.pt"), **SMALL)
    torch.testing.assert_close(
        net.backbone.stages[6].blocks[0].project.conv.weight,
        lw.encoder.stages[6].blocks[0].project.conv.weight,
    )
    with pytest.raises(UnosatError, match=r"model.pretrained .*missing.pt: no such file"):
        GSCNN(3, 2, pretrained=str(tmp_path / "missing.pt"), **SMALL)
    with pytest.raises(
        UnosatError,
        match=r"(?s)does not fit the MobileNetV2Encoder backbone \(5 input bands\).*"
        r"stem.conv.weight: file \(32, 3, 3, 3\), model \(32, 5, 3, 3\)",
    ):
        GSCNN(5, 2, pretrained=str(tmp_path / "mbv2.pt"), **SMALL)
    with pytest.raises(UnosatError, match=r"(?s)does not fit the ResNet backbone.*missing keys"):
        load_backbone_weights(ResNet(3, blocks=(1, 1, 1, 1)), tmp_path / "mbv2.pt")


def test_bad_model_settings_are_user_errors():
    with pytest.raises(UnosatError, match="backbone 'vgg' is not one of mobilenetv2, resnet50"):
        GSCNN(3, 2, backbone="vgg")
    with pytest.raises(UnosatError, match=r"gradient_band='vv' is not a band of the dataset \(vh, hh\)"):
        GSCNN(
            2, 2, input_recipe={"bands": ["vh", "hh"], "units": "db", "mean": [0, 0], "std": [1, 1]}, **SMALL
        )
    with pytest.raises(UnosatError, match="shape_channels must be 4 positive widths"):
        GSCNN(3, 2, **{**SMALL, "shape_channels": [8, 4]})


# ------------------------------------------------------------------------------------------ image gradient


def _recipe(units: str, mean: float, std: float) -> dict:
    return {"bands": ["vh", "vv", "mean"], "units": units, "mean": [0.0, mean, 0.0], "std": [1.0, std, 1.0]}


def _normalised(vv: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """A 3-band input whose band 1 (vv) is ``vv`` normalised with (mean, std); the other bands are noise."""
    x = torch.randn(vv.shape[0], 3, *vv.shape[-2:])
    x[:, 1] = (vv - mean) / std
    return x


def test_image_gradient_is_taken_on_the_unnormalised_band():
    torch.manual_seed(4)
    db = -15 + 3 * torch.randn(2, 40, 36)
    db[:, 10:20, 8:24] += 8  # a bright building
    settings = dict(band="vv", db_floor=1e-3, sigma_px=1.0, scale_db=1.0)
    maps = [
        gradient_for_recipe(_recipe("db", m, s), **settings)(_normalised(db, m, s))
        for m, s in [(0, 1), (-15, 4), (3, 0.5)]
    ]
    assert maps[0].shape == (2, 1, 40, 36)
    torch.testing.assert_close(maps[1], maps[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(maps[2], maps[0], rtol=1e-4, atol=1e-4)
    # the same scene in linear power (normalised as the original team did, /5) gives the same map
    linear = 10 ** (db / 10)
    lin_map = gradient_for_recipe(_recipe("linear", 0.0, 5.0), **settings)(_normalised(linear, 0.0, 5.0))
    torch.testing.assert_close(lin_map, maps[0], rtol=1e-3, atol=1e-3)
    # without a recipe the normalised band 0 is used as is: the map depends on the normalisation
    fallback = gradient_for_recipe(None, **settings)
    assert fallback.band_index == 0 and not fallback.denormalises
    # the model uses the recipe it is given, and nothing flows back through the map
    net = GSCNN(3, 2, input_recipe=_recipe("db", -15, 4), **SMALL)
    assert (
        net.image_gradient.band_index == 1 and net.image_gradient.mean == -15 and net.image_gradient.std == 4
    )
    x = _normalised(db, -15, 4).requires_grad_()
    assert not net.image_gradient(x).requires_grad


def test_image_gradient_of_a_ramp_and_the_floor():
    ramp = torch.arange(20.0).repeat(12, 1) * 2.0 - 30  # 2 dB per pixel along x
    g = gradient_for_recipe(_recipe("db", 0, 1), "vv", 1e-3, 1.0, 1.0)(_normalised(ramp[None], 0, 1))
    torch.testing.assert_close(g[0, 0, 4:-4, 4:-4], torch.full((4, 12), 2.0))  # away from the padded border
    g = gradient_for_recipe(_recipe("db", 0, 1), "vv", 1e-3, 0.0, 4.0)(_normalised(ramp[None], 0, 1))
    torch.testing.assert_close(g[0, 0, 2:-2, 2:-2], torch.full((8, 16), 0.5))  # scale_db 4: 2 dB/px -> 0.5
    # thermal-noise pixels (-80 dB in a dB stack) are clamped at the floor (-30 dB) like linear power <= 0
    flat = torch.full((1, 9, 9), -30.0)
    flat[0, 4, 4] = -80.0
    g = gradient_for_recipe(_recipe("db", 0, 1), "vv", 1e-3, 1.0, 1.0)(_normalised(flat, 0, 1))
    assert g.abs().max() < 1e-5


# ----------------------------------------------------------------------------------------- configs and runs


@pytest.mark.slow
def test_experiment_gscnn_is_the_unosat_baseline_with_gscnn():
    cfg = compose_config("train", ["experiment=gscnn"])
    base = compose_config("train", ["experiment=unosat_ce"])
    assert cfg.model._target_ == "unosat.models.GSCNN" and cfg.loss._target_ == "unosat.losses.GSCNNLoss"
    assert cfg.optimizer == base.optimizer and cfg.data == base.data and cfg.trainer == base.trainer
    assert list(cfg.loss.class_weights) == [0.1, 2.0]
    assert isinstance(instantiate(cfg.loss), GSCNNLoss)
    r50 = compose_config("train", ["model=gscnn_resnet50"]).model
    assert r50.backbone == "resnet50" and list(r50.aspp_rates) == [4, 8, 12] and r50.input_recipe is None


@pytest.mark.slow
def test_fast_dev_run(tiny_prepared_db, tmp_path):
    run(train_cfg(tiny_prepared_db, tmp_path, *GSCNN_RUN, "debug=fdr"))
    out = summary(tmp_path / "logs" / "train" / "runs" / "run")
    assert out["model"] == "unosat.models.GSCNN"
    for term in ("seg", "edge", "attention", "dual"):
        assert np.isfinite(out["fit_metrics"][f"val/{term}"]), term
    assert np.isfinite(out["fit_metrics"]["val/loss"])


@pytest.mark.slow
def test_one_epoch_writes_a_six_column_prediction_grid(tiny_prepared_db, tmp_path, monkeypatch):
    columns = []
    figure = PredictionGrid.figure

    def spy(self, samples, preds, edges, band, dataset):
        fig = figure(self, samples, preds, edges, band, dataset)
        columns.append(fig.axes[0].get_subplotspec().get_gridspec().ncols)
        return fig

    monkeypatch.setattr(PredictionGrid, "figure", spy)
    run(train_cfg(tiny_prepared_db, tmp_path, *GSCNN_RUN, "baseline=false", "+trainer.limit_val_batches=2"))
    run_dir = tmp_path / "logs" / "train" / "runs" / "run"
    assert columns == [6]
    assert list((run_dir / "figures").glob("prediction_grid_epoch000.png"))
    metrics = pd.read_csv(run_dir / "csv" / "metrics.csv")
    for column in (
        "train/seg_epoch",
        "train/edge_epoch",
        "train/attention_epoch",
        "train/dual_epoch",
        "val/dual",
    ):
        assert column in metrics.columns
    # the checkpoint carries the filled-in input recipe and rebuilds the model
    ckpt = load_checkpoint(Path(summary(run_dir)["best_checkpoint"]))
    recipe = ckpt["unosat"]["model"]["args"]["input_recipe"]  # the network spec: {"name", "args"}
    assert recipe["bands"] == ["vh", "vv", "mean"] and recipe["units"] == "db" and len(recipe["std"]) == 3
    net = build_model(ckpt)
    assert net.image_gradient.band_index == 1 and net.image_gradient.std == pytest.approx(recipe["std"][1])
    with torch.inference_mode():
        seg, edge = net(torch.zeros(1, 3, 40, 40))
    assert seg.shape == (1, 2, 40, 40) and edge.shape == (1, 1, 40, 40)
