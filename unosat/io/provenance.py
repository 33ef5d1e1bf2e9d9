"""Which outputs are finished: each output records the parameters it was made with.

A re-run skips an output whose recorded parameters equal the current ones, redoes a missing one, and
refuses (unless ``overwrite=true``) to replace one made with other parameters, so nothing is lost silently.
``prepare.py`` and ``predict.py`` both keep their outputs this way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import rasterio
from rasterio.errors import RasterioError

from unosat.errors import UnosatError
from unosat.io.raster import PARAMS_TAG


def canonical(params: dict[str, Any]) -> str:
    """Canonical JSON text of ``params`` (sorted keys), the form in which parameters are stored."""
    return json.dumps(params, sort_keys=True, default=str)


def digest(params: dict[str, Any]) -> str:
    """Short stable hash of ``params``."""
    return hashlib.sha1(canonical(params).encode()).hexdigest()[:16]


def stored_params(path: Path) -> dict | None:
    """Parameters recorded in an output (GeoTIFF tag or ``params`` key of a JSON file); None if unreadable."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text()).get("params")
        with rasterio.open(path) as src:
            text = src.tags().get(PARAMS_TAG)
        return json.loads(text) if text else None
    except (OSError, RasterioError, json.JSONDecodeError, AttributeError):
        return None


def needs_work(path: Path, params: dict[str, Any], overwrite: bool) -> bool:
    """Whether the output at ``path`` must be (re)made for ``params``.

    Raises :class:`UnosatError` when it exists, ``overwrite`` is false, and it was made with other
    parameters (or cannot be read), naming the file and what differs.
    """
    path = Path(path)
    if overwrite or not path.exists():
        return True
    stored = stored_params(path)
    current = json.loads(canonical(params))
    if stored == current:
        return False
    if stored is None:
        reason = "it cannot be read or records no parameters"
    else:
        keys = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
        reason = "it was made with other settings or inputs (" + ", ".join(
            f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in keys
        ) + ")"
    raise UnosatError(f"{path} exists but {reason}; run with overwrite=true to redo it, or choose another out_dir")


def file_identity(path: Path | str) -> dict[str, Any]:
    """What identifies an input file for re-run checks: its name and size (not its folder or mtime, so a
    dataset moved or copied elsewhere is still recognised)."""
    path = Path(path)
    return {"name": path.name, "size": path.stat().st_size}
