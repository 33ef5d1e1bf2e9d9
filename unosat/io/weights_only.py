"""Reading what ``torch.save`` wrote without running pickled code: ``torch.load(weights_only=True)``.

Checkpoints and state dicts come from strangers as often as from us; only tensors, containers and plain
values are read. Every ``torch.load`` of the package goes through :func:`load_weights_only`, so a missing,
truncated or unsafe file is one clear :class:`~unosat.errors.UnosatError` naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unosat.errors import UnosatError, first_line


def load_weights_only(path: Path | str, map_location: Any = "cpu") -> object:
    """The object ``torch.save`` wrote to ``path``, read with ``weights_only=True`` onto ``map_location``
    (:func:`torch.load`'s argument; the CPU by default).

    Raises :class:`UnosatError` naming ``path`` when it does not exist, or cannot be read (empty, truncated,
    not a PyTorch file, or holding pickled objects that are not loaded for safety).
    """
    path = Path(path)
    if not path.is_file():
        raise UnosatError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (zip), EOFError...
        raise UnosatError(
            f"{path}: not a readable PyTorch checkpoint (empty, truncated, or holding pickled objects "
            f"that torch.load(weights_only=True) does not load, for safety: {first_line(err)})"
        ) from None
