"""Hydra callbacks used by the project's configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CreateSweepDir(Callback):
    """Creates the sweep directory before the sweeper starts, so a sweeper can keep state in it (the Optuna
    study's SQLite storage lives there, which lets an interrupted study resume with the same
    ``hydra.sweep.dir``)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
