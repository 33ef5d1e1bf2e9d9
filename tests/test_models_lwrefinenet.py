"""Light-Weight RefineNet on MobileNetV2: figures from the reference, and loading the UNOSAT team's weights.

The reference layout (keys and shapes of the team's state_dict) and a functional forward pass over it are
built here from the architecture description alone, independently of :mod:`unosat.models`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unosat.errors import UnosatError
from unosat.models import (
    LWRefineNet,
    MobileNetV2Encoder,
    init_reference_,
    load_reference_state_dict,
    reference_key_map,
)
from unosat.models.lwrefinenet import new_full_resolution_keys

# (expansion t, channels c, repeats n, first stride s), from the MobileNetV2 paper.
TABLE = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
LATERALS = {"conv8": 320, "conv7": 160, "conv6": 96, "conv5": 64, "conv4": 32, "conv3": 24}
BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------------------------
# Reference layout and forward pass, from the description of the UNOSAT team's model


def reference_layout(in_channels: int = 3, num_classes: int = 2) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the team's state_dict: ``mbv2.`` + DrSleep's names."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_bn(prefix: str, c_in: int, c_out: int, k: int, groups: int = 1) -> None:
        shapes[f"{prefix}.0.weight"] = (c_out, c_in // groups, k, k)
        for name in BN_TENSORS:
            shapes[f"{prefix}.1.{name}"] = () if name == "num_batches_tracked" else (c_out,)

    conv_bn("mbv2.layer1", in_channels, 32, 3)
    c_in = 32
    for layer, (t, c, n, _) in enumerate(TABLE, start=2):
        for b in range(n):
            hidden = c_in * t
            conv_bn(f"mbv2.layer{layer}.{b}.output.0", c_in, hidden, 1)
            conv_bn(f"mbv2.layer{layer}.{b}.output.1", hidden, hidden, 3, groups=hidden)
            conv_bn(f"mbv2.layer{layer}.{b}.output.2", hidden, c, 1)
            c_in = c
    for name, c in LATERALS.items():
        shapes[f"mbv2.{name}.weight"] = (256, c, 1, 1)
    for crp in ("crp4", "crp3", "crp2", "crp1"):
        for i in range(1, 5):
            shapes[f"mbv2.{crp}.0.{i}_outvar_dimred.weight"] = (256, 256, 1, 1)
    for name in ("conv_adapt4", "conv_adapt3", "conv_adapt2"):
        shapes[f"mbv2.{name}.weight"] = (256, 256, 1, 1)
    shapes["mbv2.segm.weight"] = (num_classes, 256, 3, 3)
    shapes["mbv2.segm.bias"] = (num_classes,)
    return shapes


def random_reference_state_dict(
    in_channels: int = 3, num_classes: int = 2, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random values with the reference layout; scaled so activations stay O(1) through the network."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in reference_layout(in_channels, num_classes).items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.randint(0, 10_000, (), generator=g)
        elif key.endswith(("running_var", ".1.weight")):
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith(("running_mean", "bias")):
            sd[key] = 0.1 * torch.randn(shape, generator=g)
        else:
            sd[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    return sd


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, mode: str = "bicubic") -> torch.Tensor:
    """The team's model in evaluation mode, written functionally over its state_dict."""

    def conv_bn(
        prefix: str, x: torch.Tensor, stride: int = 1, groups: int = 1, act: bool = True
    ) -> torch.Tensor:
        w = sd[f"{prefix}.0.weight"]
        x = F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=groups)
        bn = [sd[f"{prefix}.1.{n}"] for n in ("running_mean", "running_var", "weight", "bias")]
        x = F.batch_norm(x, *bn, training=False, eps=1e-5)
        return F.relu6(x) if act else x

    def conv(name: str, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, sd[f"mbv2.{name}.weight"])

    def crp(name: str, x: torch.Tensor) -> torch.Tensor:
        top = x
        for i in range(1, 5):
            top = conv(f"{name}.0.{i}_outvar_dimred", F.max_pool2d(top, 5, stride=1, padding=2))
            x = top + x
        return x

    def up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)

    size = x.shape[-2:]
    x = conv_bn("mbv2.layer1", x, stride=2)
    feats, c_in = {}, 32
    for layer, (t, c, n, s) in enumerate(TABLE, start=2):
        for b in range(n):
            stride = s if b == 0 else 1
            p = f"mbv2.layer{layer}.{b}.output"
            y = conv_bn(f"{p}.0", x)
            y = conv_bn(f"{p}.1", y, stride=stride, groups=c_in * t)
            y = conv_bn(f"{p}.2", y, act=False)
            x = y + x if (c_in == c and stride == 1) else y
            c_in = c
        feats[layer] = x
    l3, l4, l5, l6, l7, l8 = (feats[i] for i in range(3, 9))
    l7 = F.relu6(conv("conv8", l8) + conv("conv7", l7))
    l7 = up(conv("conv_adapt4", crp("crp4", l7)), l6)
    l5 = F.relu6(conv("conv5", l5) + conv("conv6", l6) + l7)
    l5 = up(conv("conv_adapt3", crp("crp3", l5)), l4)
    l4 = F.relu6(l5 + conv("conv4", l4))
    l4 = up(conv("conv_adapt2", crp("crp2", l4)), l3)
    l3 = F.relu6(conv("conv3", l3) + l4)
    logits = F.conv2d(crp("crp1", l3), sd["mbv2.segm.weight"], sd["mbv2.segm.bias"], padding=1)
    return F.interpolate(logits, size=size, mode=mode, align_corners=False)


