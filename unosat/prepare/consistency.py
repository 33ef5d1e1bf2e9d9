"""Whether a prepared dataset's files all describe the recipe its ``dataset.json`` records.

Training reads ``dataset.json`` (recipe, tiling), ``statistics.csv`` and ``normalization.json`` (the
normalisation), the band stacks and the masks. They are made by different steps; a dataset in which one of
them was made from another recipe (a step redone by hand, files copied between datasets, an interrupted
run) would train silently on wrongly normalised tiles. :func:`check_consistency` refuses it, naming the
file and what disagrees.
"""

from __future__ import annotations

import json

from unosat.errors import UnosatError
from unosat.io.provenance import digest, stored_params
from unosat.io.raster import open_raster
from unosat.prepared import PreparedDataset

#: the steps whose outputs training reads
TRAINING_STEPS = ("bands", "labels", "tiles", "stats")


def check_consistency(dataset: PreparedDataset, steps: tuple[str, ...] = TRAINING_STEPS) -> None:
    """Raise :class:`UnosatError` ``<file>: <problem>`` unless the outputs of ``steps`` agree with the recipe
    recorded in ``dataset.json``: every step done, ``normalization.json``'s bands and units, the statistics'
    band columns, each band stack's band count and recorded recipe, each mask and each scene's statistics
    made from the stack that is there now."""
    manifest = dataset.manifest
    recipe = dataset.recipe
    where = f"{dataset.root}: prepare it again with python prepare.py out_dir={dataset.root} overwrite=true"
    missing = [s for s in steps if s not in manifest.get("steps_done", [])]
    if missing:
        raise UnosatError(f"{dataset.manifest_path}: step(s) {missing} are not done (an interrupted or partial "
                          f"preparation); run python prepare.py out_dir={dataset.root} steps=[{','.join(missing)}]")
    if "stats" in steps:
        norm = json.loads(dataset.normalization_json.read_text())
        if list(norm.get("bands", recipe.bands)) != list(recipe.bands) or norm.get("units", recipe.units) != recipe.units \
                or len(norm.get("mean", [])) != recipe.count:
            raise UnosatError(f"{dataset.normalization_json}: holds the normalisation of bands {norm.get('bands')} "
                              f"({norm.get('units')}), but the dataset's recipe '{recipe.name}' has bands "
                              f"{list(recipe.bands)} ({recipe.units}); {where}")
        header = dataset.statistics_csv.open(errors="replace").readline().strip().split(",")
        lacking = [f"{b}_mean" for b in recipe.bands if f"{b}_mean" not in header]
        if lacking:
            raise UnosatError(f"{dataset.statistics_csv}: no column {lacking} for the recipe '{recipe.name}' "
                              f"(bands {list(recipe.bands)}); {where}")
    for scene_id in manifest.get("scenes", []):
        stack_path = dataset.bands_path(scene_id)
        with open_raster(stack_path) as src:
            count = src.count
        stack_params = stored_params(stack_path) or {}
        if count != recipe.count or stack_params.get("recipe") != recipe.to_dict():
            made = stack_params.get("recipe", {}).get("name", "an unrecorded recipe")
            raise UnosatError(f"{stack_path}: holds {count} band(s) of recipe '{made}', but {dataset.manifest_path.name} "
                              f"records recipe '{recipe.name}' ({recipe.count} bands: {', '.join(recipe.bands)}); {where}")
        made_from = {"bands": digest(stack_params)}
        mask_path = dataset.mask_path(scene_id)
        checks = []
        if "labels" in steps:
            checks.append((mask_path, "mask", ("bands",)))
            made_from["labels"] = digest(stored_params(mask_path) or {})
        if "stats" in steps:
            checks.append((dataset.scene_stats_dir / f"{scene_id}.json", "statistics", ("bands", "labels")))
        for path, what, keys in checks:
            params = stored_params(path) if path.exists() else None
            for key in keys:
                if params is not None and key in made_from and params.get(key) != made_from[key]:
                    source = stack_path.name if key == "bands" else f"masks/{mask_path.name}"
                    raise UnosatError(f"{path}: this {what} was made from another {key} file than {source} "
                                      f"(recipe '{recipe.name}'); {where}")
