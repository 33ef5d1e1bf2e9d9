"""GSCNN's dual-task loss (Takikawa et al., ICCV 2019) on ``(segmentation_logits, edge_logits)``.

With ``S`` the segmentation logits (N, C, H, W), ``E`` the edge logits (N, 1, H, W), ``y`` the mask (N, H, W)
(``ignore_index`` where unknown) and ``e`` the edge ground truth derived from ``y``
(:func:`unosat.losses.edges.edge_targets`, ``edge_radius`` pixels around class changes; ignore where ``y`` is):

- ``seg``: the segmentation cross-entropy of :class:`~unosat.losses.cross_entropy.SmoothedCrossEntropy`
  (class weights, label smoothing that the weights do not skew, ignore index);
- ``edge``: class-balanced binary cross-entropy of ``E`` against ``e`` over the pixels where ``e`` is valid:
  ``sum_i w_i BCE(E_i, e_i) / n`` with ``w = n_neg / n`` on edge pixels and ``n_pos / n`` on the others
  (``n_pos``, ``n_neg``, ``n``: edge, non-edge and valid pixels of the whole batch). BCE is taken on the
  logits (``binary_cross_entropy_with_logits``: the sigmoid is applied once, inside);
- ``attention``: ``seg``'s cross-entropy restricted to the pixels where ``sigmoid(E) > attention_threshold``
  (averaged over those; 0 where there is none). The selection itself carries no gradient;
- ``dual``: the dual-task regulariser. A Gumbel-softmax sample of ``S`` at temperature ``gumbel_tau``
  (a differentiable near-one-hot segmentation) and the one-hot ``y`` are turned into boundary maps
  (:func:`boundary_magnitude`: per class, the magnitude of the forward-difference spatial gradient, 1 across a
  straight class change), compared by L1 and normalised as the paper's official code does: half the mean over
  the elements (pixel x class) on a predicted boundary, half the mean over those on a true boundary
  (:func:`dual_task_loss`).

``loss = seg_weight * seg + edge_weight * edge + attention_weight * attention + dual_weight * dual``
(paper defaults 1, 20, 1, 1). Nothing depends on the number of classes or the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unosat.classes import IGNORE_INDEX
from unosat.errors import UnosatError
from unosat.losses.cross_entropy import SmoothedCrossEntropy
from unosat.losses.edges import edge_targets

GRADIENT_EPS = 1e-12  # inside the square root of the gradient magnitude: keeps its derivative finite at 0
BOUNDARY_THRESHOLD = 1e-8  # a boundary element: gradient magnitude at least this (the official code's ``th``)
DUAL_EPS = 1e-10  # added to the boundary element counts (the official code's ``eps``)


def balanced_edge_bce(
    edge_logits: torch.Tensor, edges: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Class-balanced BCE (see the module docstring). edge_logits (N, 1, H, W), edges (N, H, W) in {0, 1, ignore}."""
    logits = edge_logits[:, 0].float()
    valid = edges != ignore_index
    positive = (edges == 1) & valid
    n_pos = positive.sum().to(logits.dtype)
    n = valid.sum().to(logits.dtype)
    n_neg = n - n_pos
    weight = torch.where(positive, n_neg, n_pos) * valid / n.clamp_min(1)
    bce = F.binary_cross_entropy_with_logits(logits, positive.to(logits.dtype), reduction="none")
    return (weight * bce).sum() / n.clamp_min(1)


def boundary_magnitude(y: torch.Tensor) -> torch.Tensor:
    """Per-channel spatial gradient magnitude of (N, C, H, W) maps, (N, C, H, W).

    ``gx[i, j] = y[i, j + 1] - y[i, j]`` and ``gy[i, j] = y[i + 1, j] - y[i, j]`` (0 on the last column / row),
    magnitude ``sqrt(gx^2 + gy^2 + eps) - sqrt(eps)``: 0 where flat, 1 across a straight step of 1.
    """
    gx = F.pad(y[..., :, 1:] - y[..., :, :-1], (0, 1, 0, 0))
    gy = F.pad(y[..., 1:, :] - y[..., :-1, :], (0, 0, 0, 1))
    return torch.sqrt(gx * gx + gy * gy + GRADIENT_EPS) - GRADIENT_EPS**0.5


