"""Spatially correlated gamma speckle, and the two figures that describe speckle (ENL, autocorrelation).

Multi-looked SAR intensity is ``sigma0 * S`` with ``S ~ Gamma(shape=L, scale=1/L)`` (mean 1, variance
``1/L``; ``L`` is the equivalent number of looks, about 4.4 for Sentinel-1 IW GRDH). Speckle of a GRD
product is correlated over a couple of pixels. :func:`correlated_gamma_speckle` makes such a field with the
exact gamma marginal: a Gaussian field is low-pass filtered and re-standardised, so it stays standard
normal but correlated, then mapped through the normal CDF and the gamma quantile function.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage, special

#: Standard-normal values beyond this are clipped before the quantile mapping (probability < 1e-15).
Z_LIMIT = 8.0
#: Nodes of the tabulated quantile function over [-Z_LIMIT, Z_LIMIT]; linear interpolation between them is
#: accurate to about 1e-6 relative, and some 20 times faster than calling ``gammaincinv`` per pixel.
QUANTILE_TABLE_NODES = 16385
#: The Gaussian filter's support, in standard deviations (scipy's default).
FILTER_TRUNCATE = 4.0


@functools.lru_cache(maxsize=8)
def _gamma_quantile_table(looks: float) -> tuple[np.ndarray, np.ndarray]:
    """``(q, dq)`` float32 on :data:`QUANTILE_TABLE_NODES` evenly spaced ``z`` in ``[-Z_LIMIT, Z_LIMIT]``:
    ``q = F^-1(Phi(z)) / L``, the unit-mean gamma quantile of the normal probability of ``z``, and
    ``dq`` its differences to the next node.

    The lower half uses ``gammaincinv(L, Phi(z))``, the upper half ``gammainccinv(L, Phi(-z))`` so that
    both tails keep full precision.
    """
    z = np.linspace(-Z_LIMIT, Z_LIMIT, QUANTILE_TABLE_NODES)
    q = np.empty_like(z)
    lower = z <= 0
    q[lower] = special.gammaincinv(looks, special.ndtr(z[lower]))
    q[~lower] = special.gammainccinv(looks, special.ndtr(-z[~lower]))
    q /= looks
    return q.astype(np.float32), np.diff(q).astype(np.float32)


def gamma_from_normal(z: np.ndarray, looks: float) -> np.ndarray:
    """Map standard-normal values ``z`` to unit-mean ``Gamma(L, 1/L)`` values of the same rank (float32).

    ``gammaincinv(L, Phi(z)) / L``, linearly interpolated in a table of :data:`QUANTILE_TABLE_NODES`
    evenly spaced nodes (the node is found by arithmetic rather than search).
    """
    q, dq = _gamma_quantile_table(float(looks))
    nodes_per_unit = np.float32((QUANTILE_TABLE_NODES - 1) / (2.0 * Z_LIMIT))
    position = (
        np.clip(np.asarray(z, dtype=np.float32), -Z_LIMIT, Z_LIMIT) + np.float32(Z_LIMIT)
    ) * nodes_per_unit
    index = np.minimum(position.astype(np.int32), QUANTILE_TABLE_NODES - 2)
    return q.take(index) + (position - index.astype(np.float32)) * dq.take(index)


def _filtered_noise_std(sigma_px: float) -> float:
    """Standard deviation of unit white noise after :func:`scipy.ndimage.gaussian_filter` in 2D: the
    product over both axes of the 1D kernel's L2 norm."""
    radius = int(FILTER_TRUNCATE * sigma_px + 0.5)
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1.0
    kernel = ndimage.gaussian_filter1d(impulse, sigma_px, truncate=FILTER_TRUNCATE, mode="constant")
    return float(np.sum(kernel**2))  # sqrt(sum k^2) per axis, squared for two axes


def correlated_gaussian(
    rng: np.random.Generator, shape: tuple[int, int], correlation_px: float
) -> np.ndarray:
    """Standard-normal field ``(rows, cols)`` float32, correlated by a Gaussian kernel of standard deviation
    ``correlation_px`` pixels (0: white). Neighbours at lag ``d`` correlate as ``exp(-d^2 / (4 sigma^2))``."""
    white = rng.standard_normal(shape, dtype=np.float32)
    if correlation_px <= 0:
        return white
    field = ndimage.gaussian_filter(white, correlation_px, truncate=FILTER_TRUNCATE, mode="reflect")
    field /= np.float32(_filtered_noise_std(correlation_px))
    return field


def correlated_gamma_speckle(
    rng: np.random.Generator, shape: tuple[int, int], looks: float, correlation_px: float
) -> np.ndarray:
    """Multiplicative speckle ``(rows, cols)`` float32: marginal ``Gamma(looks, 1/looks)`` (mean 1, variance
    ``1/looks``), spatially correlated over about ``2 * correlation_px`` pixels."""
    return gamma_from_normal(correlated_gaussian(rng, shape, correlation_px), looks)


def equivalent_number_of_looks(intensity: np.ndarray) -> float:
    """ENL ``mean^2 / variance`` of intensities (linear power) over a homogeneous area."""
    x = np.asarray(intensity, dtype=np.float64).ravel()
    return float(x.mean() ** 2 / x.var())


def autocorrelation(image: np.ndarray, lag: int) -> float:
    """Correlation coefficient of pixels ``lag`` apart along rows and along columns (averaged), ``(rows, cols)``."""
    x = np.asarray(image, dtype=np.float64)
    x = (x - x.mean()) / x.std()
    along_cols = np.mean(x[:, lag:] * x[:, :-lag])
    along_rows = np.mean(x[lag:, :] * x[:-lag, :])
    return float((along_cols + along_rows) / 2.0)
