"""Per-pixel logistic regression on local statistics: the classical settlement-mapping baseline.

:class:`PixelLogisticRegression` is a network predict.py can run: features from
:func:`unosat.baselines.local_statistics.local_statistics` (bands, local means and standard deviations at a
few window sizes) of the normalised input, standardised with the training pixels' mean and std, then a linear
function whose sign decides building. It has no learnable parameters in the torch sense: its coefficients are
buffers (saved in the checkpoint's state dict), fitted by :func:`fit_pixel_classifier` with scikit-learn.

Fitting: a uniform random sample of valid pixels of the training tiles (``samples`` in all, the same number per
tile), scikit-learn ``LogisticRegression`` (L2, ``C``), then the decision threshold is moved to the value that
maximises building IoU on those pixels (as the VV-threshold baseline chooses its threshold: with a few
percent of building pixels, the 0.5-probability cut would call almost nothing building). The logit of the
network is the decision value minus that threshold, so ``p >= 0.5`` is the chosen cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from unosat.baselines.local_statistics import check_windows, feature_count, local_statistics
from unosat.classes import CLASS_NAMES, IGNORE_INDEX, TARGET
from unosat.errors import UnosatError

#: window sizes (pixels, odd) of the local statistics when none are given: 30, 70 and 150 m at 10 m
DEFAULT_WINDOWS = (3, 7, 15)


class PixelLogisticRegression(nn.Module):
    """Logistic regression on per-pixel local statistics; see the module docstring.

    Args:
        in_channels: bands of the (normalised) input.
        windows: odd window sizes in pixels; None: :data:`DEFAULT_WINDOWS`.
        num_classes: must be 2.

    Buffers (all float32): ``feature_mean`` and ``feature_std`` (F,), ``weight`` (F,), ``bias`` (1,), with
    ``F = in_channels * (1 + 2 * len(windows))``. As built: mean 0, std 1, weights drawn as ``nn.Linear``'s
    (uniform in +-1/sqrt(F), torch's generator), bias 0.
    """

    task = "segmentation"

    def __init__(
        self, in_channels: int, windows: Sequence[int] | None = None, num_classes: int = len(CLASS_NAMES)
    ) -> None:
        super().__init__()
        if int(num_classes) != len(CLASS_NAMES):
            raise UnosatError(f"pixel classifier: num_classes must be {len(CLASS_NAMES)}, got {num_classes}")
        self.in_channels = int(in_channels)
        self.windows = check_windows(DEFAULT_WINDOWS if windows is None else windows)
        n = feature_count(self.in_channels, self.windows)
        self.register_buffer("feature_mean", torch.zeros(n))
        self.register_buffer("feature_std", torch.ones(n))
        # unfitted, it is like an untrained linear layer (nn.Linear's default range), not a constant
        bound = 1.0 / math.sqrt(n)
        self.register_buffer("weight", torch.empty(n).uniform_(-bound, bound))
        self.register_buffer("bias", torch.zeros(1))

    def spec(self) -> dict:
        """The registry spec a checkpoint stores for this network (its coefficients are in the state dict)."""
        return {
            "name": "pixel_logistic",
            "args": {"in_channels": self.in_channels, "windows": list(self.windows)},
        }

    @property
    def num_features(self) -> int:
        return feature_count(self.in_channels, self.windows)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, F, H, W) unstandardised features."""
        if x.shape[1] != self.in_channels:
            raise UnosatError(f"pixel classifier: expected {self.in_channels} bands, got {x.shape[1]}")
        return local_statistics(x, self.windows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) normalised -> (N, 2, H, W) logits ``[0, decision]``, float32."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            f = self.features(x.float())
            shape = (1, -1, 1, 1)
            z = (
                ((f - self.feature_mean.view(shape)) / self.feature_std.view(shape)) * self.weight.view(shape)
            ).sum(dim=1, keepdim=True) + self.bias
            return torch.cat([torch.zeros_like(z), z], dim=1).contiguous()

    def set_coefficients(self, mean: np.ndarray, std: np.ndarray, weight: np.ndarray, bias: float) -> None:
        """Load fitted coefficients (arrays of length F)."""
        for name, value in (("feature_mean", mean), ("feature_std", std), ("weight", weight)):
            value = np.asarray(value, dtype=np.float32).reshape(-1)
            if value.shape != (self.num_features,):
                raise UnosatError(
                    f"pixel classifier: {name} has {value.size} values, expected {self.num_features}"
                )
            getattr(self, name).copy_(torch.from_numpy(value))
        self.bias.fill_(float(bias))


@dataclass(frozen=True)
class PixelClassifierFit:
    """What a fit chose and how it did on its own training pixels."""

    samples: int
    building_fraction: float
    train_iou: float
    decision_threshold: float
    converged: bool

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "building_fraction": self.building_fraction,
            "train_iou": self.train_iou,
            "decision_threshold": self.decision_threshold,
            "converged": self.converged,
        }


