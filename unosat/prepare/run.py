"""``prepare.py``: raw VV/VH scenes + label vectors -> a prepared dataset (see :mod:`unosat.prepared`).

Steps, in order (``steps=[...]`` runs some of them): ``bands`` (band stacks), ``labels`` (masks),
``quality`` (label quality per acquisition), ``tiles`` (tile index), ``stats`` (tile statistics, folds,
normalisation), ``report`` (EDA report).
Every output is written atomically and records the settings it was made with, so a re-run skips finished
work, redoes unfinished work, and refuses to replace work made with other settings unless
``overwrite=true``. Raw inputs are only read.

Steps read each other's outputs (:mod:`unosat.prepare.lineage`): redoing one (``overwrite=true``, or new
scenes) redoes, in the same run, every step downstream of it that was done, so ``dataset.json``,
``normalization.json``, ``statistics.csv``, tiles and masks always describe one recipe. One run at a time
per ``out_dir`` (:mod:`unosat.io.lock`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rasterio.transform import Affine

from unosat.bands import BandRecipe, pooled_normalization
from unosat.classes import CLASS_NAMES, IGNORE_INDEX, class_names
from unosat.errors import UnosatError
from unosat.io.atomic import atomic_path, remove_stale_temporaries, write_json_atomic
from unosat.io.labels import LabelsConfig
from unosat.io.lock import output_lock
from unosat.io.provenance import REDO_OUTPUT, refuse_other_settings
from unosat.io.raster import Grid
from unosat.prepare.band_stack import BandStackTask, make_band_stack
from unosat.prepare.label_quality import QualityConfig, QualityTask, flag_acquisitions, scene_label_quality
from unosat.prepare.labels import LabelTask, make_label_mask
from unosat.prepare.lineage import STEPS, downstream, plan_steps, step_tokens
from unosat.prepare.parallel import map_scenes
from unosat.prepare.report import ReportConfig, write_report
from unosat.prepare.statistics import (
    StatsConfig,
    StatsTask,
    assign_folds,
    merge_statistics,
    scene_tile_statistics,
)
from unosat.prepare.tiling import TilingConfig, tile_records
from unosat.prepared import FORMAT, FORMAT_VERSION, PreparedDataset, read_table
from unosat.scenes import DiscoveryConfig, Scene, discover_scenes, find_label_file, find_raster_label

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> PreparedDataset:
    """Run the configured preparation steps, holding ``out_dir``'s lock; return the prepared dataset."""
    raw_dir = Path(cfg.raw_dir).expanduser().resolve()
    out_dir = Path(cfg.out_dir).expanduser().resolve()
    requested = validate_steps(cfg.steps)
    if out_dir == raw_dir or raw_dir in out_dir.parents:
        raise UnosatError(
            f"out_dir {out_dir} must not be inside raw_dir {raw_dir}: raw inputs are never modified"
        )
    with contextlib.ExitStack() as hold:  # out_dir's lock, taken once the inputs are known to be usable
        return prepare_steps(cfg, raw_dir, out_dir, requested, hold)


def prepare_steps(
    cfg: DictConfig, raw_dir: Path, out_dir: Path, requested: list[str], hold: contextlib.ExitStack
) -> PreparedDataset:
    """The body of :func:`run`; locks ``out_dir`` (in ``hold``) after checking the configuration and inputs."""
    ensure_demo_raw(cfg, raw_dir)

    discovery = instantiate(cfg.discovery)
    classes = class_names((cfg.get("classes") or {}).get("names"))
    recipe = instantiate(cfg.bands)
    labels = instantiate(cfg.labels)
    tiling = instantiate(cfg.tiling)
    stats_cfg = instantiate(cfg.stats)
    report_cfg = instantiate(cfg.report)
    quality_cfg = instantiate(cfg.quality)
    test_cities = list(cfg.split.test_cities or [])
    folds = OmegaConf.to_container(cfg.split.folds) if cfg.split.folds else {}
    overwrite = bool(cfg.overwrite)
    workers = int(cfg.workers)
    block_rows = int(cfg.block_rows)

    scenes = discover_scenes(raw_dir, discovery)
    log.info("found %d scenes of %d cities under %s", len(scenes), len({s.city for s in scenes}), raw_dir)
    dataset = PreparedDataset(out_dir)
    settings = {
        "recipe": recipe.to_dict(),
        "discovery": discovery.settings(),
        "labels": {k: v for k, v in asdict(labels).items() if k != "dirs"},
        "tiling": asdict(tiling),
        "split": {"test_cities": sorted(test_cities), "folds": folds},
        "stats": asdict(stats_cfg),
        "quality": asdict(quality_cfg),
    }
    hold.enter_context(output_lock(out_dir, "prepare.py"))
    check_settings(dataset, settings, overwrite)
    removed = remove_stale_temporaries(out_dir)
    if removed:
        log.info("removed %d temporary files left by an interrupted run", removed)
    scene_ids = [s.scene_id for s in scenes]
    previous = previous_steps(dataset, overwrite)
    steps = plan_steps(requested, previous, settings, scene_ids, overwrite, where=str(out_dir))
    extra = [s for s in steps if s not in requested]
    if extra:
        log.warning(
            "redoing %s too: they read the outputs of %s, which this run redoes",
            extra,
            sorted({r for r in requested for s in extra if s in downstream(r)}, key=STEPS.index),
        )
    tokens = step_tokens(settings, scene_ids, set(previous) | set(steps))
    done = {
        s: tokens[s] for s in previous if s not in steps
    }  # the steps this run does are not done until they are
    write_manifest(dataset, settings, scenes, raw_dir, done, classes=classes)
    prep = Preparation(
        raw_dir,
        dataset,
        scenes,
        settings,
        classes,
        tokens,
        done,
        discovery,
        recipe,
        labels,
        tiling,
        stats_cfg,
        report_cfg,
        quality_cfg,
        test_cities,
        folds,
        overwrite,
        workers,
        block_rows,
    )
    for name, step in STEP_FUNCTIONS:
        if name in steps:
            step(prep)
            prep.step_done(name)
        if name == "labels" and labels.source == "none":
            for skipped in ("quality", "report"):
                if skipped in steps:
                    log.info("labels=none: step %s skipped (it compares images with labels)", skipped)
            steps = [s for s in steps if s not in ("quality", "report")]

    log.info("step times (s): %s", prep.timings)
    log.info("prepared dataset: %s", out_dir)
    return dataset


