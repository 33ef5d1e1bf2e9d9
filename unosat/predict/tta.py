"""Test-time augmentation: predict on transformed copies of a batch and average the probabilities.

The transforms are elements of the dihedral group D4 of the square (the window is square), acting on the
last two axes ``(rows, cols)`` of ``(N, C, H, W)`` tensors. Each prediction is mapped back by the inverse
transform before averaging, so the averaged probability map is aligned with the input. Sets:

========  =====  ==================================================================
name      size   transforms
========  =====  ==================================================================
``none``  1      identity
``flips`` 4      identity, left-right flip, up-down flip, both (= rotation by 180°)
``rot90`` 4      rotations by 0, 90, 180, 270° (the original team's TTA)
``d4``    8      the four rotations, each with and without a left-right flip
========  =====  ==================================================================

Each set is a group, so the averaged prediction of a model is exactly equivariant under it (up to float
rounding), and a model that is already equivariant predicts the same with and without TTA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from unosat.errors import UnosatError

ROW, COL = -2, -1


@dataclass(frozen=True)
class D4Transform:
    """``x -> rot90^k(fliplr^flip(x))`` on the last two axes; :meth:`invert` undoes it."""

    k: int = 0
    flip: bool = False

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip:
            x = torch.flip(x, dims=(COL,))
        return torch.rot90(x, self.k, dims=(ROW, COL)) if self.k % 4 else x

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        if self.k % 4:
            y = torch.rot90(y, -self.k, dims=(ROW, COL))
        return torch.flip(y, dims=(COL,)) if self.flip else y

    @property
    def name(self) -> str:
        return f"rot{90 * self.k}" + ("+fliplr" if self.flip else "")


IDENTITY = D4Transform()
TTA_SETS: dict[str, tuple[D4Transform, ...]] = {
    "none": (IDENTITY,),
    # left-right flip; up-down flip = rot180 after a left-right flip; both flips = rot180
    "flips": (IDENTITY, D4Transform(0, True), D4Transform(2, True), D4Transform(2, False)),
    "rot90": tuple(D4Transform(k, False) for k in range(4)),
    "d4": tuple(D4Transform(k, f) for f in (False, True) for k in range(4)),
}


def tta_transforms(name: str) -> tuple[D4Transform, ...]:
    """The transforms of TTA set ``name`` (see the module docstring)."""
    if name not in TTA_SETS:
        raise UnosatError(f"tta must be one of {sorted(TTA_SETS)}, got '{name}'")
    return TTA_SETS[name]


def tta_average(
    predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, transforms: tuple[D4Transform, ...]
) -> torch.Tensor:
    """Mean over ``transforms`` of ``invert(predict(apply(x)))``.

    ``predict`` maps ``(N, C, H, W)`` to ``(N, ..., H, W)`` maps (probabilities); ``H == W`` unless the set
    holds only the identity and flips.
    """
    total = None
    for t in transforms:
        y = t.invert(predict(t.apply(x)))
        total = y if total is None else total + y
    return total / len(transforms)
