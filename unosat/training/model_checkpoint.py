"""``ModelCheckpoint`` whose ``last.ckpt`` is the latest epoch, whatever the monitored metric did.

Lightning 2.x writes ``last.ckpt`` only when it also wrote a top-k checkpoint in the same step, so after
an epoch that did not improve ``optimized_metric``, ``last.ckpt`` still held an older epoch and
``ckpt_path=last`` silently resumed from there. Here ``last.ckpt`` is written at the end of every training
epoch (after validation) and when training is interrupted (``KeyboardInterrupt``, an exception), so a
resumed run loses at most the epoch in progress. Nothing is written by ``fast_dev_run`` (``debug=fdr``).
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

log = logging.getLogger(__name__)


class LastEveryEpochCheckpoint(ModelCheckpoint):
    """:class:`pytorch_lightning.callbacks.ModelCheckpoint` (same arguments) that keeps ``last.ckpt`` current:
    written at every training epoch end and on interruption when ``save_last`` is set.

    On interruption the checkpoint is written only in a single-process run: under DDP the other ranks may
    not reach the collective save, and a barrier would hang the job instead of ending it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._last_written_step: int | None = None

    def _may_write(self, trainer: pl.Trainer) -> bool:
        return (
            bool(self.save_last)
            and not trainer.fast_dev_run
            and trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and trainer.global_step > 0
        )

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        if not self._may_write(trainer):
            return
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_written_step = trainer.global_step

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)  # top-k (and last, when top-k saved) as Lightning does
        if self._last_written_step != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if trainer.world_size > 1 or self._last_written_step == trainer.global_step:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if self._last_written_step == trainer.global_step:
            log.warning(
                "training stopped by %s at epoch %d, step %d: saved %s (resume with ckpt_path=last)",
                type(exception).__name__,
                trainer.current_epoch,
                trainer.global_step,
                self.last_model_path,
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_written_step != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
