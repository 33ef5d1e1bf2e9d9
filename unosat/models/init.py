"""The reference weight initialisation of Light-Weight RefineNet (Nekrasov et al., BMVC 2018).

The UNOSAT team trained from this initialisation (no ImageNet weights, since SAR bands are not RGB):

- every ``Conv2d``: weights drawn from N(0, ``CONV_WEIGHT_STD`` = 0.01), biases (where there are any) zero;
- every ``BatchNorm2d``: weight 1, bias 0. Its running statistics are left as they are (fresh modules hold
  mean 0, variance 1), as the reference did; ``eps`` and ``momentum`` are constructor arguments, see
  :data:`unosat.models.mobilenetv2.BN_EPS` and :data:`unosat.models.mobilenetv2.BN_MOMENTUM`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

CONV_WEIGHT_STD = 0.01


@torch.no_grad()
def init_reference_(module: nn.Module) -> None:
    """Initialise ``module`` and all its submodules in place as the reference implementation did."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=CONV_WEIGHT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def init_he_(modules: Iterable[nn.Module]) -> None:
    """He (Kaiming) normal initialisation, fan-out, ReLU gain, for the networks written from scratch here (U-Net,
    ResNet, FPN's decoder): each ``Conv2d`` of ``modules`` gets He-normal weights and a zero bias (where it has
    one); each ``BatchNorm2d`` weight 1, bias 0."""
    for m in modules:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
