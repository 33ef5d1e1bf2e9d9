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
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from rasterio.windows import Window

from unosat.checkpoint import load_checkpoint
from unosat.classes import CLASS_NAMES, TARGET, class_names, plural
from unosat.errors import UnosatError, find_user_error
from unosat.io.atomic import is_temporary, remove_stale_temporaries, write_json_atomic
from unosat.io.cog import CogOptions, CogRowWriter, write_cog
from unosat.io.labels import LabelsConfig
from unosat.io.lock import LOCK_NAME, launched_as_rank_zero, output_lock
from unosat.io.provenance import canonical, digest, needs_work
from unosat.io.raster import PARAMS_TAG, Grid, gdal_env, open_raster, read_window, row_blocks
from unosat.predict.aggregate import (
    MASK_NODATA,
    AggregateConfig,
    check_same_grid,
    decode_stack,
    mean_probability,
    threshold_mask,
    vote,
)
from unosat.predict.distributed import Runtime, make_runtime
from unosat.predict.ensemble import (
    Ensemble,
    LoadedModel,
    check_prepared_recipe,
    check_raw_input,
    load_model,
    resolve_raw_input,
)
from unosat.predict.gate import TileGate
from unosat.predict.inputs import InputScene, Selection, find_inputs
from unosat.predict.onnx_network import OnnxOptions
from unosat.predict.probability import check_dtype, encode_probability, probability_nodata
from unosat.predict.sliding_window import NodataSkip, SceneStats, WindowConfig, predict_scene
from unosat.predict.tracking import TrackingConfig, log_evaluation
from unosat.predict.vectorize import VectorizeConfig, vectorize
from unosat.prepared import PreparedDataset
from unosat.scenes import check_scene_polarisations, find_label_file, find_raster_label

log = logging.getLogger(__name__)

FORMAT = "unosat-prediction"
FORMAT_VERSION = 1
MANIFEST = "predict.json"
STATUS_FAILED = "failed"
SCENES_DIR, CITIES_DIR, QUICKLOOK_DIR = "scenes", "cities", "quicklooks"
EVALUATION = "evaluation.json"
BEST_CHECKPOINTS = "train/runs/*/checkpoints/best-*.ckpt"
#: float16 probabilities are stored as 16-bit IEEE floats in Float32 GeoTIFF bands (GDAL's NBITS=16)
HALF_FLOAT_BITS = 16


# ----------------------------------------------------------------------------- settings


