"""``SegmentationModule``: a segmentation network, its loss, optimiser and schedule, and its metrics.

Everything is injected (built from config by :mod:`unosat.training.run`), so any network that maps
``(N, C, H, W)`` images to ``(N, classes, H, W)`` logits, or to a tuple whose first item is those logits
(GSCNN), trains here unchanged. Metrics are accumulated in a torchmetrics confusion matrix over valid pixels
(mask != ignore_index), synchronised across DDP ranks, and turned into IoU per class, mean IoU and the
building class's precision, recall and F1 at each epoch end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from unosat.classes import CLASS_NAMES, IGNORE_INDEX
from unosat.metrics import scores_from_confusion
from unosat.models.outputs import segmentation_logits
from unosat.training.figures import confusion_figure, save_and_log_figure
from unosat.training.lightning_base import STAGES, UnosatModule


class SegmentationModule(UnosatModule):
    """Trains a segmentation ``net`` with ``loss`` (see :class:`~unosat.training.lightning_base.UnosatModule`
    for the shared arguments).

    Args:
        num_classes, ignore_index, class_names: the label set (255 = ignore).
    """

    task = "segmentation"

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        scheduler_interval: str = "step",
        num_classes: int = 2,
        ignore_index: int = IGNORE_INDEX,
        class_names: Sequence[str] = CLASS_NAMES,
        channels_last: bool = False,
        metadata: dict | None = None,
    ):
        super().__init__(net, loss, optimizer, scheduler, scheduler_interval, channels_last, metadata)
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.class_names = tuple(class_names)
        self.confusion = nn.ModuleDict(
            {
                f"{stage}_split": MulticlassConfusionMatrix(self.num_classes, ignore_index=self.ignore_index)
                for stage in STAGES  # ("train" alone would clash with nn.Module.train)
            }
        )

    # ------------------------------------------------------------------ steps
    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        image, target = batch["image"], batch["mask"]
        output = self(image)
        terms = self.loss(output, target)
        self.log_terms(stage, terms, image.shape[0])
        self.confusion[f"{stage}_split"].update(segmentation_logits(output).detach().argmax(dim=1), target)
        return terms["loss"]

    # ------------------------------------------------------------ epoch ends
    def _epoch_end(self, stage: str) -> None:
        metric = self.confusion[f"{stage}_split"]
        confusion = metric.compute().cpu().numpy()  # synchronised over ranks
        metric.reset()
        if self.trainer.sanity_checking:
            return
        scores = scores_from_confusion(confusion, self.class_names)
        headline = f"iou_{self.class_names[-1]}"
        self.log_dict({f"{stage}/{k}": float(v) for k, v in scores.items() if k != headline}, sync_dist=False)
        self.log(f"{stage}/{headline}", scores[headline], prog_bar=True, sync_dist=False)
        if stage != "train" and self.trainer.is_global_zero:
            out_dir = Path(self.trainer.default_root_dir) / "figures"
            fig = confusion_figure(
                confusion, self.class_names, f"{stage} confusion, epoch {self.current_epoch}"
            )
            save_and_log_figure(
                fig,
                out_dir / f"{stage}_confusion_epoch{self.current_epoch:03d}.png",
                f"{stage}/confusion_matrix",
                self.loggers,
                self.global_step,
            )
