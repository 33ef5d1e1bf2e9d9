"""The output directory of ``predict.py``: where each product goes, the manifest ``predict.json``, and the
policy for a directory that already holds something (resume the same settings, replace a failed
prediction, refuse anything else unless ``overwrite=true``; a failure is recorded in the manifest).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from unosat.classes import plural
from unosat.errors import UnosatError, find_user_error
from unosat.io.atomic import is_temporary, write_json_atomic
from unosat.io.lock import LOCK_NAME
from unosat.io.provenance import differing_keys, refuse_other_settings
from unosat.predict.settings import Settings

log = logging.getLogger(__name__)

FORMAT = "unosat-prediction"
FORMAT_VERSION = 1
MANIFEST = "predict.json"
STATUS_FAILED = "failed"
SCENES_DIR, CITIES_DIR, QUICKLOOK_DIR = "scenes", "cities", "quicklooks"
EVALUATION = "evaluation.json"


def foreign_entries(out_dir: Path) -> list[str]:
    """Names in ``out_dir`` other than this run's lock file and temporaries of interrupted writes."""
    return sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_NAME and not is_temporary(p))


def check_output_dir(out_dir: Path, settings: dict, overwrite: bool) -> tuple[dict | None, bool]:
    """``(previous, replace_failed)``: the manifest of the prediction already in ``out_dir`` when it was made
    with these settings (to resume or extend it), else None; and whether ``out_dir`` holds a prediction that
    *failed* with other settings, whose outputs this run replaces without ``overwrite``. Raises
    :class:`UnosatError` for a prediction made with other settings that did not fail, or a non-empty
    directory that is not a prediction, unless ``overwrite``."""
    if not out_dir.exists():
        return None, False
    if not out_dir.is_dir():
        raise UnosatError(f"output {out_dir} exists and is not a directory")
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        entries = foreign_entries(out_dir)
        if entries and not overwrite:
            raise UnosatError(
                f"output {out_dir} is not empty and holds no {MANIFEST}: it is not a unosat prediction "
                f"(it holds {sorted(entries)[:5]}); choose another output, or overwrite=true to write "
                "into it anyway"
            )
        return None, False
    try:
        previous = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        if overwrite:
            return None, False
        raise UnosatError(
            f"{manifest_path}: unreadable ({err}); overwrite=true replaces the prediction"
        ) from None
    if not isinstance(previous, dict) or previous.get("format") != FORMAT:
        if overwrite:
            return None, False
        raise UnosatError(
            f"{manifest_path} is not a unosat prediction manifest; overwrite=true to write into it anyway"
        )
    old = previous.get("settings") or {}
    differ = differing_keys(old, settings)
    if differ and previous.get("status") == STATUS_FAILED:
        log.warning(
            "output %s holds a prediction that failed (%s) with other settings: this run replaces it",
            out_dir,
            previous.get("reason", "no reason recorded"),
        )
        return None, True
    if not overwrite:
        refuse_other_settings(
            manifest_path,
            "a prediction",
            old,
            settings,
            "choose another output, or overwrite=true to redo it",
        )
    return (None if differ else previous), False


def merge_records(previous: list[dict], current: list[dict], key: str) -> list[dict]:
    """Records of an earlier run into the same directory that this run did not redo, then this run's."""
    mine = {r[key] for r in current}
    return [r for r in previous if r.get(key) not in mine] + current


def failure_reason(err: BaseException) -> str:
    """One line saying why a run failed."""
    user_error = find_user_error(err)
    if user_error is not None:
        return str(user_error)
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def record_failure(out_dir: Path, err: BaseException, state: dict) -> None:
    """Write ``"status": "failed"`` and the reason into ``predict.json``: into this run's manifest when it
    wrote one, else when the directory holds nothing but a failed prediction (or nothing at all)."""
    manifest_path = out_dir / MANIFEST
    manifest = state.get("manifest")
    if manifest is None:
        if manifest_path.exists():
            try:
                previous = json.loads(manifest_path.read_text())
            except (OSError, json.JSONDecodeError):
                return
            if (
                not isinstance(previous, dict)
                or previous.get("format") != FORMAT
                or previous.get("status") != STATUS_FAILED
            ):
                return  # a finished or interrupted prediction, or not ours: left as it is
        elif foreign_entries(out_dir):
            return
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "started": state.get("started"),
            "settings": None,
        }
    manifest = {
        **manifest,
        "status": STATUS_FAILED,
        "reason": failure_reason(err),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        write_json_atomic(manifest_path, manifest)
    except OSError as write_error:
        log.warning("could not record the failure in %s: %s", manifest_path, write_error)


class OutputPaths:
    """Where each product goes."""

    def __init__(self, root: Path, settings: Settings):
        self.root = root
        self.vector_suffix = settings.vector_config().suffix if settings.vectorize else None
        self.polygons = plural(settings.target)  # "buildings" by default

    def scene_probability(self, scene_id: str) -> Path:
        return self.root / SCENES_DIR / f"{scene_id}_probability.tif"

    def scene_mask(self, scene_id: str) -> Path:
        return self.root / SCENES_DIR / f"{scene_id}_mask.tif"

    def scene_files(self, scene_id: str) -> dict:
        return {"probability": str(self.scene_probability(scene_id)), "mask": str(self.scene_mask(scene_id))}

    def product(self, name: str, what: str, per_city: bool) -> Path:
        folder = CITIES_DIR if per_city else SCENES_DIR
        suffix = self.vector_suffix if what == self.polygons else ".tif"
        return self.root / folder / f"{name}_{what}{suffix}"
