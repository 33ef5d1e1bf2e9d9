"""Figures logged during training, and sending a figure to every logger that takes images.

Figures are drawn on their own Agg canvas (:mod:`unosat.agg_figures`), so importing this module leaves
matplotlib's global backend alone."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from unosat.agg_figures import save_figure, subplots

log = logging.getLogger(__name__)


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Confusion matrix (rows true, columns predicted) as counts and row-normalised percentages."""
    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    pct = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0) * 100
    fig, ax = subplots(figsize=(3.6, 3.2))
    ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{pct[i, j]:.1f}%\n{int(cm[i, j]):,}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if pct[i, j] > 60 else "black",
            )
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return fig


def save_and_log_figure(
    fig: Figure, path: Path, key: str, loggers: Sequence[Logger], step: int, dpi: int = 100
) -> Path:
    """Save ``fig`` as a PNG at ``path`` (atomically) and log it as image ``key`` to W&B/TensorBoard/MLflow."""
    path = Path(path)
    save_figure(fig, path, dpi)
    for logger in loggers:
        try:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[str(path)], step=step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(key, fig, global_step=step)
            elif isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=str(Path(key).parent))
        except Exception as err:  # a logger failing to take an image must not stop training
            log.warning("could not log figure %s to %s: %s", key, type(logger).__name__, err)
    return path
