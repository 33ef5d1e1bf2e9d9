"""unosat checkpoints: Lightning checkpoints that also carry what prediction needs.

``checkpoint["unosat"]`` holds ``model`` (the network's config, ``_target_`` + arguments), ``data`` (band
recipe, normalisation, tile size, classes), and ``wandb_run_id``. Checkpoints are read with
``torch.load(weights_only=True)``: no pickled code runs, and a network is only built from a ``_target_``
inside the ``unosat`` package.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from unosat.errors import UnosatError

NET_PREFIX = "net."


def load_checkpoint(path: Path | str) -> dict:
    """The checkpoint dict at ``path``; :class:`UnosatError` if missing, unreadable or not unosat's."""
    path = Path(path)
    if not path.is_file():
        raise UnosatError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (zip), EOFError...
        raise UnosatError(f"{path}: not a readable PyTorch checkpoint, or it holds pickled objects that are not "
                          f"loaded for safety ({str(err).splitlines()[0][:200]})") from None
    if not isinstance(checkpoint, dict) or "unosat" not in checkpoint or "state_dict" not in checkpoint:
        raise UnosatError(f"{path}: not a unosat checkpoint (no 'unosat' metadata); train one with python train.py")
    meta = checkpoint["unosat"]
    if "model" not in meta or "data" not in meta:
        raise UnosatError(f"{path}: unosat checkpoint without model or data recipe metadata")
    return checkpoint


def model_config(checkpoint: dict) -> dict:
    return dict(checkpoint["unosat"]["model"])


def build_model(checkpoint: dict, path: Path | str = "checkpoint") -> nn.Module:
    """The trained network of a checkpoint, in eval mode, on CPU."""
    from hydra.utils import instantiate

    cfg = model_config(checkpoint)
    target = str(cfg.get("_target_", ""))
    if not target.startswith("unosat."):
        raise UnosatError(f"{path}: model target '{target}' is not a unosat model; refusing to build it")
    net = instantiate(cfg)
    state = {k[len(NET_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(NET_PREFIX)}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UnosatError(f"{path}: weights do not fit model {target} ({str(err).splitlines()[0]})") from None
    return net.eval()


def describe_model(cfg: dict) -> str:
    keys = ("in_channels", "num_classes", "backbone")
    return f"{cfg.get('_target_')}({', '.join(f'{k}={cfg[k]}' for k in keys if k in cfg)})"


def check_same_model(checkpoint: dict, cfg: dict, path: Path | str) -> None:
    """Raise :class:`UnosatError` when the checkpoint's network differs from the configured one."""
    saved = model_config(checkpoint)
    keys = ("_target_", "in_channels", "num_classes", "backbone")
    differ = [k for k in keys if (k in saved or k in cfg) and saved.get(k) != cfg.get(k)]
    if differ:
        raise UnosatError(f"checkpoint {path} was trained with {describe_model(saved)}, but this run builds "
                          f"{describe_model(cfg)} (differs in {', '.join(differ)}); choose the matching model=... "
                          "or another checkpoint")


def find_latest(log_dir: Path | str, pattern: str) -> Path | None:
    """The most recently modified file matching ``pattern`` (a glob) under ``log_dir``, or None."""
    found = sorted(Path(log_dir).glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