@dataclass
class Preparation:
    """What the steps share: the inputs, the dataset being written and its settings, the steps done so far
    (with their tokens, :mod:`unosat.prepare.lineage`) and each step's time."""

    raw_dir: Path
    dataset: PreparedDataset
    scenes: list[Scene]
    settings: dict
    classes: tuple[str, ...]
    tokens: dict[str, str]
    done: dict[str, str]
    discovery: DiscoveryConfig
    recipe: BandRecipe
    labels: LabelsConfig
    tiling: TilingConfig
    stats: StatsConfig
    report: ReportConfig
    quality: QualityConfig
    test_cities: list[str]
    folds: dict
    overwrite: bool
    workers: int
    block_rows: int
    timings: dict[str, float] = field(default_factory=dict)
    clock: float = field(default_factory=time.perf_counter)

    def step_done(self, name: str) -> None:
        """Record step ``name`` as done (with its time) in ``dataset.json``."""
        now = time.perf_counter()
        self.timings[name] = round(now - self.clock, 3)
        self.clock = now
        self.done[name] = self.tokens[name]
        write_manifest(
            self.dataset, self.settings, self.scenes, self.raw_dir, self.done, self.timings, self.classes
        )


def make_stacks(prep: Preparation) -> None:
    """Step ``bands``: a band stack per scene (:mod:`unosat.prepare.band_stack`)."""
    dataset = prep.dataset
    raw_input = prep.discovery.raw_input()
    tasks = [
        BandStackTask(
            s,
            dataset.bands_path(s.scene_id),
            prep.recipe,
            raw_input,
            prep.block_rows,
            prep.overwrite,
            prep.discovery.units_check,
        )
        for s in prep.scenes
    ]
    update_scenes_table(dataset, map_scenes(make_band_stack, tasks, prep.workers, "bands"))


def make_masks(prep: Preparation) -> None:
    """Step ``labels``: a label mask per scene (:mod:`unosat.prepare.labels`)."""
    dataset, labels = prep.dataset, prep.labels
    if labels.source == "prepared":
        raise UnosatError(
            "labels=prepared reads a prepared dataset's masks for predict.py evaluate=true; "
            "prepare.py takes labels=vector or labels=raster"
        )
    dataset.require("scenes.csv", "bands")
    dirs = [Path(d) for d in (labels.dirs or [prep.raw_dir])]
    tasks = []
    for s in prep.scenes:
        if labels.source == "none":
            tasks.append(
                LabelTask(
                    s.scene_id,
                    dataset.bands_path(s.scene_id),
                    None,
                    dataset.mask_path(s.scene_id),
                    labels,
                    prep.block_rows,
                    prep.overwrite,
                )
            )
            continue
        if labels.source == "vector":
            path = find_label_file(dirs, labels.template, s)
            what = f"{labels.template.format(**s.fields())}.<shp|gpkg|geojson|...>"
        else:
            path = find_raster_label(dirs, labels.template, s)
            what = labels.template.format(**s.fields())
        if path is None:
            raise UnosatError(
                f"no label file for scene {s.scene_id} of {s.city}: expected {what} under "
                f"{', '.join(map(str, dirs))}"
            )
        tasks.append(
            LabelTask(
                s.scene_id,
                dataset.bands_path(s.scene_id),
                path,
                dataset.mask_path(s.scene_id),
                labels,
                prep.block_rows,
                prep.overwrite,
            )
        )
    records = map_scenes(make_label_mask, tasks, prep.workers, "labels")
    for r, t in zip(records, tasks):
        r["label_file"] = str(t.label_path) if t.label_path is not None else ""
        r["labelled"] = t.label_path is not None
    update_scenes_table(dataset, records)


