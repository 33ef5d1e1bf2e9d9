"""Sending an evaluation to experiment trackers: the W&B and MLflow runs of the checkpoints that made it.

The training run's ids are in the checkpoint (``wandb_run_id``, ``mlflow.run_id`` and ``tracking_uri``), so
the scores land next to the training curves. W&B follows the training's mode rule (online when logged in
and reachable, offline otherwise); MLflow needs the optional extra.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from unosat.classes import CLASS_NAMES, TARGET
from unosat.errors import UnosatError
from unosat.predict.ensemble import LoadedModel
from unosat.wandb_mode import resolve_wandb_mode

log = logging.getLogger(__name__)


def pixel_keys(target: str = CLASS_NAMES[TARGET]) -> tuple[str, ...]:
    """The pixel scores sent to trackers: the target class's IoU, precision, recall, F1, and the mean IoU."""
    return (f"iou_{target}", f"precision_{target}", f"recall_{target}", f"f1_{target}", "miou")


OBJECT_KEYS = ("precision", "recall", "f1", "tp", "fp", "fn")


@dataclass(frozen=True)
class TrackingConfig:
    """``wandb``: log to each checkpoint's W&B run (a new run when it has none); ``wandb_mode``: auto |
    online | offline; ``wandb_project``; ``mlflow``: log to each checkpoint's MLflow run."""

    wandb: bool = False
    wandb_mode: str = "auto"
    wandb_project: str = "unosat"
    mlflow: bool = False


def evaluation_metrics(report: dict, prefix: str = "predict") -> dict[str, float]:
    """Flat ``{name: value}`` of an evaluation report: overall and per-city pixel and object scores."""
    out: dict[str, float] = {}
    keys = pixel_keys((report["overall"].get("classes") or CLASS_NAMES)[TARGET])

    def add(scope: str, part: dict) -> None:
        for k in keys:
            if part["pixel"].get(k) is not None:  # null: undefined
                out[f"{prefix}/{scope}/pixel_{k}"] = float(part["pixel"][k])
        for k in OBJECT_KEYS:
            if part["object"].get(k) is not None:
                out[f"{prefix}/{scope}/object_{k}"] = float(part["object"][k])

    add("overall", report["overall"])
    for name, city in report["cities"].items():
        add(name, city)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def log_evaluation(
    report: dict, report_path: Path, models: Sequence[LoadedModel], config: TrackingConfig, out_dir: Path
) -> list[dict]:
    """Log ``report`` to the configured trackers; returns where it went (for the manifest)."""
    metrics = evaluation_metrics(report)
    logged: list[dict] = []
    if config.mlflow:
        logged += _to_mlflow(metrics, report_path, models)
    if config.wandb:
        logged += _to_wandb(metrics, report_path, models, config, out_dir)
    return logged


def _to_mlflow(metrics: dict[str, float], report_path: Path, models: Sequence[LoadedModel]) -> list[dict]:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UnosatError('tracking.mlflow=true needs MLflow: pip install -e ".[mlflow]"') from None
    logged = []
    for m in models:
        run = (m.metadata or {}).get("mlflow")
        if not run:
            raise UnosatError(
                f"tracking.mlflow=true: checkpoint {m.path or m.name} was not trained with logger=mlflow "
                "(it names no MLflow run)"
            )
        client = MlflowClient(run["tracking_uri"])
        for name, value in metrics.items():
            client.log_metric(run["run_id"], name, value)
        client.log_artifact(run["run_id"], str(report_path), artifact_path="predict")
        logged.append({"tracker": "mlflow", "run_id": run["run_id"], "tracking_uri": run["tracking_uri"]})
        log.info("evaluation logged to MLflow run %s (%s)", run["run_id"], run["tracking_uri"])
    return logged


def _to_wandb(
    metrics: dict[str, float],
    report_path: Path,
    models: Sequence[LoadedModel],
    config: TrackingConfig,
    out_dir: Path,
) -> list[dict]:
    import wandb

    mode = resolve_wandb_mode(config.wandb_mode)
    logged = []
    ids = {(m.metadata or {}).get("wandb_run_id") for m in models} or {None}
    for run_id in sorted(ids, key=str):
        run = wandb.init(
            project=config.wandb_project,
            id=run_id,
            resume="allow" if run_id else None,
            mode=mode,
            dir=str(out_dir),
            job_type="predict",
            reinit="finish_previous",
        )
        run.log(metrics)
        run.summary.update(metrics)
        run.save(str(report_path), base_path=str(report_path.parent), policy="now")
        logged.append({"tracker": "wandb", "run_id": run.id, "mode": mode})
        run.finish()
        log.info("evaluation logged to W&B run %s (%s)", run.id, mode)
    return logged
