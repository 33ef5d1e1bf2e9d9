"""Callback: every N epochs, a PNG grid of predictions on a fixed set of validation tiles.

Columns: image, image + prediction, prediction, image + ground truth, ground truth (and the predicted edge
map for models that return one, e.g. GSCNN); each row's title gives the tile and its building IoU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure

from unosat.agg_figures import subplots
from unosat.classes import IGNORE_INDEX, TARGET
from unosat.models.outputs import segmentation_logits
from unosat.training.figures import save_and_log_figure
from unosat.training.module import SegmentationModule


def pick_tiles(target_ratio: np.ndarray, n: int) -> list[int]:
    """``n`` tiles spread over the range of building ratios (highest first), deterministic."""
    order = np.argsort(-np.asarray(target_ratio), kind="stable")
    if len(order) <= n:
        return order.tolist()
    return order[np.linspace(0, len(order) - 1, n).round().astype(int)].tolist()


def display_band(image: np.ndarray) -> np.ndarray:
    """A normalised band stretched to [0, 1] by its 2-98 % percentiles, for display."""
    lo, hi = np.percentile(image, [2, 98])
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)


def overlay(gray: np.ndarray, mask: np.ndarray, color: tuple[float, float, float]) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.asarray(color)
    return rgb


def tile_iou(pred: np.ndarray, target: np.ndarray) -> float:
    valid = target != IGNORE_INDEX
    p, t = (pred == TARGET) & valid, (target == TARGET) & valid
    union = (p | t).sum()
    return float((p & t).sum() / union) if union else float("nan")


class PredictionGrid(pl.Callback):
    """Saves ``<run>/figures/prediction_grid_epoch<NNN>.png`` every ``every_n_epochs`` and logs it.

    Args:
        num_tiles: validation tiles shown (fixed for the whole run).
        every_n_epochs: how often.
        band: band shown (name from the recipe, e.g. ``vv``); the first band if absent.
    """

    def __init__(self, num_tiles: int = 6, every_n_epochs: int = 1, band: str = "vv", dpi: int = 90):
        self.num_tiles = int(num_tiles)
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.band = band
        self.dpi = dpi
        self.indices: list[int] | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.num_tiles <= 0:
            return
        if not isinstance(pl_module, SegmentationModule):
            return  # e.g. a tile classifier: nothing to draw
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if (trainer.current_epoch + 1) % self.every_n_epochs and not last_epoch:
            return
        dataset = trainer.datamodule.val_dataset
        if self.indices is None:
            self.indices = pick_tiles(dataset.tiles["target_ratio"].to_numpy(), self.num_tiles)
        band = dataset.recipe.bands.index(self.band) if self.band in dataset.recipe.bands else 0
        samples = [dataset[i] for i in self.indices]
        images = torch.stack([s["image"] for s in samples]).to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        with torch.inference_mode():
            output = pl_module(images)
        pl_module.train(was_training)
        preds = segmentation_logits(output).argmax(dim=1).cpu().numpy()
        edges = (
            torch.sigmoid(output[1]).cpu().numpy()[:, 0]
            if isinstance(output, tuple | list) and len(output) > 1
            else None
        )
        fig = self.figure(samples, preds, edges, band, dataset)
        path = (
            Path(trainer.default_root_dir)
            / "figures"
            / f"prediction_grid_epoch{trainer.current_epoch:03d}.png"
        )
        save_and_log_figure(
            fig, path, "val/prediction_grid", pl_module.loggers, trainer.global_step, self.dpi
        )

    def figure(self, samples, preds, edges, band: int, dataset) -> Figure:
        cols = ["image", "image + prediction", "prediction", "image + ground truth", "ground truth"]
        if edges is not None:
            cols.append("predicted edges")
        fig, axes = subplots(
            len(samples), len(cols), figsize=(2.3 * len(cols), 2.4 * len(samples)), squeeze=False
        )
        for r, (sample, pred) in enumerate(zip(samples, preds)):
            gray = display_band(sample["image"][band].numpy())
            target = sample["mask"].numpy()
            gt = target == TARGET
            shown_gt = np.where(target == IGNORE_INDEX, 0.5, gt.astype(float))
            panels = [
                gray,
                overlay(gray, pred == TARGET, (1, 0.1, 0.1)),
                pred == TARGET,
                overlay(gray, gt, (0.1, 1, 0.1)),
                shown_gt,
            ]
            if edges is not None:
                panels.append(edges[r])
            for c, panel in enumerate(panels):
                ax = axes[r, c]
                ax.imshow(
                    panel,
                    cmap="gray" if np.ndim(panel) == 2 else None,
                    vmin=0,
                    vmax=1,
                    interpolation="nearest",
                )
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(cols[c], fontsize=8)
            tile = dataset.tiles.iloc[sample["index"]]
            axes[r, 0].set_ylabel(
                f"{tile['city']} {tile['scene_id'][-16:]}\nIoU {tile_iou(pred, target):.3f}", fontsize=7
            )
        fig.tight_layout()
        return fig
