"""Step ``quality``: are the labels right for each acquisition? (The UNOSAT team's open questions: "quality
of targets?", "same shape for several acquisitions: still correct?")

Per acquisition, two measurements against its mask (the city's labels burnt on its grid):

- **contrast**, per band: ``10 log10(mean inside the label polygons / mean around them)`` in dB, over valid
  pixels, from linear power ("around" = valid pixels within ``ring_px`` of a building, not building).
  Bands that are not powers (``diff``) get NaN.
- **shift** (rows, cols): the displacement of the mask that maximises its correlation with a building
  likelihood (the ``likelihood_band`` in dB, standardised), searched over ``+-max_shift_px`` per axis on
  windows that hold buildings. ``(dy, dx)`` means the image at ``(y + dy, x + dx)`` matches the label at
  ``(y, x)``: an image whose content moved down by 2 rows gives ``(2, 0)``.

An acquisition is flagged when its shift differs from the reference shift by more than
``shift_tolerance_px``, or when its contrast in the likelihood band is below ``min_contrast_db`` or more
than ``contrast_drop_db`` below the median of the city's other acquisitions. The reference shift is (0, 0)
with ``shift_reference: zero``; with ``pass_median`` (default) it is the median shift of all acquisitions of
the same orbit pass when there are at least 3 of them: buildings lay over toward the sensor (a 10 m building
at 35 degrees incidence by ~14 m), and all-touched labels include a ring lit on the sensor side and shadowed
on the far side, so well-registered ascending and descending acquisitions typically fit best at (0, -1) and
(0, +1) px; a misregistered acquisition or label file stands out against that. Flags go to ``quality.csv``,
to the ``quality_flag`` column of the statistics (training can drop flagged acquisitions with
``data.exclude_flagged=true``), and to the report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rasterio.windows import Window
from scipy.ndimage import maximum_filter

from unosat.bands import BandRecipe, from_db, to_db
from unosat.classes import IGNORE_INDEX, TARGET
from unosat.errors import UnosatError
from unosat.io.atomic import write_json_atomic
from unosat.io.provenance import digest, needs_work, stored_params
from unosat.io.raster import open_raster, read_window

#: bands whose values are powers (positive): their contrast in dB is meaningful
POWER_BANDS = ("vh", "vv", "mean", "norm", "product")


@dataclass(frozen=True)
class QualityConfig:
    """Settings of the label-quality step (pixels unless stated)."""

    ring_px: int = 3
    max_shift_px: int = 3
    likelihood_band: str = "vv"
    window_px: int = 256
    windows: int = 48
    block_rows: int = 512
    contrast_drop_db: float = 3.0
    min_contrast_db: float = 1.0
    shift_reference: str = "pass_median"
    shift_tolerance_px: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.shift_reference not in ("pass_median", "zero"):
            raise UnosatError(
                f"quality.shift_reference must be 'pass_median' or 'zero', got '{self.shift_reference}'"
            )
        if self.ring_px < 1 or self.max_shift_px < 1 or self.window_px <= 2 * self.max_shift_px:
            raise UnosatError(
                f"quality: ring_px and max_shift_px must be >= 1 and window_px > 2 max_shift_px: {self}"
            )


@dataclass(frozen=True)
class QualityTask:
    scene_id: str
    city: str
    orbit_pass: str
    stack_path: Path
    mask_path: Path
    recipe: BandRecipe
    config: QualityConfig
    out_path: Path
    overwrite: bool


def quality_params(task: QualityTask) -> dict:
    return {
        "step": "quality",
        "scene_id": task.scene_id,
        "config": asdict(task.config),
        "bands": digest(stored_params(task.stack_path) or {}),
        "labels": digest(stored_params(task.mask_path) or {}),
    }


def scene_label_quality(task: QualityTask) -> dict:
    """Contrast and best shift of one acquisition (cached in ``task.out_path``)."""
    params = quality_params(task)
    if not needs_work(task.out_path, params, task.overwrite):
        return json.loads(task.out_path.read_text())["record"]
    record = {"scene_id": task.scene_id, "city": task.city, "pass": task.orbit_pass}
    record.update(contrast(task))
    record.update(best_shift(task))
    write_json_atomic(task.out_path, {"params": params, "record": record})
    return record


def _linear(values: np.ndarray, recipe: BandRecipe) -> np.ndarray:
    return from_db(values) if recipe.units == "db" else values


def contrast(task: QualityTask) -> dict:
    """Per-band contrast (dB) between building pixels and the ring around them, streamed by row blocks."""
    cfg, recipe = task.config, task.recipe
    n = recipe.count
    inside, around = np.zeros(n), np.zeros(n)
    n_in = n_around = 0
    with open_raster(task.stack_path) as stack, open_raster(task.mask_path) as masks:
        height, width = stack.height, stack.width
        for r0 in range(0, height, cfg.block_rows):
            r1 = min(height, r0 + cfg.block_rows)
            h0, h1 = max(0, r0 - cfg.ring_px), min(height, r1 + cfg.ring_px)  # halo for the ring
            mask = read_window(masks, Window(0, h0, width, h1 - h0), 1)
            building = mask == TARGET
            near = maximum_filter(building, size=2 * cfg.ring_px + 1)
            core = slice(r0 - h0, r0 - h0 + (r1 - r0))
            building, near, valid = building[core], near[core], mask[core] != IGNORE_INDEX
            ring = near & ~building & valid
            if not building.any():
                continue
            image = _linear(read_window(stack, Window(0, r0, width, r1 - r0)), recipe)
            inside += image[:, building].astype(np.float64).sum(axis=1)
            around += image[:, ring].astype(np.float64).sum(axis=1)
            n_in += int(building.sum())
            n_around += int(ring.sum())
    out = {"n_building_px": n_in, "n_ring_px": n_around}
    for i, band in enumerate(recipe.bands):
        value = float("nan")
        if band in POWER_BANDS and n_in and n_around and inside[i] > 0 and around[i] > 0:
            value = float(10 * np.log10((inside[i] / n_in) / (around[i] / n_around)))
        out[f"contrast_{band}_db"] = value
    return out


def best_shift(task: QualityTask) -> dict:
    """The mask displacement maximising the correlation with the building likelihood, on sampled windows."""
    cfg, recipe = task.config, task.recipe
    band = recipe.bands.index(cfg.likelihood_band) + 1 if cfg.likelihood_band in recipe.bands else 1
    s, size = cfg.max_shift_px, cfg.window_px
    span = 2 * s + 1
    score = np.zeros((span, span))
    with open_raster(task.stack_path) as stack, open_raster(task.mask_path) as masks:
        height, width = stack.height, stack.width
        if height <= 2 * s or width <= 2 * s:
            return {
                "shift_rows": 0,
                "shift_cols": 0,
                "shift_score": float("nan"),
                "score_at_zero": float("nan"),
            }
        step = max(1, size - 2 * s)
        origins = [
            (r, c)
            for r in range(0, max(1, height - 2 * s), step)
            for c in range(0, max(1, width - 2 * s), step)
        ]
        rng = np.random.default_rng(cfg.seed)
        rng.shuffle(origins)
        used = 0
        for r, c in origins:
            if used >= cfg.windows:
                break
            h, w = min(size, height - r), min(size, width - c)
            mask = read_window(masks, Window(c, r, w, h), 1)
            inner = (slice(s, h - s), slice(s, w - s))
            labels = mask[inner] == TARGET
            if labels.sum() < 4:
                continue
            values = read_window(stack, Window(c, r, w, h), band)
            likely = values if recipe.units == "db" else to_db(values)
            ok = np.isfinite(likely) & (mask != IGNORE_INDEX)
            if ok.sum() < 16:
                continue
            z = np.where(ok, (likely - likely[ok].mean()) / (likely[ok].std() + 1e-6), 0.0)
            m_valid = ok[inner]
            m = np.where(m_valid, labels - labels[m_valid].mean(), 0.0)
            for i, dy in enumerate(range(-s, s + 1)):
                for j, dx in enumerate(range(-s, s + 1)):
                    shifted = z[s + dy : h - s + dy, s + dx : w - s + dx]
                    score[i, j] += float((m * shifted).sum()) / m_valid.sum()
            used += 1
    if used == 0:
        return {
            "shift_rows": 0,
            "shift_cols": 0,
            "shift_score": float("nan"),
            "score_at_zero": float("nan"),
            "shift_windows": 0,
        }
    i, j = np.unravel_index(int(np.argmax(score)), score.shape)
    return {
        "shift_rows": int(i - s),
        "shift_cols": int(j - s),
        "shift_score": float(score[i, j] / used),
        "score_at_zero": float(score[s, s] / used),
        "shift_windows": used,
    }


def flag_acquisitions(records: list[dict], config: QualityConfig) -> pd.DataFrame:
    """The quality table with flags: shift away from the reference, or contrast too low for the city.

    Contrast is measured with the sign of the targets: ``target_sign`` is +1 when the median contrast of all
    acquisitions is positive (bright targets, buildings), -1 otherwise (dark targets, e.g. water), and
    ``min_contrast_db`` / ``contrast_drop_db`` apply to ``target_sign * contrast``."""
    table = pd.DataFrame(records)
    col = f"contrast_{config.likelihood_band}_db"
    if col not in table:
        col = next((c for c in table.columns if c.startswith("contrast_")), None)
    reference = {}
    for orbit_pass, group in table.groupby(table["pass"].fillna("")):
        ok = group.dropna(subset=["shift_score"])
        if config.shift_reference == "pass_median" and len(ok) >= 3:
            reference[orbit_pass] = (
                int(np.round(ok["shift_rows"].median())),
                int(np.round(ok["shift_cols"].median())),
            )
        else:
            reference[orbit_pass] = (0, 0)
    # bright targets (buildings) stand above their surroundings, dark ones (water) below: the sign comes from
    # the data, the median contrast over every acquisition, so a dark target is not flagged everywhere
    sign = -1.0 if col and table[col].notna().any() and float(table[col].median()) < 0 else 1.0
    table["target_sign"] = sign
    table["reference_rows"] = [reference[p or ""][0] for p in table["pass"].fillna("")]
    table["reference_cols"] = [reference[p or ""][1] for p in table["pass"].fillna("")]
    reasons = []
    for row in table.to_dict("records"):
        why = []
        off = max(
            abs(row["shift_rows"] - row["reference_rows"]), abs(row["shift_cols"] - row["reference_cols"])
        )
        if off > config.shift_tolerance_px:
            why.append(
                f"labels fit best shifted by ({row['shift_rows']}, {row['shift_cols']}) px, reference "
                f"({row['reference_rows']}, {row['reference_cols']}) for {row['pass'] or 'unknown'} passes"
            )
        value = row[col] if col else float("nan")
        others = (
            table[(table["city"] == row["city"]) & (table["scene_id"] != row["scene_id"])][col]
            if col
            else pd.Series()
        )
        if np.isfinite(value):
            kind = "" if sign > 0 else " (dark target: contrast counted below the surroundings)"
            if sign * value < config.min_contrast_db:
                why.append(
                    f"contrast {value:.1f} dB, weaker than {sign * config.min_contrast_db:+.1f} dB{kind}"
                )
            elif len(others.dropna()) and sign * value < sign * others.median() - config.contrast_drop_db:
                why.append(
                    f"contrast {value:.1f} dB, {abs(others.median() - value):.1f} dB weaker than the city's other "
                    f"acquisitions{kind}"
                )
        reasons.append("; ".join(why))
    table["quality_reason"] = reasons
    table["quality_flag"] = table["quality_reason"] != ""
    return table