def latest_segmentation_checkpoint(log_dir: Path) -> Path | None:
    """The best checkpoint of the latest training run of a segmentation model (tile classifiers skipped)."""
    for path in sorted(log_dir.glob(BEST_CHECKPOINTS), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            task = load_checkpoint(path)["unosat"].get("task", "segmentation")
        except UnosatError:
            continue
        if task == "segmentation":
            return path
    return None


def resolve_checkpoints(value, log_dir: Path) -> list[Path]:
    """``ckpt``: a path, a list of paths, or null (the best checkpoint of the latest segmentation training
    run)."""
    if value is None or value == "":
        found = latest_segmentation_checkpoint(log_dir)
        if found is None:
            raise UnosatError(f"ckpt=null: no best-*.ckpt of a training run under {log_dir}/train/runs; train one "
                              "with python train.py, or pass ckpt=PATH")
        log.info("checkpoint: %s (best of the latest training run)", found)
        return [found]
    values = list(value) if isinstance(value, list | tuple | ListConfig) else [value]
    if not values:
        raise UnosatError("ckpt=[] names no checkpoint")
    return [Path(str(v)).expanduser() for v in values]


def resolve_input(cfg: DictConfig) -> tuple[Path, Selection]:
    """The input directory and which of its scenes to predict."""
    cities = list(cfg.cities) if cfg.get("cities") is not None else None
    if cfg.get("input") in (None, ""):
        path = Path(cfg.paths.demo_dir).expanduser() / "raw"
        if cities is None:
            cities = list(cfg.demo_cities)
    else:
        path = Path(str(cfg.input)).expanduser()
    fold = cfg.get("fold")
    return path, Selection(tuple(cities) if cities is not None else None, cfg.get("dataset_split"),
                           int(fold) if fold is not None else None)


class Settings:
    """Everything that decides the outputs, built and checked before any work."""

    def __init__(self, cfg: DictConfig):
        self.window: WindowConfig = instantiate(cfg.window)
        self.tta: str = str(cfg.tta)
        self.threshold = float(cfg.threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise UnosatError(f"threshold must be in [0, 1], got {self.threshold}")
        self.dtype = check_dtype(str(cfg.probability_dtype))
        self.block_rows = int(cfg.block_rows)
        if self.block_rows <= 0:
            raise UnosatError(f"block_rows must be positive, got {self.block_rows}")
        self.cog: CogOptions = instantiate(cfg.cog)
        self.aggregate: AggregateConfig = instantiate(cfg.aggregate)
        self.vectorize = bool(cfg.vectorize)
        self.vectorization = cfg.vectorization
        self.evaluate = bool(cfg.evaluate)
        self.evaluation = OmegaConf.to_container(cfg.evaluation, resolve=True)
        self.quicklooks = bool(cfg.quicklooks)
        self.quicklook = OmegaConf.to_container(cfg.quicklook, resolve=True)
        self.labels: LabelsConfig = instantiate(cfg.labels)
        self.labels_template = self.labels.template
        self.labels_dirs = [Path(str(d)).expanduser() for d in self.labels.dirs]
        self.precision = str(cfg.trainer.get("precision", "32-true"))
        gate = cfg.get("gate") or {}
        self.gate_ckpt = Path(str(gate.ckpt)).expanduser() if gate.get("ckpt") else None
        if self.gate_ckpt is not None and gate.get("threshold") is None:
            raise UnosatError("gate.ckpt is set but gate.threshold is not: set the probability below which windows are skipped")
        self.gate_threshold = float(gate.threshold) if self.gate_ckpt is not None else None
        self.gate_sha256 = ""
        self.overwrite = bool(cfg.overwrite)
        if self.evaluate and not self.vectorize:
            raise UnosatError("evaluate=true scores polygons too: it needs vectorize=true")
        self.tracking: TrackingConfig = instantiate(cfg.tracking)
        requested = (cfg.get("classes") or {}).get("names")
        self.requested_classes = class_names(requested) if requested is not None else None
        self.classes: tuple[str, ...] = CLASS_NAMES  # the checkpoints', set by resolve_classes

    @property
    def target(self) -> str:
        """The target class's name (``building`` by default): names bands, polygon products and scores."""
        return self.classes[TARGET]

    def resolve_classes(self, models: Sequence[LoadedModel]) -> None:
        """Take the class names of the segmentation checkpoints (which must agree); ``classes.names``, when
        set, must be theirs. Raises :class:`UnosatError` naming the checkpoints otherwise."""
        recorded = {m.classes: m for m in models}
        if len(recorded) > 1:
            listing = "; ".join(f"{m.path or m.name}: {list(c)}" for c, m in recorded.items())
            raise UnosatError(f"the checkpoints were trained on different classes ({listing}); an ensemble averages "
                              "the probability of one class")
        self.classes = next(iter(recorded)) if recorded else CLASS_NAMES
        if self.requested_classes is not None and self.requested_classes != self.classes:
            model = next(iter(recorded.values()))
            raise UnosatError(f"classes.names={list(self.requested_classes)} but checkpoint {model.path or model.name} "
                              f"was trained on {list(self.classes)}; leave classes.names=null to use the checkpoint's")
        if (self.tracking.wandb or self.tracking.mlflow) and not self.evaluate:
            raise UnosatError("tracking.wandb / tracking.mlflow log the evaluation: they need evaluate=true")

    def vector_config(self) -> VectorizeConfig:
        return instantiate(self.vectorization)

    def scene_params(self, scene: InputScene, models: Sequence[LoadedModel]) -> dict:
        """Parameters of a scene's probability raster."""
        params = {"product": "scene_probability", "scene_id": scene.scene_id, "input": scene.identity(),
                  "models": [m.sha256 for m in models], "window": self.window.to_dict(), "tta": self.tta,
                  "precision": self.precision, "dtype": self.dtype, "threshold": self.threshold}
        if self.gate_ckpt is not None:
            params["gate"] = {"sha256": self.gate_sha256, "threshold": self.gate_threshold}
        return params

    def to_dict(self, input_dir: Path, kind: str, models: Sequence[LoadedModel]) -> dict:
        """The settings recorded in ``predict.json`` and compared on re-runs (which scenes of the input are
        predicted is not one: more cities can be predicted into the same directory later)."""
        out = {
            "input": str(input_dir.resolve()), "kind": kind,
            "checkpoints": [m.sha256 for m in models], "window": self.window.to_dict(), "tta": self.tta,
            "precision": self.precision, "threshold": self.threshold, "probability_dtype": self.dtype,
            "aggregate": self.aggregate.to_dict(), "vectorize": self.vectorize, "evaluate": self.evaluate,
        }
        if self.gate_ckpt is not None:
            out["gate"] = {"sha256": self.gate_sha256, "threshold": self.gate_threshold}
        if self.vectorize:
            out["vectorization"] = {k: v for k, v in asdict(self.vector_config()).items() if k != "block_rows"}
        if self.evaluate:
            out["evaluation"] = self.evaluation
        if self.classes != CLASS_NAMES:  # recorded when not the default (earlier predictions stay resumable)
            out["classes"] = list(self.classes)
        return json.loads(canonical(out))


def foreign_entries(out_dir: Path) -> list[str]:
    """Names in ``out_dir`` other than this run's lock file and temporaries of interrupted writes."""
    return sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_NAME and not is_temporary(p))


def check_output_dir(out_dir: Path, settings: dict, overwrite: bool) -> tuple[dict | None, bool]:
    """``(previous, replace_failed)``: the manifest of the prediction already in ``out_dir`` when it was made
    with these settings (to resume or extend it), else None; and whether ``out_dir`` holds a prediction that
    *failed* with other settings, whose outputs this run replaces without ``overwrite``. Raises
    :class:`UnosatError` for a prediction made with other settings that did not fail, or a non-empty
    directory that is not a prediction, unless ``overwrite``."""
    if not out_dir.exists():
        return None, False
    if not out_dir.is_dir():
        raise UnosatError(f"output {out_dir} exists and is not a directory")
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        entries = foreign_entries(out_dir)
        if entries and not overwrite:
            raise UnosatError(f"output {out_dir} is not empty and holds no {MANIFEST}: it is not a unosat prediction "
                              f"(it holds {sorted(entries)[:5]}); choose another output, or overwrite=true to write "
                              "into it anyway")
        return None, False
    try:
        previous = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        if overwrite:
            return None, False
        raise UnosatError(f"{manifest_path}: unreadable ({err}); overwrite=true replaces the prediction") from None
    if not isinstance(previous, dict) or previous.get("format") != FORMAT:
        if overwrite:
            return None, False
        raise UnosatError(f"{manifest_path} is not a unosat prediction manifest; overwrite=true to write into it anyway")
    old = previous.get("settings") or {}
    differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if differ and previous.get("status") == STATUS_FAILED:
        log.warning("output %s holds a prediction that failed (%s) with other settings: this run replaces it", out_dir,
                    previous.get("reason", "no reason recorded"))
        return None, True
    if differ and not overwrite:
        details = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in differ)
        raise UnosatError(f"output {out_dir} holds a prediction made with other settings ({details}); choose another "
                          "output, or overwrite=true to redo it")
    return (None if differ else previous), False


