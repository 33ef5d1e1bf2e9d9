"""The networks as they are exported: VH and VV in, class probabilities out, the band recipe inside.

A checkpoint's network reads a normalised band stack (its recipe, e.g. VH, VV, (VH+VV)/2 in dB, standardised
with the training tiles' mean and std). A GIS user has VH and VV GeoTIFFs. :class:`PolarisationInput` folds the
whole recipe into the graph, so the exported model takes the two polarisations as they are delivered:

1. input ``(N, 2, H, W)`` float32, channel 0 VH, channel 1 VV, in ``input_units`` (``linear`` power, as
   Sentinel-1 sigma0 GRD products are delivered, or ``db``);
2. a pixel is nodata where either polarisation is NaN, infinite or equals one of ``nodata_values``
   (compared in the input's units, as :func:`unosat.bands.valid_pixels` does);
3. dB input is brought to linear power (``10^(x/10)``);
4. the recipe's bands are computed (:data:`TORCH_BAND_FORMULAS`, the torch twins of
   :data:`unosat.bands.BAND_FORMULAS`), in dB (``10 log10(max(b, db_floor))``) for a dB recipe;
5. each band is standardised, ``(b - mean) * (1 / std)``, and nodata or non-finite values get the
   normalisation's ``fill`` (0), exactly as :meth:`unosat.bands.Normalization.apply` does for prediction.

:class:`ExportedSegmentation` then runs the network and returns the softmax over classes ``(N, C, H, W)``
(only the segmentation output of networks that return several, e.g. GSCNN's edge logits are dropped). Two
classes take the equivalent form :func:`class_probabilities` writes, and a U-Net's decoder concatenations are
split (:mod:`unosat.export.concat_split`): the same values, in a graph onnxruntime runs faster;
:class:`ExportedTileClassifier` returns ``(N, 1)``, the probability that the window holds buildings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from unosat.bands import BandRecipe, Normalization
from unosat.errors import UnosatError
from unosat.export.concat_split import split_decoder_concats
from unosat.models.outputs import segmentation_logits
from unosat.raw_input import DEFAULT_NODATA, UNITS

#: torch versions of :data:`unosat.bands.BAND_FORMULAS` (VH, VV in linear power -> one band); same names
TORCH_BAND_FORMULAS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "vh": lambda vh, vv: vh,
    "vv": lambda vh, vv: vv,
    "mean": lambda vh, vv: (vh + vv) / 2,
    "diff": lambda vh, vv: vv - vh,
    "norm": lambda vh, vv: torch.sqrt(vh * vh + vv * vv),
    "product": lambda vh, vv: vv * vh,
    "ratio": lambda vh, vv: torch.where(vh != 0, vv / vh, torch.full_like(vv, float("nan"))),
}

#: channel order of the exported models' input
INPUT_BANDS: tuple[str, ...] = ("vh", "vv")


def as_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32; a float32 tensor as it is, so that the traced graph holds no Cast that copies it
    unchanged (``Tensor.float()`` is traced as one)."""
    return t if t.dtype == torch.float32 else t.float()


