"""Step ``labels``: building labels -> a mask on the scene grid (0 background, 1 building, 255 ignore).

Vector labels (any format OGR reads) are reprojected to the scene CRS, repaired, and rasterized block by
block (``all_touched`` as configured; the UNOSAT team used true). Raster labels (one mask per scene) are
aligned to the scene grid with nearest-neighbour resampling (:class:`~unosat.io.labels.RasterAligner`: their own
nodata tag, values other than 0/1/nodata refused unless ``positive_values`` says which are the target). Wherever
the band stack is nodata the mask is 255 (ignored by losses and metrics), never 0 or 1: the label polygons also
cover the swath's nodata wedge.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unosat.classes import IGNORE_INDEX, TARGET
from unosat.io.labels import LabelsConfig, RasterAligner, Unlabelled, VectorBurner
from unosat.io.provenance import digest, file_identity, needs_work, stored_params
from unosat.io.raster import (
    PARAMS_TAG,
    Grid,
    open_raster,
    read_window,
    row_windows,
    stack_profile,
    write_rows,
)


@dataclass(frozen=True)
class LabelTask:
    scene_id: str
    stack_path: Path
    label_path: Path | None  # None: unlabelled (labels.source none)
    out_path: Path
    config: LabelsConfig
    block_rows: int
    overwrite: bool


def label_params(task: LabelTask) -> dict:
    return {
        "step": "labels",
        "scene_id": task.scene_id,
        "source": task.config.source,
        "label_file": file_identity(task.label_path) if task.label_path is not None else None,
        "all_touched": task.config.all_touched if task.config.source == "vector" else None,
        "raster_nodata": task.config.raster_nodata if task.config.source == "raster" else None,
        "positive_values": list(task.config.positive_values or [])
        if task.config.source == "raster"
        else None,
        "bands": digest(stored_params(task.stack_path) or {}),
    }


def make_label_mask(task: LabelTask) -> dict:
    """Write the scene's label mask (skipped when done with the same parameters); return its counts."""
    params = label_params(task)
    if not needs_work(task.out_path, params, task.overwrite):
        with open_raster(task.out_path) as src:
            counts = json.loads(src.tags()["UNOSAT_COUNTS"])
        return {"scene_id": task.scene_id, **counts, "skipped": True}

    with open_raster(task.stack_path) as stack:
        grid = Grid.of(stack)
        if task.config.source == "none":
            burner = Unlabelled()
        elif task.config.source == "vector":
            burner = VectorBurner(task.label_path, grid, task.config.all_touched, task.scene_id)
        else:
            burner = RasterAligner(
                task.label_path, grid, task.config.raster_nodata, task.config.positive_values
            )
        counts = {
            "n_background": 0,
            "n_building": 0,
            "n_ignore": 0,
            "n_polygons": burner.n_polygons,
            "intersects": burner.intersects,
        }

        def blocks() -> Iterator[tuple[int, np.ndarray]]:
            with burner:
                for window in row_windows(grid.width, grid.height, task.block_rows):
                    mask = burner.burn(window)
                    valid = np.isfinite(read_window(stack, window, 1))
                    mask[~valid] = IGNORE_INDEX
                    counts["n_building"] += int(np.count_nonzero(mask == TARGET))
                    counts["n_ignore"] += int(np.count_nonzero(mask == IGNORE_INDEX))
                    counts["n_background"] += int(np.count_nonzero(mask == 0))
                    yield window.row_off, mask[None]

        write_rows(
            task.out_path,
            stack_profile(grid, 1, "uint8", IGNORE_INDEX),
            blocks(),
            {PARAMS_TAG: json.dumps(params, sort_keys=True), "UNOSAT_LABELS": str(task.label_path)},
            [
                "label: 0 background, 1 building, 255 ignore"
                if task.label_path is not None
                else "label: none (unlabelled scene), 255 everywhere"
            ],
            late_tags=lambda: {"UNOSAT_COUNTS": json.dumps(counts)},
        )
    return {"scene_id": task.scene_id, **counts, "skipped": False}