def merge_records(previous: list[dict], current: list[dict], key: str) -> list[dict]:
    """Records of an earlier run into the same directory that this run did not redo, then this run's."""
    mine = {r[key] for r in current}
    return [r for r in previous if r.get(key) not in mine] + current


# -------------------------------------------------------------------------------- writers


def _store_dtype(dtype: str) -> tuple[str, int | None]:
    """GeoTIFF band type and NBITS for a probability encoding."""
    return ("uint8", None) if dtype == "uint8" else ("float32", HALF_FLOAT_BITS)


def write_probability(path: Path, grid: Grid, blocks: Iterator[tuple[int, np.ndarray]], dtype: str,
                      options: CogOptions, params: dict, extra_tags: dict | None = None,
                      target: str = CLASS_NAMES[TARGET], threshold: float | None = None) -> None:
    """Probability COG from float32 ``(row_off, (rows, width))`` blocks (NaN = nodata); its band is described
    as ``<target>_probability``; with ``threshold``, stored values keep each pixel's side of it (see
    :func:`~unosat.predict.probability.encode_probability`)."""
    store, nbits = _store_dtype(dtype)
    encoded = ((r, encode_probability(p, dtype, threshold).astype(store, copy=False)[None]) for r, p in blocks)
    write_cog(path, grid, store, probability_nodata(dtype), encoded, options,
              tags={PARAMS_TAG: canonical(params), **(extra_tags or {})},
              band_descriptions=[f"{target}_probability"], nbits=nbits)