# --------------------------------------------------------------------------------------------------------------
# Figures


@pytest.fixture(scope="module")
def model() -> LWRefineNet:
    torch.manual_seed(0)
    return LWRefineNet(in_channels=3, num_classes=2).eval()


def test_parameter_counts(model: LWRefineNet) -> None:
    # the paper's figure is for 21 classes (PASCAL VOC): "3.3M". Only the last 3 x 3 convolution (256 -> C,
    # with bias) depends on C: 256 * 9 * C + C parameters, so 21 classes add 19 * 2305 = 43,795 to 2 classes
    assert n_params(LWRefineNet(in_channels=3, num_classes=21)) - n_params(model) == 19 * (256 * 9 + 1)
    assert round(n_params(LWRefineNet(in_channels=3, num_classes=21)) / 1e5) / 10 == 3.3
    assert n_params(model) == 3_240_770  # the reference implementation's count for 3 bands and 2 classes
    assert n_params(model.encoder) == 1_812_800
    assert n_params(model.decoder) == 1_427_970
    for crp in (model.decoder.crp_1_32, model.decoder.crp_1_16, model.decoder.crp_1_8, model.decoder.crp_1_4):
        assert n_params(crp) == 262_144
    assert n_params(LWRefineNet(num_classes=21)) == 3_284_565


