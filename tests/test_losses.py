"""Losses against hand-computed values; label smoothing not skewed by class weights."""

import math

import pytest
import torch
import torch.nn.functional as F

from unosat.errors import UnosatError
from unosat.losses import CrossEntropyJaccardLoss, SmoothedCrossEntropy, SoftJaccardLoss


def logits_for(p_building: float, shape=(1, 4, 4)) -> torch.Tensor:
    """Logits whose softmax gives p(building) = p_building everywhere."""
    z = math.log(p_building / (1 - p_building))
    out = torch.zeros(shape[0], 2, *shape[1:])
    out[:, 1] = z
    return out


def test_plain_ce_equals_torch():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 5, 5)
    target = torch.randint(0, 2, (2, 5, 5))
    target[0, 0, :3] = 255
    ours = SmoothedCrossEntropy(class_weights=[0.1, 2.0])(logits, target)
    ref = F.cross_entropy(logits, target, weight=torch.tensor([0.1, 2.0]), ignore_index=255)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_smoothing_without_weights_matches_torch_and_minimum_is_0_1985():
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 5, 5)
    target = torch.randint(0, 2, (2, 5, 5))
    ours = SmoothedCrossEntropy(label_smoothing=0.1)(logits, target)
    ref = F.cross_entropy(logits, target, label_smoothing=0.1)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    # optimum: p(true) = 1 - eps/2 = 0.95 (set d/dp of (1 - eps) (-log p) + eps/2 (-log p - log(1 - p)) to 0);
    # the minimum is 0.9 (-log 0.95) + 0.05 (-log 0.95 - log 0.05) = 0.1985
    minimum = 0.9 * -math.log(0.95) + 0.05 * (-math.log(0.95) - math.log(0.05))
    assert minimum == pytest.approx(0.1985, abs=5e-5)
    target = torch.ones(1, 4, 4, dtype=torch.long)
    loss = SmoothedCrossEntropy(label_smoothing=0.1)(logits_for(0.95), target)
    assert loss.item() == pytest.approx(minimum, rel=1e-5)


def optimum_p_background(loss_fn) -> float:
    """p(background) minimising the loss on an all-background target: a ternary search over the building logit
    (the background logit fixed at 0), the loss being convex in it."""
    target = torch.zeros(1, 2, 2, dtype=torch.long)

    def loss_at(z: float) -> float:
        return float(loss_fn(torch.tensor([0.0, z]).reshape(1, 2, 1, 1).expand(1, 2, 2, 2), target))

    lo, hi = -20.0, 20.0
    for _ in range(60):  # the bracket shrinks to 40 * (2/3)^60, about 1e-9
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        lo, hi = (lo, b) if loss_at(a) < loss_at(b) else (a, hi)
    return float(torch.softmax(torch.tensor([0.0, (lo + hi) / 2]), 0)[0])


def test_torch_builtin_smoothing_with_weights_makes_background_building_ours_does_not():
    w, eps = torch.tensor([0.1, 2.0]), 0.1
    builtin = optimum_p_background(lambda x, y: F.cross_entropy(x, y, weight=w, label_smoothing=eps))
    assert builtin == pytest.approx(0.487, abs=2e-3)  # < 0.5: background pixels predicted building
    ours = optimum_p_background(SmoothedCrossEntropy(class_weights=[0.1, 2.0], label_smoothing=eps))
    assert ours == pytest.approx(0.95, abs=2e-3)


def test_weighted_smoothed_value_by_hand():
    # two valid pixels (background, building) and one ignored; p(building) = 0.8 everywhere
    logits = logits_for(0.8, (1, 1, 3))
    target = torch.tensor([[[0, 1, 255]]])
    w, eps = (0.5, 2.0), 0.2
    nll_bg, nll_bd = -math.log(0.2), -math.log(0.8)
    smooth = (-math.log(0.2) - math.log(0.8)) / 2
    per_bg = (1 - eps) * nll_bg + eps * smooth
    per_bd = (1 - eps) * nll_bd + eps * smooth
    expected = (w[0] * per_bg + w[1] * per_bd) / (w[0] + w[1])
    got = SmoothedCrossEntropy(class_weights=w, label_smoothing=eps)(logits, target)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_all_ignored_gives_zero_with_gradient():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    loss = SmoothedCrossEntropy()(logits, torch.full((1, 3, 3), 255))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_label_smoothing_outside_range_is_refused():
    for eps in (-0.1, 1.0, 1.5):
        with pytest.raises(UnosatError, match="label_smoothing"):
            SmoothedCrossEntropy(label_smoothing=eps)


