"""Training figures: drawn without pyplot or a global backend switch, and sent to each logger by its class."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from unosat.training.figures import confusion_figure, save_and_log_figure


class RecordingWandbLogger(WandbLogger):
    """A W&B logger (by class) that records the images it is given instead of starting a run."""

    def __init__(self):
        super().__init__(offline=True)
        self.images: list[tuple[str, list[str], int]] = []

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, list(images), step))


@pytest.mark.slow  # a fresh interpreter importing torch and Lightning (5 s)
def test_importing_the_figure_modules_leaves_matplotlib_alone():
    code = (
        "import matplotlib; before = matplotlib.rcParams['backend']; "
        "import unosat.training.figures, unosat.training.prediction_grid, unosat.prepare.report; "
        "assert matplotlib.rcParams['backend'] == before, matplotlib.rcParams['backend']"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}  # a backend the modules must not switch to Agg
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def test_a_figure_is_saved_and_sent_to_each_logger_by_its_class(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard is the .[tensorboard] extra")
    wandb_like = RecordingWandbLogger()
    tensorboard = TensorBoardLogger(tmp_path / "tb", name="", version="v")
    csv = CSVLogger(tmp_path / "csv")  # takes no images: left alone
    fig = confusion_figure(np.array([[90, 10], [5, 45]]), ("background", "building"), "val, epoch 3")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == [
        "90.0%\n90",
        "10.0%\n10",
        "10.0%\n5",
        "90.0%\n45",
    ]  # row-normalised percentages and counts
    path = save_and_log_figure(
        fig, tmp_path / "figures" / "cm.png", "val/confusion_matrix", [wandb_like, tensorboard, csv], step=7
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert wandb_like.images == [("val/confusion_matrix", [str(path)], 7)]
    tensorboard.experiment.flush()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb" / "v"), size_guidance={"images": 0})
    events.Reload()
    assert [(e.step, e.width > 0) for e in events.Images("val/confusion_matrix")] == [(7, True)]
