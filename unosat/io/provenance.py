"""Which outputs are finished: each output records the parameters it was made with.

A re-run skips an output whose recorded parameters equal the current ones, redoes a missing one, and
refuses (unless ``overwrite=true``) to replace one made with other parameters, so nothing is lost silently.
``prepare.py`` and ``predict.py`` both keep their outputs this way, and compare a whole run's settings with
those its manifest recorded (``dataset.json``, ``predict.json``) the same way: :func:`differing_keys` finds
what differs and :func:`refuse_other_settings` raises the one error that names the file and, for each
differing key, the recorded and the current value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import rasterio
from rasterio.errors import RasterioError

from unosat.errors import UnosatError
from unosat.io.raster import PARAMS_TAG

#: What to do about an output of other parameters (prepare.py and predict.py both have ``overwrite``)
REDO_OUTPUT = "run with overwrite=true to redo it, or choose another out_dir"


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
        raise UnosatError(f"{path} exists but it cannot be read or records no parameters; {REDO_OUTPUT}")
    refuse_other_settings(path, "an output", stored, current, REDO_OUTPUT)
    return True  # not reached: refuse_other_settings raises for parameters that differ


def differing_keys(
    recorded: Mapping[str, Any], current: Mapping[str, Any], keys: Iterable[str] | None = None
) -> list[str]:
    """The sorted keys whose values differ between ``recorded`` and ``current`` settings; ``keys``: the keys
    compared (None: every key of either; a key missing from one side has the value None there)."""
    compared = set(recorded) | set(current) if keys is None else set(keys)
    return sorted(k for k in compared if recorded.get(k) != current.get(k))


def refuse_other_settings(
    path: Path | str,
    what: str,
    recorded: Mapping[str, Any],
    current: Mapping[str, Any],
    remedy: str,
    keys: Iterable[str] | None = None,
) -> None:
    """Raise :class:`UnosatError` when ``recorded`` (read from the file ``path``, which holds ``what``, e.g.
    "a prediction") and ``current`` settings differ in ``keys`` (None: any key), naming the file and each
    differing key with the recorded and the current value, then ``remedy``::

        out/predict.json holds a prediction made with other settings (tta: 'none' -> 'flips'); <remedy>
    """
    differ = differing_keys(recorded, current, keys)
    if differ:
        details = "; ".join(f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in differ)
        raise UnosatError(f"{path} holds {what} made with other settings ({details}); {remedy}")


def file_identity(path: Path | str) -> dict[str, Any]:
    """What identifies an input file for re-run checks: its name and size (not its folder or mtime, so a
    dataset moved or copied elsewhere is still recognised)."""
    path = Path(path)
    return {"name": path.name, "size": path.stat().st_size}
