"""The GSCNN loss (unosat.losses.gscnn): its edge ground truth and each of its terms (segmentation, class-balanced
edge, attention, dual task) against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unosat.classes import IGNORE_INDEX
from unosat.errors import UnosatError
from unosat.losses import GSCNNLoss, edge_targets
from unosat.losses.gscnn import balanced_edge_bce, boundary_magnitude, dual_task_loss

X = IGNORE_INDEX  # short for the tables below


def bce_pos(logit: float) -> float:  # -log sigmoid(l)
    return math.log1p(math.exp(-logit))


def bce_neg(logit: float) -> float:  # -log(1 - sigmoid(l))
    return math.log1p(math.exp(logit))


# -------------------------------------------------------------------------------------------- edge targets


def test_edge_targets_on_a_known_mask():
    mask = torch.tensor(
        [
            [
                [0, 0, 0, 0, 0, 0],
                [0, 1, 1, 0, 0, 0],
                [0, 1, 1, 0, X, 0],
                [0, 0, 0, 0, 0, 0],
                [0, 0, 0, 0, 0, 0],
            ]
        ]
    )
    expected = torch.tensor(
        [
            [
                [1, 1, 1, 1, 0, 0],
                [1, 1, 1, 1, 0, 0],
                [1, 1, 1, 1, X, 0],
                [1, 1, 1, 1, 0, 0],
                [0, 0, 0, 0, 0, 0],
            ]
        ]
    )
    batch = torch.cat([mask, torch.full_like(mask, X), torch.zeros_like(mask)])
    edges = edge_targets(batch, radius=1)
    assert edges.dtype == torch.int64
    assert torch.equal(edges[0], expected[0])
    assert (edges[1] == X).all() and (edges[2] == 0).all()
    # an ignored pixel between the classes makes no edge by itself; radius 2 reaches two pixels
    assert torch.equal(edge_targets(torch.tensor([[[0, 0, X, 1, 1]]]), 1), torch.tensor([[[0, 0, X, 0, 0]]]))
    assert torch.equal(
        edge_targets(torch.tensor([[[0, 0, 0, 1, 1, 1]]]), 2), torch.tensor([[[0, 1, 1, 1, 1, 0]]])
    )
    with pytest.raises(UnosatError, match="edge_radius must be a whole number of pixels >= 1"):
        edge_targets(mask, 0)


# ----------------------------------------------------------------------------------------------------- loss


def test_each_loss_term_against_a_hand_computed_value():
    # one row of 6 pixels: target 0 0 0 0 1 ignore -> edges 0 0 0 1 1 ignore (5 valid: 2 edge, 3 not)
    target = torch.tensor([[[0, 0, 0, 0, 1, X]]])
    seg = torch.tensor([[[[2.0, 0.0, 1.0, -1.0, 0.5, 3.0]], [[0.0, 1.0, -1.0, 1.0, 2.0, 0.0]]]])
    edge = torch.tensor(
        [[[[2.0, -1.0, 0.5, 3.0, -2.0, 4.0]]]]
    )  # sigmoid > 0.8 at pixels 0, 3 (and 5, ignored)
    weights = (1.0, 3.0)
    loss = GSCNNLoss(class_weights=weights, dual_weight=0.0)
    terms = loss((seg, edge), target)
    assert set(terms) == {"loss", "seg", "edge", "attention", "dual"}

    def ce(i):  # -log softmax of the true class at pixel i
        s0, s1 = seg[0, 0, 0, i].item(), seg[0, 1, 0, i].item()
        y = target[0, 0, i].item()
        return math.log(math.exp(s0) + math.exp(s1)) - (s0, s1)[y]

    w = [weights[target[0, 0, i].item()] for i in range(5)]
    assert terms["seg"].item() == pytest.approx(sum(w[i] * ce(i) for i in range(5)) / sum(w), rel=1e-5)
    assert terms["attention"].item() == pytest.approx((w[0] * ce(0) + w[3] * ce(3)) / (w[0] + w[3]), rel=1e-5)
    # class balanced: edge pixels weighted by the non-edge fraction 3/5, the others by 2/5; mean over 5 pixels
    e = edge[0, 0, 0].tolist()
    hand = (
        3 / 5 * (bce_pos(e[3]) + bce_pos(e[4])) + 2 / 5 * (bce_neg(e[0]) + bce_neg(e[1]) + bce_neg(e[2]))
    ) / 5
    assert terms["edge"].item() == pytest.approx(hand, rel=1e-5)
    assert balanced_edge_bce(edge, edge_targets(target)).item() == pytest.approx(hand, rel=1e-5)
    total = terms["seg"] + 20 * terms["edge"] + terms["attention"]
    assert terms["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    # no pixel above the threshold: the attention term is 0
    assert GSCNNLoss()((seg, torch.full_like(edge, -5.0)), target)["attention"].item() == 0.0


def test_dual_term_is_zero_for_the_ground_truth_and_the_l1_of_boundaries_otherwise():
    torch.manual_seed(5)
    target = torch.zeros(2, 16, 16, dtype=torch.int64)
    target[:, 4:9, 3:12] = 1
    target[1, 12:] = X
    confident = 50.0 * (
        2.0 * F.one_hot(torch.where(target == X, 0, target), 2).permute(0, 3, 1, 2).float() - 1
    )
    loss = GSCNNLoss()
    assert loss((confident, torch.zeros(2, 1, 16, 16)), target)["dual"].item() == pytest.approx(0.0, abs=1e-6)
    # one row, classes 0 1 1 against a prediction 0 0 1: per class the boundary maps are (1, 0, 0) (true) and
    # (0, 1, 0) (predicted), so L1 is 1 at pixels 0 and 1 of both classes. The paper's normalisation: the mean
    # over the 2 predicted-boundary elements (pixel 1 x 2 classes) is 1, over the 2 true ones (pixel 0) 1:
    # 0.5 * 1 + 0.5 * 1 = 1 (the mean over all 6 elements would be 4 / 6)
    target = torch.tensor([[[0, 1, 1]]])
    pred = 50.0 * torch.tensor([[[[1.0, 1.0, -1.0]], [[-1.0, -1.0, 1.0]]]])
    assert loss((pred, torch.zeros(1, 1, 1, 3)), target)["dual"].item() == pytest.approx(1.0, rel=1e-5)
    # the last pixel ignored: only pixel 0's forward difference involves valid pixels only; there the
    # prediction has no boundary (that half is 0) and the truth has one in both classes with L1 1: 0.5
    target = torch.tensor([[[0, 1, X]]])
    assert loss((pred, torch.zeros(1, 1, 1, 3)), target)["dual"].item() == pytest.approx(0.5, rel=1e-5)
    # a boundary 1 px long in a 32 x 32 image: the paper's term does not shrink with the image size
    big = torch.zeros(1, 32, 32, dtype=torch.int64)
    big[0, :, 16:] = 1
    shifted = torch.zeros(1, 32, 32, dtype=torch.int64)
    shifted[0, :, 17:] = 1
    shifted_logits = 50.0 * (2.0 * F.one_hot(shifted, 2).permute(0, 3, 1, 2).float() - 1)
    # predicted boundary at column 16, true at 15: L1 1 on both, over 32 rows x 2 classes each -> 1
    assert loss((shifted_logits, torch.zeros(1, 1, 32, 32)), big)["dual"].item() == pytest.approx(
        1.0, rel=1e-5
    )
    # a real gradient: a step of 1 is 1, a diagonal corner sqrt(2), and it flows back to the probabilities
    step = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]], requires_grad=True)
    mag = boundary_magnitude(step)
    torch.testing.assert_close(mag.detach(), torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]]), atol=1e-5, rtol=0)
    soft = torch.tensor([[[[0.3, 0.9]], [[0.7, 0.1]]]], requires_grad=True)
    dual_task_loss(soft, torch.tensor([[[0, 0]]])).backward()
    assert soft.grad.abs().sum() > 0


def test_loss_needs_the_edge_output():
    with pytest.raises(UnosatError, match="loss=gscnn needs a model that returns"):
        GSCNNLoss()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int64))
