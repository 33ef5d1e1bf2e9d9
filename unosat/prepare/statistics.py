"""Step ``stats``: per-tile statistics, folds by city, skip flags and the dataset normalisation.

Per tile, over its valid pixels (mask != 255; padding past the scene border counts as nodata): per-band
min/max/mean/std, the building (target) ratio, the nodata ratio and the valid-pixel count. A tile is
skipped when it is constant or holds less than ``min_valid_fraction`` valid pixels. Folds are by city
(never random tiles: neighbouring tiles of one city leak).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rasterio.windows import Window

from unosat.classes import IGNORE_INDEX, TARGET
from unosat.errors import UnosatError
from unosat.io.atomic import write_json_atomic
from unosat.io.provenance import digest, needs_work, stored_params
from unosat.io.raster import open_raster, read_window

TEST_FOLD = -1


@dataclass(frozen=True)
class StatsConfig:
    """``min_valid_fraction``: tiles with a smaller share of valid pixels are flagged ``skip``."""

    min_valid_fraction: float = 0.25

    def __post_init__(self):
        if not 0.0 <= self.min_valid_fraction <= 1.0:
            raise UnosatError(f"stats.min_valid_fraction must be in [0, 1], got {self.min_valid_fraction}")


@dataclass(frozen=True)
class StatsTask:
    scene_id: str
    stack_path: Path
    mask_path: Path
    tiles: tuple[tuple[str, int, int, int, int], ...]  # (tile_id, row_off, col_off, height, width)
    band_names: tuple[str, ...]
    out_path: Path
    config: StatsConfig
    overwrite: bool
    labelled: bool = True  # False: the mask is 255 everywhere; valid pixels are the image's, target ratio NaN


def stats_params(task: StatsTask) -> dict:
    return {
        "step": "stats",
        "scene_id": task.scene_id,
        "tiles": digest({"tiles": [list(t) for t in task.tiles]}),
        "bands": digest(stored_params(task.stack_path) or {}),
        "labels": digest(stored_params(task.mask_path) or {}),
        "min_valid_fraction": task.config.min_valid_fraction,
        "labelled": task.labelled,
    }


def scene_tile_statistics(task: StatsTask) -> list[dict]:
    """Statistics of every tile of one scene (cached in ``task.out_path``; recomputed when inputs change).

    Reads the stack and mask one tile-row at a time (memory: one row of tiles across the scene).
    """
    params = stats_params(task)
    if not needs_work(task.out_path, params, task.overwrite):
        return json.loads(task.out_path.read_text())["rows"]

    by_row: dict[int, list] = defaultdict(list)
    for t in task.tiles:
        by_row[t[1]].append(t)
    rows_out = []
    with open_raster(task.stack_path) as stack, open_raster(task.mask_path) as masks:
        for row_off in sorted(by_row):
            tiles = by_row[row_off]
            height = max(t[3] for t in tiles)
            n_rows = max(0, min(height, stack.height - row_off))
            window = Window(0, row_off, stack.width, n_rows)
            image = read_window(stack, window)  # (C, n_rows, W)
            mask = read_window(masks, window, 1)  # (n_rows, W)
            for tile_id, _, col_off, h, w in tiles:
                rows_out.append(
                    {
                        "tile_id": tile_id,
                        **tile_statistics(
                            image[:, :h, col_off : col_off + w],
                            mask[:h, col_off : col_off + w],
                            h * w,
                            task.band_names,
                            task.config.min_valid_fraction,
                            task.labelled,
                        ),
                    }
                )
    write_json_atomic(task.out_path, {"params": params, "rows": rows_out})
    return rows_out


def tile_statistics(
    image: np.ndarray,
    mask: np.ndarray,
    n_pixels: int,
    band_names: Sequence[str],
    min_valid_fraction: float,
    labelled: bool = True,
) -> dict:
    """Statistics of one tile.

    Args:
        image: ``(C, h, w)`` band stack of the part of the tile inside the scene (NaN = nodata).
        mask: ``(h, w)`` labels (0/1, 255 = ignore) of the same part.
        n_pixels: pixels of the whole tile, padding past the border included.
        labelled: False for an unlabelled scene (its mask is all 255): valid pixels are the image's, and the
            target ratio is NaN (unknown).
    """
    valid = np.isfinite(image).all(axis=0)
    if labelled:
        valid &= mask != IGNORE_INDEX
    n_valid = int(valid.sum())
    if not labelled:
        target_ratio = float("nan")
    else:
        target_ratio = float(np.count_nonzero(mask[valid] == TARGET) / n_valid) if n_valid else 0.0
    row = {"n_valid": n_valid, "nodata_ratio": 1.0 - n_valid / n_pixels, "target_ratio": target_ratio}
    values = image[:, valid].astype(np.float64)  # (C, n_valid)
    constant = True
    for i, name in enumerate(band_names):
        if n_valid:
            v = values[i]
            lo, hi = float(v.min()), float(v.max())
            row.update(
                {
                    f"{name}_min": lo,
                    f"{name}_max": hi,
                    f"{name}_mean": float(v.mean()),
                    f"{name}_std": float(v.std()),
                }
            )
            constant &= lo == hi
        else:
            row.update(
                {f"{name}_min": np.nan, f"{name}_max": np.nan, f"{name}_mean": np.nan, f"{name}_std": np.nan}
            )
    row["constant"] = bool(n_valid > 0 and constant)
    row["skip"] = bool(n_valid == 0 or row["constant"] or n_valid / n_pixels < min_valid_fraction)
    return row


def assign_folds(
    cities: Sequence[str], folds: Mapping[str, int] | None, test_cities: Sequence[str]
) -> dict[str, int]:
    """City -> fold index. Test cities get :data:`TEST_FOLD`; cities named in ``folds`` keep their index;
    the others get the next free indices, one per city, in alphabetical order."""
    folds = dict(folds or {})
    test = set(test_cities)
    clash = sorted(test & {c for c in folds if c in cities})
    if clash:
        raise UnosatError(f"split: {clash} are both test cities and in split.folds")
    out: dict[str, int] = {}
    used = {int(v) for c, v in folds.items() if c in cities and c not in test}
    nxt = 0
    for city in sorted(set(cities)):
        if city in test:
            out[city] = TEST_FOLD
        elif city in folds:
            out[city] = int(folds[city])
        else:
            while nxt in used:
                nxt += 1
            out[city] = nxt
            used.add(nxt)
    return out


def merge_statistics(
    tiles: pd.DataFrame,
    stats_rows: list[dict],
    fold_of_city: Mapping[str, int],
    quality: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The statistics table: the tile index joined with per-tile statistics, fold and split, and the label
    quality flag of each tile's acquisition when the ``quality`` step ran."""
    stats = pd.DataFrame(stats_rows)
    table = tiles.merge(stats, on="tile_id", how="left", validate="one_to_one")
    if table["n_valid"].isna().any():
        missing = table.loc[table["n_valid"].isna(), "tile_id"].head(3).tolist()
        raise UnosatError(f"statistics missing for tiles such as {missing}")
    table["fold"] = table["city"].map(fold_of_city).astype(int)
    table["split"] = np.where(table["fold"] == TEST_FOLD, "test", "train")
    if quality is not None:
        flags = quality.set_index("scene_id")["quality_flag"].astype(str).str.lower() == "true"
        table["quality_flag"] = table["scene_id"].map(flags).fillna(False).astype(bool)
    return table