class PolarisationInput(nn.Module):
    """``(N, 2, H, W)`` VH, VV -> the network's normalised ``(N, recipe.count, H, W)`` input (module docstring).

    Args:
        recipe: the checkpoint's band recipe.
        normalization: the checkpoint's normalisation (one mean/std per recipe band, in the recipe's units).
        nodata_values: input values that mark nodata (in ``input_units``), besides NaN and infinity.
        input_units: ``linear`` or ``db``: the units of the VH/VV the model is given.
    """

    def __init__(
        self,
        recipe: BandRecipe,
        normalization: Normalization,
        nodata_values: Sequence[float] = DEFAULT_NODATA["linear"],
        input_units: str = "linear",
    ) -> None:
        super().__init__()
        if input_units not in UNITS:
            raise UnosatError(f"export input_units must be one of {UNITS}, got '{input_units}'")
        missing = [b for b in recipe.bands if b not in TORCH_BAND_FORMULAS]
        if missing:
            raise UnosatError(f"band recipe '{recipe.name}': bands {missing} have no exportable formula")
        if normalization.count != recipe.count:
            raise UnosatError(
                f"normalisation has {normalization.count} bands but recipe '{recipe.name}' has {recipe.count}"
            )
        self.recipe = recipe
        self.input_units = input_units
        self.nodata_values = tuple(float(v) for v in nodata_values)
        self.fill = float(normalization.fill)
        self.register_buffer("mean", torch.tensor(normalization.mean, dtype=torch.float32).view(1, -1, 1, 1))
        std = torch.tensor(normalization.std, dtype=torch.float32)
        self.register_buffer("inv_std", (1.0 / std).view(1, -1, 1, 1))

    def valid(self, vh: torch.Tensor, vv: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W)`` bool: both polarisations finite and not a nodata value."""
        ok = torch.isfinite(vh) & torch.isfinite(vv)
        for value in self.nodata_values:
            ok = ok & (vh != value) & (vv != value)
        return ok

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vh, vv = as_float32(x[:, 0:1]), as_float32(x[:, 1:2])
        valid = self.valid(vh, vv)
        if self.input_units == "db":
            vh, vv = torch.pow(10.0, vh / 10.0), torch.pow(10.0, vv / 10.0)
        bands = torch.cat([TORCH_BAND_FORMULAS[b](vh, vv) for b in self.recipe.bands], dim=1)
        if self.recipe.units == "db":
            bands = 10.0 * torch.log10(torch.clamp_min(bands, self.recipe.db_floor))
        normed = (bands - self.mean) * self.inv_std
        return torch.where(valid & torch.isfinite(normed), normed, torch.full_like(normed, self.fill))


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class axis of ``(N, C, H, W)`` logits.

    For two classes it is written as ``sigmoid(l_1 - l_0)`` and ``sigmoid(l_0 - l_1)`` (the same values: softmax
    of two logits is the logistic function of their difference). onnxruntime's ``Softmax`` over axis 1 of an NCHW
    tensor is a strided reduction: 5 % of a U-Net run (2 x 512² windows, 1 thread on the 2-core VM), against
    elementwise ops a fraction of that.
    """
    if logits.shape[1] != 2:
        return torch.softmax(logits, dim=1)
    difference = logits[:, 1:2] - logits[:, 0:1]
    return torch.sigmoid(torch.cat([-difference, difference], dim=1))


class ExportedSegmentation(nn.Module):
    """VH, VV ``(N, 2, H, W)`` -> class probabilities ``(N, num_classes, H, W)`` (softmax of the segmentation
    logits, :func:`class_probabilities`)."""

    def __init__(
        self,
        net: nn.Module,
        prepare: PolarisationInput,
        probabilities: Callable[[torch.Tensor], torch.Tensor] = class_probabilities,
    ) -> None:
        super().__init__()
        self.prepare = prepare
        self.net = net
        self.probabilities = probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probabilities(as_float32(segmentation_logits(self.net(self.prepare(x)))))


class ExportedTileClassifier(nn.Module):
    """VH, VV ``(N, 2, H, W)`` -> ``(N, 1)`` probability that the window holds building pixels."""

    def __init__(self, net: nn.Module, prepare: PolarisationInput) -> None:
        super().__init__()
        self.prepare = prepare
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(as_float32(self.net(self.prepare(x))))


def exported_module(net: nn.Module, prepare: PolarisationInput, rewrite: bool = True) -> nn.Module:
    """The exported form of ``net`` (by its ``task``: segmentation or tile classification), in eval mode.

    ``rewrite``: a segmentation network's U-Net decoder concatenations are split into summed convolutions
    (:func:`~unosat.export.concat_split.split_decoder_concats`, on a copy) and two-class probabilities take the
    sigmoid form (:func:`class_probabilities`): the same values. False: ``net`` as it is and ``torch.softmax``,
    the reference the export check compares the graph with.
    """
    task = getattr(net, "task", "segmentation")
    if task == "segmentation":
        if not rewrite:
            return ExportedSegmentation(net, prepare, lambda logits: torch.softmax(logits, dim=1)).eval()
        return ExportedSegmentation(split_decoder_concats(net.eval()), prepare).eval()
    if task == "tile_classification":
        return ExportedTileClassifier(net, prepare).eval()
    raise UnosatError(f"cannot export a network of task '{task}'")
