"""``OverfitCheck`` (``debug=overfit``): says whether the model memorised the few batches it trains on.

With ``trainer.overfit_batches`` the same batches are seen every epoch, so a model and data pipeline wired
right drive the training loss far down. The check compares the epoch-mean training loss (``train/loss_epoch``)
of the last epoch with the first epoch's and logs one line, PASS or FAIL, with both values and the criterion
``last <= max_ratio * first``; the result is also logged as ``debug/overfit_loss_ratio``.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class OverfitCheck(pl.Callback):
    """Args:
    max_ratio: the criterion, last epoch's training loss over the first epoch's (e.g. 0.2: down by 80 %).
    metric: the epoch-level training loss that is compared.
    """

    def __init__(self, max_ratio: float = 0.2, metric: str = "train/loss_epoch"):
        if not 0 < float(max_ratio) < 1:
            from unosat.errors import UnosatError

            raise UnosatError(f"overfit_check.max_ratio must be in (0, 1), got {max_ratio}")
        self.max_ratio = float(max_ratio)
        self.metric = metric
        self.first: float | None = None
        self.passed: bool | None = None

    def _current(self, trainer: pl.Trainer) -> float | None:
        value = trainer.callback_metrics.get(self.metric)
        return None if value is None else float(value)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.first is None and trainer.current_epoch >= 1:  # the first epoch's mean is logged by now
            self.first = self._current(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = self._current(trainer)
        if self.first is None or last is None:
            log.warning(
                "overfit check: %s was not logged over 2 epochs or more; nothing to compare", self.metric
            )
            return
        ratio = last / self.first if self.first > 0 else float("inf")
        self.passed = ratio <= self.max_ratio
        log.log(
            logging.INFO if self.passed else logging.WARNING,
            "overfit check %s: %s went from %.4f (first epoch) to %.4f (epoch %d), ratio %.3f; criterion <= %.2f",
            "PASS" if self.passed else "FAIL",
            self.metric,
            self.first,
            last,
            trainer.current_epoch,
            ratio,
            self.max_ratio,
        )
        for logger in trainer.loggers:
            logger.log_metrics({"debug/overfit_loss_ratio": ratio}, step=trainer.global_step)
