"""Loggers: Weights & Biases online when the user is logged in and the server answers, offline otherwise.

Never a login prompt, never a hang without network: the mode is decided before wandb starts, from the
environment (``WANDB_MODE`` wins), an API key (``WANDB_API_KEY`` or a ``~/.netrc`` entry for the W&B host)
and a short TCP check of that host.
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from unosat.errors import UnosatError

log = logging.getLogger(__name__)

DEFAULT_WANDB_URL = "https://api.wandb.ai"


def wandb_host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_URL)).hostname or "api.wandb.ai"


def wandb_logged_in() -> bool:
    """Whether an API key is available without asking: ``WANDB_API_KEY`` or a netrc entry for the host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(wandb_host()) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def host_reachable(host: str, port: int = 443, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


#: the values wandb accepts for WANDB_MODE
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")


def resolve_wandb_mode(mode: str = "auto") -> str:
    """``online``, ``offline`` or ``disabled``.

    ``auto`` (default): ``WANDB_MODE`` if set; else online when logged in and the W&B host answers within
    2 s; else offline (runs are kept in the run directory; ``wandb sync`` uploads them later).
    """
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env is not None and not env.strip():
        os.environ.pop("WANDB_MODE")  # set but empty means unset (wandb itself would reject it)
        env = None
    if env:
        if env not in WANDB_MODES:
            raise UnosatError(f"environment variable WANDB_MODE={env!r} is not a W&B mode ({', '.join(WANDB_MODES)})")
        return "offline" if env == "dryrun" else env
    if wandb_logged_in() and host_reachable(wandb_host()):
        return "online"
    return "offline"


def wandb_logger(project: str = "unosat", save_dir: str = ".", mode: str = "auto", id: str | None = None,
                 name: str | None = None, group: str | None = None, tags: list | None = None,
                 log_model: bool = False, **kwargs):
    """A Lightning ``WandbLogger`` whose mode is resolved by :func:`resolve_wandb_mode`.

    ``id`` keeps one W&B run across resumes (the training run stores it in the checkpoint).
    """
    from pytorch_lightning.loggers import WandbLogger

    resolved = resolve_wandb_mode(mode)
    log.info("W&B mode: %s", resolved)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, save_dir=save_dir, mode=resolved, id=id, name=name, group=group,
                       tags=list(tags or []), log_model=log_model, resume="allow" if id else None, **kwargs)


def finish_wandb(loggers) -> None:
    """End this process's W&B runs (Lightning leaves them open; a second run in the same process would
    otherwise log into the first)."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None) is not None:
            import wandb

            wandb.finish()


def mlflow_logger(experiment_name: str = "unosat", tracking_dir: str = "mlruns", tracking_uri: str | None = None,
                  run_name: str | None = None, run_id: str | None = None, log_model: bool = False, **kwargs):
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
    return MLFlowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, run_name=run_name, run_id=run_id,
                        log_model=log_model, artifact_location=artifact_location, **kwargs)
