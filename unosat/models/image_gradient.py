"""The image-gradient map of a SAR band, computed inside a model (GSCNN's fusion input; the paper used Canny).

From the normalised network input ``x`` (N, C, H, W), :class:`ImageGradient` takes one band and

1. undoes the normalisation: ``band = x[:, i] * std[i] + mean[i]`` (the band in its stored units);
2. brings it to dB: ``10 log10(max(band, floor))`` for linear power; a dB band is clamped at
   ``10 log10(floor)``. The floor keeps thermal-noise pixels (zero or negative linear power, -80 dB in a dB
   stack) from making spurious edges;
3. smooths the speckle with a normalised Gaussian of ``sigma_px`` (separable, reflect padding);
4. takes the Sobel gradient (kernels divided by 8, so a ramp of 1 dB per pixel gives 1) and its magnitude
   ``sqrt(gx^2 + gy^2)`` in dB per pixel;
5. divides by ``scale_db`` (dB per pixel that maps to 1), so the map is of order 1 for the fusion conv.

Output (N, 1, H, W), float32 (also under autocast), detached (no gradient flows into it or through it): pure
torch, batched, on the input's device, no OpenCV. Because step 1 restores the stored values, the map does not
depend on the normalisation constants (only on the scene).

Without a recipe (``mean``/``std`` None, e.g. a model built in a unit test) the normalised band is used as is
(no un-normalisation, no dB conversion, no floor): the map then depends on the normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unosat.errors import UnosatError
from unosat.raw_input import UNITS

GAUSSIAN_TRUNCATE = 3.0  # kernel radius in sigmas
SOBEL_NORM = 8.0  # sum of the absolute Sobel weights: a 1-per-pixel ramp gives a gradient of 1


def gaussian_kernel1d(sigma_px: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``sigma_px`` pixels, radius ``ceil(3 sigma)``; ``[1.]`` for sigma 0."""
    if sigma_px <= 0:
        return torch.ones(1)
    radius = math.ceil(GAUSSIAN_TRUNCATE * sigma_px)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma_px) ** 2)
    return kernel / kernel.sum()


def smooth(x: torch.Tensor, kernel1d: torch.Tensor) -> torch.Tensor:
    """Separable smoothing of (N, 1, H, W) with a 1-D kernel, reflect padding (replicate on tiny inputs)."""
    r = kernel1d.numel() // 2
    if r == 0:
        return x
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    k = kernel1d.to(dtype=x.dtype, device=x.device)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of (N, 1, H, W) in units of x per pixel (replicate padding)."""
    smooth_ = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    diff = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype, device=x.device)
    kx = torch.outer(smooth_, diff) / SOBEL_NORM  # d/dx (columns)
    kernels = torch.stack([kx, kx.T]).unsqueeze(1)  # (2, 1, 3, 3): d/dx, d/dy
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
    return torch.sqrt(g[:, :1] ** 2 + g[:, 1:] ** 2)


class ImageGradient(nn.Module):
    """Gradient magnitude of one input band in dB per pixel / ``scale_db``, see the module docstring.

    Args:
        band_index: channel of the input used.
        mean, std: the normalisation of that channel (in the stack's units); None: use the normalised band.
        units: ``linear`` (power) or ``db``: units of the stack.
        db_floor: linear power below which values are clamped (1e-3: -30 dB).
        sigma_px: Gaussian smoothing of the speckle, in pixels (0: none).
        scale_db: gradient (dB per pixel) that maps to 1.

    Input (N, C, H, W) normalised; output (N, 1, H, W), detached.
    """

    def __init__(
        self,
        band_index: int,
        mean: float | None = None,
        std: float | None = None,
        units: str = "db",
        db_floor: float = 1e-3,
        sigma_px: float = 1.0,
        scale_db: float = 1.0,
    ) -> None:
        super().__init__()
        if units not in UNITS:
            raise UnosatError(f"image gradient: units must be one of {', '.join(UNITS)}, got {units!r}")
        if (mean is None) != (std is None) or (std is not None and not std > 0):
            raise UnosatError(
                f"image gradient: needs both mean and a positive std (or neither), got {mean}, {std}"
            )
        if not db_floor > 0 or sigma_px < 0 or not scale_db > 0:
            raise UnosatError(
                f"image gradient: db_floor and scale_db must be positive and sigma_px >= 0, got "
                f"{db_floor}, {scale_db}, {sigma_px}"
            )
        self.band_index = int(band_index)
        self.mean = None if mean is None else float(mean)
        self.std = None if std is None else float(std)
        self.units = units
        self.floor_db = 10.0 * math.log10(db_floor)
        self.db_floor = float(db_floor)
        self.scale_db = float(scale_db)
        self.register_buffer("kernel1d", gaussian_kernel1d(float(sigma_px)), persistent=False)

    @property
    def denormalises(self) -> bool:
        return self.mean is not None

    def band_db(self, x: torch.Tensor) -> torch.Tensor:
        """The chosen band of the normalised input (N, C, H, W), back in dB (N, 1, H, W) (steps 1-2)."""
        band = x[:, self.band_index : self.band_index + 1].float()
        if not self.denormalises:
            return band
        band = band * self.std + self.mean
        if self.units == "linear":
            return 10.0 * torch.log10(band.clamp_min(self.db_floor))
        return band.clamp_min(self.floor_db)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] <= self.band_index:
            raise UnosatError(
                f"image gradient: band {self.band_index} asked of an input with {x.shape[1]} bands"
            )
        with torch.autocast(device_type=x.device.type, enabled=False):  # dB differences need float32
            magnitude = sobel_magnitude(smooth(self.band_db(x), self.kernel1d))
        return (magnitude / self.scale_db).detach()

    def extra_repr(self) -> str:
        source = (
            f"mean={self.mean}, std={self.std}, units={self.units}"
            if self.denormalises
            else "normalised band"
        )
        return f"band_index={self.band_index}, {source}, scale_db={self.scale_db}"


def gradient_for_recipe(
    input_recipe: dict | None, band: str, db_floor: float, sigma_px: float, scale_db: float
) -> ImageGradient:
    """The :class:`ImageGradient` of band ``band`` (e.g. ``vv``) of a model's ``input_recipe``
    (``{"bands": [...], "units": ..., "mean": [...], "std": [...]}``, filled in by ``train.py``).

    With ``input_recipe`` None, channel 0 of the input is used as is (normalised).
    """
    if input_recipe is None:
        return ImageGradient(0, None, None, "db", db_floor, sigma_px, scale_db)
    try:
        bands: Sequence[str] = list(input_recipe["bands"])
        units, mean, std = input_recipe["units"], list(input_recipe["mean"]), list(input_recipe["std"])
    except (KeyError, TypeError) as err:
        raise UnosatError(
            f"model input_recipe must hold bands, units, mean and std, got {input_recipe!r}"
        ) from err
    if band not in bands:
        raise UnosatError(f"model gradient_band={band!r} is not a band of the dataset ({', '.join(bands)})")
    if len(mean) == 1 and len(std) == 1:
        mean, std = mean * len(bands), std * len(bands)
    if len(mean) != len(bands) or len(std) != len(bands):
        raise UnosatError(f"model input_recipe: {len(bands)} bands but {len(mean)} means and {len(std)} stds")
    i = bands.index(band)
    return ImageGradient(i, mean[i], std[i], units, db_floor, sigma_px, scale_db)