def rate_labels(prep: Preparation) -> None:
    """Step ``quality``: label quality per acquisition (:mod:`unosat.prepare.label_quality`)."""
    dataset = prep.dataset
    dataset.require("scenes.csv", "bands", "masks")
    tasks = [
        QualityTask(
            s.scene_id,
            s.city,
            s.orbit_pass or "",
            dataset.bands_path(s.scene_id),
            dataset.mask_path(s.scene_id),
            prep.recipe,
            prep.quality,
            dataset.root / "quality" / f"{s.scene_id}.json",
            prep.overwrite,
        )
        for s in prep.scenes
    ]
    quality = flag_acquisitions(map_scenes(scene_label_quality, tasks, prep.workers, "quality"), prep.quality)
    write_csv_atomic(dataset.quality_csv, quality)
    flagged = quality[quality["quality_flag"]]
    for row in flagged.itertuples():
        log.warning("label quality: %s (%s): %s", row.scene_id, row.city, row.quality_reason)
    log.info("label quality: %d of %d acquisitions flagged", len(flagged), len(quality))


def index_tiles(prep: Preparation) -> None:
    """Step ``tiles``: the tile index of every scene (:mod:`unosat.prepare.tiling`)."""
    dataset = prep.dataset
    dataset.require("scenes.csv")
    table = dataset.scenes()
    records = []
    for rec in table.to_dict("records"):
        grid = Grid(None, _affine(rec["transform"]), int(rec["width"]), int(rec["height"]))
        schemes = ("train", "test") if rec["city"] in prep.test_cities else ("train",)
        records += tile_records(rec, grid, schemes, prep.tiling)
    write_csv_atomic(dataset.tiles_csv, pd.DataFrame(records))
    log.info("tile index: %d tiles", len(records))


def compute_statistics(prep: Preparation) -> None:
    """Step ``stats``: tile statistics, folds and the normalisation (:mod:`unosat.prepare.statistics`)."""
    dataset, recipe = prep.dataset, prep.recipe
    dataset.require("scenes.csv", "tiles.csv", "bands", "masks")
    tiles = read_table(dataset.tiles_csv)
    ids = {s.scene_id for s in prep.scenes}
    tiles = tiles[tiles["scene_id"].isin(ids)]
    tasks = [
        StatsTask(
            sid,
            dataset.bands_path(sid),
            dataset.mask_path(sid),
            tuple((r.tile_id, r.row_off, r.col_off, r.height, r.width) for r in group.itertuples()),
            recipe.bands,
            dataset.scene_stats_dir / f"{sid}.json",
            prep.stats,
            prep.overwrite,
            labelled=prep.labels.source != "none",
        )
        for sid, group in tiles.groupby("scene_id", sort=True)
    ]
    rows = [row for part in map_scenes(scene_tile_statistics, tasks, prep.workers, "stats") for row in part]
    fold_of_city = assign_folds(sorted({s.city for s in prep.scenes}), prep.folds, prep.test_cities)
    quality = read_table(dataset.quality_csv) if "quality" in prep.done else None
    table = merge_statistics(tiles, rows, fold_of_city, quality)
    write_csv_atomic(dataset.statistics_csv, table)
    train = table[(table["split"] == "train") & (table["scheme"] == "train") & ~table["skip"]]
    if train.empty and prep.labels.source == "none":
        train = table[(table["scheme"] == "train") & ~table["skip"]]  # normalisation over every valid tile
    if train.empty:
        raise UnosatError(
            f"no usable training tile: every city is a test city or every tile is skipped "
            f"(test cities {prep.test_cities}, stats.min_valid_fraction {prep.stats.min_valid_fraction})"
        )
    train_folds = sorted(int(f) for f in train["fold"].unique())
    norm = pooled_normalization(train, recipe.bands, source=f"train tiles of folds {train_folds}")
    write_json_atomic(
        dataset.normalization_json,
        {
            **norm.to_dict(),
            "units": recipe.units,
            "bands": list(recipe.bands),
            "n_valid": int(train["n_valid"].sum()),
        },
    )
    log.info(
        "statistics: %d tiles (%d skipped); folds %s", len(table), int(table["skip"].sum()), fold_of_city
    )


