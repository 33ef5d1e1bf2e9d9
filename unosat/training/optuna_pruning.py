"""Optuna pruning for a training run that is a trial of a sweep (``hparams_search=optuna``).

``optuna_integration.PyTorchLightningPruningCallback`` imports the ``lightning`` package, not the
``pytorch_lightning`` one this project trains with, so its Trainer would reject it; this is the same idea on
Optuna's public trial API: at the end of every validation epoch, rank 0 reports ``monitor`` to the trial
(step = epoch) and asks the study's pruner; the decision is broadcast so every DDP rank stops together. A
pruned run stops cleanly at that epoch's end (``trainer.should_stop``; checkpoints and ``summary.json`` are
written as usual) and records ``pruned_at_epoch`` on the trial, from which the sweeper tells it PRUNED.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch

from unosat.errors import UnosatError

log = logging.getLogger(__name__)


class OptunaPruning(pl.Callback):
    """Report ``monitor`` to Optuna trial ``trial`` of ``study_name`` in ``storage`` at each validation epoch
    and stop training when ``pruner`` (e.g. ``optuna.pruners.MedianPruner``, or its config) says so. With
    ``trial`` None (a run outside a sweep, or a sweep without pruner) it does nothing."""

    def __init__(
        self,
        monitor: str,
        trial: int | None = None,
        storage: str | None = None,
        study_name: str | None = None,
        pruner: Any = None,
    ) -> None:
        super().__init__()
        self.monitor = monitor
        self.number = None if trial is None else int(trial)
        if self.number is not None and not (storage and study_name):
            raise UnosatError(
                f"optuna.trial={trial} needs optuna.storage and optuna.study_name (set by the sweeper)"
            )
        self.storage, self.study_name = storage, study_name
        self.pruner = pruner  # a config with _target_, or the pruner Hydra's instantiate already built
        self.trial = None
        self.pruned_at: int | None = None
        self._warned_missing = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.number is not None and stage == "fit" and trainer.is_global_zero and self.trial is None:
            from unosat.sweeps import attach_trial

            self.trial = attach_trial(self.storage, self.study_name, self.number, self.pruner)
            log.info(
                "reporting %s to Optuna trial %d of study '%s' for pruning",
                self.monitor,
                self.number,
                self.study_name,
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.number is None or trainer.sanity_checking:
            return
        prune = False
        epoch = trainer.current_epoch
        if trainer.is_global_zero and self.trial is not None:
            score = trainer.callback_metrics.get(self.monitor)
            if score is None:
                if not self._warned_missing:
                    log.warning(
                        "Optuna pruning: %s was not logged at epoch %d; nothing reported", self.monitor, epoch
                    )
                    self._warned_missing = True
            else:
                value = float(score.item() if torch.is_tensor(score) else score)
                if math.isfinite(value):
                    self.trial.report(value, step=epoch)
                    prune = self.trial.should_prune()
                else:  # a diverged run: no median can rank it; stop it
                    prune = True
        prune = bool(trainer.strategy.broadcast(prune))
        if not prune:
            return
        trainer.should_stop = True
        self.pruned_at = epoch
        if trainer.is_global_zero and self.trial is not None:
            from unosat.sweeps import PRUNED_ATTR

            self.trial.set_user_attr(PRUNED_ATTR, epoch)
            log.info(
                "Optuna trial %d pruned at epoch %d (%s worse than the pruner allows): training stops",
                self.number,
                epoch,
                self.monitor,
            )
