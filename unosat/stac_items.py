"""Sentinel-1 scenes described by STAC items: a local catalogue, or item JSON files next to their assets.

A STAC item (``"type": "Feature"`` with ``assets``) is one acquisition, e.g. Microsoft Planetary Computer's
``sentinel-1-rtc`` or ``sentinel-1-grd`` items once their assets are downloaded. What unosat takes from it:

===============  =====================================================================================
VV / VH          the assets whose key is one of ``discovery.stac_assets`` (``vv``/``iw-vv``...,
                 case-insensitive); ``href`` relative to the item file, or an absolute local path
date, time       ``properties.datetime`` (or ``start_datetime``), UTC
pass             ``properties["sat:orbit_state"]``: ``ascending`` -> ``ASC``, ``descending`` -> ``DES``
identity         the item ``id`` (letters, digits and ``-``; other characters become ``-``)
===============  =====================================================================================

Catalogues (``"type": "Catalog"``), collections and other JSON files are skipped. Remote hrefs
(``http(s)://``, ``s3://``) are refused with a message: nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from unosat.errors import UnosatError

ORBIT_STATES = {"ascending": "ASC", "descending": "DES"}


@dataclass(frozen=True)
class StacItem:
    """What a scene needs from one item: identity, date, time, pass, and the VV/VH files."""

    item_id: str
    date: str
    time: str | None
    orbit_pass: str | None
    sources: dict[str, tuple[Path, int]]

    def fields(self) -> dict[str, str]:
        """Discovery fields (as a filename pattern's named groups would give them)."""
        out = {"id": self.item_id, "date": self.date}
        if self.time:
            out["time"] = self.time
        if self.orbit_pass:
            out["pass"] = self.orbit_pass
        return out


def read_item(path: Path, assets: dict[str, list[str]]) -> StacItem | None:
    """The scene of the STAC item at ``path``; None when the file is not a STAC item.

    ``assets`` maps ``vv``/``vh`` to the asset keys that may hold it (lower case). Raises
    :class:`UnosatError` naming the file for an item without a date, without one of the polarisations,
    with a remote href, or whose asset file is missing.
    """
    try:
        item = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if (
        not isinstance(item, dict)
        or item.get("type") != "Feature"
        or not isinstance(item.get("assets"), dict)
    ):
        return None
    props = item.get("properties") or {}
    stamp = props.get("datetime") or props.get("start_datetime")
    if not stamp:
        raise UnosatError(f"{path}: STAC item without properties.datetime (nor start_datetime)")
    try:
        when = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        raise UnosatError(f"{path}: STAC item datetime '{stamp}' is not an ISO 8601 date-time") from None
    state = str(props.get("sat:orbit_state", "")).lower()
    keys = {str(k).lower(): k for k in item["assets"]}
    sources = {}
    for pol, names in assets.items():
        key = next((keys[n] for n in names if n in keys), None)
        if key is None:
            raise UnosatError(
                f"{path}: STAC item has no {pol.upper()} asset (looked for keys {names}; it has "
                f"{sorted(item['assets'])}); set discovery.stac_assets.{pol}"
            )
        sources[pol] = (asset_path(path, item["assets"][key], key), 1)
    identity = re.sub(r"[^A-Za-z0-9-]+", "-", str(item.get("id") or Path(path).stem)).strip("-")
    return StacItem(
        identity, when.strftime("%Y%m%d"), when.strftime("%H%M%S"), ORBIT_STATES.get(state), sources
    )


def asset_path(item_path: Path, asset: dict, key: str) -> Path:
    """The local file of an asset: its ``href`` resolved against the item file's folder."""
    href = str((asset or {}).get("href", ""))
    if not href:
        raise UnosatError(f"{item_path}: asset '{key}' has no href")
    parsed = urlparse(href)
    if parsed.scheme in ("http", "https", "s3", "gs", "az"):
        raise UnosatError(
            f"{item_path}: asset '{key}' is remote ({href}); unosat reads local files only: download the "
            "assets and point their hrefs at the local files (relative to the item)"
        )
    local = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(href)
    local = local if local.is_absolute() else (Path(item_path).parent / local)
    if not local.is_file():
        raise UnosatError(f"{item_path}: asset '{key}' file {local} not found")
    return local.resolve()