def write_mask(path: Path, grid: Grid, blocks: Iterator[tuple[int, np.ndarray]], options: CogOptions,
               params: dict, target: str = CLASS_NAMES[TARGET]) -> None:
    """Mask COG (0/1/255) from uint8 ``(row_off, (rows, width))`` blocks; its band is described as ``target``."""
    write_cog(path, grid, "uint8", MASK_NODATA, ((r, m[None]) for r, m in blocks), options, categorical=True,
              tags={PARAMS_TAG: canonical(params)}, band_descriptions=[target])


def read_rows(paths: Sequence[Path], grid: Grid, block_rows: int) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Band 1 of each raster (all on ``grid``), ``block_rows`` full-width rows at a time."""
    import contextlib

    with gdal_env(), contextlib.ExitStack() as stack:
        srcs = [stack.enter_context(open_raster(p)) for p in paths]
        for row_off, n in row_blocks(grid.height, block_rows):
            window = Window(0, row_off, grid.width, n)
            yield row_off, [read_window(src, window, 1) for src in srcs]


def masked_as_they_pass(blocks: Iterator[tuple[int, np.ndarray]], threshold: float,
                        mask_out: CogRowWriter) -> Iterator[tuple[int, np.ndarray]]:
    """Passes float probability blocks ``(row_off, (rows, width))`` on unchanged, writing their mask
    (``p >= threshold``, 255 where NaN) to ``mask_out`` on the way: the mask sees the float values."""
    for row_off, prob in blocks:
        mask_out.write(row_off, threshold_mask(prob, threshold))
        yield row_off, prob


# ------------------------------------------------------------------------------ the run


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


def failure_reason(err: BaseException) -> str:
    """One line saying why a run failed."""
    user_error = find_user_error(err)
    if user_error is not None:
        return str(user_error)
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def record_failure(out_dir: Path, err: BaseException, state: dict) -> None:
    """Write ``"status": "failed"`` and the reason into ``predict.json``: into this run's manifest when it
    wrote one, else when the directory holds nothing but a failed prediction (or nothing at all)."""
    manifest_path = out_dir / MANIFEST
    manifest = state.get("manifest")
    if manifest is None:
        if manifest_path.exists():
            try:
                previous = json.loads(manifest_path.read_text())
            except (OSError, json.JSONDecodeError):
                return
            if not isinstance(previous, dict) or previous.get("format") != FORMAT or previous.get("status") != STATUS_FAILED:
                return  # a finished or interrupted prediction, or not ours: left as it is
        elif foreign_entries(out_dir):
            return
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "started": state.get("started"), "settings": None}
    manifest = {**manifest, "status": STATUS_FAILED, "reason": failure_reason(err),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        write_json_atomic(manifest_path, manifest)
    except OSError as write_error:
        log.warning("could not record the failure in %s: %s", manifest_path, write_error)


def predict(cfg: DictConfig, out_dir: Path, state: dict) -> dict | None:
    """The body of :func:`run`; puts the manifest it writes in ``state["manifest"]``."""
    started = time.perf_counter()
    settings = Settings(cfg)
    checkpoints = resolve_checkpoints(cfg.get("ckpt"), Path(cfg.paths.log_dir).expanduser())
    onnx_options = OnnxOptions(**OmegaConf.to_container(cfg.onnxruntime, resolve=True)) if cfg.get("onnxruntime") else None
    models = [load_model(p, onnx_options) for p in checkpoints]
    settings.resolve_classes(models)
    gate_model = load_model(settings.gate_ckpt, onnx_options) if settings.gate_ckpt is not None else None
    if gate_model is not None:
        settings.gate_sha256 = gate_model.sha256
    input_dir, selection = resolve_input(cfg)
    all_models = models + ([gate_model] if gate_model else [])
    discovery = instantiate(cfg.discovery)
    mismatch = str(cfg.get("input_mismatch", "refuse"))
    raw_input = resolve_raw_input(all_models, discovery, mismatch)
    kind, scenes = find_inputs(input_dir, selection, discovery, raw_input)
    if kind == "raw":
        for scene in scenes:
            for m in all_models:
                check_scene_polarisations(scene.scene, m.recipe, f"checkpoint {m.path or m.name}'s band recipe")
    if kind == "prepared":
        check_prepared_recipe(all_models, PreparedDataset(input_dir).recipe, input_dir)
        if mismatch == "refuse":
            check_raw_input(all_models, PreparedDataset(input_dir).raw_input(), f"the prepared dataset {input_dir}")
    cities = group_by_city(scenes)
    if settings.aggregate.method != "none":
        for city, members in cities.items():
            check_same_grid(city, {s.scene_id: s.grid for s in members})
    if settings.vectorize:
        settings.vector_config()
    truth = find_truth(cities, kind, input_dir, settings) if settings.evaluate else {}
    settings_dict = settings.to_dict(input_dir, kind, models)
    previous, replace_failed = check_output_dir(out_dir, settings_dict, settings.overwrite)
    if replace_failed:
        settings.overwrite = True  # the failed prediction's outputs are redone with these settings

    runtime = make_runtime(cfg.trainer, bool(cfg.channels_last))
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "status": "running",
        "started": state.get("started") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings_dict, "checkpoints": [m.identity() for m in models],
        "gate": gate_model.identity() | {"threshold": settings.gate_threshold} if gate_model else None,
        "input": {"dir": str(input_dir.resolve()), "kind": kind, "selection": selection.to_dict(),
                  "scenes": [s.scene_id for s in scenes]},
        "runtime": runtime.describe(), "resumed": previous is not None,
    }
    if runtime.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temporaries(out_dir)
        if removed:
            log.info("removed %d temporary files left by an interrupted run", removed)
        write_json_atomic(out_dir / MANIFEST, manifest)
        state["manifest"] = manifest
    runtime.barrier()

    ensemble = Ensemble(models, runtime, settings.tta)
    skips = [NodataSkip()]
    if gate_model is not None:
        skips.append(TileGate.attach(gate_model, settings.gate_threshold, ensemble))
    paths = OutputPaths(out_dir, settings)
    params = {s.scene_id: settings.scene_params(s, models) for s in scenes}
    pending = [s for s in scenes if scene_pending(s, paths, params[s.scene_id], settings)]
    if len(pending) < len(scenes):
        log.info("%d of %d scenes already predicted with these settings: skipped", len(scenes) - len(pending), len(scenes))
    t_scenes = time.perf_counter()
    done = runtime.run_shards(pending, lambda s: predict_one(s, ensemble, paths, params[s.scene_id], settings, runtime, skips))
    seconds_scenes = time.perf_counter() - t_scenes
    runtime.barrier()
    if not runtime.is_global_zero:
        return None

    records = {r["scene_id"]: r for r in done}
    manifest["scenes"] = [records.get(s.scene_id, {"scene_id": s.scene_id, "city": s.city, "skipped": True,
                                                   **paths.scene_files(s.scene_id)}) for s in scenes]
    t_products = time.perf_counter()
    products = make_products(cities, paths, params, settings)
    timings = {"scenes_s": seconds_scenes, "products_s": time.perf_counter() - t_products}
    if settings.evaluate:
        manifest["evaluation"] = evaluate_products(products, truth, paths, settings)
        manifest["tracking"] = log_evaluation(manifest["evaluation"], out_dir / EVALUATION, models, settings.tracking,
                                              out_dir)
    if settings.quicklooks:
        write_quicklooks(products, cities, paths, settings, truth)
    manifest["products"] = products
    if previous is not None:  # the directory also holds what earlier runs predicted (e.g. other cities)
        manifest["scenes"] = merge_records(previous.get("scenes", []), manifest["scenes"], "scene_id")
        manifest["products"] = merge_records(previous.get("products", []), products, "name")
    timings["total_s"] = time.perf_counter() - started
    pixels = sum(r.get("pixels", 0) for r in done)
    timings["megapixels_per_s"] = pixels / 1e6 / seconds_scenes if pixels and seconds_scenes > 0 else None
    manifest.update(status="complete", timings=timings,
                    finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_json_atomic(out_dir / MANIFEST, manifest)
    log.info("prediction of %d scenes (%d computed) in %.1f s: %s", len(scenes), len(done), timings["total_s"], out_dir)
    return manifest


def group_by_city(scenes: Sequence[InputScene]) -> dict[str, list[InputScene]]:
    cities: dict[str, list[InputScene]] = {}
    for s in scenes:
        cities.setdefault(s.city, []).append(s)
    return cities


class OutputPaths:
    """Where each product goes."""

    def __init__(self, root: Path, settings: Settings):
        self.root = root
        self.vector_suffix = settings.vector_config().suffix if settings.vectorize else None
        self.polygons = plural(settings.target)  # "buildings" by default

    def scene_probability(self, scene_id: str) -> Path:
        return self.root / SCENES_DIR / f"{scene_id}_probability.tif"

    def scene_mask(self, scene_id: str) -> Path:
        return self.root / SCENES_DIR / f"{scene_id}_mask.tif"

    def scene_files(self, scene_id: str) -> dict:
        return {"probability": str(self.scene_probability(scene_id)), "mask": str(self.scene_mask(scene_id))}

    def product(self, name: str, what: str, per_city: bool) -> Path:
        folder = CITIES_DIR if per_city else SCENES_DIR
        suffix = self.vector_suffix if what == self.polygons else ".tif"
        return self.root / folder / f"{name}_{what}{suffix}"


def mask_params(prob_params: dict, threshold: float) -> dict:
    return {"product": "mask", "probability": digest(prob_params), "threshold": threshold}


def scene_pending(scene: InputScene, paths: OutputPaths, params: dict, settings: Settings) -> bool:
    """Whether a scene's probability or mask must be (re)made (raises for outputs of other settings)."""
    prob = needs_work(paths.scene_probability(scene.scene_id), params, settings.overwrite)
    mask = needs_work(paths.scene_mask(scene.scene_id), mask_params(params, settings.threshold), settings.overwrite)
    return prob or mask