def gradient_valid(valid: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> float mask of the pixels whose forward differences only involve valid pixels."""
    v = valid.to(torch.float32)
    right = F.pad(v[..., :, 1:], (0, 1, 0, 0), value=1.0)
    down = F.pad(v[..., 1:, :], (0, 0, 0, 1), value=1.0)
    return v * right * down


def dual_task_loss(
    probabilities: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """The dual-task regulariser with the paper's normalisation (its official ``DualTaskLoss``).

    With ``g`` the boundary maps of the soft segmentation (N, C, H, W) and ``g_hat`` those of the one-hot
    target, and ``L = |g - g_hat|`` per element (pixel x class), the mean of ``L`` over the elements on a
    *predicted* boundary (``g >= BOUNDARY_THRESHOLD``) and its mean over the elements on a *true* boundary
    (``g_hat >= BOUNDARY_THRESHOLD``), half weight each::

        0.5 * sum(L [g >= th]) / |g >= th| + 0.5 * sum(L [g_hat >= th]) / |g_hat >= th|

    Only elements whose forward differences involve valid pixels count (the official code zeroes the ignored
    pixels' logits instead). Averaging over all pixels, as unosat did before, made the term ~19x weaker near
    convergence, where boundaries are a few percent of the pixels. A half with no element is 0.
    """
    valid = target != ignore_index
    num_classes = probabilities.shape[1]
    onehot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2).to(probabilities.dtype)
    weight = gradient_valid(valid).to(probabilities.dtype).unsqueeze(1)
    g, g_hat = boundary_magnitude(probabilities), boundary_magnitude(onehot)
    diff = (g - g_hat).abs() * weight
    predicted = (g.detach() >= BOUNDARY_THRESHOLD).to(diff.dtype) * weight
    true = (g_hat >= BOUNDARY_THRESHOLD).to(diff.dtype) * weight
    return 0.5 * (diff * predicted).sum() / (predicted.sum() + DUAL_EPS) + 0.5 * (diff * true).sum() / (
        true.sum() + DUAL_EPS
    )


class GSCNNLoss(nn.Module):
    """The dual-task loss, see the module docstring.

    Args:
        class_weights, label_smoothing, ignore_index: of the segmentation cross-entropy (``seg`` and
            ``attention``), as in :class:`~unosat.losses.cross_entropy.SmoothedCrossEntropy`.
        seg_weight, edge_weight, attention_weight, dual_weight: weights of the four terms.
        attention_threshold: edge probability above which a pixel counts in ``attention``.
        gumbel_tau: temperature of the Gumbel-softmax in ``dual``.
        edge_radius: pixels around a class change that are edge ground truth.

    ``forward(output, target)``: ``output`` = ``(segmentation logits (N, C, H, W), edge logits (N, 1, H, W))``,
    target (N, H, W) int64 -> ``{"loss", "seg", "edge", "attention", "dual"}`` (scalars).
    """

    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
        seg_weight: float = 1.0,
        edge_weight: float = 20.0,
        attention_weight: float = 1.0,
        dual_weight: float = 1.0,
        attention_threshold: float = 0.8,
        gumbel_tau: float = 0.5,
        edge_radius: int = 1,
    ):
        super().__init__()
        self.ce = SmoothedCrossEntropy(class_weights, label_smoothing, ignore_index)
        self.ignore_index = int(ignore_index)
        self.weights = {
            "seg": float(seg_weight),
            "edge": float(edge_weight),
            "attention": float(attention_weight),
            "dual": float(dual_weight),
        }
        if any(w < 0 for w in self.weights.values()):
            raise UnosatError(f"loss term weights must be non-negative, got {self.weights}")
        if not 0.0 <= attention_threshold < 1.0:
            raise UnosatError(f"loss.attention_threshold must be in [0, 1), got {attention_threshold}")
        if not gumbel_tau > 0:
            raise UnosatError(f"loss.gumbel_tau must be positive, got {gumbel_tau}")
        self.attention_threshold = float(attention_threshold)
        self.gumbel_tau = float(gumbel_tau)
        edge_targets(torch.zeros(1, 1, 1, dtype=torch.int64), edge_radius)  # checks the radius now
        self.edge_radius = int(edge_radius)

    def forward(
        self, output: tuple[torch.Tensor, torch.Tensor] | torch.Tensor, target: torch.Tensor, **_
    ) -> dict[str, torch.Tensor]:
        if not isinstance(output, tuple | list) or len(output) < 2:
            raise UnosatError(
                "loss=gscnn needs a model that returns (segmentation logits, edge logits), such as "
                "model=gscnn; this model returns a single tensor"
            )
        seg_logits, edge_logits = output[0], output[1]
        edges = edge_targets(target, self.edge_radius, self.ignore_index)
        near_edge = torch.sigmoid(edge_logits.detach()[:, 0].float()) > self.attention_threshold
        sample = F.gumbel_softmax(seg_logits.float(), tau=self.gumbel_tau, hard=False, dim=1)
        terms = {
            "seg": self.ce(seg_logits, target),
            "edge": balanced_edge_bce(edge_logits, edges, self.ignore_index),
            "attention": self.ce(seg_logits, torch.where(near_edge, target, self.ignore_index)),
            "dual": dual_task_loss(sample, target, self.ignore_index),
        }
        total = sum(self.weights[k] * v for k, v in terms.items())
        return {"loss": total, **terms}
