"""Step ``bands``: VV/VH GeoTIFFs of a scene -> one band stack GeoTIFF, streamed by row blocks.

The stack keeps the scene's CRS and transform; nodata (any configured nodata value, the file's own nodata
tag, NaN or infinity in either polarisation, see :mod:`unosat.raw_input`) becomes NaN in every band, the one
nodata mask carried with the scene. The files' values are checked against the configured units first.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unosat.bands import BandRecipe, polarisations_to_stack
from unosat.io.provenance import file_identity, needs_work
from unosat.io.raster import PARAMS_TAG, open_raster, read_window, row_windows, stack_profile, write_rows
from unosat.raw_input import RawInput, UnitsCheck
from unosat.scenes import Scene, check_scene_polarisations, check_scene_units, scene_grid, scene_nodata


@dataclass(frozen=True)
class BandStackTask:
    """Everything one worker needs to make one scene's stack (picklable)."""

    scene: Scene
    out_path: Path
    recipe: BandRecipe
    raw: RawInput
    block_rows: int
    overwrite: bool
    units_check: UnitsCheck = UnitsCheck()


def stack_params(task: BandStackTask) -> dict:
    return {
        "step": "bands",
        "scene_id": task.scene.scene_id,
        "recipe": task.recipe.to_dict(),
        "nodata_values": [float(v) for v in task.raw.nodata_values],
        "input_units": task.raw.units,
        "file_nodata": task.raw.file_nodata,
        "sources": {
            pol: {**file_identity(p), "band": b} for pol, (p, b) in sorted(task.scene.sources.items())
        },
    }


def make_band_stack(task: BandStackTask) -> dict:
    """Write the scene's band stack (skipped when already done with the same parameters).

    Returns the scene record: identity, grid, and pixel counts (valid, nodata, non-finite).
    """
    scene = task.scene
    grid = scene_grid(scene)
    params = stack_params(task)
    record = {
        **scene.to_record(),
        "height": grid.height,
        "width": grid.width,
        "crs": grid.crs.to_string(),
        "transform": json.dumps(list(grid.transform)[:6]),
    }
    if not needs_work(task.out_path, params, task.overwrite):
        with open_raster(task.out_path) as src:
            counts = json.loads(src.tags()["UNOSAT_COUNTS"])
        return {**record, **counts, "skipped": True}

    check_scene_units(scene, task.raw, task.units_check)
    vh_nodata, vv_nodata = scene_nodata(scene, task.raw)
    counts = {"n_valid": 0, "n_nodata": 0, "n_nonfinite": 0}
    profile = stack_profile(grid, task.recipe.count, "float32", float("nan"))

    check_scene_polarisations(scene, task.recipe)
    needed = task.recipe.needs()
    with contextlib.ExitStack() as files:
        srcs = {pol: files.enter_context(open_raster(scene.sources[pol][0])) for pol in needed}

        def blocks() -> Iterator[tuple[int, np.ndarray]]:
            for window in row_windows(grid.width, grid.height, task.block_rows):
                vh, vv = (
                    read_window(srcs[p], window, scene.sources[p][1]) if p in srcs else None
                    for p in ("vh", "vv")
                )
                stack, valid, n_nonfinite = polarisations_to_stack(
                    vh, vv, task.recipe, vh_nodata, task.raw.units, vv_nodata
                )
                n_valid = int(valid.sum())
                counts["n_valid"] += n_valid
                counts["n_nodata"] += valid.size - n_valid
                counts["n_nonfinite"] += n_nonfinite
                yield window.row_off, stack

        tags = {
            PARAMS_TAG: json.dumps(params, sort_keys=True),
            "UNOSAT_SCENE": json.dumps(scene.to_record()),
        }
        write_rows(
            task.out_path,
            profile,
            blocks(),
            tags,
            list(task.recipe.bands),
            late_tags=lambda: {"UNOSAT_COUNTS": json.dumps(counts)},
        )
    return {**record, **counts, "skipped": False}
