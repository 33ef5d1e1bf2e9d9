"""GSCNN at full resolution, and ASPP taps that all learn at the training crop (issue 11, "wrong results" 1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from model_fitting import building_tile, overfit

from unosat.config import compose_config
from unosat.errors import UnosatError
from unosat.losses import GSCNNLoss
from unosat.models import ASPP, GSCNN

#: small heads on the real MobileNetV2 backbone
SMALL = dict(aspp_channels=16, decoder_channels=16, low_level_channels=8, shape_channels=(8, 4, 4, 4))


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_resolution_head_parameters_derived_by_hand() -> None:
    c_in, classes, dec, fine = 3, 2, 128, 32
    quarter = dec * classes + classes  # the 1x1 classifier of output stride 4
    head = (
        dec * fine  # adapt_1_4, no bias
        + (9 * c_in * fine + 2 * fine)
        + (9 * fine * fine + 2 * fine)  # input_branch: two 3x3 conv + BN
        + 9 * (fine + 1) * fine
        + 2 * fine  # refine_1_1 over [fine, fused edge map]
        + fine * classes
        + classes  # classifier_1_1
    )
    kw = dict(aspp_channels=128, decoder_channels=dec, shape_channels=(16, 8, 4, 4), fine_channels=fine)
    s4, s1 = GSCNN(c_in, classes, output_stride=4, **kw), GSCNN(c_in, classes, output_stride=1, **kw)
    assert n_params(s1) - n_params(s4) == head - quarter
    assert not hasattr(s1, "classifier") and not hasattr(s4, "classifier_1_1")
    cfg = compose_config("train", ["model=gscnn", "loss=gscnn"]).model
    assert cfg.output_stride == 1 and cfg.fine_channels == fine and list(cfg.aspp_rates) == [1, 2, 3]
    assert n_params(instantiate({**cfg, "in_channels": 3})) == n_params(s1)


@pytest.mark.parametrize("backbone,divisor", [("mobilenetv2", 32), ("resnet50", 8)])
def test_full_resolution_outputs_for_odd_sizes(backbone: str, divisor: int) -> None:
    torch.manual_seed(0)
    net = GSCNN(3, 2, backbone=backbone, output_stride=1, **SMALL).eval()
    assert net.size_divisor == divisor
    for size in [(64, 64), (37, 51)]:
        with torch.inference_mode():
            seg, edge = net(torch.randn(1, 3, *size))
        assert seg.shape == (1, 2, *size) and edge.shape == (1, 1, *size)


def test_the_full_resolution_head_sees_single_pixels() -> None:
    """At output stride 1 a logit depends on its own input pixel through the 3x3 input branch: changing one
    pixel changes the logits most within 2 px of it. At output stride 4 the logits are bilinear from 1/4."""
    torch.manual_seed(1)
    net = GSCNN(3, 2, output_stride=1, aspp_rates=(1,), **SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        base = net(x)[0]
        x2 = x.clone()
        x2[0, :, 30, 41] += 5.0
        diff = (net(x2)[0] - base).abs().sum(dim=1)[0]
    assert divmod(int(diff.argmax()), 64)[0] in range(28, 33) and divmod(int(diff.argmax()), 64)[1] in range(
        39, 44
    )


# ---------------------------------------------------------------------------------------------- ASPP taps


def tap_gradients(conv: torch.nn.Conv2d) -> torch.Tensor:
    """(3, 3): summed absolute gradient of each tap of a 3x3 convolution's weight."""
    return conv.weight.grad.abs().sum(dim=(0, 1))


def test_a_rate_at_the_feature_side_trains_only_the_centre_tap() -> None:
    """The defect: on 6 x 6 features (a 192 px crop at stride 32) a rate-6 tap reads only zero padding."""
    aspp = ASPP(8, 4, rates=(2, 6)).train()
    aspp(torch.randn(2, 8, 6, 6)).sum().backward()
    near, far = (tap_gradients(branch.conv) for branch in aspp.atrous)
    assert (near > 0).all()
    off_centre = torch.ones(3, 3, dtype=torch.bool)
    off_centre[1, 1] = False
    assert far[1, 1] > 0 and torch.all(far[off_centre] == 0)
    assert aspp.dead_rates(6, 6) == [6] and aspp.dead_rates(7, 9) == [] and aspp.dead_rates(16, 5) == [6]


def test_every_aspp_tap_gets_a_gradient_at_the_training_crop() -> None:
    """model=gscnn at the default training crop: every tap of every dilated branch learns."""
    cfg = compose_config("train", ["model=gscnn", "loss=gscnn"])
    crop = cfg.data.augment[0]
    assert crop._target_ == "albumentations.RandomCrop"
    torch.manual_seed(0)
    net = GSCNN(3, 2, aspp_rates=tuple(cfg.model.aspp_rates), output_stride=1, **SMALL).train()
    target = torch.zeros(2, crop.height, crop.width, dtype=torch.int64)
    target[:, 40:60, 90:100] = 1
    GSCNNLoss()(net(torch.randn(2, 3, crop.height, crop.width)), target)["loss"].backward()
    assert len(net.aspp.atrous) == 3
    for rate, branch in zip(net.aspp.rates, net.aspp.atrous):
        assert (tap_gradients(branch.conv) > 0).all(), f"rate {rate}: taps without gradient"


def test_a_combination_with_dead_taps_is_refused_when_training() -> None:
    net = GSCNN(3, 2, aspp_rates=(6, 12, 18), output_stride=1, **SMALL).train()
    with pytest.raises(
        UnosatError,
        match=r"aspp_rates \[6, 12, 18\]: a 192 x 192 px training crop gives 6 x 6 px "
        r"features .*dilation\(s\) \[6, 12, 18\]",
    ):
        net(torch.randn(1, 3, 192, 192))
    with pytest.raises(UnosatError, match=r"dilation\(s\) \[12, 18\]"):
        net(torch.randn(1, 3, 320, 416))  # 10 x 13 features: rate 6 trains, 12 and 18 do not
    net.eval()  # prediction on any window is fine: nothing is trained there
    with torch.inference_mode():
        assert net(torch.randn(1, 3, 96, 96))[0].shape == (1, 2, 96, 96)


def test_resnet50_config_rates_train_at_the_default_crop() -> None:
    cfg = compose_config("train", ["model=gscnn_resnet50"])
    side = cfg.data.augment[0].height // 8
    assert max(cfg.model.aspp_rates) < side
    aspp = ASPP(2048, 256, rates=tuple(cfg.model.aspp_rates))
    assert aspp.dead_rates(side, side) == []


@pytest.mark.slow  # trains the network for 60-150 steps
def test_overfits_one_tile(tiny_spec) -> None:
    x, y = building_tile(tiny_spec, size=64)  # 64 px: 2 x 2 features at the ASPP, so rate 1
    torch.manual_seed(0)
    net = GSCNN(
        3,
        2,
        output_stride=1,
        aspp_rates=(1,),
        aspp_channels=64,
        decoder_channels=64,
        shape_channels=(16, 8, 4, 4),
    )
    assert overfit(net, x, y, steps=100, lr=1e-2) > 0.95


def test_loss_runs_on_full_resolution_outputs() -> None:
    net = GSCNN(3, 2, output_stride=1, aspp_rates=(1,), **SMALL).train()
    seg, edge = net(torch.randn(2, 3, 64, 64))
    loss = F.cross_entropy(seg, torch.randint(0, 2, (2, 64, 64))) + edge.mean()
    loss.backward()
    for name, p in net.named_parameters():
        if name.startswith(("input_branch", "refine_1_1", "classifier_1_1", "adapt_1_4")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
