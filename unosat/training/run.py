"""``train.py``: build everything from the composed config, train, test, and return the monitored metric.

Order: seed; data (prepared on first use for the demo); the network (its ``in_channels`` filled from the
dataset's band recipe when null, checked otherwise); loss, optimiser, schedule; callbacks and loggers
(W&B run id kept in checkpoints so a resumed run continues it); the VV-threshold baseline; fit; test.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from unosat.checkpoint import check_same_model, find_latest, load_checkpoint
from unosat.classes import CLASS_NAMES, IGNORE_INDEX
from unosat.errors import UnosatError
from unosat.io.atomic import write_json_atomic, write_text_atomic
from unosat.models.registry import network_spec
from unosat.training.baseline import vv_threshold_baseline
from unosat.training.loggers import finish_wandb
from unosat.training.module import SegmentationModule
from unosat.training.tile_module import TileClassificationModule

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float | None:
    """Train as configured; return the value of ``cfg.optimized_metric`` (for sweeps), or None."""
    started = time.perf_counter()
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model_cfg = model_config_for_data(OmegaConf.to_container(cfg.model, resolve=True), datamodule)
    spec = network_spec(model_cfg)  # what the checkpoint stores: a registry name, never a _target_

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), Path(cfg.paths.log_dir), output_dir)
    previous: dict = {}
    if ckpt_path is not None:
        checkpoint = load_checkpoint(ckpt_path)
        check_same_model(checkpoint, spec, ckpt_path)
        previous = checkpoint["unosat"]
        log.info("resuming from %s", ckpt_path)

    net = instantiate(model_cfg)
    loss = instantiate(cfg.loss)
    task = getattr(net, "task", "segmentation")
    module_class = TileClassificationModule if task == "tile_classification" else SegmentationModule
    module = module_class(
        net=net,
        loss=loss,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler.schedule) if cfg.get("scheduler") else None,
        scheduler_interval=cfg.scheduler.interval if cfg.get("scheduler") else "step",
        num_classes=len(CLASS_NAMES),
        ignore_index=IGNORE_INDEX,
        class_names=CLASS_NAMES,
        channels_last=bool(cfg.get("channels_last", False)),
        metadata={"model": spec, "task": task, "config": OmegaConf.to_container(cfg, resolve=True)},
    )

    loggers = build_loggers(cfg, previous)
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            module.metadata["wandb_run_id"] = lg.version
        elif type(lg).__name__ == "MLFlowLogger":
            module.metadata["mlflow"] = {"run_id": lg.run_id, "tracking_uri": lg._tracking_uri}
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    if trainer.is_global_zero:
        write_text_atomic(output_dir / "config_resolved.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    for lg in loggers:
        if type(lg).__name__ == "MLFlowLogger" and previous.get("mlflow"):
            # MLflow params cannot change within a run: a resumed run records its config as an artifact
            lg.experiment.log_text(lg.run_id, OmegaConf.to_yaml(OmegaConf.create(resolved)),
                                   f"config_resumed_{output_dir.name}.yaml")
            continue
        lg.log_hyperparams(resolved)

    summary: dict = {"output_dir": str(output_dir), "model": model_cfg.get("_target_")}
    if cfg.get("baseline", True) and trainer.is_global_zero and task == "segmentation":
        base = vv_threshold_baseline(datamodule.train_dataset, datamodule.val_dataset)
        summary["baseline"] = {"vv_threshold_db": base.threshold_db, "direction": base.direction,
                               "train_iou_building": base.train_iou, "val_iou_building": base.val_iou}
        log.info("baseline (one VV threshold, target %s %.2f dB, chosen on the training tiles): val building IoU %.4f",
                 base.direction, base.threshold_db, base.val_iou)
        for lg in loggers:
            lg.log_metrics({"baseline/val_iou_building": base.val_iou, "baseline/vv_threshold_db": base.threshold_db}, step=0)

    try:
        summary.update(fit_and_test(cfg, trainer, module, datamodule, ckpt_path))
    finally:
        finish_wandb(loggers)

    summary["seconds"] = time.perf_counter() - started
    if trainer.is_global_zero:
        write_json_atomic(output_dir / "summary.json", summary)
        log.info("summary: %s", json.dumps({k: summary[k] for k in summary if k != "fit_metrics"}, default=str))
    metric_name = cfg.get("optimized_metric")
    if metric_name:
        metrics = summary["fit_metrics"]
        if summary.get("best_score") is not None:  # the checkpoint callback monitors optimized_metric
            return summary["best_score"]
        if metric_name not in metrics:
            raise UnosatError(f"optimized_metric '{metric_name}' was not logged; logged metrics: {sorted(metrics)}")
        return metrics[metric_name]
    return None


def fit_and_test(cfg: DictConfig, trainer: pl.Trainer, module: SegmentationModule, datamodule, ckpt_path) -> dict:
    """Fit (unless ``train=false``), then test the best checkpoint when ``test=true``; return figures."""
    summary: dict = {}
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    summary["fit_metrics"] = metrics
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
    if best:
        summary["best_checkpoint"] = best
        score = trainer.checkpoint_callback.best_model_score
        summary["best_score"] = float(score) if score is not None else None

    if cfg.get("test", False):
        if len(datamodule.test_dataset) == 0:
            log.warning("no test tiles in %s: skipping the test stage", datamodule.dir)
        else:
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
            summary["test_metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()
                                       if k.startswith("test/") and torch.is_tensor(v) and v.numel() == 1}
    return summary


def model_config_for_data(model_cfg: dict, datamodule) -> dict:
    """Fill what the network must know of the data: ``in_channels`` (when null, from the band recipe;
    checked otherwise) and ``input_recipe`` (when the model declares it: bands, units, normalisation, so it
    can undo the normalisation, e.g. GSCNN's image-gradient branch)."""
    recipe = datamodule.recipe
    if model_cfg.get("in_channels") is None:
        model_cfg["in_channels"] = recipe.count
    elif int(model_cfg["in_channels"]) != recipe.count:
        raise UnosatError(f"model.in_channels={model_cfg['in_channels']} but the dataset {datamodule.dir} has "
                          f"{recipe.count} bands ({recipe.name}: {', '.join(recipe.bands)}); set model.in_channels="
                          f"{recipe.count} or null")
    if int(model_cfg.get("num_classes", len(CLASS_NAMES))) != len(CLASS_NAMES):
        raise UnosatError(f"model.num_classes must be {len(CLASS_NAMES)} ({', '.join(CLASS_NAMES)})")
    if "input_recipe" in model_cfg and model_cfg["input_recipe"] is None:
        model_cfg["input_recipe"] = {"bands": list(recipe.bands), "units": recipe.units,
                                     "mean": list(datamodule.normalization.mean), "std": list(datamodule.normalization.std)}
    return model_cfg


def resolve_ckpt_path(value, log_dir: Path, output_dir: Path) -> Path | None:
    """``null`` -> None; ``last`` -> the newest ``last.ckpt`` of earlier training runs; else the path."""
    if value in (None, "", "null"):
        return None
    if str(value) == "last":
        candidates = [p for p in sorted(log_dir.glob("train/**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
                      if output_dir not in p.parents]
        if not candidates:
            raise UnosatError(f"ckpt_path=last: no last.ckpt of an earlier training run under {log_dir}/train")
        return candidates[-1]
    path = Path(value).expanduser()
    if not path.is_file():
        raise UnosatError(f"ckpt_path {path} does not exist")
    return path


def build_loggers(cfg: DictConfig, previous: dict) -> list:
    """Instantiate the configured loggers; a resumed run continues the W&B / MLflow run of its checkpoint."""
    loggers = []
    for lg_cfg in (cfg.get("logger") or {}).values():
        if lg_cfg is None or "_target_" not in lg_cfg:
            continue
        target = str(lg_cfg._target_)
        with open_dict(lg_cfg):
            if "wandb" in target:
                lg_cfg.id = previous.get("wandb_run_id") or lg_cfg.get("id") or _new_wandb_id()
            elif "mlflow" in target and previous.get("mlflow"):
                lg_cfg.run_id = previous["mlflow"]["run_id"]
                lg_cfg.tracking_uri = previous["mlflow"]["tracking_uri"]
        loggers.append(instantiate(lg_cfg))
    return loggers


def _new_wandb_id() -> str:
    import secrets

    return secrets.token_hex(4)


__all__ = ["find_latest", "run"]
