"""``predict.py``: checkpoints + scenes -> probability and mask COGs, city products, polygons, evaluation.

Output directory::

    <output>/
      predict.json                         settings, checkpoints, scenes, cities, timings (status: running/complete,
                                           or failed with the reason)
      scenes/<scene_id>_probability.tif    building probability COG (uint8 p*254 or float16; nodata where no data)
      scenes/<scene_id>_mask.tif           COG, 0 background, 1 building, 255 nodata (probability >= threshold)
      cities/<City>_probability.tif        mean probability over the city's acquisitions (aggregate.method != none)
      cities/<City>_mask.tif               the city's buildings (mean >= threshold, or k-of-N vote)
      cities/<City>_buildings.gpkg         polygons (vectorize=true; scenes/<scene_id>_buildings.* without cities)

"building" is the target class of the checkpoints (``classes.names``, :mod:`unosat.classes`): a model trained
with ``classes=water`` writes ``<City>_waters.gpkg``, band descriptions ``water`` / ``water_probability`` and
evaluation keys ``iou_water``...
      evaluation.json                      pixel and object scores against the labels (evaluate=true; the
                                           products of the latest run)
      quicklooks/<name>.png                (quicklooks=true)

Every raster is on its input scene's grid (same CRS and transform), records the parameters it was made with
(a GeoTIFF tag) and is written atomically. A re-run into the same directory with the same settings skips
finished scenes (an interrupted run resumes scene by scene); other settings, or a non-empty directory that is
not a prediction, are refused unless ``overwrite=true``. With several devices (``trainer=ddp``) the ranks
share the scenes; rank 0 then makes the city products.

:func:`predict` is the recipe; each step lives in a module of its own: the settings
(:mod:`~unosat.predict.settings`), the output directory and its manifest (:mod:`~unosat.predict.output_dir`),
the truth for ``evaluate=true`` (:mod:`~unosat.predict.truth`), the per-scene and per-city products
(:mod:`~unosat.predict.scene_products`, :mod:`~unosat.predict.city_products`, written by
:mod:`~unosat.predict.writers`) and the evaluation and quicklooks (:mod:`~unosat.predict.reports`).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from unosat.errors import UnosatError
from unosat.io.atomic import remove_stale_temporaries, write_json_atomic
from unosat.io.lock import launched_as_rank_zero, output_lock
from unosat.predict.aggregate import check_same_grid
from unosat.predict.city_products import group_by_city, make_products
from unosat.predict.distributed import make_runtime
from unosat.predict.ensemble import (
    LoadedModel,
    check_prepared_recipe,
    check_raw_input,
    load_model,
    resolve_raw_input,
)
from unosat.predict.inputs import InputScene, Selection, find_inputs
from unosat.predict.onnx_network import OnnxOptions
from unosat.predict.output_dir import (
    EVALUATION,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    OutputPaths,
    check_output_dir,
    merge_records,
    record_failure,
)
from unosat.predict.reports import evaluate_products, write_quicklooks
from unosat.predict.scene_products import predict_scenes
from unosat.predict.settings import Settings, resolve_checkpoints, resolve_input
from unosat.predict.tracking import log_evaluation
from unosat.predict.truth import find_truth
from unosat.prepared import PreparedDataset
from unosat.scenes import check_scene_polarisations

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict | None:
    """Predict as configured; return the manifest written to ``predict.json`` (None on ranks > 0).

    The output directory is locked for the run (:mod:`unosat.io.lock`; by rank 0 under DDP). A run that
    fails records ``"status": "failed"`` and the reason in ``predict.json`` (unless the directory holds a
    finished prediction or something else, which stay untouched); the same command, once the cause is
    fixed, then runs without ``overwrite=true``.
    """
    out_dir = Path(str(cfg.output)).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UnosatError(f"output {out_dir} exists and is not a directory")
    if not launched_as_rank_zero():
        return predict(cfg, out_dir, {})
    with output_lock(out_dir, "predict.py"):
        state: dict = {"manifest": None, "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            return predict(cfg, out_dir, state)
        except Exception as err:
            record_failure(out_dir, err, state)
            raise


def predict(cfg: DictConfig, out_dir: Path, state: dict) -> dict | None:
    """The body of :func:`run`; puts the manifest it writes in ``state["manifest"]``."""
    started = time.perf_counter()
    settings = Settings(cfg)
    models, gate_model = load_models(cfg, settings)
    input_dir, selection = resolve_input(cfg)
    kind, scenes = find_scenes(cfg, input_dir, selection, models + ([gate_model] if gate_model else []))
    cities = group_by_city(scenes)
    check_city_products(cities, settings)
    truth = find_truth(cities, kind, input_dir, settings) if settings.evaluate else {}
    settings_dict = settings.to_dict(input_dir, kind, models)
    previous, replace_failed = check_output_dir(out_dir, settings_dict, settings.overwrite)
    if replace_failed:
        settings.overwrite = True  # the failed prediction's outputs are redone with these settings

    runtime = make_runtime(cfg.trainer, bool(cfg.channels_last))
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "status": "running",
        "started": state.get("started") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings_dict,
        "checkpoints": [m.identity() for m in models],
        "gate": gate_model.identity() | {"threshold": settings.gate_threshold} if gate_model else None,
        "input": {
            "dir": str(input_dir.resolve()),
            "kind": kind,
            "selection": selection.to_dict(),
            "scenes": [s.scene_id for s in scenes],
        },
        "runtime": runtime.describe(),
        "resumed": previous is not None,
    }
    if runtime.is_global_zero:
        start_output_dir(out_dir, manifest)
        state["manifest"] = manifest
    runtime.barrier()

    paths = OutputPaths(out_dir, settings)
    params = {s.scene_id: settings.scene_params(s, models) for s in scenes}
    done, seconds_scenes = predict_scenes(scenes, models, gate_model, paths, params, settings, runtime)
    if not runtime.is_global_zero:
        return None

    records = {r["scene_id"]: r for r in done}
    manifest["scenes"] = [
        records.get(
            s.scene_id,
            {"scene_id": s.scene_id, "city": s.city, "skipped": True, **paths.scene_files(s.scene_id)},
        )
        for s in scenes
    ]
    t_products = time.perf_counter()
    products = make_products(cities, paths, params, settings)
    timings = {"scenes_s": seconds_scenes, "products_s": time.perf_counter() - t_products}
    if settings.evaluate:
        manifest["evaluation"] = evaluate_products(products, truth, paths, settings)
        manifest["tracking"] = log_evaluation(
            manifest["evaluation"], out_dir / EVALUATION, models, settings.tracking, out_dir
        )
    if settings.quicklooks:
        write_quicklooks(products, cities, paths, settings, truth)
    manifest["products"] = products
    complete_manifest(manifest, previous, timings, started, done, seconds_scenes)
    write_json_atomic(out_dir / MANIFEST, manifest)
    log.info(
        "prediction of %d scenes (%d computed) in %.1f s: %s",
        len(scenes),
        len(done),
        timings["total_s"],
        out_dir,
    )
    return manifest


def load_models(cfg: DictConfig, settings: Settings) -> tuple[list[LoadedModel], LoadedModel | None]:
    """The checkpoints (``ckpt``) and the tile gate's (``gate.ckpt``), loaded; ``settings`` takes their classes
    and the gate's hash."""
    checkpoints = resolve_checkpoints(cfg.get("ckpt"), Path(cfg.paths.log_dir).expanduser())
    onnx_options = (
        OnnxOptions(**OmegaConf.to_container(cfg.onnxruntime, resolve=True))
        if cfg.get("onnxruntime")
        else None
    )
    models = [load_model(p, onnx_options) for p in checkpoints]
    settings.resolve_classes(models)
    gate_model = load_model(settings.gate_ckpt, onnx_options) if settings.gate_ckpt is not None else None
    if gate_model is not None:
        settings.gate_sha256 = gate_model.sha256
    return models, gate_model


