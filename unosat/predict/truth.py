"""The truth a prediction is scored against (``evaluate=true``): each product's label vectors, label
raster or prepared mask, found and opened before anything is predicted.
"""

from __future__ import annotations

from pathlib import Path

from unosat.errors import UnosatError
from unosat.predict.inputs import InputScene
from unosat.predict.settings import Settings
from unosat.prepared import PreparedDataset
from unosat.scenes import find_label_file, find_raster_label


def label_file(
    scene: InputScene, settings: Settings, kind: str = "raw", input_dir: Path | None = None
) -> Path:
    """The truth of ``scene`` for evaluation: its city's label vectors, its label raster, or (``labels=prepared``)
    the prepared dataset's mask. Raises :class:`UnosatError` saying what was looked for where."""
    source = settings.labels.source
    if source == "prepared":
        if kind != "prepared":
            raise UnosatError(
                f"labels=prepared scores against a prepared dataset's masks, but input {input_dir} holds "
                "raw scenes: use labels=vector or labels=raster"
            )
        dataset = PreparedDataset(input_dir)
        if dataset.manifest.get("settings", {}).get("labels", {}).get("source") == "none":
            raise UnosatError(
                f"evaluate=true, labels=prepared: {input_dir} was prepared without labels (labels=none)"
            )
        path = dataset.mask_path(scene.scene_id)
        if not path.is_file():
            raise UnosatError(
                f"evaluate=true, labels=prepared: {path} is missing; run prepare.py's labels step on "
                f"{input_dir}"
            )
        return path
    dirs = settings.labels_dirs or list(scene.label_dirs)
    where = ", ".join(map(str, dirs)) or "(no directory: set labels.dirs)"
    if source == "raster":
        found = find_raster_label(dirs, settings.labels_template, scene.scene)
        if found is None:
            raise UnosatError(
                f"evaluate=true: no label raster {settings.labels_template.format(**scene.scene.fields())} "
                f"for scene {scene.scene_id} of {scene.city} under {where}"
            )
        return found
    found = find_label_file(dirs, settings.labels_template, scene.scene)
    if found is None:
        stem = settings.labels_template.format(**scene.scene.fields())
        raise UnosatError(
            f"evaluate=true: no label file {stem}.<shp|gpkg|geojson|...> for {scene.city} under {where}"
        )
    return found


def find_truth(
    cities: dict[str, list[InputScene]], kind: str, input_dir: Path, settings: Settings
) -> dict[str, Path]:
    """Every product's truth, found and opened before anything is predicted: product name -> label file.

    A city product is scored against its first acquisition's labels (the city's label vectors; with label
    rasters, the first acquisition's raster); with ``aggregate.method=none`` each scene against its own.
    """
    from unosat.predict.evaluate import label_reader

    truth = {}
    for city, members in cities.items():
        per_scene = settings.aggregate.method == "none"
        for scene in members if per_scene else members[:1]:
            path = label_file(scene, settings, kind, input_dir)
            with label_reader(
                path, scene.grid, settings.labels, bool(settings.evaluation["all_touched"]), scene.scene_id
            ):
                pass  # opens it: a missing CRS, an unreadable file or no feature fails here, before predicting
            truth[scene.scene_id if per_scene else city] = path
    return truth