def sample_pixels(
    dataset, net: PixelLogisticRegression, samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(X (n, F) float32, y (n,) int64)``: the features of up to ``ceil(samples / len(dataset))`` random
    valid pixels of every tile of ``dataset`` (a :class:`~unosat.data.tile_dataset.TileDataset` without
    augmentation: items with ``image`` (C, H, W) normalised and ``mask`` (H, W))."""
    if len(dataset) == 0:
        raise UnosatError("pixel classifier: no training tile to sample pixels from")
    per_tile = max(1, math.ceil(samples / len(dataset)))
    xs, ys = [], []
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            mask = item["mask"].numpy()
            valid = np.flatnonzero(mask.reshape(-1) != IGNORE_INDEX)
            if valid.size == 0:
                continue
            take = rng.choice(valid, size=min(per_tile, valid.size), replace=False)
            f = net.features(item["image"][None])[0].reshape(net.num_features, -1).numpy()
            xs.append(f[:, take].T)
            ys.append(mask.reshape(-1)[take].astype(np.int64))
    if not xs:
        raise UnosatError("pixel classifier: the training tiles hold no valid pixel")
    return np.concatenate(xs), (np.concatenate(ys) == TARGET).astype(np.int64)


def best_iou_threshold(decision: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(threshold, IoU)``: the cut ``decision >= threshold`` with the best building IoU on ``y``."""
    order = np.argsort(-decision, kind="stable")
    d, t = decision[order], y[order]
    tp = np.cumsum(t)
    predicted = np.arange(1, len(d) + 1)
    iou = tp / (predicted + t.sum() - tp)
    last_of_tie = np.r_[d[1:] != d[:-1], True]  # a cut can only fall between distinct values
    iou = np.where(last_of_tie, iou, -1.0)
    k = int(np.argmax(iou))
    return float(d[k]), float(iou[k])


def fit_pixel_classifier(
    dataset,
    in_channels: int,
    windows: Sequence[int] | None = None,
    samples: int = 200_000,
    seed: int = 0,
    regularization_c: float = 1.0,
    max_iter: int = 1000,
) -> tuple[PixelLogisticRegression, PixelClassifierFit]:
    """Fit a :class:`PixelLogisticRegression` on ``samples`` random valid pixels of ``dataset`` (see
    :func:`sample_pixels`); ``seed`` draws the pixels and seeds scikit-learn. Needs scikit-learn
    (``pip install -e ".[dev]"``)."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise UnosatError(
            'the pixel-classifier baseline needs scikit-learn: pip install -e ".[dev]"'
        ) from None
    import warnings

    net = PixelLogisticRegression(in_channels, windows)
    x, y = sample_pixels(dataset, net, int(samples), np.random.default_rng(seed))
    if y.min() == y.max():
        raise UnosatError(
            f"pixel classifier: the {len(y)} sampled training pixels are all "
            f"{CLASS_NAMES[int(y[0])]}; nothing to learn"
        )
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    std[~(std > 0)] = 1.0
    xs = (x - mean) / std
    model = LogisticRegression(C=float(regularization_c), max_iter=int(max_iter), random_state=int(seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(xs, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    weight, intercept = model.coef_[0], float(model.intercept_[0])
    cut, iou = best_iou_threshold(xs @ weight + intercept, y)
    net.set_coefficients(mean, std, weight, intercept - cut)
    return net, PixelClassifierFit(len(y), float(y.mean()), iou, cut, converged)
