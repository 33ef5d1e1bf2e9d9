"""Loggers built from ``conf/logger/``: Weights & Biases (its mode decided by :mod:`unosat.wandb_mode`: never
a login prompt, never a hang without network) and MLflow (a local SQLite store by default)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from pytorch_lightning.loggers import Logger, WandbLogger

from unosat.errors import UnosatError
from unosat.wandb_mode import resolve_wandb_mode

log = logging.getLogger(__name__)


def wandb_logger(
    project: str = "unosat",
    save_dir: str = ".",
    mode: str = "auto",
    id: str | None = None,
    name: str | None = None,
    group: str | None = None,
    tags: list | None = None,
    log_model: bool = False,
    **kwargs,
):
    """A Lightning ``WandbLogger`` whose mode is resolved by :func:`resolve_wandb_mode`.

    ``id`` keeps one W&B run across resumes (the training run stores it in the checkpoint).
    """
    resolved = resolve_wandb_mode(mode)
    log.info("W&B mode: %s", resolved)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        save_dir=save_dir,
        mode=resolved,
        id=id,
        name=name,
        group=group,
        tags=list(tags or []),
        log_model=log_model,
        resume="allow" if id else None,
        **kwargs,
    )


def finish_wandb(loggers: Iterable[Logger]) -> None:
    """End this process's W&B run when one of ``loggers`` logs to W&B (Lightning leaves the run open; a second
    run in the same process would otherwise log into the first). A run that never started is left alone."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()


def mlflow_logger(
    experiment_name: str = "unosat",
    tracking_dir: str = "mlruns",
    tracking_uri: str | None = None,
    run_name: str | None = None,
    run_id: str | None = None,
    log_model: bool = False,
    **kwargs,
):
    """A Lightning ``MLFlowLogger`` writing to a local tracking store by default.

    ``tracking_dir`` holds a SQLite store (``mlflow.db``) and the artifacts; browse it with
    ``mlflow ui --backend-store-uri sqlite:///<tracking_dir>/mlflow.db``. ``tracking_uri`` (e.g. an MLflow
    server ``http://host:5000``) overrides it. ``run_id`` continues an existing run (resumed training).
    Needs the optional extra: ``pip install -e ".[mlflow]"``.
    """
    try:
        import mlflow  # noqa: F401
        from pytorch_lightning.loggers import MLFlowLogger
    except ImportError:
        raise UnosatError('logger=mlflow needs MLflow: pip install -e ".[mlflow]"') from None
    artifact_location = None
    if tracking_uri is None:
        directory = Path(tracking_dir).expanduser().resolve()
        directory.mkdir(parents=True, exist_ok=True)
        tracking_uri = f"sqlite:///{directory / 'mlflow.db'}"
        artifact_location = str(directory / "artifacts")
    return MLFlowLogger(
        experiment_name=experiment_name,
        tracking_uri=tracking_uri,
        run_name=run_name,
        run_id=run_id,
        log_model=log_model,
        artifact_location=artifact_location,
        **kwargs,
    )