def find_scenes(
    cfg: DictConfig, input_dir: Path, selection: Selection, all_models: list[LoadedModel]
) -> tuple[str, list[InputScene]]:
    """``(kind, scenes)``: the selected scenes of ``input_dir`` (raw or prepared), checked against every
    model's band recipe and raw-input settings."""
    discovery = instantiate(cfg.discovery)
    mismatch = str(cfg.get("input_mismatch", "refuse"))
    raw_input = resolve_raw_input(all_models, discovery, mismatch)
    kind, scenes = find_inputs(input_dir, selection, discovery, raw_input)
    if kind == "raw":
        for scene in scenes:
            for m in all_models:
                check_scene_polarisations(
                    scene.scene, m.recipe, f"checkpoint {m.path or m.name}'s band recipe"
                )
    if kind == "prepared":
        check_prepared_recipe(all_models, PreparedDataset(input_dir).recipe, input_dir)
        if mismatch == "refuse":
            check_raw_input(
                all_models, PreparedDataset(input_dir).raw_input(), f"the prepared dataset {input_dir}"
            )
    return kind, scenes


def start_output_dir(out_dir: Path, manifest: dict) -> None:
    """Create ``out_dir``, remove what an interrupted run left half-written, and write the running manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temporaries(out_dir)
    if removed:
        log.info("removed %d temporary files left by an interrupted run", removed)
    write_json_atomic(out_dir / MANIFEST, manifest)


def check_city_products(cities: dict[str, list[InputScene]], settings: Settings) -> None:
    """Before predicting: a city's acquisitions share one grid (when they are aggregated), and the
    vectorisation settings are valid (when polygons are made)."""
    if settings.aggregate.method != "none":
        for city, members in cities.items():
            check_same_grid(city, {s.scene_id: s.grid for s in members})
    if settings.vectorize:
        settings.vector_config()


def complete_manifest(
    manifest: dict,
    previous: dict | None,
    timings: dict,
    started: float,
    done: list[dict],
    seconds_scenes: float,
) -> None:
    """Mark ``manifest`` complete with its timings, keeping the records of earlier runs into the same directory
    that this run did not redo."""
    if previous is not None:  # the directory also holds what earlier runs predicted (e.g. other cities)
        manifest["scenes"] = merge_records(previous.get("scenes", []), manifest["scenes"], "scene_id")
        manifest["products"] = merge_records(previous.get("products", []), manifest["products"], "name")
    timings["total_s"] = time.perf_counter() - started
    pixels = sum(r.get("pixels", 0) for r in done)
    timings["megapixels_per_s"] = pixels / 1e6 / seconds_scenes if pixels and seconds_scenes > 0 else None
    manifest.update(
        status="complete", timings=timings, finished=datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