def test_soft_jaccard_by_hand_over_valid_pixels_only():
    logits = logits_for(0.8, (1, 1, 3))
    target = torch.tensor([[[0, 1, 255]]])
    # building: P = 0.8 + 0.8, Y = 1, P.Y = 0.8; background: P = 0.2 + 0.2, Y = 1, P.Y = 0.2
    iou_bd = 0.8 / (1.6 + 1 - 0.8)
    iou_bg = 0.2 / (0.4 + 1 - 0.2)
    loss = SoftJaccardLoss(smooth=0.0)(logits, target)
    assert loss.item() == pytest.approx(1 - (iou_bd + iou_bg) / 2, rel=1e-6)
    assert SoftJaccardLoss(classes=[1], smooth=0.0)(logits, target).item() == pytest.approx(
        1 - iou_bd, rel=1e-6
    )


def test_combined_loss_reports_terms_and_sums_them():
    torch.manual_seed(2)
    logits = torch.randn(2, 2, 4, 4)
    target = torch.randint(0, 2, (2, 4, 4))
    out = CrossEntropyJaccardLoss(jaccard_weight=2.0)(logits, target)
    assert set(out) == {"loss", "ce", "jaccard"}
    assert out["loss"].item() == pytest.approx(out["ce"].item() + 2 * out["jaccard"].item(), rel=1e-6)
    # a multi-output model's tuple: the first item is the segmentation
    assert CrossEntropyJaccardLoss()((logits, None), target)["loss"].item() == pytest.approx(out["ce"].item())


def test_pooled_jaccard_by_hand():
    logits = logits_for(0.8, (1, 1, 3))
    target = torch.tensor([[[0, 1, 255]]])
    # sums over both classes: I = 0.8 + 0.2, U = (1.6 + 1 - 0.8) + (0.4 + 1 - 0.2) = 1.8 + 1.2
    loss = SoftJaccardLoss(smooth=0.0, reduction="pooled")(logits, target)
    assert loss.item() == pytest.approx(1 - 1.0 / 3.0, rel=1e-6)
    assert SoftJaccardLoss(classes=[1], smooth=0.0, reduction="pooled")(
        logits, target
    ).item() == pytest.approx(1 - 0.8 / 1.8, rel=1e-6)