def predict_one(scene: InputScene, ensemble: Ensemble, paths: OutputPaths, params: dict, settings: Settings,
                runtime: Runtime, skips: Sequence = (NodataSkip(),)) -> dict:
    """Probability and mask COGs of one scene; returns its record for the manifest."""
    t0 = time.perf_counter()
    stats = SceneStats()
    prob_path, mask_path = paths.scene_probability(scene.scene_id), paths.scene_mask(scene.scene_id)
    calls_before = ensemble.forward_calls
    mparams = mask_params(params, settings.threshold)
    need_prob = needs_work(prob_path, params, settings.overwrite)
    need_mask = needs_work(mask_path, mparams, settings.overwrite)
    if need_prob or need_mask:
        # the mask thresholds the network's float probabilities as they stream out; the stored probability is
        # quantised (uint8: steps of 1/254) with each value kept on its pixel's side of the threshold, which
        # is therefore one of its parameters: another threshold remakes both in one pass of the network.
        with scene.open() as reader:
            blocks = predict_scene(reader, ensemble, settings.window, tuple(skips), stats)
            if need_mask:
                with CogRowWriter(mask_path, scene.grid, "uint8", MASK_NODATA, settings.cog, categorical=True,
                                  tags={PARAMS_TAG: canonical(mparams)},
                                  band_descriptions=[settings.target]) as mask_out:
                    blocks = masked_as_they_pass(blocks, settings.threshold, mask_out)
                    if need_prob:
                        write_probability(prob_path, scene.grid, blocks, settings.dtype, settings.cog, params,
                                          {"UNOSAT_SCENE": json.dumps(scene.scene.to_record())}, settings.target,
                                          settings.threshold)
                    else:
                        for _ in blocks:
                            pass
            else:
                write_probability(prob_path, scene.grid, blocks, settings.dtype, settings.cog, params,
                                  {"UNOSAT_SCENE": json.dumps(scene.scene.to_record())}, settings.target,
                                  settings.threshold)
    t_prob = time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    log.info("rank %d: %s (%s) %dx%d px: %d windows, %d predicted, skipped %s, %.1f s", runtime.rank,
             scene.scene_id, scene.city, scene.grid.width, scene.grid.height, stats.windows, stats.predicted,
             stats.skipped or 0, seconds)
    return {"scene_id": scene.scene_id, "city": scene.city, **paths.scene_files(scene.scene_id),
            "width": scene.grid.width, "height": scene.grid.height, "pixels": scene.grid.width * scene.grid.height,
            "windows": stats.windows, "windows_predicted": stats.predicted, "windows_skipped": stats.skipped,
            "forward_passes": ensemble.forward_calls - calls_before, "probability_s": t_prob, "seconds": seconds,
            "rank": runtime.rank, "skipped": False}


