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
from rasterio.windows import Window

from unosat.bands import BandRecipe, polarisations_to_stack
from unosat.errors import UnosatError
from unosat.io.raster import PARAMS_TAG, Grid, open_raster, read_window, row_blocks, stack_profile, write_rows
from unosat.prepare.outputs import file_identity, needs_work
from unosat.raw_input import RawInput, UnitsCheck, check_file_units
from unosat.scenes import Scene


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


def scene_grid(scene: Scene) -> Grid:
    """The grid shared by a scene's VV and VH files; error naming both files if they differ."""
    grids = {}
    for pol in sorted(scene.sources):
        path, band = scene.sources[pol]
        with open_raster(path) as src:
            if band > src.count:
                raise UnosatError(f"{path}: has {src.count} band(s), the {pol.upper()} band {band} does not exist")
            grids[pol] = Grid.of(src)
    for pol, grid in grids.items():
        if grid.crs is None:
            raise UnosatError(f"{scene.sources[pol][0]}: the raster has no CRS")
    if len(grids) == 1:
        return next(iter(grids.values()))
    diff = grids["vh"].differences(grids["vv"])
    if diff:
        raise UnosatError(
            f"VH and VV of scene {scene.scene_id} are not on the same grid: {scene.vh} vs {scene.vv} differ in "
            + "; ".join(diff)
        )
    return grids["vv"]


def check_scene_polarisations(scene: Scene, recipe: BandRecipe, what: str = "band recipe") -> None:
    """Refuse a recipe that needs a polarisation the scene does not have, naming both."""
    missing = [p for p in recipe.needs() if p not in scene.sources]
    if missing:
        has = "/".join(p.upper() for p in sorted(scene.sources))
        raise UnosatError(f"scene {scene.scene_id} ({next(iter(scene.sources.values()))[0]}) has only {has}, but {what} "
                          f"'{recipe.name}' {list(recipe.bands)} needs {missing[0].upper()}: use bands={has.lower()}_db "
                          f"or bands={has.lower()} for single-polarisation data")


def scene_nodata(scene: Scene, raw: RawInput) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nodata values of the scene's VH and VV bands: the configured ones plus each file's own tag."""
    out = []
    for pol in ("vh", "vv"):
        if pol not in scene.sources:
            out.append(())
            continue
        path, band = scene.sources[pol]
        with open_raster(path) as src:
            tag = src.nodatavals[band - 1] if band - 1 < len(src.nodatavals) else None
        out.append(raw.nodata_of(tag))
    return out[0], out[1]


def check_scene_units(scene: Scene, raw: RawInput, check: UnitsCheck, setting: str = "discovery.units") -> None:
    """Refuse a scene whose files' values contradict ``raw.units`` (see :func:`unosat.raw_input.check_file_units`)."""
    for path, band in sorted(set(scene.sources.values())):
        check_file_units(path, band, raw, check, setting)


def stack_params(task: BandStackTask) -> dict:
    return {
        "step": "bands",
        "scene_id": task.scene.scene_id,
        "recipe": task.recipe.to_dict(),
        "nodata_values": [float(v) for v in task.raw.nodata_values],
        "input_units": task.raw.units,
        "file_nodata": task.raw.file_nodata,
        "sources": {pol: {**file_identity(p), "band": b} for pol, (p, b) in sorted(task.scene.sources.items())},
    }


def make_band_stack(task: BandStackTask) -> dict:
    """Write the scene's band stack (skipped when already done with the same parameters).

    Returns the scene record: identity, grid, and pixel counts (valid, nodata, non-finite).
    """
    scene = task.scene
    grid = scene_grid(scene)
    params = stack_params(task)
    record = {**scene.to_record(), "height": grid.height, "width": grid.width,
              "crs": grid.crs.to_string(), "transform": json.dumps(list(grid.transform)[:6])}
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
            for row_off, rows in row_blocks(grid.height, task.block_rows):
                window = Window(0, row_off, grid.width, rows)
                vh, vv = (read_window(srcs[p], window, scene.sources[p][1]) if p in srcs else None
                          for p in ("vh", "vv"))
                stack, valid, n_nonfinite = polarisations_to_stack(
                    vh, vv, task.recipe, vh_nodata, task.raw.units, vv_nodata
                )
                n_valid = int(valid.sum())
                counts["n_valid"] += n_valid
                counts["n_nodata"] += valid.size - n_valid
                counts["n_nonfinite"] += n_nonfinite
                yield row_off, stack

        tags = {
            PARAMS_TAG: json.dumps(params, sort_keys=True),
            "UNOSAT_SCENE": json.dumps(scene.to_record()),
        }
        write_rows(task.out_path, profile, blocks(), tags, list(task.recipe.bands),
                   late_tags=lambda: {"UNOSAT_COUNTS": json.dumps(counts)})
    return {**record, **counts, "skipped": False}
