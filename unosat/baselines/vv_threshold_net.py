"""The global VV-threshold baseline as a network: building where VV (dB) >= a threshold.

Input: the normalised band stack (N, C, H, W) a checkpoint's recipe describes. The VV band is brought back to
dB exactly as GSCNN's image-gradient branch does (:meth:`unosat.models.image_gradient.ImageGradient.band_db`:
un-normalise, ``10 log10`` of linear power clamped at ``db_floor``, dB stacks clamped at the same floor), so
the threshold is the one :func:`unosat.training.baseline.vv_threshold_baseline` chose in dB on the training
tiles.

Output: logits (N, 2, H, W) ``[0, +confidence]`` where ``vv_db >= threshold_db`` and ``[0, -confidence]``
elsewhere: a step, so the decision is exactly the threshold's whatever the probability encoding (uint8
p * 254), and a float rounding of the input can only matter for pixels at the threshold itself.
"""

from __future__ import annotations

import torch
from torch import nn

from unosat.classes import CLASS_NAMES
from unosat.errors import UnosatError
from unosat.models.image_gradient import gradient_for_recipe

#: linear power below which values are clamped before dB (as :func:`unosat.bands.to_db`)
DB_FLOOR = 1e-8


class VVThresholdNet(nn.Module):
    """Building where the VV band (dB) is at least ``threshold_db``; no learnable parameters.

    Args:
        in_channels: bands of the input stack.
        threshold_db: the threshold in dB.
        input_recipe: ``{"bands", "units", "mean", "std"}`` of the input (as train.py fills it for GSCNN);
            None: channel 0 of the input is thresholded as it comes (normalised; for unit tests).
        band: the band thresholded (``vv``).
        confidence: the building logit's magnitude (10: probabilities 0.99995 and 0.00005).
        num_classes: must be 2.
    """

    task = "segmentation"

    def __init__(
        self,
        in_channels: int,
        threshold_db: float = 0.0,
        input_recipe: dict | None = None,
        band: str = "vv",
        confidence: float = 10.0,
        num_classes: int = len(CLASS_NAMES),
    ) -> None:
        super().__init__()
        if int(num_classes) != len(CLASS_NAMES):
            raise UnosatError(
                f"VV-threshold baseline: num_classes must be {len(CLASS_NAMES)}, got {num_classes}"
            )
        if not float(confidence) > 0:
            raise UnosatError(f"VV-threshold baseline: confidence must be positive, got {confidence}")
        if input_recipe is not None and len(input_recipe.get("bands", ())) != int(in_channels):
            raise UnosatError(
                f"VV-threshold baseline: in_channels={in_channels} but the recipe has bands "
                f"{input_recipe.get('bands')}"
            )
        self.in_channels = int(in_channels)
        self.threshold_db = float(threshold_db)
        self.confidence = float(confidence)
        self.args = {
            "in_channels": self.in_channels,
            "threshold_db": self.threshold_db,
            "input_recipe": input_recipe,
            "band": band,
            "confidence": self.confidence,
        }
        # used only for its band_db (un-normalise, to dB, floor); sigma 0: no smoothing
        self.band_db = gradient_for_recipe(input_recipe, band, DB_FLOOR, 0.0, 1.0).band_db

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) normalised -> (N, 2, H, W) logits, float32."""
        if x.shape[1] != self.in_channels:
            raise UnosatError(f"VV-threshold baseline: expected {self.in_channels} bands, got {x.shape[1]}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            above = self.band_db(x.float()) >= self.threshold_db
            building = torch.where(above, self.confidence, -self.confidence).to(torch.float32)
            return torch.cat([torch.zeros_like(building), building], dim=1).contiguous()

    def spec(self) -> dict:
        """The registry spec a checkpoint stores for this network."""
        return {"name": "vv_threshold", "args": dict(self.args)}

    def extra_repr(self) -> str:
        return f"threshold_db={self.threshold_db:.3f}, confidence={self.confidence}"


def fit_vv_threshold_net(datamodule) -> tuple[VVThresholdNet, dict]:
    """The VV-threshold network of a set-up data module (threshold chosen on its training tiles by
    :func:`unosat.training.baseline.vv_threshold_baseline`), and what the fit found (plain data: threshold,
    training-tile IoU, validation-tile IoU)."""
    from unosat.training.baseline import vv_threshold_baseline

    recipe, norm = datamodule.recipe, datamodule.normalization
    band = "vv" if "vv" in recipe.bands else recipe.bands[0]  # as vv_threshold_baseline chooses it
    base = vv_threshold_baseline(datamodule.train_dataset, datamodule.val_dataset, band_name=band)
    input_recipe = {
        "bands": list(recipe.bands),
        "units": recipe.units,
        "mean": list(norm.mean),
        "std": list(norm.std),
    }
    net = VVThresholdNet(recipe.count, base.threshold_db, input_recipe, band)
    return net, {
        "band": band,
        "threshold_db": base.threshold_db,
        "train_tiles_iou": base.train_iou,
        "val_tiles_iou": base.val_iou,
    }