def make_report(prep: Preparation) -> None:
    """Step ``report``: the EDA report (:mod:`unosat.prepare.report`)."""
    prep.dataset.require("scenes.csv", "statistics.csv", "normalization.json", "bands", "masks")
    path = write_report(prep.dataset, prep.report)
    log.info("report: %s", path)


#: the steps, in the order of :data:`unosat.prepare.lineage.STEPS`, each a function of the :class:`Preparation`
STEP_FUNCTIONS: tuple[tuple[str, Callable[[Preparation], None]], ...] = (
    ("bands", make_stacks),
    ("labels", make_masks),
    ("quality", rate_labels),
    ("tiles", index_tiles),
    ("stats", compute_statistics),
    ("report", make_report),
)


def validate_steps(steps) -> list[str]:
    steps = [str(s) for s in (steps or [])]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise UnosatError(f"unknown step(s) {unknown} in steps; known steps, in order: {list(STEPS)}")
    if not steps:
        raise UnosatError(f"steps is empty; choose among {list(STEPS)}")
    return [s for s in STEPS if s in steps]


def ensure_demo_raw(cfg: DictConfig, raw_dir: Path) -> None:
    """Generate the synthetic demo scenes when ``raw_dir`` is the demo's and does not exist yet."""
    demo_raw = Path(cfg.paths.demo_dir).expanduser().resolve() / "raw"
    if raw_dir == demo_raw and not raw_dir.exists():
        from unosat.synthetic import DemoSpec, generate_demo

        log.info("generating the synthetic demo dataset in %s", raw_dir)
        generate_demo(raw_dir, DemoSpec.from_config(cfg.demo))


def check_settings(dataset: PreparedDataset, settings: dict, overwrite: bool) -> None:
    """Refuse to continue a dataset prepared with other settings (unless ``overwrite``)."""
    if overwrite or not dataset.manifest_path.exists():
        return
    current = json.loads(json.dumps(settings, default=str))
    # only this run's keys: a setting an older unosat recorded and this one no longer has is not a difference
    refuse_other_settings(
        dataset.manifest_path,
        "a dataset",
        dataset.manifest.get("settings", {}),
        current,
        REDO_OUTPUT,
        keys=current,
    )


def previous_steps(dataset: PreparedDataset, overwrite: bool) -> dict[str, str | None]:
    """Step -> recorded token of the steps an earlier run finished in this dataset (None: not recorded)."""
    if not dataset.manifest_path.exists():
        return {}
    try:
        manifest = dataset.manifest
    except UnosatError:
        if overwrite:
            return {}
        raise
    tokens = manifest.get("step_tokens") or {}
    return {s: tokens.get(s) for s in STEPS if s in manifest.get("steps_done", [])}


def write_manifest(
    dataset: PreparedDataset,
    settings: dict,
    scenes,
    raw_dir: Path,
    done: dict[str, str],
    timings: dict | None = None,
    classes: Sequence[str] = CLASS_NAMES,
) -> None:
    """Write ``dataset.json``: the settings, the class names, the scenes, and the steps done with their tokens.

    The class names are not a setting the masks are made with (re-running with other names only renames:
    ``steps=[report]`` redraws the report with them), so they are recorded beside the settings."""
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "recipe": settings["recipe"],
        "classes": list(classes),
        "ignore_index": IGNORE_INDEX,
        "raw_dir": str(raw_dir),
        "scenes": [s.scene_id for s in scenes],
        "cities": sorted({s.city for s in scenes}),
        "test_cities": settings["split"]["test_cities"],
        "steps_done": [s for s in STEPS if s in done],
        "step_tokens": {s: done[s] for s in STEPS if s in done},
        "settings": settings,
        "last_run_seconds": timings or {},
    }
    write_json_atomic(dataset.manifest_path, manifest)
    dataset.__dict__.pop("manifest", None)


def update_scenes_table(dataset: PreparedDataset, records: list[dict]) -> None:
    """Merge per-scene records into ``scenes.csv``; the records' columns replace the old ones.

    Records of the ``bands`` step (they carry the scene identity) define the rows; records of later steps
    add columns to the existing rows.
    """
    new = pd.DataFrame(records).drop(columns=["skipped"], errors="ignore")
    if dataset.scenes_csv.exists():
        old = dataset.scenes()
        old = old[["scene_id"] + [c for c in old.columns if c not in new.columns]]
        new = (
            new.merge(old, on="scene_id", how="left")
            if "city" in new.columns
            else old.merge(new, on="scene_id", how="left")
        )
    write_csv_atomic(dataset.scenes_csv, new)


def write_csv_atomic(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _affine(text: str) -> Affine:
    return Affine(*json.loads(text))
