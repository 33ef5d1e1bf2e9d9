"""What every unosat LightningModule shares: injected network, loss, optimiser and schedule; channels-last;
and the checkpoint metadata that lets prediction rebuild the model and its input with nothing else."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn


class UnosatModule(pl.LightningModule):
    """Base class.

    Args:
        net: the network.
        loss: a module ``loss(output, target) -> {"loss": total, <term>: value, ...}``.
        optimizer: ``optimizer(params) -> torch.optim.Optimizer`` (a Hydra ``_partial_``).
        scheduler: ``scheduler(optimizer, total_steps=...) -> LRScheduler`` or None; stepped every
            ``scheduler_interval`` (``step`` or ``epoch``).
        channels_last: run the network in channels-last memory format (faster convolutions and pooling on
            CPU and recent GPUs).
        metadata: what the checkpoint must carry (model config, data recipe...), stored under
            ``checkpoint["unosat"]``.
    """

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: Callable, scheduler: Callable | None = None,
                 scheduler_interval: str = "step", channels_last: bool = False, metadata: dict | None = None):
        super().__init__()
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.channels_last = bool(channels_last)
        self.metadata = dict(metadata or {})
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def forward(self, image: torch.Tensor):
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return self.net(image)

    def log_terms(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log every loss term as ``<stage>/<term>`` and the total as ``<stage>/loss``.

        Under DDP the values are means over all ranks (``sync_dist``: one scalar all-reduce each).
        """
        on_step = stage == "train"
        self.log_dict({f"{stage}/{k}": v.detach() for k, v in terms.items() if k != "loss"},
                      on_step=on_step, on_epoch=True, prog_bar=False, sync_dist=True, batch_size=batch_size)
        self.log(f"{stage}/loss", terms["loss"], on_step=on_step, on_epoch=True, prog_bar=True,
                 sync_dist=True, batch_size=batch_size)

    # ---------------------------------------------------- steps and epoch ends
    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        """Loss of one batch of ``stage`` (``train``, ``val``, ``test``), its terms logged, metrics updated."""
        raise NotImplementedError

    def _epoch_end(self, stage: str) -> None:
        """Compute, log and reset the metrics of ``stage``."""
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        if self.scheduler_interval == "step":
            total = int(self.trainer.estimated_stepping_batches)
        else:
            total = int(self.trainer.max_epochs)
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "data_recipe"):
            self.metadata["data"] = datamodule.data_recipe()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["unosat"] = self.metadata