@pytest.mark.slow
def test_encoder_features_and_quarter_logits_for_512(model: LWRefineNet) -> None:
    assert model.encoder.stage_channels == (32, 16, 24, 32, 64, 96, 160, 320)
    assert model.encoder.stage_strides == (2, 2, 4, 8, 16, 16, 32, 32)
    captured: list[list[torch.Tensor]] = []
    handle = model.encoder.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.inference_mode():
            logits = model.forward_quarter(torch.randn(1, 3, 512, 512))
    finally:
        handle.remove()
    assert logits.shape == (1, 2, 128, 128)
    (features,) = captured
    assert [tuple(f.shape) for f in features] == [
        (1, c, 512 // s, 512 // s) for c, s in zip(model.encoder.stage_channels, model.encoder.stage_strides)
    ]
    assert [tuple(f.shape[1:]) for f in features[2:]] == [
        (24, 128, 128),
        (32, 64, 64),
        (64, 32, 32),
        (96, 32, 32),
        (160, 16, 16),
        (320, 16, 16),
    ]


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_output_at_input_size_not_multiple_of_32(model: LWRefineNet, mode: str) -> None:
    model.upsample_mode = mode
    try:
        with torch.inference_mode():
            x = torch.randn(1, 3, 100, 76)
            assert model.forward_quarter(x).shape == (1, 2, 25, 19)
            assert model(x).shape == (1, 2, 100, 76)
    finally:
        model.upsample_mode = "bicubic"


def test_five_bands_and_odd_sizes() -> None:
    net = LWRefineNet(in_channels=5, num_classes=2).eval()
    assert isinstance(net.encoder, MobileNetV2Encoder)
    with torch.inference_mode():
        assert net(torch.randn(2, 5, 64, 64)).shape == (2, 2, 64, 64)
        assert net(torch.randn(1, 5, 33, 47)).shape == (1, 2, 33, 47)


def test_gradients_reach_every_parameter() -> None:
    net = LWRefineNet(num_classes=2, upsample_mode="bilinear").train()
    loss = F.cross_entropy(net(torch.randn(2, 3, 64, 64)), torch.randint(0, 2, (2, 64, 64)))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_bad_upsample_mode() -> None:
    with pytest.raises(UnosatError, match="upsample_mode 'nearest'"):
        LWRefineNet(upsample_mode="nearest")


def test_reference_initialisation(model: LWRefineNet) -> None:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    weights = torch.cat([m.weight.detach().flatten() for m in convs])
    assert weights.std().item() == pytest.approx(0.01, rel=0.02)
    assert abs(weights.mean().item()) < 1e-3
    assert [m for m in convs if m.bias is not None] == [model.decoder.classifier]
    assert torch.count_nonzero(model.decoder.classifier.bias) == 0
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 3 * 17
    for bn in bns:
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
        assert bn.eps == 1e-5 and bn.momentum == 0.1

    conv = nn.Conv2d(4, 4, 3, bias=True)
    init_reference_(conv)
    assert torch.count_nonzero(conv.bias) == 0


# --------------------------------------------------------------------------------------------------------------
# Loading the UNOSAT team's checkpoints


def test_key_map_covers_the_reference_layout_and_the_model(model: LWRefineNet) -> None:
    key_map = reference_key_map(model)
    layout = reference_layout()
    assert len(layout) == 339
    assert set(key_map) == set(layout)
    assert sorted(key_map.values()) == sorted(model.state_dict())
    ours = model.state_dict()
    assert all(tuple(ours[k].shape) == layout[r] for r, k in key_map.items())


@pytest.mark.parametrize("prefix", ["", "module."])
def test_load_reference_state_dict_lands_every_tensor(prefix: str) -> None:
    ref = random_reference_state_dict(seed=1)
    net = LWRefineNet().eval()
    assert load_reference_state_dict(net, {prefix + k: v for k, v in ref.items()}) is net

    enc, dec = net.encoder, net.decoder
    same = torch.equal
    assert same(enc.stem.conv.weight, ref["mbv2.layer1.0.weight"])
    assert same(enc.stem.bn.running_var, ref["mbv2.layer1.1.running_var"])
    assert same(enc.stages[1].blocks[0].depthwise.conv.weight, ref["mbv2.layer3.0.output.1.0.weight"])
    assert same(enc.stages[3].blocks[2].project.bn.bias, ref["mbv2.layer5.2.output.2.1.bias"])
    assert same(
        enc.stages[6].blocks[0].expand.bn.num_batches_tracked,
        ref["mbv2.layer8.0.output.0.1.num_batches_tracked"],
    )
    assert same(dec.lateral_320.weight, ref["mbv2.conv8.weight"])
    assert same(dec.lateral_24.weight, ref["mbv2.conv3.weight"])
    assert same(dec.crp_1_32.convs[0].weight, ref["mbv2.crp4.0.1_outvar_dimred.weight"])
    assert same(dec.crp_1_4.convs[3].weight, ref["mbv2.crp1.0.4_outvar_dimred.weight"])
    assert same(dec.adapt_1_8.weight, ref["mbv2.conv_adapt2.weight"])
    assert same(dec.classifier.bias, ref["mbv2.segm.bias"])
    ours = net.state_dict()
    assert all(same(ours[k], ref[r]) for r, k in reference_key_map(net).items())

    # The stem by hand, then the whole network against the functional reference (odd size: upsampling paths).
    x = torch.randn(1, 3, 70, 58)
    with torch.inference_mode():
        stem = F.relu6(
            F.batch_norm(
                F.conv2d(x, ref["mbv2.layer1.0.weight"], stride=2, padding=1),
                ref["mbv2.layer1.1.running_mean"],
                ref["mbv2.layer1.1.running_var"],
                ref["mbv2.layer1.1.weight"],
                ref["mbv2.layer1.1.bias"],
                training=False,
                eps=1e-5,
            )
        )
        torch.testing.assert_close(enc.stem(x), stem)
        expected = reference_forward(ref, x)
        assert expected.abs().max() > 0.1  # the random weights do not vanish the signal
        torch.testing.assert_close(net(x), expected)


@pytest.mark.slow
def test_load_from_path_with_weights_only(tmp_path) -> None:
    ref = random_reference_state_dict(seed=2)
    for i, saved in enumerate(
        [ref, {"state_dict": ref, "epoch": 3}, {"model": {"module." + k: v for k, v in ref.items()}}]
    ):
        path = tmp_path / f"checkpoint_{i}.pt"
        torch.save(saved, path)
        net = load_reference_state_dict(LWRefineNet(), path)
        assert torch.equal(net.decoder.classifier.weight, ref["mbv2.segm.weight"])


def test_missing_and_unexpected_keys_are_reported() -> None:
    ref = random_reference_state_dict()
    del ref["mbv2.conv5.weight"]
    ref["mbv2.conv9.weight"] = torch.zeros(1)
    net = LWRefineNet()
    before = net.encoder.stem.conv.weight.clone()
    with pytest.raises(UnosatError) as err:
        load_reference_state_dict(net, ref)
    message = str(err.value)
    assert "missing keys (1)" in message and "mbv2.conv5.weight" in message
    assert "unexpected keys (1)" in message and "mbv2.conv9.weight" in message
    assert torch.equal(net.encoder.stem.conv.weight, before)  # nothing loaded


def test_three_band_checkpoint_into_five_band_model() -> None:
    ref = random_reference_state_dict(in_channels=3)
    with pytest.raises(UnosatError) as err:
        load_reference_state_dict(LWRefineNet(in_channels=5), ref)
    message = str(err.value)
    assert "mbv2.layer1.0.weight" in message and "encoder.stem.conv.weight" in message
    assert "(32, 3, 3, 3)" in message and "(32, 5, 3, 3)" in message
    assert "3 input bands" in message
    assert "shape mismatches (1)" in message


def test_class_count_mismatch_is_named() -> None:
    ref = random_reference_state_dict(num_classes=21)
    with pytest.raises(UnosatError, match=r"mbv2\.segm\.weight .*\(21, 256, 3, 3\).*\(2, 256, 3, 3\)"):
        load_reference_state_dict(LWRefineNet(num_classes=2), ref)


@dataclass
class NotATensor:
    value: int = 1


def test_unreadable_checkpoints(tmp_path) -> None:
    with pytest.raises(UnosatError, match="absent.pt not found"):
        load_reference_state_dict(LWRefineNet(), tmp_path / "absent.pt")
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": NotATensor()}, path)
    with pytest.raises(UnosatError, match="weights_only"):
        load_reference_state_dict(LWRefineNet(), path)
    with pytest.raises(UnosatError, match="not tensors: mbv2.layer1.0.weight"):
        load_reference_state_dict(LWRefineNet(), {"mbv2.layer1.0.weight": [1.0]})


# --------------------------------------------------------------------------------------------------------------
# Output stride 1: the 1/2 and 1/1 refinement levels

# The tensors an output-stride-1 model adds to the original layout (the 1/2 and 1/1 levels), written out.
NEW_KEYS_STRIDE_1 = sorted(
    [
        "decoder.adapt_1_4.weight",
        "decoder.lateral_16.weight",
        *(f"decoder.crp_1_2.convs.{i}.weight" for i in range(4)),
        "decoder.adapt_1_2.weight",
        *(f"decoder.input_branch.{j}.conv.weight" for j in range(2)),
        *(f"decoder.input_branch.{j}.bn.{t}" for j in range(2) for t in BN_TENSORS),
        *(f"decoder.crp_1_1.convs.{i}.weight" for i in range(4)),
        "decoder.classifier_1_1.weight",
        "decoder.classifier_1_1.bias",
    ]
)


@pytest.fixture(scope="module")
def model_s1() -> LWRefineNet:
    torch.manual_seed(0)
    return LWRefineNet(in_channels=3, num_classes=2, output_stride=1).eval()


def test_stride_1_parameter_count_and_new_keys(model_s1: LWRefineNet) -> None:
    c2, c1 = 64, 32
    quarter_classifier = 2 * 256 * 9 + 2
    added = (
        256 * c2  # adapt_1_4
        + 16 * c2  # lateral_16 (MobileNetV2's first stage: 16 channels at 1/2)
        + 4 * c2 * c2  # crp_1_2
        + c2 * c1  # adapt_1_2
        + (3 * c1 * 9 + 2 * c1)
        + (c1 * c1 * 9 + 2 * c1)  # input_branch: two 3x3 conv + BN
        + 4 * c1 * c1  # crp_1_1
        + c1 * 2 * 9
        + 2  # classifier_1_1
    )
    assert n_params(model_s1) == 3_240_770 - quarter_classifier + added == 3_286_882
    assert new_full_resolution_keys(model_s1) == NEW_KEYS_STRIDE_1
    assert new_full_resolution_keys(LWRefineNet(output_stride=4)) == []
    # every original tensor but the 1/4 classifier is shared, with the same shape
    original = LWRefineNet(output_stride=4).state_dict()
    ours = model_s1.state_dict()
    assert sorted(set(original) - set(ours)) == ["decoder.classifier.bias", "decoder.classifier.weight"]
    assert all(ours[k].shape == v.shape for k, v in original.items() if k in ours)
    assert model_s1.size_divisor == 32


@pytest.mark.parametrize("size", [(64, 64), (33, 47), (100, 76), (7, 9)])
def test_stride_1_logits_at_input_resolution(model_s1: LWRefineNet, size: tuple[int, int]) -> None:
    with torch.inference_mode():
        assert model_s1(torch.randn(2, 3, *size)).shape == (2, 2, *size)
    with pytest.raises(ValueError, match="output stride 4"):
        model_s1.forward_quarter(torch.randn(1, 3, 32, 32))


def test_stride_1_gradients_reach_every_parameter() -> None:
    net = LWRefineNet(output_stride=1).train()
    F.cross_entropy(net(torch.randn(2, 3, 64, 64)), torch.randint(0, 2, (2, 64, 64))).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_output_stride_and_fine_channels() -> None:
    with pytest.raises(UnosatError, match="output_stride"):
        LWRefineNet(output_stride=2)
    with pytest.raises(UnosatError, match="fine_channels"):
        LWRefineNet(output_stride=1, fine_channels=[64])


def test_config_default_is_stride_1_and_old_specs_rebuild_at_stride_4() -> None:
    from omegaconf import OmegaConf

    from unosat.config import compose_config
    from unosat.models.registry import build_network

    cfg = compose_config("train", ["model=lwrefinenet"])
    assert cfg.model.output_stride == 1 and cfg.model._target_ == "unosat.models.LWRefineNet"
    assert OmegaConf.to_container(cfg.model.fine_channels) == [64, 32]
    # a checkpoint saved before output_stride existed stores no such argument: it rebuilds as trained
    old = build_network(
        {"name": "lwrefinenet", "args": {"in_channels": 3, "num_classes": 2, "upsample_mode": "bicubic"}}
    )
    assert old.output_stride == 4 and hasattr(old.decoder, "classifier")


def test_reference_checkpoint_loads_into_the_shared_layers_at_stride_1() -> None:
    ref = random_reference_state_dict(seed=3)
    torch.manual_seed(5)
    net = LWRefineNet(output_stride=1).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert load_reference_state_dict(net, {"module." + k: v for k, v in ref.items()}) is net

    key_map = reference_key_map(net)
    assert len(key_map) == 337 and set(layout_key for layout_key in reference_layout()) - set(key_map) == {
        "mbv2.segm.weight",
        "mbv2.segm.bias",
    }
    ours = net.state_dict()
    assert all(torch.equal(ours[k], ref[r]) for r, k in key_map.items())  # every shared tensor loaded
    assert all(torch.equal(ours[k], before[k]) for k in NEW_KEYS_STRIDE_1)  # the new ones untouched
    assert set(key_map.values()) | set(NEW_KEYS_STRIDE_1) == set(ours)

    # The shared layers compute what the reference computes: the 1/4-level features (after crp_1_4) equal
    # the original-layout model's, loaded from the same checkpoint.
    net4 = load_reference_state_dict(LWRefineNet(output_stride=4).eval(), ref)
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        m.decoder.crp_1_4.register_forward_hook(lambda _m, _i, out, s=stride: seen.__setitem__(s, out))
        for m, stride in ((net, 1), (net4, 4))
    ]
    x = torch.randn(1, 3, 70, 58)
    with torch.inference_mode():
        out1 = net(x)
        torch.testing.assert_close(net4(x), reference_forward(ref, x))
    for h in hooks:
        h.remove()
    assert out1.shape == (1, 2, 70, 58)
    assert seen[1].abs().max() > 0.1
    torch.testing.assert_close(seen[1], seen[4])


def test_stride_1_still_refuses_a_band_mismatch() -> None:
    ref = random_reference_state_dict(in_channels=3)
    with pytest.raises(UnosatError, match=r"output_stride=1.*\n.*shape mismatches \(1\)"):
        load_reference_state_dict(LWRefineNet(in_channels=5, output_stride=1), ref)


@pytest.mark.slow  # trains the network for 60-150 steps
def test_stride_1_overfits_one_tile(tiny_spec) -> None:
    from model_fitting import building_tile, overfit

    x, y = building_tile(tiny_spec, size=48)
    torch.manual_seed(0)
    assert overfit(LWRefineNet(output_stride=1), x, y, steps=150, lr=3e-3) > 0.95