# ----------------------------------------------------------------------------- products


def make_products(cities: dict[str, list[InputScene]], paths: OutputPaths, params: dict[str, dict],
                  settings: Settings) -> list[dict]:
    """City rasters (unless ``aggregate.method=none``) and polygons; one record per product."""
    products = []
    for city, members in cities.items():
        if settings.aggregate.method == "none":
            for s in members:
                products.append({"name": s.scene_id, "city": city, "scenes": [s.scene_id], "per_city": False,
                                 "probability": str(paths.scene_probability(s.scene_id)),
                                 "mask": str(paths.scene_mask(s.scene_id)), "remade": False})
        else:
            products.append(city_product(city, members, paths, params, settings))
    if settings.vectorize:
        config = settings.vector_config()
        for p in products:
            out = paths.product(p["name"], paths.polygons, p["per_city"])
            if settings.overwrite or p["remade"] or not out.exists():
                t = time.perf_counter()
                dates = [str(paths.scene_mask(sid)) for sid in p["scenes"]] if p["per_city"] else []
                p["polygons_count"] = int(vectorize(Path(p["mask"]), out, config, prob_path=Path(p["probability"]),
                                                    date_mask_paths=tuple(Path(d) for d in dates)))
                p["vectorize_s"] = time.perf_counter() - t
            p["polygons"] = str(out)
    return products


