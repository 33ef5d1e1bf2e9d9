"""Whole-scene inference with overlapping windows, in bounded memory.

Layout (per axis, pixels of the scene grid): the scene of ``length`` pixels is extended by ``margin``
pixels on both sides, and square windows of ``size`` pixels are spread evenly over the extended range with
at least ``overlap`` pixels between neighbours, the first starting at ``-margin`` and the last ending at
``length + margin`` (:func:`unosat.io.raster.train_offsets`, the arithmetic that places training
tiles; a scene smaller than a window gets one window). Pixels outside the scene are filled by mirroring the
scene (``pad_mode: reflect``) or as nodata (``constant``, the normalisation's fill), so pixels at the scene
border see context as they would inside it and no row or column is lost.

Blending: each window's probabilities are weighted by ``w(row) * w(col)``. Along a side that has a
neighbouring window, ``w`` is 0 for the ``edge`` pixels nearest that side (predictions without context
there are dropped), then rises as ``sin^2`` over ``overlap - 2 * edge`` pixels to 1; along a side without
neighbour ``w`` is 1. Where two windows overlap by exactly ``overlap`` pixels the two weights sum to 1
(``sin^2 + cos^2``), elsewhere the weighted sum is divided by the summed weight, so every pixel is a
convex combination of the windows that saw it: no seams, nothing counted twice.

Memory: windows are processed one strip (one row of windows) at a time, and a strip one batch of windows
at a time: a batch reads only the scene pixels its windows span (GDAL's block cache, bounded, serves the
overlaps). The output of ``size`` rows of the scene's width is held (weighted sum, summed weight and valid
mask: 9 bytes a pixel); rows above the next strip's first row are final and leave as soon as the strip is
done (:func:`predict_scene` yields them top to bottom). So memory is ``9 x size x width`` bytes plus what
one batch needs, whatever the scene's height.

Windows are skipped by predicates (:class:`WindowSkip`) before the networks run: :class:`NodataSkip` skips
windows without a valid pixel (their pixels stay nodata). A predicate may instead give skipped windows a
fixed probability (e.g. a tile classifier that calls them empty: 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from rasterio.windows import Window

from unosat.errors import UnosatError
from unosat.io.raster import train_offsets
from unosat.predict.ensemble import Ensemble
from unosat.predict.inputs import SceneReader

PAD_MODES = ("reflect", "constant")


@dataclass(frozen=True)
class WindowConfig:
    """Sliding-window settings, in pixels.

    Args:
        size: window side (the networks' input size).
        overlap: least overlap between neighbouring windows; blending ramps over it.
        margin: pixels added around the scene (``pad_mode`` fills them) so border pixels get context;
            None: ``overlap // 2``.
        edge: pixels at a window side with a neighbour that get zero weight.
        pad_mode: ``reflect`` (mirror the scene) or ``constant`` (nodata, i.e. the normalisation fill).
        batch_size: windows per forward pass.
    """

    size: int = 512
    overlap: int = 64
    margin: int | None = None
    edge: int = 0
    pad_mode: str = "reflect"
    batch_size: int = 4

    def __post_init__(self):
        if self.margin is None:
            object.__setattr__(self, "margin", self.overlap // 2)
        if self.size <= 0 or self.batch_size <= 0:
            raise UnosatError(
                f"window.size and window.batch_size must be positive, got {self.size}, {self.batch_size}"
            )
        if not 0 <= self.overlap < self.size:
            raise UnosatError(f"window.overlap must be in [0, window.size={self.size}), got {self.overlap}")
        if (
            self.edge < 0
            or (self.overlap and 2 * self.edge >= self.overlap)
            or (not self.overlap and self.edge)
        ):
            raise UnosatError(
                f"window.edge must be >= 0 and less than half window.overlap={self.overlap}, got {self.edge}"
            )
        if self.margin < 0:
            raise UnosatError(f"window.margin must be >= 0, got {self.margin}")
        if self.pad_mode not in PAD_MODES:
            raise UnosatError(f"window.pad_mode must be one of {PAD_MODES}, got '{self.pad_mode}'")

    def to_dict(self) -> dict:
        """The settings that change the result (not the batch size)."""
        return {
            "size": self.size,
            "overlap": self.overlap,
            "margin": self.margin,
            "edge": self.edge,
            "pad_mode": self.pad_mode,
        }


@dataclass(frozen=True)
class AxisLayout:
    """Windows along one axis: ``offsets`` (window starts, scene pixels, may be negative) over the extended
    range ``[lo, hi)``."""

    length: int
    size: int
    offsets: tuple[int, ...]
    lo: int
    hi: int

    def source_index(self, start: int, stop: int, pad_mode: str) -> np.ndarray:
        """Scene index of each position in ``[start, stop)``: mirrored into the scene (``reflect``) or -1
        outside it (``constant``)."""
        pos = np.arange(start, stop)
        if pad_mode == "constant":
            return np.where((pos >= 0) & (pos < self.length), pos, -1)
        if self.length == 1:
            return np.zeros_like(pos)
        period = 2 * (self.length - 1)
        pos = np.mod(pos, period)
        return np.where(pos < self.length, pos, period - pos)

    def weights(self, index: int, overlap: int, edge: int) -> np.ndarray:
        """Blending weights ``(size,)`` of window ``index`` (see the module docstring)."""
        w = np.ones(self.size, dtype=np.float64)
        ramp = overlap - 2 * edge
        if ramp <= 0:
            return w.astype(np.float32)
        d = np.arange(self.size, dtype=np.float64)
        rise = np.sin(0.5 * math.pi * np.clip((d - edge + 0.5) / ramp, 0.0, 1.0)) ** 2
        if index > 0:
            w *= rise
        if index < len(self.offsets) - 1:
            w *= rise[::-1]
        return w.astype(np.float32)


def axis_layout(length: int, config: WindowConfig) -> AxisLayout:
    """Window starts along an axis of ``length`` scene pixels."""
    if length <= 0:
        raise UnosatError(f"cannot predict an empty scene axis (length {length})")
    extended = length + 2 * config.margin
    offsets = tuple(o - config.margin for o in train_offsets(extended, config.size, config.overlap))
    return AxisLayout(length, config.size, offsets, -config.margin, offsets[-1] + config.size)


# ------------------------------------------------------------------------------- skipping


@dataclass
class WindowBatch:
    """Windows of one strip handed to skip predicates: starts (scene pixels), valid masks
    ``(N, size, size)`` (False outside the scene) and the normalised inputs of each ensemble group
    ``(N, C, size, size)``."""

    rows: np.ndarray
    cols: np.ndarray
    valid: np.ndarray
    inputs: list[np.ndarray]


class WindowSkip(Protocol):
    """Decides which windows of a batch are not run through the networks.

    ``fill`` is the building probability given to the valid pixels of skipped windows (blended like a
    prediction), or None to leave them without a prediction (nodata unless another window covers them).
    """

    fill: float | None

    def __call__(self, batch: WindowBatch) -> np.ndarray:  # (N,) bool
        ...


@dataclass(frozen=True)
class NodataSkip:
    """Skips windows without a single valid pixel."""

    fill: float | None = None

    def __call__(self, batch: WindowBatch) -> np.ndarray:
        return ~batch.valid.reshape(len(batch.valid), -1).any(axis=1)


# ------------------------------------------------------------------------------ accumulation


@dataclass
class SceneStats:
    """Counts of one scene's prediction."""

    windows: int = 0
    predicted: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


class _RowAccumulator:
    """Weighted sums of rows ``[start, start + capacity)`` of the scene, full width."""

    def __init__(self, height: int, width: int, capacity: int):
        self.height, self.width = height, width
        self.capacity = min(capacity, height)
        self.start = 0
        self.num = np.zeros((self.capacity, width), dtype=np.float32)
        self.den = np.zeros((self.capacity, width), dtype=np.float32)
        self.valid = np.zeros((self.capacity, width), dtype=bool)

    def flush(self, until: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield the final rows ``[start, until)`` as ``(row_off, probability (rows, width))`` with NaN
        where no valid pixel was predicted, and make room for the rows below."""
        until = min(until, self.height)
        n = until - self.start
        if n <= 0:
            return
        if n > self.capacity:
            raise AssertionError("rows flushed beyond the accumulator")  # the layout guarantees otherwise
        num, den, valid = self.num[:n], self.den[:n], self.valid[:n]
        with np.errstate(invalid="ignore", divide="ignore"):
            prob = num / den
        prob[~valid | (den <= 0)] = np.nan
        row_off = self.start
        keep = self.capacity - n
        for buf in (self.num, self.den, self.valid):
            buf[:keep] = buf[n:].copy()
            buf[keep:] = 0
        self.start = until
        yield row_off, prob

    def rows(self, r0: int, r1: int) -> slice:
        if r0 < self.start or r1 > self.start + self.capacity:
            raise AssertionError(
                f"rows {r0}:{r1} outside the accumulator {self.start}:{self.start + self.capacity}"
            )
        return slice(r0 - self.start, r1 - self.start)


@dataclass
class _Strip:
    """One row of windows starting at scene row ``row`` (may be negative): the scene rows its windows read
    (``first`` + ``local_rows``; mirrored, or outside the scene where ``row_inside`` is False)."""

    row: int
    first: int
    n_rows: int
    local_rows: np.ndarray
    row_inside: np.ndarray


def _strip(rows: AxisLayout, row: int, config: WindowConfig) -> _Strip:
    index = rows.source_index(row, row + config.size, config.pad_mode)
    inside = index >= 0
    first, last = int(index[inside].min()), int(index[inside].max())
    return _Strip(row, first, last - first + 1, np.where(inside, index - first, 0), inside)


def _window_batch(
    reader: SceneReader,
    strip: _Strip,
    cols: AxisLayout,
    js: Sequence[int],
    ensemble: Ensemble,
    config: WindowConfig,
) -> WindowBatch:
    """Windows ``js`` of a strip: their valid masks and normalised inputs, read and computed from the
    scene pixels they span (mirrored, or filled as nodata, outside the scene)."""
    size = config.size
    col_index = cols.source_index(cols.offsets[js[0]], cols.offsets[js[-1]] + size, config.pad_mode)
    col_inside = col_index >= 0
    first = int(col_index[col_inside].min())
    block = reader.read(
        Window(first, strip.first, int(col_index[col_inside].max()) - first + 1, strip.n_rows)
    )
    part = block.take(strip.local_rows, np.where(col_inside, col_index - first, 0))
    inside = strip.row_inside[:, None] & col_inside[None, :]
    valid = part.valid & inside
    inputs = []
    for recipe, normalization in ensemble.groups:
        normed = normalization.apply(part.bands(recipe), channel_axis=0)
        normed[:, ~inside] = normalization.fill
        inputs.append(normed)
    xs = [cols.offsets[j] - cols.offsets[js[0]] for j in js]  # window starts in the columns taken
    return WindowBatch(
        rows=np.full(len(js), strip.row),
        cols=np.array([cols.offsets[j] for j in js]),
        valid=np.stack([valid[:, x : x + size] for x in xs]),
        inputs=[np.stack([a[:, :, x : x + size] for x in xs]) for a in inputs],
    )


def _decide(
    batch: WindowBatch, skips: Sequence[WindowSkip], stats: SceneStats
) -> tuple[np.ndarray, np.ndarray]:
    """``(run, fill)``: which windows go through the networks, and the probability given to skipped ones
    (NaN: none, they add nothing)."""
    n = len(batch.rows)
    run = np.ones(n, dtype=bool)
    fill = np.full(n, np.nan, dtype=np.float32)
    for skip in skips:
        skipped = skip(batch) & run
        if skipped.any():
            name = type(skip).__name__
            stats.skipped[name] = stats.skipped.get(name, 0) + int(skipped.sum())
            run &= ~skipped
            if skip.fill is not None:
                fill[skipped] = skip.fill
    return run, fill


def predict_scene(
    reader: SceneReader,
    ensemble: Ensemble,
    config: WindowConfig,
    skips: Sequence[WindowSkip] = (NodataSkip(),),
    stats: SceneStats | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Building probability of the whole scene, yielded as ``(row_off, (rows, width) float32)`` blocks
    top to bottom (NaN = nodata), on the scene's own grid."""
    grid = reader.scene.grid
    height, width, size = grid.height, grid.width, config.size
    rows, cols = axis_layout(height, config), axis_layout(width, config)
    stats = stats if stats is not None else SceneStats()
    col_weights = [cols.weights(j, config.overlap, config.edge) for j in range(len(cols.offsets))]
    acc = _RowAccumulator(height, width, size)

    for i, r in enumerate(rows.offsets):
        yield from acc.flush(max(r, 0))  # no later window reaches above this strip
        strip = _strip(rows, r, config)
        r0, r1 = max(r, 0), min(r + size, height)  # the scene rows this strip covers
        row_w = rows.weights(i, config.overlap, config.edge)[r0 - r : r1 - r, None]

        for start in range(0, len(cols.offsets), config.batch_size):
            js = list(range(start, min(start + config.batch_size, len(cols.offsets))))
            batch = _window_batch(reader, strip, cols, js, ensemble, config)
            for n, j in enumerate(js):  # the valid mask of the scene pixels these windows cover
                c = cols.offsets[j]
                c0, c1 = max(c, 0), min(c + size, width)
                acc.valid[acc.rows(r0, r1), c0:c1] = batch.valid[n, r0 - r : r1 - r, c0 - c : c1 - c]
            stats.windows += len(js)
            run, fill = _decide(batch, skips, stats)
            probs = np.empty((len(js), size, size), dtype=np.float32)
            if run.any():
                probs[run] = ensemble.probability([a[run] for a in batch.inputs])
                stats.predicted += int(run.sum())
            probs[~run] = fill[~run, None, None]
            for n, j in enumerate(js):
                if not run[n] and np.isnan(fill[n]):
                    continue  # skipped without a probability: adds nothing
                c = cols.offsets[j]
                c0, c1 = max(c, 0), min(c + size, width)
                w = row_w * col_weights[j][None, c0 - c : c1 - c]
                target = (acc.rows(r0, r1), slice(c0, c1))
                acc.num[target] += w * probs[n, r0 - r : r1 - r, c0 - c : c1 - c]
                acc.den[target] += w
    yield from acc.flush(height)
