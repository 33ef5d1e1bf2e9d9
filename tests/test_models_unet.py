"""U-Net: parameter counts derived from the architecture table, full-resolution logits for any size, a
gradient on every parameter, the registry, and overfitting one synthetic SAR tile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_fitting import building_tile, overfit

from unosat.errors import UnosatError
from unosat.models import UNet
from unosat.models.registry import NETWORKS, build_network, network_spec


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def double_conv(c_in: int, c_out: int) -> int:
    """Two 3x3 convs without bias, each followed by a BatchNorm (weight + bias)."""
    return 9 * c_in * c_out + 9 * c_out * c_out + 2 * 2 * c_out


@pytest.mark.parametrize(
    ("widths", "total"), [((16, 32, 64, 128), 488_018), ((16, 32, 64, 128, 256), 1_964_114)]
)
def test_parameter_counts_from_the_table(widths: tuple[int, ...], total: int) -> None:
    encoder = sum(double_conv(3 if k == 0 else widths[k - 1], w) for k, w in enumerate(widths))
    decoder = sum(double_conv(widths[k + 1] + widths[k], widths[k]) for k in range(len(widths) - 1))
    classifier = 16 * 2 + 2
    net = UNet(in_channels=3, num_classes=2, widths=widths)
    assert (n_params(net.encoder), n_params(net.decoder), n_params(net.classifier)) == (
        encoder,
        decoder,
        classifier,
    )
    assert encoder + decoder + classifier == total == n_params(net)  # the figures in the docstring and config


def test_the_default_is_the_four_level_network_of_the_config() -> None:
    assert UNet().widths == (16, 32, 64, 128) and UNet().size_divisor == 8


@pytest.mark.parametrize("size", [(64, 64), (33, 47), (17, 5), (1, 1)])
def test_logits_at_input_resolution_for_any_size(size: tuple[int, int]) -> None:
    net = UNet(in_channels=5, num_classes=2).eval()
    with torch.inference_mode():
        assert net(torch.randn(2, 5, *size)).shape == (2, 2, *size)


def test_size_divisor_and_level_sizes() -> None:
    net = UNet(widths=(8, 16, 32))
    assert net.size_divisor == 4
    sizes = []
    hooks = [
        block.register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[-2:])))
        for block in net.encoder
    ]
    net.eval()(torch.randn(1, 3, 20, 36))
    for h in hooks:
        h.remove()
    assert sizes == [(20, 36), (10, 18), (5, 9)]


def test_every_parameter_gets_a_gradient() -> None:
    net = UNet(widths=(8, 16, 32)).train()
    F.cross_entropy(net(torch.randn(2, 3, 24, 24)), torch.randint(0, 2, (2, 24, 24))).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_widths_are_refused() -> None:
    with pytest.raises(UnosatError, match="widths"):
        UNet(widths=[32])
    with pytest.raises(UnosatError, match="widths"):
        UNet(widths=[16, 0])


def test_registered_and_rebuilt_from_a_spec() -> None:
    assert NETWORKS["unet"] is UNet
    spec = network_spec(
        {"_target_": "unosat.models.UNet", "in_channels": 2, "num_classes": 2, "widths": [8, 16]}
    )
    assert spec == {"name": "unet", "args": {"in_channels": 2, "num_classes": 2, "widths": [8, 16]}}
    net = build_network(spec)
    assert isinstance(net, UNet) and net.widths == (8, 16) and net.in_channels == 2


@pytest.mark.slow  # trains the network for 60-150 steps
def test_overfits_one_tile(tiny_spec) -> None:
    x, y = building_tile(tiny_spec, size=48)
    assert 0.02 < y.float().mean() < 0.5  # the tile holds buildings, and background
    torch.manual_seed(0)
    assert overfit(UNet(), x, y, steps=60, lr=5e-3) > 0.95


@pytest.mark.slow
def test_trains_through_train_py_and_its_checkpoint_rebuilds(tiny_prepared_db, tmp_path) -> None:
    from pathlib import Path

    from conftest import summary, train_cfg

    from unosat.checkpoint import build_model, load_checkpoint
    from unosat.training.run import run

    run(train_cfg(tiny_prepared_db, tmp_path, "model=unet", "model.widths=[8,16,32]", "baseline=false"))
    out = summary(tmp_path / "logs" / "train" / "runs" / "run")
    ckpt = load_checkpoint(Path(out["best_checkpoint"]))
    assert ckpt["unosat"]["model"] == {
        "name": "unet",
        "args": {"in_channels": 3, "num_classes": 2, "widths": [8, 16, 32]},
    }
    net = build_model(ckpt).eval()
    assert isinstance(net, UNet) and net.widths == (8, 16, 32)
    with torch.inference_mode():
        assert net(torch.zeros(1, 3, 37, 41)).shape == (1, 2, 37, 41)