def city_product(city: str, members: list[InputScene], paths: OutputPaths, params: dict[str, dict],
                 settings: Settings) -> dict:
    """Mean probability and mask of a city's acquisitions (all on one grid, checked before predicting)."""
    t0 = time.perf_counter()
    agg = settings.aggregate
    grid = members[0].grid
    prob_paths = [paths.scene_probability(s.scene_id) for s in members]
    mask_paths = [paths.scene_mask(s.scene_id) for s in members]
    base = {"city": city, "scenes": [digest(params[s.scene_id]) for s in members], "dtype": settings.dtype}
    prob_params = {"product": "city_probability", **base, "threshold": agg.threshold}
    city_mask_params = {"product": "city_mask", **base, "aggregate": agg.to_dict()}
    prob_out, mask_out = paths.product(city, "probability", True), paths.product(city, "mask", True)
    remade = False
    need_prob = needs_work(prob_out, prob_params, settings.overwrite)
    need_mask = needs_work(mask_out, city_mask_params, settings.overwrite)
    if need_prob or (need_mask and agg.method == "mean"):
        # the mean of the dates' decoded probabilities, thresholded before it is quantised again for storage
        blocks = ((r, mean_probability(decode_stack(values))) for r, values in read_rows(prob_paths, grid, agg.block_rows))
        if need_mask and agg.method == "mean":
            with CogRowWriter(mask_out, grid, "uint8", MASK_NODATA, settings.cog, categorical=True,
                              tags={PARAMS_TAG: canonical(city_mask_params)},
                              band_descriptions=[settings.target]) as sink:
                blocks = masked_as_they_pass(blocks, agg.threshold, sink)
                if need_prob:
                    write_probability(prob_out, grid, blocks, settings.dtype, settings.cog, prob_params,
                                      target=settings.target, threshold=agg.threshold)
                else:
                    for _ in blocks:
                        pass
        else:
            write_probability(prob_out, grid, blocks, settings.dtype, settings.cog, prob_params,
                              target=settings.target, threshold=agg.threshold)
        remade = True
    if need_mask and agg.method != "mean":
        k = agg.votes_needed(len(members))
        blocks = ((r, vote(np.stack(values), k)) for r, values in read_rows(mask_paths, grid, agg.block_rows))
        write_mask(mask_out, grid, blocks, settings.cog, city_mask_params, settings.target)
    remade = remade or need_mask
    return {"name": city, "city": city, "scenes": [s.scene_id for s in members], "per_city": True,
            "probability": str(prob_out), "mask": str(mask_out), "method": agg.method,
            "votes_needed": agg.votes_needed(len(members)) if agg.method == "vote" else None,
            "remade": remade, "seconds": time.perf_counter() - t0}


