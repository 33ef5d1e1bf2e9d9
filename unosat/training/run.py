"""``train.py``: build everything from the composed config, train, test, and return the monitored metric.

Order: seed; data (prepared on first use for the demo); the network (its ``in_channels`` filled from the
dataset's band recipe when null, checked otherwise); loss, optimiser, schedule; callbacks and loggers
(W&B run id kept in checkpoints so a resumed run continues it); the VV-threshold baseline; fit; test.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

from unosat.checkpoint import (
    check_same_model,
    check_weights,
    checkpoint_files,
    epochs_completed,
    load_checkpoint,
    newest_loadable,
)
from unosat.classes import CLASS_NAMES, TARGET
from unosat.errors import UnosatError
from unosat.io.atomic import write_json_atomic, write_text_atomic
from unosat.io.lock import launched_as_rank_zero, output_lock
from unosat.models.registry import network_spec
from unosat.training.baseline import vv_threshold_baseline
from unosat.training.lightning_base import UnosatModule
from unosat.training.loggers import finish_wandb
from unosat.training.module import SegmentationModule

log = logging.getLogger(__name__)

# Epoch-level values are logged already reduced over ranks (UnosatModule.log_epoch_terms, torchmetrics), so
# Lightning's advice to add sync_dist=True (a second, lazy all-reduce that only some ranks reach) is not for us.
warnings.filterwarnings("ignore", message=r".*sync_dist=True.*when logging on epoch level")


def run(cfg: DictConfig) -> float | None:
    """Train as configured; return the value of ``cfg.optimized_metric`` (for sweeps), or None.

    A run resuming a checkpoint holds the lock of that checkpoint's run directory (:mod:`unosat.io.lock`):
    two runs cannot resume the same run at once.
    """
    output_dir = Path(cfg.paths.output_dir)
    training = bool(cfg.get("train", True))
    value = cfg.get("ckpt_path")
    named = Path(str(value)).expanduser() if value not in (None, "", "null", "last", "best") else None
    with contextlib.ExitStack() as hold:
        locked = False
        if named is not None and named.is_file() and training and launched_as_rank_zero():
            # a file named by the user: its run is locked before the file is even read
            hold.enter_context(output_lock(resumed_run_dir(named), "train.py resuming it"))
            locked = True
        ckpt_path, checkpoint = resolve_ckpt_path(value, Path(cfg.paths.log_dir), output_dir, training)
        if ckpt_path is None and training:
            ckpt_path, checkpoint = requeued_checkpoint(output_dir)
        if ckpt_path is not None and training and not locked and launched_as_rank_zero():
            hold.enter_context(output_lock(resumed_run_dir(ckpt_path), "train.py resuming it"))
        return train(cfg, ckpt_path, checkpoint)


def resumed_run_dir(ckpt_path: Path) -> Path:
    """The run directory of a checkpoint (``<run>/checkpoints/x.ckpt`` -> ``<run>``; else its folder)."""
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def train(cfg: DictConfig, ckpt_path: Path | None, checkpoint: dict | None) -> float | None:
    """The body of :func:`run`: resumes from ``ckpt_path`` (whose content is ``checkpoint``) when not None, or
    with ``train=false`` scores its weights."""
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

    training = bool(cfg.get("train", True))
    previous: dict = {}
    if ckpt_path is not None:
        check_same_model(checkpoint, spec, ckpt_path)
        previous = checkpoint["unosat"]
        if training:
            check_resumable(checkpoint, ckpt_path, cfg.trainer.get("max_epochs"))
            log.info("resuming from %s (%d epoch(s) completed)", ckpt_path, epochs_completed(checkpoint))
        else:
            log.info("weights from %s", ckpt_path)

    net = instantiate(model_cfg)
    module_factory = instantiate(
        cfg.module, _partial_=True
    )  # conf/module/: the LightningModule and its own options
    module: UnosatModule = module_factory(
        net=net,
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler.schedule) if cfg.get("scheduler") else None,
        scheduler_interval=cfg.scheduler.interval if cfg.get("scheduler") else "step",
        channels_last=bool(cfg.get("channels_last", False)),
        metadata={"model": spec, "config": OmegaConf.to_container(cfg, resolve=True)},
    )
    check_module_fits_network(module, net, str(cfg.module._target_))
    if ckpt_path is not None:
        check_weights(
            checkpoint, module.state_dict(), ckpt_path
        )  # a one-line error, not Lightning's traceback

    loggers = build_loggers(cfg, previous)
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            module.metadata["wandb_run_id"] = lg.version
        elif isinstance(lg, MLFlowLogger):
            module.metadata["mlflow"] = {"run_id": lg.run_id, "tracking_uri": lg.experiment.tracking_uri}
    callbacks = [
        instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c
    ]
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        **distributed_options(cfg.trainer),
        **slurm_options(cfg),
    )

    resolved = OmegaConf.to_container(cfg, resolve=True)
    if trainer.is_global_zero:
        write_text_atomic(output_dir / "config_resolved.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    for lg in loggers:
        if isinstance(lg, MLFlowLogger) and previous.get("mlflow"):
            # MLflow params cannot change within a run: a resumed run records its config as an artifact
            lg.experiment.log_text(
                lg.run_id,
                OmegaConf.to_yaml(OmegaConf.create(resolved)),
                f"config_resumed_{output_dir.name}.yaml",
            )
            continue
        lg.log_hyperparams(resolved)

    summary: dict = {"output_dir": str(output_dir), "model": model_cfg.get("_target_")}
    if cfg.get("baseline", True) and trainer.is_global_zero and isinstance(module, SegmentationModule):
        base = vv_threshold_baseline(datamodule.train_dataset, datamodule.val_dataset)
        target = getattr(datamodule, "class_names", CLASS_NAMES)[TARGET]
        summary["baseline"] = {
            "vv_threshold_db": base.threshold_db,
            "direction": base.direction,
            f"train_iou_{target}": base.train_iou,
            f"val_iou_{target}": base.val_iou,
        }
        log.info(
            "baseline (one VV threshold, target %s %.2f dB, chosen on the training tiles): val %s IoU %.4f",
            base.direction,
            base.threshold_db,
            target,
            base.val_iou,
        )
        for lg in loggers:
            lg.log_metrics(
                {f"baseline/val_iou_{target}": base.val_iou, "baseline/vv_threshold_db": base.threshold_db},
                step=0,
            )

    try:
        summary.update(fit_and_test(cfg, trainer, module, datamodule, ckpt_path))
    finally:
        finish_wandb(loggers)

    summary["seconds"] = time.perf_counter() - started
    if trainer.is_global_zero:
        write_json_atomic(output_dir / "summary.json", summary)
        log.info(
            "summary: %s", json.dumps({k: summary[k] for k in summary if k != "fit_metrics"}, default=str)
        )
    metric_name = cfg.get("optimized_metric")
    if not training:  # nothing was optimised: the test score of the metric, when the test stage ran
        test_name = f"test/{metric_name.split('/', 1)[-1]}" if metric_name else None
        return summary.get("test_metrics", {}).get(test_name)
    if metric_name:
        metrics = summary["fit_metrics"]
        if summary.get("best_score") is not None:  # the checkpoint callback monitors optimized_metric
            return summary["best_score"]
        if metric_name not in metrics:
            raise UnosatError(
                f"optimized_metric '{metric_name}' was not logged; logged metrics: {sorted(metrics)}"
            )
        return metrics[metric_name]
    return None


def fit_and_test(cfg: DictConfig, trainer: pl.Trainer, module: UnosatModule, datamodule, ckpt_path) -> dict:
    """Fit (unless ``train=false``), then, when ``test=true``, score a checkpoint on the ``test_split``
    (default ``test``: the test cities' tiles): the best one of this fit, or with ``train=false`` the weights
    of ``ckpt_path``. Return figures; the test scores are also printed as a table."""
    summary: dict = {}
    training = bool(cfg.get("train", True))
    if training:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
    }
    summary["fit_metrics"] = metrics
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
    if best:
        summary["best_checkpoint"] = best
        score = trainer.checkpoint_callback.best_model_score
        summary["best_score"] = float(score) if score is not None else None

    if cfg.get("test", False):
        split = str(cfg.get("test_split", "test"))
        if split not in ("test", "val"):
            raise UnosatError(
                f"test_split must be test (the test cities) or val (the validation folds), got '{split}'"
            )
        dataset = datamodule.test_dataset if split == "test" else datamodule.val_dataset
        weights = (best or None) if training else (str(ckpt_path) if ckpt_path else None)
        if not training and weights is None:
            raise UnosatError(
                "train=false test=true needs the weights to score: ckpt_path=<file>, best or last"
            )
        if len(dataset) == 0:
            message = f"no {split} tiles in {datamodule.dir}"
            if not training:
                raise UnosatError(f"{message}: nothing to score (test_split=val scores the validation folds)")
            log.warning("%s: skipping the test stage", message)
        else:
            datamodule.test_dataset = dataset
            trainer.test(module, datamodule=datamodule, ckpt_path=weights, verbose=False)
            summary["test_metrics"] = {
                k: float(v)
                for k, v in trainer.callback_metrics.items()
                if k.startswith("test/") and torch.is_tensor(v) and v.numel() == 1
            }
            summary["test_split"], summary["test_checkpoint"] = split, weights or "the weights in memory"
            if trainer.is_global_zero:
                print(
                    score_table(
                        summary["test_metrics"],
                        f"{split} split, {len(dataset)} tiles, weights: {summary['test_checkpoint']}",
                    ),
                    flush=True,
                )
    return summary


def check_module_fits_network(module: UnosatModule, net: torch.nn.Module, target: str) -> None:
    """:class:`UnosatError` unless the module trains what the network predicts (its ``task``: a tile classifier
    declares ``tile_classification``; a network that declares nothing is a segmentation network)."""
    predicts = getattr(net, "task", SegmentationModule.task)
    if module.task != predicts:
        raise UnosatError(
            f"the module {target} trains {module.task.replace('_', ' ')}, but the network "
            f"{type(net).__name__} predicts {predicts.replace('_', ' ')}; choose the module=... of "
            "conf/module/ that fits the model (model=tile_classifier selects module=tile_classification)"
        )


def score_table(metrics: dict[str, float], title: str) -> str:
    """A plain-text table of ``test/*`` scores, one per line, for the console."""
    rows = sorted((k.removeprefix("test/"), v) for k, v in metrics.items())
    width = max((len(k) for k, _ in rows), default=5)
    lines = [f"test scores ({title})"] + [f"  {k:<{width}}  {v:.4f}" for k, v in rows]
    return "\n".join(lines)


def distributed_options(trainer_cfg) -> dict:
    """Trainer arguments decided from the accelerator: ``sync_batchnorm: auto`` becomes true on GPUs and false
    on CPU, where DDP runs over gloo and ``SyncBatchNorm`` cannot run (each rank then normalises its own
    batch, which is logged). An explicit ``sync_batchnorm=true`` on CPU is refused with one line."""
    requested = trainer_cfg.get("sync_batchnorm", False)
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    strategy = str(trainer_cfg.get("strategy", "auto"))
    if "ddp" in strategy and not on_gpu:
        log.info(
            "DDP on CPU: gloo backend; batch norm is not synchronised across ranks (each rank normalises "
            "its own batch; SyncBatchNorm needs GPUs)"
        )
    if str(requested) == "auto":
        return {"sync_batchnorm": on_gpu}
    if bool(requested) and not on_gpu:
        raise UnosatError(
            f"trainer.sync_batchnorm=true needs GPUs (trainer.accelerator={accelerator}); use "
            "trainer.sync_batchnorm=auto or false on CPU"
        )
    return {}


def slurm_options(cfg: DictConfig) -> dict:
    """Under SLURM (Lightning detects ``srun``): the trainer's plugins plus Lightning's ``SLURMEnvironment``
    with ``auto_requeue`` and the ``requeue_signal`` of ``cfg.slurm``. On that signal (sbatch
    ``--signal=USR1@120``) Lightning writes ``<run>/hpc_ckpt_<n>.ckpt`` (atomically, through the trainer's
    ``AtomicCheckpointIO``) and requeues the job (``scontrol requeue``); the requeued job runs in the same
    directory and resumes (:func:`requeued_checkpoint`). Outside SLURM: nothing."""
    import signal

    from lightning_fabric.plugins.environments import SLURMEnvironment

    settings = cfg.get("slurm") or {}
    if not SLURMEnvironment.detect():
        return {}
    name = str(settings.get("requeue_signal", "SIGUSR1"))
    try:
        requeue_signal = signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except KeyError:
        raise UnosatError(f"slurm.requeue_signal: unknown signal '{name}' (e.g. SIGUSR1)") from None
    plugins = list(instantiate(cfg.trainer.get("plugins") or []))
    plugins.append(
        SLURMEnvironment(auto_requeue=bool(settings.get("auto_requeue", True)), requeue_signal=requeue_signal)
    )
    log.info(
        "SLURM job %s (restart %s): auto-requeue %s on %s",
        os.environ.get("SLURM_JOB_ID"),
        os.environ.get("SLURM_RESTART_COUNT", 0),
        bool(settings.get("auto_requeue", True)),
        requeue_signal.name,
    )
    return {"plugins": plugins}


def requeued_checkpoint(output_dir: Path) -> tuple[Path | None, dict | None]:
    """In a SLURM job that was requeued (``SLURM_RESTART_COUNT`` > 0), the newest loadable checkpoint this run
    already wrote in ``output_dir`` (Lightning's ``hpc_ckpt_*.ckpt`` on the requeue signal, ``last.ckpt``,
    ``best-*``), so a pre-empted or timed-out job resumes where it stopped; (None, None) otherwise."""
    try:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        restarts = 0
    if restarts <= 0:
        return None, None
    hpc, hpc_tmp = checkpoint_files([output_dir], "hpc_ckpt_*.ckpt")
    own, own_tmp = checkpoint_files([output_dir / "checkpoints"], "*.ckpt")
    candidates = sorted(
        hpc + own, key=lambda p: (p.stat().st_mtime, p.name.startswith("hpc_ckpt")), reverse=True
    )
    if not candidates and not hpc_tmp + own_tmp:
        log.info("SLURM restart %d: no checkpoint in %s yet, starting from scratch", restarts, output_dir)
        return None, None
    return newest_loadable(
        candidates, f"SLURM restart {restarts} of {output_dir}", hpc_tmp + own_tmp, fresh_start=True
    )


def check_resumable(checkpoint: dict, path: Path, max_epochs) -> None:
    """:class:`UnosatError` when resuming from ``checkpoint`` would train nothing: its run already finished,
    or it completed ``trainer.max_epochs`` epochs or more."""
    done = epochs_completed(checkpoint)
    if max_epochs is None or int(max_epochs) < 0 or done < int(max_epochs):
        return
    saved_max = ((checkpoint["unosat"].get("config") or {}).get("trainer") or {}).get("max_epochs")
    if saved_max is not None and done >= int(saved_max):
        raise UnosatError(
            f"{path}: this run already finished ({done} of its {saved_max} epochs); to train longer set "
            f"trainer.max_epochs above {done}; to score it: python train.py train=false test=true "
            f"ckpt_path={path}"
        )
    raise UnosatError(
        f"{path}: the checkpoint has completed {done} epoch(s), not fewer than trainer.max_epochs="
        f"{max_epochs}: nothing left to train; set trainer.max_epochs above {done}"
    )


def model_config_for_data(model_cfg: dict, datamodule) -> dict:
    """Fill what the network must know of the data: ``in_channels`` (when null, from the band recipe;
    checked otherwise) and ``input_recipe`` (when the model declares it: bands, units, normalisation, so it
    can undo the normalisation, e.g. GSCNN's image-gradient branch)."""
    recipe = datamodule.recipe
    if model_cfg.get("in_channels") is None:
        model_cfg["in_channels"] = recipe.count
    elif int(model_cfg["in_channels"]) != recipe.count:
        raise UnosatError(
            f"model.in_channels={model_cfg['in_channels']} but the dataset {datamodule.dir} has "
            f"{recipe.count} bands ({recipe.name}: {', '.join(recipe.bands)}); set model.in_channels="
            f"{recipe.count} or null"
        )
    if int(model_cfg.get("num_classes", len(CLASS_NAMES))) != len(CLASS_NAMES):
        raise UnosatError(f"model.num_classes must be {len(CLASS_NAMES)} ({', '.join(CLASS_NAMES)})")
    if "input_recipe" in model_cfg and model_cfg["input_recipe"] is None:
        model_cfg["input_recipe"] = {
            "bands": list(recipe.bands),
            "units": recipe.units,
            "mean": list(datamodule.normalization.mean),
            "std": list(datamodule.normalization.std),
        }
    return model_cfg


def resolve_ckpt_path(
    value, log_dir: Path, output_dir: Path, training: bool = True
) -> tuple[Path | None, dict | None]:
    """The checkpoint to resume from (or to score with ``train=false``) and its content.

    ``null`` -> (None, None). ``last``: the newest checkpoint of earlier training runs under
    ``<log_dir>/train`` that loads (``last.ckpt`` or ``best-*``; broken files and leftover temporaries are
    skipped with a warning naming them); when training and none loads (none written yet, or a kill during
    the very first checkpoint write left only a temporary file), a warning naming the skipped files and
    (None, None): the run starts from scratch, as Lightning does for ``ckpt_path="last"``. ``best``: the
    newest loadable ``best-*.ckpt``, refused when there is none. Otherwise a path, refused when it does not
    load. With ``training`` false (weights to score) ``last`` is refused too when nothing loads.
    """
    if value in (None, "", "null"):
        return None, None
    if str(value) in ("last", "best"):
        directories = [
            d
            for d in log_dir.glob("train/**/checkpoints")
            if d.is_dir() and output_dir not in d.parents and d.parent != output_dir
        ]
        pattern = "*.ckpt" if str(value) == "last" else "best-*.ckpt"
        candidates, temporaries = checkpoint_files(directories, pattern)
        what = f"ckpt_path={value} (under {log_dir / 'train'})"
        fresh_start = str(value) == "last" and training
        if not candidates and not fresh_start:
            raise UnosatError(f"{what}: no {pattern} of an earlier training run")
        return newest_loadable(candidates, what, temporaries, fresh_start=fresh_start)
    path = Path(value).expanduser()
    if not path.is_file():
        raise UnosatError(f"ckpt_path {path} does not exist")
    return path, load_checkpoint(path)


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


__all__ = ["run"]
