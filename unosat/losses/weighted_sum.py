"""A weighted sum of named segmentation losses, each term reported: ``loss = sum_k w_k * L_k``.

Lets a config combine any losses of :mod:`unosat.losses` (cross-entropy + Lovasz, focal + soft Jaccard...)
without a class per combination::

    _target_: unosat.losses.WeightedSumLoss
    terms:
      ce: {weight: 1.0, loss: {_target_: unosat.losses.SmoothedCrossEntropy}}
      lovasz: {weight: 0.5, loss: {_target_: unosat.losses.LovaszSoftmaxLoss}}
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from unosat.errors import UnosatError


class WeightedSumLoss(nn.Module):
    """``forward`` returns ``{"loss": total, <term>: value, ...}`` like every unosat loss.

    Args:
        terms: name -> ``{"weight": float, "loss": module}`` (a module ``loss(logits, target) -> scalar``).
            A term with weight 0 is skipped (not computed).
    """

    def __init__(self, terms: Mapping[str, Mapping]):
        super().__init__()
        if not terms:
            raise UnosatError("loss.terms is empty: give at least one {weight, loss} term")
        self.weights: dict[str, float] = {}
        self.terms = nn.ModuleDict()
        for name, term in terms.items():
            if "loss" not in term or not isinstance(term["loss"], nn.Module):
                raise UnosatError(f"loss.terms.{name} needs a loss module (loss: {{_target_: ...}})")
            weight = float(term.get("weight", 1.0))
            if weight < 0:
                raise UnosatError(f"loss.terms.{name}.weight must be >= 0, got {weight}")
            if weight > 0:
                self.weights[name] = weight
                self.terms[name] = term["loss"]
        if not self.weights:
            raise UnosatError("loss.terms: every weight is 0")

    def forward(self, logits: torch.Tensor | tuple, target: torch.Tensor, **_) -> dict[str, torch.Tensor]:
        if isinstance(logits, tuple | list):  # multi-output models: the first output is the segmentation
            logits = logits[0]
        values = {name: loss(logits, target) for name, loss in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in values.items())
        return {"loss": total, **values}
