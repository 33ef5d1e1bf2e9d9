"""Cross-city model quality: which configuration segments buildings best, with its spread, next to two
classical baselines scored in the same run on exactly the same pixels.

Leave-one-city-out over the training cities of a prepared dataset (the demo's by default; its folds are
cities): each training city is the validation city once, the others train. For every configuration (a label
and train.py overrides) and every fold and seed, a model is trained with the same epochs, tiles per epoch and
time limit (Lightning's ``trainer.max_time``), each job in its own directory, then:

- the held-out validation city is predicted whole, scene by scene (predict.py's sliding window on the full
  scenes, ``aggregate.method=none``: every acquisition scored; not the overlapping training tiles, which
  count pixels twice), and scored with predict.py's evaluation: pixel building IoU and F1 over the valid
  pixels (nodata 255 ignored), object F1 (connected components as polygons, one-to-one matching at
  IoU >= 0.5);
- the dataset's test city (Samawah for the demo) is predicted and scored as ``python predict.py
  evaluate=true`` does (predict.py's defaults: the multi-date mean of the probabilities, ``tta=flips``;
  ``--predict-overrides tta=none`` for one pass, as the README's tables before 2026-12-05 were scored).

Baselines, fitted on the training cities of each fold and exported as checkpoints so the same prediction
and evaluation score them: one global VV threshold (dB, chosen on the training tiles: the baseline every
training run reports) and a per-pixel logistic regression on the bands and their local means and standard
deviations at a few window sizes (scikit-learn). The VV threshold is deterministic: one run per fold.

The table gives, per configuration, mean +/- sample standard deviation over folds x seeds (n runs) of the
validation-city scores, the test-city scores, and the training seconds (fit seconds for baselines), and the
margin of the validation IoU over the best baseline in units of the configuration's standard deviation.
A JSON of every run is written next to the jobs. Scored checkpoint: ``last`` by default (``best`` is chosen
on the validation city's tiles, i.e. on the very city it would be scored on).

    python benchmarks/model_quality.py                                   # the default comparison on the demo
    python benchmarks/model_quality.py --config lw4 model=lwrefinenet model.output_stride=4 \\
        --config gscnn model=gscnn loss=gscnn --seeds 0 --epochs 2 --epoch-length 64
    python benchmarks/model_quality.py --jobs 8 --overrides trainer=gpu --predict-overrides trainer=gpu

Re-running with the same settings into the same --workdir skips finished jobs; jobs made with other settings
are only replaced with --overwrite.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine, table  # noqa: E402

from unosat.errors import UnosatError  # noqa: E402
from unosat.io.atomic import write_json_atomic  # noqa: E402
from unosat.io.provenance import refuse_other_settings  # noqa: E402

log = logging.getLogger("model_quality")

#: the default comparison: label -> train.py overrides
DEFAULT_CONFIGS: dict[str, list[str]] = {
    "lwrefinenet_os4": ["model=lwrefinenet", "model.output_stride=4"],
    "lwrefinenet_os1": ["model=lwrefinenet", "model.output_stride=1"],
    "unet": ["model=unet"],
    "gscnn": ["model=gscnn", "loss=gscnn"],
    "fpn": ["model=fpn"],
}
VV_THRESHOLD, PIXEL_LOGISTIC = "baseline_vv_threshold", "baseline_pixel_logistic"
BASELINE_LABELS = {
    VV_THRESHOLD: "VV threshold (baseline)",
    PIXEL_LOGISTIC: "pixel logistic regression (baseline)",
}
MARKER = "model_quality_workdir.json"  # marks a directory this benchmark made
JOB_SPEC, JOB_RESULT = "job.json", "result.json"
SCORES = ("iou", "f1", "object_f1")


# ------------------------------------------------------------------------------------------ settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        nargs="+",
        action="append",
        metavar=("LABEL", "OVERRIDE"),
        help="a configuration: a label then train.py overrides (repeat for several; default: "
        + "; ".join(f"{k}: {' '.join(v)}" for k, v in DEFAULT_CONFIGS.items())
        + ")",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="prepared dataset (default: the demo's, data/demo/prepared_db, prepared on first use)",
    )
    parser.add_argument(
        "--folds",
        type=int,
        nargs="+",
        default=None,
        help="validation folds (cities) to hold out (default: every training fold)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1], help="seeds of every fold (default 0 1)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="trainer.max_epochs of every job (default: the configuration's own, the default's 4 unless it says)",
    )
    parser.add_argument(
        "--epoch-length",
        type=int,
        default=None,
        help="data.epoch_length: tiles per epoch of every job (default: the configuration's own; "
        "the default recipe's: 4608 in bf16, 2048 in fp32, 4 epochs)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="time limit of every training job (trainer.max_time); default none",
    )
    parser.add_argument(
        "--checkpoint",
        choices=("last", "best"),
        default="last",
        help="checkpoint scored (best is chosen on the validation city's tiles)",
    )
    parser.add_argument("--overrides", nargs="*", default=[], help="extra train.py overrides for every job")
    parser.add_argument(
        "--predict-overrides",
        nargs="*",
        default=[],
        help="extra predict.py overrides for every prediction (e.g. trainer=gpu window.batch_size=16)",
    )
    parser.add_argument(
        "--city-aggregations",
        nargs="*",
        default=["mean", "vote"],
        choices=("mean", "vote"),
        help="also score the validation city's multi-date product under each of these "
        "aggregate.method values (default: mean vote; none: skip)",
    )
    parser.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    parser.add_argument(
        "--pixel-windows",
        type=int,
        nargs="+",
        default=[3, 7, 15],
        help="window sizes (odd px) of the pixel classifier's local statistics (default 3 7 15)",
    )
    parser.add_argument(
        "--pixel-samples",
        type=int,
        default=200_000,
        help="training pixels sampled to fit the pixel classifier (default 200000)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="jobs run in parallel processes (default 1: in this process)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per job (default: CPU cores / jobs when --jobs > 1)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/unosat-model-quality"),
        help="one directory per job under it (default /tmp/unosat-model-quality)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="where the runs go (default <workdir>/model_quality.json)"
    )
    parser.add_argument("--overwrite", action="store_true", help="redo jobs made with other settings")
    args = parser.parse_args(argv)
    if (
        args.jobs < 1
        or any(v is not None and v < 1 for v in (args.epochs, args.epoch_length))
        or not args.seeds
    ):
        parser.error("--jobs, --epochs and --epoch-length must be positive, --seeds not empty")
    if args.max_minutes is not None and not args.max_minutes > 0:
        parser.error("--max-minutes must be positive")
    return args


def configurations(given: list[list[str]] | None) -> dict[str, list[str]]:
    """label -> overrides from ``--config`` (defaults when none); labels must be unique and file-name safe."""
    if not given:
        return {k: list(v) for k, v in DEFAULT_CONFIGS.items()}
    out: dict[str, list[str]] = {}
    for label, *overrides in given:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", label) or "=" in label:
            raise UnosatError(
                f"--config: the label {label!r} must come first and be a plain name "
                "(letters, digits, _ . + -), e.g. --config unet model=unet"
            )
        if label in out or label in BASELINE_LABELS:
            raise UnosatError(f"--config: label {label!r} is used twice (or is a baseline's)")
        out[label] = overrides
    return out


def default_data_dir() -> Path:
    from unosat.config import compose_config

    return Path(str(compose_config("train", ["paths.output_dir=."]).data.dir)).expanduser()


def training_overrides(job: dict) -> list[str]:
    """train.py overrides of a model job: its configuration's, the global ones, then the benchmark's own
    (data, fold, seed, budget, directories), which win."""
    s = job["settings"]
    train = [f for f in s["train_folds"] if f != job["fold"]]
    own = [
        f"data.dir={s['data']}",
        f"data.train_folds=[{','.join(map(str, train))}]",
        f"data.val_folds=[{job['fold']}]",
        f"seed={job['seed']}",
        f"paths.output_dir={Path(job['dir']) / 'train'}",
        f"paths.log_dir={Path(job['dir']) / 'logs'}",
        "baseline=false",
        "test=false",
        "ckpt_path=null",
        "trainer.enable_progress_bar=false",
    ]
    if s["epochs"] is not None:
        own.append(f"trainer.max_epochs={s['epochs']}")
    if s["epoch_length"] is not None:
        own.append(f"data.epoch_length={s['epoch_length']}")
    if s["max_minutes"] is not None:
        own.append(f"++trainer.max_time='{max_time(s['max_minutes'])}'")
    return ["logger=csv", *job["overrides"], *s["overrides"], *own]


def compose(name: str, overrides: Sequence[str], what: str):
    """``conf/<name>.yaml`` composed with ``overrides``; a one-line :class:`UnosatError` naming ``what``
    when it does not compose (unknown group option, key not in the config)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from unosat.config import compose_config

    try:
        return compose_config(name, overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise UnosatError(f"{what} does not compose: {' '.join(str(err).split())[:300]}") from None


def max_time(minutes: float) -> str:
    """Lightning's ``max_time`` string ``DD:HH:MM:SS`` of ``minutes`` (whole seconds, at least 1)."""
    seconds = max(1, round(minutes * 60))
    days, rest = divmod(seconds, 86400)
    return f"{days:02d}:{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def check_configs(configs: dict[str, list[str]], settings: dict) -> None:
    """Compose every configuration before any work: one that does not compose, or builds no registered
    network, is a one-line error naming it."""
    from omegaconf import OmegaConf

    from unosat.models.registry import network_spec

    fold = settings["train_folds"][-1]
    for label, overrides in configs.items():
        what = f"configuration '{label}' ({' '.join(overrides) or 'no overrides'})"
        job = {"overrides": overrides, "settings": settings, "fold": fold, "seed": 0, "dir": "/nonexistent"}
        cfg = compose("train", training_overrides(job), what)
        try:
            network_spec(OmegaConf.to_container(cfg.model, resolve=True))
        except UnosatError as err:
            raise UnosatError(f"{what} does not build a registered network: {err}") from None
    compose(
        "predict",
        [*settings["predict_overrides"], "ckpt=x"],
        f"--predict-overrides {settings['predict_overrides']}",
    )


def dataset_folds(data: Path) -> tuple[dict[int, list[str]], list[str]]:
    """``({training fold: its cities}, test cities)`` of a prepared dataset."""
    from unosat.prepared import PreparedDataset

    stats = PreparedDataset(data).statistics()
    train = stats[stats["split"] == "train"]
    folds = {int(f): sorted(set(g["city"])) for f, g in train.groupby("fold")}
    return folds, sorted(set(stats[stats["split"] == "test"]["city"]))


def prepare_dataset(data: Path, overrides: Sequence[str]) -> None:
    """Prepare the demo on first use (as train.py does), so jobs do not race to do it."""
    from hydra.utils import instantiate

    cfg = compose(
        "train", [*overrides, f"data.dir={data}", "paths.output_dir=."], f"--overrides {list(overrides)}"
    )
    instantiate(cfg.data).prepare_data()


def check_workdir(workdir: Path, overwrite: bool) -> None:
    if workdir.exists() and not (workdir / MARKER).exists() and any(workdir.iterdir()) and not overwrite:
        raise UnosatError(
            f"--workdir {workdir} is not empty and was not made by this benchmark (no {MARKER}); "
            "choose another, or --overwrite"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(workdir / MARKER, {"benchmark": "model_quality"})


def make_jobs(
    configs: dict[str, list[str]],
    settings: dict,
    folds: Sequence[int],
    seeds: Sequence[int],
    workdir: Path,
    baselines: bool,
) -> list[dict]:
    """Baseline jobs (VV threshold per fold, pixel classifier per fold and seed), then model jobs."""
    jobs = []
    for fold in folds:
        if baselines:
            jobs.append(
                {"kind": VV_THRESHOLD, "label": VV_THRESHOLD, "fold": fold, "seed": None, "overrides": []}
            )
            jobs += [
                {"kind": PIXEL_LOGISTIC, "label": PIXEL_LOGISTIC, "fold": fold, "seed": s, "overrides": []}
                for s in seeds
            ]
    for label, overrides in configs.items():
        jobs += [
            {"kind": "model", "label": label, "fold": f, "seed": s, "overrides": list(overrides)}
            for f in folds
            for s in seeds
        ]
    for job in jobs:
        seed = "" if job["seed"] is None else f"_seed{job['seed']}"
        job["dir"] = str(workdir / job["label"] / f"fold{job['fold']}{seed}")
        job["settings"] = settings
    return jobs


# ----------------------------------------------------------------------------------------- one job


def job_identity(job: dict) -> dict:
    """What decides a job's result (compared on re-runs)."""
    s = job["settings"]
    keys = (
        "data",
        "train_folds",
        "overrides",
        "predict_overrides",
        "checkpoint",
        "test_cities",
        "city_aggregations",
    )
    if job["kind"] == "model":
        keys += ("epochs", "epoch_length", "max_minutes")
    elif job["kind"] == PIXEL_LOGISTIC:
        keys += ("pixel_windows", "pixel_samples")
    return {
        "kind": job["kind"],
        "label": job["label"],
        "fold": job["fold"],
        "seed": job["seed"],
        "config_overrides": job["overrides"],
        **{k: s[k] for k in keys},
    }


def run_job(job: dict) -> dict:
    """Train (or fit) one job, predict and score its validation city and the test city; returns its record.
    A finished job with the same identity is read back; an unfinished one is redone."""
    out = Path(job["dir"])
    identity = job_identity(job)
    spec_path, result_path = out / JOB_SPEC, out / JOB_RESULT
    if spec_path.exists():
        previous = json.loads(spec_path.read_text())
        if not job["settings"]["overwrite"]:
            refuse_other_settings(
                spec_path, "a job", previous, identity, "use another --workdir, or --overwrite"
            )
        if previous == identity and result_path.exists():
            return json.loads(result_path.read_text())
    if out.exists():
        shutil.rmtree(out)  # an unfinished job of this benchmark, or --overwrite
    out.mkdir(parents=True)
    write_json_atomic(spec_path, identity)

    t0, c0 = time.perf_counter(), time.process_time()
    if job["kind"] == "model":
        ckpt, extra = train_model(job)
    else:
        ckpt, extra = fit_baseline(job)
    # CPU seconds (all threads of this process) beside wall seconds: on a shared machine they size a run better
    record = {
        **identity,
        "dir": str(out),
        "checkpoint_path": str(ckpt),
        "train_seconds": time.perf_counter() - t0,
        "train_cpu_seconds": time.process_time() - c0,
        **extra,
    }
    s = job["settings"]
    t1, c1 = time.perf_counter(), time.process_time()
    record["val"] = predict_and_score(ckpt, s, out / "val", [f"fold={job['fold']}", "aggregate.method=none"])
    record["val_city"] = {
        m: predict_and_score(ckpt, s, out / f"val_{m}", [f"fold={job['fold']}", f"aggregate.method={m}"])
        for m in s["city_aggregations"]
    }
    record["test"] = (
        predict_and_score(ckpt, s, out / "test", ["dataset_split=test"]) if s["test_cities"] else None
    )
    record["predict_seconds"] = time.perf_counter() - t1
    record["predict_cpu_seconds"] = time.process_time() - c1
    write_json_atomic(result_path, record)
    return record


def train_model(job: dict) -> tuple[Path, dict]:
    """Train one configuration on one fold and seed (unosat.training.run, the package function behind
    train.py); returns the checkpoint to score and figures of the run."""
    from unosat.config import compose_config
    from unosat.training.run import run as train

    cfg = compose_config("train", training_overrides(job))
    train(cfg)
    run_dir = Path(str(cfg.paths.output_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    last = run_dir / "checkpoints" / "last.ckpt"
    best = Path(summary["best_checkpoint"]) if summary.get("best_checkpoint") else None
    ckpt = best if job["settings"]["checkpoint"] == "best" and best is not None else last
    if not ckpt.is_file():
        raise UnosatError(f"{run_dir}: training wrote no {ckpt.name}")
    metrics = summary.get("fit_metrics", {})
    return ckpt, {
        "best_val_tiles_iou": summary.get("best_score"),
        "epochs_done": _epochs_done(run_dir),
        "max_epochs": int(cfg.trainer.max_epochs),
        "epoch_length": cfg.data.epoch_length,
        "last_val_tiles_iou": metrics.get("val/iou_building"),
    }


def _epochs_done(run_dir: Path) -> int | None:
    import torch

    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    return int(torch.load(last, map_location="cpu", weights_only=True).get("epoch", -1)) + 1


def fold_datamodule(job: dict):
    """The data module of a job's fold (the benchmark's global overrides apply, not a configuration's)."""
    from hydra.utils import instantiate

    from unosat.config import compose_config

    s = job["settings"]
    train = [f for f in s["train_folds"] if f != job["fold"]]
    cfg = compose_config(
        "train",
        [
            *s["overrides"],
            f"data.dir={s['data']}",
            f"data.val_folds=[{job['fold']}]",
            f"data.train_folds=[{','.join(map(str, train))}]",
            f"seed={job['seed'] or 0}",
            "paths.output_dir=.",
        ],
    )
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def fit_baseline(job: dict) -> tuple[Path, dict]:
    """Fit a baseline on the fold's training cities and export it as a checkpoint."""
    from unosat.baselines.export import save_baseline_checkpoint
    from unosat.baselines.pixel_classifier import fit_pixel_classifier
    from unosat.baselines.vv_threshold_net import fit_vv_threshold_net
    from unosat.data.tile_dataset import TileDataset

    s = job["settings"]
    dm = fold_datamodule(job)
    if job["kind"] == VV_THRESHOLD:
        net, info = fit_vv_threshold_net(dm)
    else:
        tiles = TileDataset(
            dm.dir, dm.train_tiles, dm.recipe, dm.normalization
        )  # whole tiles, no augmentation
        net, fit = fit_pixel_classifier(
            tiles, dm.recipe.count, s["pixel_windows"], s["pixel_samples"], job["seed"]
        )
        info = fit.to_dict()
    ckpt = save_baseline_checkpoint(
        Path(job["dir"]) / "baseline.ckpt", net, net.spec(), dm.data_recipe(), info
    )
    return ckpt, {"fit": info}


def predict_and_score(ckpt: Path, settings: dict, out: Path, selection: Sequence[str]) -> dict:
    """Predict the selected scenes of the dataset with predict.py's package function, evaluate=true; returns
    the overall pixel and object scores."""
    from unosat.config import compose_config
    from unosat.predict.run import run as predict

    cfg = compose_config(
        "predict",
        [
            *settings["predict_overrides"],
            f"ckpt={ckpt}",
            f"input={settings['data']}",
            *selection,
            "evaluate=true",
            "vectorize=true",
            f"output={out}",
            f"paths.output_dir={out.parent}",
            f"paths.log_dir={out.parent / 'logs'}",
        ],
    )
    manifest = predict(cfg)
    overall = manifest["evaluation"]["overall"]
    pixel, obj, counts = overall["pixel"], overall["object"], overall["counts"]
    return {
        "iou": pixel["iou_building"],
        "f1": pixel["f1_building"],
        "precision": pixel["precision_building"],
        "recall": pixel["recall_building"],
        "object_f1": obj["f1"],
        "object_tp": obj["tp"],
        "object_fp": obj["fp"],
        "object_fn": obj["fn"],
        "object_f1_ceiling": overall.get("object_ceiling", {}).get("f1"),
        "confusion": pixel["confusion"],
        "valid_pixels": counts["valid_pixels"],
        "true_building_pixels": counts["true_building_pixels"],
        "products": sorted(manifest["evaluation"]["cities"]),
        "cities": sorted({scene["city"] for scene in manifest["scenes"]}),
        "seconds": manifest["timings"]["total_s"],
    }


def _init_worker(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


def run_jobs(jobs: list[dict], n_parallel: int, threads: int | None) -> list[dict]:
    """Every job, ``n_parallel`` at a time (in this process when 1); records in job order."""
    if n_parallel == 1:
        _init_worker(threads)
        records = []
        for i, job in enumerate(jobs):
            records.append(run_job(job))
            print(
                f"[{i + 1}/{len(jobs)}] {job['label']} fold {job['fold']} seed {job['seed']}: done",
                flush=True,
            )
        return records
    with ProcessPoolExecutor(
        n_parallel, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(threads,)
    ) as pool:
        futures = [pool.submit(run_job, job) for job in jobs]
        records = []
        for i, (job, fut) in enumerate(zip(jobs, futures)):
            records.append(fut.result())
            print(
                f"[{i + 1}/{len(jobs)}] {job['label']} fold {job['fold']} seed {job['seed']}: done",
                flush=True,
            )
        return records


# ------------------------------------------------------------------------------------------ report


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(records: list[dict], labels: Sequence[str]) -> list[dict]:
    """Per label: n runs and mean/std of every validation and test score and of the training seconds."""
    rows = []
    for label in labels:
        runs = [r for r in records if r["label"] == label]
        if not runs:
            continue
        row = {"label": label, "runs": len(runs)}
        for where in ("val", "test"):
            for score in SCORES:
                values = [r[where][score] for r in runs if r.get(where)]
                row[f"{where}_{score}"] = mean_std(values) if values else None
        row["train_seconds"] = mean_std([r["train_seconds"] for r in runs])
        rows.append(row)
    best = max((r["val_iou"][0] for r in rows if r["label"] in BASELINE_LABELS), default=None)
    for row in rows:
        if best is None or row["label"] in BASELINE_LABELS:
            row["margin_over_best_baseline"] = None
            continue
        mean, std = row["val_iou"]
        row["margin_over_best_baseline"] = {
            "iou": mean - best,
            "in_std": (mean - best) / std if std > 0 else None,
        }
    return rows


def same_pixels(records: list[dict]) -> list[str]:
    """Problems found when runs of one fold were not scored on the same pixels (expected: none)."""
    problems = []
    for where, key in (("val", "fold"), ("test", None)):
        seen: dict = {}
        for r in records:
            if not r.get(where):
                continue
            group = r[key] if key else "test"
            pixels = (r[where]["valid_pixels"], r[where]["true_building_pixels"])
            if seen.setdefault(group, pixels) != pixels:
                problems.append(
                    f"{where} {key or ''} {group}: {r['label']} scored {pixels} (valid, true building) "
                    f"pixels, others {seen[group]}"
                )
    return problems


def fmt(value: tuple[float, float] | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def ceiling_line(records: list[dict], fold_cities: dict[int, list[str]]) -> str:
    """The object F1 of a perfect per-pixel prediction (predict.py's ``object_ceiling``: the labels burnt on the
    prediction grid) of each validation city and the test city: the most any model's object F1 can reach. It does
    not depend on the model: the first run that recorded it is taken (runs scored before it existed have none)."""

    def first(values) -> float | None:
        return next((v for v in values if v is not None), None)

    cells = []
    for fold in sorted({r["fold"] for r in records}):
        value = first(
            r["val"].get("object_f1_ceiling") for r in records if r["fold"] == fold and r.get("val")
        )
        city = fold_cities[fold][0]
        cells.append(f"{city} {value:.3f}" if value is not None else f"{city} n/a")
    test = first(r["test"].get("object_f1_ceiling") for r in records if r.get("test"))
    cells.append(f"test {test:.3f}" if test is not None else "test n/a")
    prefix = "object F1 ceiling (a perfect per-pixel prediction: the labels burnt on the grid): "
    return prefix + ", ".join(cells)


def markdown(rows: list[dict]) -> str:
    body = []
    for r in rows:
        margin = r["margin_over_best_baseline"]
        margin_txt = (
            "–"
            if margin is None
            else (
                f"{margin['iou']:+.3f} ({margin['in_std']:+.1f} σ)"
                if margin["in_std"] is not None
                else f"{margin['iou']:+.3f}"
            )
        )
        body.append(
            (
                BASELINE_LABELS.get(r["label"], r["label"]),
                r["runs"],
                fmt(r["val_iou"]),
                fmt(r["val_f1"]),
                fmt(r["val_object_f1"]),
                fmt(r["test_iou"]),
                fmt(r["test_f1"]),
                fmt(r["test_object_f1"]),
                fmt(r["train_seconds"], 0),
                margin_txt,
            )
        )
    return table(
        body,
        (
            "config",
            "runs",
            "val IoU",
            "val F1",
            "val object F1",
            "test IoU",
            "test F1",
            "test object F1",
            "train s",
            "val IoU − best baseline",
        ),
    )


def markdown_aggregations(records: list[dict], labels: Sequence[str], methods: Sequence[str]) -> str:
    """Per configuration: the validation city's product scored under each aggregation method (mean +/- std
    over folds x seeds), and in how many runs each method had the higher object F1."""
    body = []
    for label in labels:
        runs = [r for r in records if r["label"] == label and r.get("val_city")]
        if not runs:
            continue
        cells = []
        for m in methods:
            cells += [
                fmt(mean_std([r["val_city"][m]["iou"] for r in runs])),
                fmt(mean_std([r["val_city"][m]["object_f1"] for r in runs])),
            ]
        if len(methods) == 2:
            a, b = methods
            wins = sum(r["val_city"][a]["object_f1"] > r["val_city"][b]["object_f1"] for r in runs)
            cells.append(f"{wins} of {len(runs)}")
        body.append((BASELINE_LABELS.get(label, label), len(runs), *cells))
    head = ["config", "runs"] + [f"{m} {what}" for m in methods for what in ("IoU", "object F1")]
    if len(methods) == 2:
        head.append(f"object F1 {methods[0]} > {methods[1]}")
    return table(body, head)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    configs = configurations(args.config)
    data = (args.data or default_data_dir()).expanduser().resolve()
    workdir = args.workdir.expanduser().resolve()
    prepare_dataset(data, args.overrides)
    fold_cities, test_cities = dataset_folds(data)
    folds = args.folds if args.folds is not None else sorted(fold_cities)
    unknown = [f for f in folds if f not in fold_cities]
    if unknown or len(fold_cities) < 2:
        raise UnosatError(
            f"{data}: folds {unknown or folds} cannot be held out; its training folds are "
            f"{fold_cities} (at least two are needed)"
        )
    threads = args.threads or (max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None)
    settings = {
        "data": str(data),
        "train_folds": sorted(fold_cities),
        "epochs": args.epochs,
        "epoch_length": args.epoch_length,
        "max_minutes": args.max_minutes,
        "overrides": list(args.overrides),
        "predict_overrides": list(args.predict_overrides),
        "checkpoint": args.checkpoint,
        "pixel_windows": list(args.pixel_windows),
        "pixel_samples": args.pixel_samples,
        "test_cities": test_cities,
        "city_aggregations": list(args.city_aggregations),
        "overwrite": args.overwrite,
    }
    check_configs(configs, settings)
    check_workdir(workdir, args.overwrite)
    jobs = make_jobs(configs, settings, folds, args.seeds, workdir, not args.no_baselines)
    print(
        f"{len(jobs)} jobs ({len(configs)} configurations x {len(folds)} folds x {len(args.seeds)} seeds, and "
        f"baselines), {args.jobs} at a time, in {workdir}",
        flush=True,
    )
    started = time.perf_counter()
    records = run_jobs(jobs, args.jobs, threads)
    wall = time.perf_counter() - started

    labels = [*([] if args.no_baselines else [VV_THRESHOLD, PIXEL_LOGISTIC]), *configs]
    rows = summarize(records, labels)
    for row in rows:
        row["label"] = BASELINE_LABELS.get(row["label"], row["label"])
    problems = same_pixels(records)
    report = {
        "machine": machine(),
        "wall_seconds": wall,
        "jobs_in_parallel": args.jobs,
        "torch_threads_per_job": threads,
        "settings": {k: v for k, v in settings.items() if k != "overwrite"},
        "folds": {f: fold_cities[f] for f in folds},
        "seeds": list(args.seeds),
        "configs": configs,
        "summary": rows,
        "same_pixels_problems": problems,
        "runs": records,
    }
    write_json_atomic(args.json or workdir / "model_quality.json", report)

    budget = (
        f"{args.epochs or 'each configuration’s own'} epochs of {args.epoch_length or 'its own number of'} "
        "tiles"
    ) + (f", at most {args.max_minutes} min" if args.max_minutes else "")
    print(f"\nmachine: {machine()}; {len(jobs)} jobs, {args.jobs} at a time, {wall:.0f} s in all")
    print(
        f"dataset {data}: validation cities (folds) "
        f"{', '.join(f'{fold_cities[f][0]} ({f})' for f in folds)}; test {', '.join(test_cities) or 'none'}; "
        f"seeds {args.seeds}; budget {budget}; scored checkpoint: {args.checkpoint}\n"
    )
    print(markdown(rows))
    if args.city_aggregations:
        print("\nvalidation city, multi-date city product (predict.py aggregate.method=...):\n")
        print(
            markdown_aggregations(
                records, [r for r in labels if any(x["label"] == r for x in records)], args.city_aggregations
            )
        )
    print("\n" + ceiling_line(records, fold_cities))
    print(
        "\nmean ± sample std over folds x seeds (the VV threshold: over folds); val = the held-out training city, "
        "whole scenes, every acquisition; test = predict.py evaluate=true on the test city; object F1 at IoU >= 0.5"
    )
    print("same pixels for every method: " + ("yes" if not problems else "NO: " + "; ".join(problems)))
    print(f"runs: {args.json or workdir / 'model_quality.json'}")
    return report


if __name__ == "__main__":
    try:
        main()
    except UnosatError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
