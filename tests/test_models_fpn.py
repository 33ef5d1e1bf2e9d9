"""FPN on ResNet-50: parameter count derived from its table, full-resolution logits for odd sizes, gradients,
a local pretrained backbone, the registry, and overfitting one synthetic SAR tile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_fitting import building_tile, overfit

from unosat.errors import UnosatError
from unosat.models import FPN, resnet50
from unosat.models.registry import NETWORKS, build_network


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_bn_relu(c_in: int, c_out: int, k: int) -> int:
    return k * k * c_in * c_out + 2 * c_out


@pytest.fixture(scope="module")
def fpn() -> FPN:
    torch.manual_seed(0)
    return FPN(in_channels=3, num_classes=2).eval()


def test_parameter_count_derived_from_the_table(fpn: FPN) -> None:
    p, s, f2, f1 = 128, 64, 32, 16
    c = (256, 512, 1024, 2048)
    decoder = (
        sum(ci * p + p for ci in c)  # lateral 1x1 with bias
        + 4 * (9 * p * p + p)  # smooth 3x3 with bias
        + 4 * conv_bn_relu(p, s, 3)  # segment
        + s * f2
        + 64 * f2  # adapt_1_4, lateral_1_2 (the stem's 64 channels)
        + conv_bn_relu(f2, f2, 3)  # refine_1_2
        + f2 * f1  # adapt_1_2
        + conv_bn_relu(3, f1, 3)
        + conv_bn_relu(f1, f1, 3)  # input_branch
        + conv_bn_relu(f1, f1, 3)  # refine_1_1
        + f1 * 2
        + 2  # classifier_1_1
    )
    assert n_params(fpn.backbone) == n_params(resnet50(3)) == 23_508_032
    assert n_params(fpn) - n_params(fpn.backbone) == decoder == 1_396_850
    assert n_params(fpn) == 24_904_882
    assert fpn.size_divisor == 32 and fpn.backbone.stage_strides == (2, 4, 8, 16, 32)


@pytest.mark.parametrize("size", [(64, 64), (37, 51), (5, 3)])
def test_logits_at_input_resolution(fpn: FPN, size: tuple[int, int]) -> None:
    with torch.inference_mode():
        assert fpn(torch.randn(1, 3, *size)).shape == (1, 2, *size)


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(1)
    net = FPN(in_channels=2, pyramid_channels=16, segmentation_channels=8, fine_channels=[8, 4]).train()
    F.cross_entropy(net(torch.randn(2, 2, 64, 64)), torch.randint(0, 2, (2, 64, 64))).backward()
    # the ResNet starts every block's last BatchNorm at 0 (identity blocks), so the convs inside get no gradient
    # on the first step by design; everything else does
    for name, prm in net.named_parameters():
        if not name.startswith("backbone.layer"):
            assert prm.grad is not None and prm.grad.abs().sum() > 0, name


@pytest.mark.slow
def test_pretrained_backbone_and_bad_settings(tmp_path) -> None:
    source = resnet50(3)
    with torch.no_grad():
        source.conv1.weight.normal_()
    torch.save(source.state_dict(), tmp_path / "r50.pt")
    net = FPN(3, 2, pretrained=str(tmp_path / "r50.pt"))
    assert torch.equal(net.backbone.conv1.weight, source.conv1.weight)
    with pytest.raises(UnosatError, match="no such file"):
        FPN(3, 2, pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(UnosatError, match="fine_channels"):
        FPN(3, 2, fine_channels=[8])


def test_registered_and_rebuilt_from_a_spec() -> None:
    assert NETWORKS["fpn"] is FPN
    net = build_network(
        {
            "name": "fpn",
            "args": {"in_channels": 5, "num_classes": 2, "pretrained": "/x.pt", "fine_channels": [8, 8]},
        }
    )
    assert (
        isinstance(net, FPN) and net.in_channels == 5
    )  # pretrained (a local file) is not read from a checkpoint


@pytest.mark.slow  # trains the network for 60-150 steps
def test_overfits_one_tile(tiny_spec) -> None:
    x, y = building_tile(tiny_spec, size=64)
    torch.manual_seed(0)
    assert overfit(FPN(3, 2), x, y, steps=100, lr=3e-3) > 0.95