def original_softmax_jaccard(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The UNOSAT team's SoftmaxJaccardWithLogitsLoss (reduction 'mean'), written out from its definition:
    per image and class, I = sum p y and U = sum (p + y - p y + 1e-10); then 1 - mean(I) / mean(U)."""
    p = torch.softmax(logits, dim=1)
    y = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(p.dtype)
    b, c = p.shape[:2]
    inter = (p * y).reshape(b, c, -1).sum(-1)
    union = (p + y - p * y + 1e-10).reshape(b, c, -1).sum(-1)
    return 1.0 - inter.mean() / union.mean()


def test_pooled_jaccard_is_the_originals_and_differs_from_per_class_with_rare_buildings():
    torch.manual_seed(4)
    target = (torch.rand(4, 32, 32) < 0.03).long()  # about 3 % buildings, no ignored pixel
    logits = torch.randn(4, 2, 32, 32) + 2.0 * F.one_hot(target, 2).permute(0, 3, 1, 2)
    pooled = SoftJaccardLoss(smooth=0.0, reduction="pooled")(logits, target)
    assert pooled.item() == pytest.approx(original_softmax_jaccard(logits, target).item(), rel=1e-5)
    # per class, the building IoU (small) weighs as much as the background's (large): a larger loss ...
    per_class = SoftJaccardLoss(smooth=0.0, reduction="per_class")(logits, target)
    assert per_class.item() > 1.5 * pooled.item()
    # ... and larger gradients on the building pixels' logits
    grads = {}
    for reduction in ("pooled", "per_class"):
        x = logits.clone().requires_grad_(True)
        SoftJaccardLoss(smooth=0.0, reduction=reduction)(x, target).backward()
        grads[reduction] = x.grad[:, 1][target == 1].abs().sum().item()
    assert grads["per_class"] > 1.5 * grads["pooled"]  # 2.0x here


def test_jaccard_reduction_reaches_the_loss_and_is_checked():
    torch.manual_seed(5)
    logits, target = torch.randn(2, 2, 8, 8), (torch.rand(2, 8, 8) < 0.1).long()
    out = CrossEntropyJaccardLoss(jaccard_weight=1.0, jaccard_smooth=0.0, jaccard_reduction="pooled")(
        logits, target
    )
    assert out["jaccard"].item() == pytest.approx(original_softmax_jaccard(logits, target).item(), rel=1e-5)
    with pytest.raises(UnosatError, match="jaccard_reduction must be one of"):
        CrossEntropyJaccardLoss(jaccard_weight=1.0, jaccard_reduction="mean")


# ------------------------------------------------------------------------------------------ focal, Lovasz


def test_focal_with_gamma_0_is_weighted_cross_entropy_and_matches_a_hand_value():
    from unosat.losses import FocalLoss

    torch.manual_seed(3)
    logits = torch.randn(2, 2, 6, 6)
    target = torch.randint(0, 2, (2, 6, 6))
    target[1, :2] = 255
    ref = F.cross_entropy(logits, target, weight=torch.tensor([0.3, 1.7]), ignore_index=255)
    assert FocalLoss(gamma=0.0, class_weights=[0.3, 1.7])(logits, target).item() == pytest.approx(
        ref.item(), rel=1e-5
    )
    # one building pixel at p = 0.9 and one ignored pixel: -(1 - 0.9)^2 log 0.9
    target = torch.tensor([[[1, 255]]])
    logits = logits_for(0.9, shape=(1, 1, 2))
    assert FocalLoss(gamma=2.0)(logits, target).item() == pytest.approx(0.01 * -math.log(0.9), rel=1e-5)
    assert FocalLoss()(logits, torch.full((1, 1, 2), 255)).item() == 0.0
    with pytest.raises(UnosatError, match="gamma"):
        FocalLoss(gamma=-1)


def lovasz_by_definition(errors: list[float], foreground: list[bool]) -> float:
    """The Lovasz extension of the Jaccard loss from its set function, one prefix at a time (no cumsum)."""
    order = sorted(range(len(errors)), key=lambda i: -errors[i])

    def jaccard_loss(mispredicted: set[int]) -> float:
        fg = {i for i, f in enumerate(foreground) if f}
        union = fg | mispredicted
        return 0.0 if not union else 1.0 - len(fg - mispredicted) / len(union)

    total, previous = 0.0, 0.0
    for k in range(1, len(order) + 1):
        current = jaccard_loss(set(order[:k]))
        total += errors[order[k - 1]] * (current - previous)
        previous = current
    return total


def test_lovasz_softmax_equals_its_definition_and_is_one_minus_iou_on_hard_predictions():
    from unosat.losses import LovaszSoftmaxLoss

    torch.manual_seed(4)
    logits = torch.randn(1, 2, 5, 5)
    target = torch.randint(0, 2, (1, 5, 5))
    target[0, 0, 0] = 255
    p = torch.softmax(logits, 1)[0].permute(1, 2, 0).reshape(-1, 2)
    labels = target.reshape(-1)
    keep = labels != 255
    expected = []
    for c in (0, 1):
        fg = (labels[keep] == c).tolist()
        errors = ((labels[keep] == c).float() - p[keep, c]).abs().tolist()
        expected.append(lovasz_by_definition(errors, fg))
    assert LovaszSoftmaxLoss()(logits, target).item() == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert LovaszSoftmaxLoss(classes=[1])(logits, target).item() == pytest.approx(expected[1], rel=1e-5)
    # hard (saturated) predictions: the extension is the set function, 1 - IoU per class
    pred = torch.randint(0, 2, (1, 5, 5))
    hard = torch.stack([(pred == 0).float(), (pred == 1).float()], dim=1) * 60.0
    iou = [
        ((pred == c) & (target == c)).sum().item()
        / ((pred == c) & (target != 255) | (target == c)).sum().item()
        for c in (0, 1)
    ]
    assert LovaszSoftmaxLoss()(hard, target).item() == pytest.approx(1 - sum(iou) / 2, abs=1e-5)


def test_lovasz_ignores_nodata_and_absent_classes():
    from unosat.losses import LovaszSoftmaxLoss

    logits = torch.randn(1, 2, 4, 4)
    only_background = torch.zeros(1, 4, 4, dtype=torch.long)
    loss = LovaszSoftmaxLoss()(logits, only_background)
    assert loss.item() == pytest.approx(LovaszSoftmaxLoss(classes=[0])(logits, only_background).item())
    assert LovaszSoftmaxLoss()(logits, torch.full((1, 4, 4), 255)).item() == 0.0


@pytest.mark.parametrize("name, terms", [("focal", {"focal"}), ("ce_lovasz", {"ce", "lovasz"})])
def test_loss_configs_compose_into_a_weighted_sum_of_reported_terms(name, terms):
    from hydra.utils import instantiate

    from unosat.config import compose_config

    loss = instantiate(compose_config("train", [f"loss={name}"]).loss)
    torch.manual_seed(5)
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    target = torch.randint(0, 2, (2, 8, 8))
    out = loss((logits, torch.zeros(2, 1, 8, 8)), target)  # multi-output models: the first is segmentation
    assert set(out) == {"loss"} | terms
    assert out["loss"].item() == pytest.approx(sum(loss.weights[t] * out[t].item() for t in terms), rel=1e-6)
    out["loss"].backward()
    assert logits.grad.abs().sum() > 0