def label_file(scene: InputScene, settings: Settings, kind: str = "raw", input_dir: Path | None = None) -> Path:
    """The truth of ``scene`` for evaluation: its city's label vectors, its label raster, or (``labels=prepared``)
    the prepared dataset's mask. Raises :class:`UnosatError` saying what was looked for where."""
    source = settings.labels.source
    if source == "prepared":
        if kind != "prepared":
            raise UnosatError(f"labels=prepared scores against a prepared dataset's masks, but input {input_dir} holds "
                              "raw scenes: use labels=vector or labels=raster")
        dataset = PreparedDataset(input_dir)
        if dataset.manifest.get("settings", {}).get("labels", {}).get("source") == "none":
            raise UnosatError(f"evaluate=true, labels=prepared: {input_dir} was prepared without labels (labels=none)")
        path = dataset.mask_path(scene.scene_id)
        if not path.is_file():
            raise UnosatError(f"evaluate=true, labels=prepared: {path} is missing; run prepare.py's labels step on "
                              f"{input_dir}")
        return path
    dirs = settings.labels_dirs or list(scene.label_dirs)
    where = ", ".join(map(str, dirs)) or "(no directory: set labels.dirs)"
    if source == "raster":
        found = find_raster_label(dirs, settings.labels_template, scene.scene)
        if found is None:
            raise UnosatError(f"evaluate=true: no label raster {settings.labels_template.format(**scene.scene.fields())} "
                              f"for scene {scene.scene_id} of {scene.city} under {where}")
        return found
    found = find_label_file(dirs, settings.labels_template, scene.scene)
    if found is None:
        stem = settings.labels_template.format(**scene.scene.fields())
        raise UnosatError(f"evaluate=true: no label file {stem}.<shp|gpkg|geojson|...> for {scene.city} under {where}")
    return found


def find_truth(cities: dict[str, list[InputScene]], kind: str, input_dir: Path, settings: Settings) -> dict[str, Path]:
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
            with label_reader(path, scene.grid, settings.labels, bool(settings.evaluation["all_touched"]), scene.scene_id):
                pass  # opens it: a missing CRS, an unreadable file or no feature fails here, before predicting
            truth[scene.scene_id if per_scene else city] = path
    return truth


def evaluate_products(products: list[dict], truth: dict[str, Path], paths: OutputPaths, settings: Settings) -> dict:
    """Scores of every product against its truth (:func:`find_truth`); written to ``evaluation.json``."""
    from unosat.predict.evaluate import evaluate_city, evaluation_report, evaluation_table

    per_product = {}
    for p in products:
        labels = truth[p["name"]]
        per_product[p["name"]] = evaluate_city(Path(p["mask"]), Path(p["polygons"]), labels,
                                               all_touched=bool(settings.evaluation["all_touched"]),
                                               iou_threshold=float(settings.evaluation["iou_threshold"]),
                                               labels=settings.labels, class_names=settings.classes)
        p["labels"] = str(labels)
    report = evaluation_report(per_product)
    write_json_atomic(paths.root / EVALUATION, report)
    print(f"evaluation ({settings.target} class; written to {paths.root / EVALUATION}):\n{evaluation_table(report)}", flush=True)
    return report


def write_quicklooks(products: list[dict], cities: dict[str, list[InputScene]], paths: OutputPaths,
                     settings: Settings, truth: dict[str, Path] | None = None) -> None:
    """A PNG per product: the first acquisition's VV backscatter with predicted (and true) target outlines."""
    from unosat.predict.quicklook import quicklook

    scenes = {s.scene_id: s for members in cities.values() for s in members}
    for p in products:
        scene = scenes[p["scenes"][0]]
        image, band, units = scene.quicklook_source()
        labels = p.get("labels") or (truth or {}).get(p["name"])
        if labels is not None and settings.labels.source != "vector":
            labels = None  # quicklooks outline label polygons only
        out = paths.root / QUICKLOOK_DIR / f"{p['name']}.png"
        quicklook(image, band, units, out, predicted=Path(p["mask"]), truth=Path(labels) if labels else None,
                  max_px=int(settings.quicklook["max_px"]), title=f"{p['name']}: predicted {paths.polygons}")
        p["quicklook"] = str(out)
