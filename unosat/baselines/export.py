"""A fitted baseline network saved as a unosat checkpoint, which ``predict.py`` reads like a trained model.

The checkpoint has what :func:`unosat.checkpoint.load_checkpoint` and
:func:`unosat.predict.ensemble.load_model` require and nothing else: ``state_dict`` (the network's tensors
under ``net.``), and ``unosat`` with ``model`` (the network spec: a registry name and plain-data arguments,
see :mod:`unosat.models.registry`), ``task``, ``data`` (band recipe, normalisation, classes: a data module's
:meth:`~unosat.data.datamodule.UnosatDataModule.data_recipe`) and ``baseline`` (what the fit chose, plain
data). It is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from unosat.checkpoint import NET_PREFIX
from unosat.io.atomic import atomic_path
from unosat.models.registry import check_plain, spec_from_checkpoint


def save_baseline_checkpoint(
    path: Path | str, net: nn.Module, spec: dict, data_recipe: dict, info: dict
) -> Path:
    """Write ``net`` (built from ``spec``) as a unosat checkpoint at ``path``; return the path.

    ``spec`` is validated as a checkpoint's would be (registered name, plain-data arguments), ``info`` must
    be plain data.
    """
    spec = spec_from_checkpoint(spec)
    check_plain(info, "baseline info")
    checkpoint = {
        "state_dict": {f"{NET_PREFIX}{k}": v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "unosat": {"model": spec, "task": "segmentation", "data": dict(data_recipe), "baseline": dict(info)},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path
