"""What every unosat LightningModule shares: injected network, loss, optimiser and schedule; channels-last;
and the checkpoint metadata that lets prediction rebuild the model and its input with nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import pytorch_lightning as pl
import torch
from torch import nn

#: the stages a module steps through; each keeps its own metrics
STAGES = ("train", "val", "test")


class UnosatModule(pl.LightningModule):
    """Base class. A subclass names what it trains in :attr:`task`, recorded in its checkpoints
    (``checkpoint["unosat"]["task"]``) for predict.py and export.

    Args:
        net: the network.
        loss: a module ``loss(output, target) -> {"loss": total, <term>: value, ...}``.
        optimizer: ``optimizer(params) -> torch.optim.Optimizer`` (a Hydra ``_partial_``).
        scheduler: ``scheduler(optimizer, total_steps=...) -> LRScheduler`` or None; stepped every
            ``scheduler_interval`` (``step`` or ``epoch``).
        channels_last: run the network in channels-last memory format (faster convolutions and pooling on
            CPU and recent GPUs).
        metadata: what the checkpoint must carry (model config, data recipe...), stored under
            ``checkpoint["unosat"]`` with the module's ``task``.
    """

    #: what the module trains its network for: ``segmentation`` or ``tile_classification``
    task: ClassVar[str]

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        scheduler_interval: str = "step",
        channels_last: bool = False,
        metadata: dict | None = None,
    ):
        super().__init__()
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.channels_last = bool(channels_last)
        self.metadata = {**dict(metadata or {}), "task": self.task}
        self._epoch_sums: dict[
            str, dict[str, torch.Tensor]
        ] = {}  # stage -> term -> sum of value * batch size
        self._epoch_counts: dict[str, int] = {}  # stage -> samples accumulated this epoch
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def forward(self, image: torch.Tensor):
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return self.net(image)

    def log_terms(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log a batch's loss terms: in training each step as ``train/<term>_step`` (this rank's value, no
        collective), and accumulate them (weighted by ``batch_size``) for :meth:`log_epoch_terms`."""
        if stage == "train":
            self.log_dict(
                {f"train/{k}_step": v.detach() for k, v in terms.items() if k != "loss"},
                on_step=True,
                on_epoch=False,
                sync_dist=False,
                batch_size=batch_size,
            )
            self.log(
                "train/loss_step",
                terms["loss"].detach(),
                on_step=True,
                on_epoch=False,
                prog_bar=True,
                sync_dist=False,
                batch_size=batch_size,
            )
        sums = self._epoch_sums.setdefault(stage, {})
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() * batch_size
        self._epoch_counts[stage] = self._epoch_counts.get(stage, 0) + int(batch_size)

    def log_epoch_terms(self, stage: str) -> None:
        """Log the epoch means of the loss terms over all ranks: ``train/<term>_epoch``, ``val/<term>``,
        ``test/<term>`` (``<stage>/loss`` is the total).

        Under DDP this is exactly one collective (a sum all-reduce of every term and the sample count, in
        sorted key order), made by every rank here, in the module's epoch-end hook. The values are logged
        already reduced (``sync_dist=False``), so nothing that reads logged metrics (the progress bar, which
        exists on rank 0 only, loggers, checkpoint callbacks) starts a collective that other ranks do not make:
        that asymmetry hung DDP runs at the first epoch end.
        """
        sums = self._epoch_sums.pop(stage, {})
        count = self._epoch_counts.pop(stage, 0)
        names = sorted(sums)
        if not names:
            return
        packed = torch.stack(
            [torch.as_tensor(sums[k], dtype=torch.float32, device=self.device) for k in names]
            + [torch.tensor(float(count), device=self.device)]
        )
        packed = self.trainer.strategy.reduce(packed, reduce_op="sum")
        means = packed[:-1] / packed[-1].clamp_min(1.0)
        suffix = "_epoch" if stage == "train" else ""
        for name, value in zip(names, means):
            self.log(
                f"{stage}/{name}{suffix}",
                value,
                on_step=False,
                on_epoch=True,
                sync_dist=False,
                prog_bar=name == "loss" and stage == "val",
            )

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

    # Every rank runs these hooks in the same order: first the loss terms' all-reduce, then the metrics'
    # synchronisation (torchmetrics) inside _epoch_end.
    def on_train_epoch_end(self) -> None:
        self.log_epoch_terms("train")
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_terms("val")
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch_terms("test")
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
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "data_recipe"):
            self.metadata["data"] = datamodule.data_recipe()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["unosat"] = self.metadata
