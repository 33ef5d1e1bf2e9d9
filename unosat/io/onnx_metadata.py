"""What an exported ONNX file says about itself: the QGIS Deepness plugin's keys and unosat's own.

ONNX ``metadata_props`` are string pairs; every value here is JSON (Deepness decodes each with ``json.loads``).

Deepness keys (its "creators: add metadata to model" documentation):

======================  ==============================================================================
key                     value
======================  ==============================================================================
``model_type``          ``"Segmentor"`` (segmentation models only: Deepness has no tile-classifier type)
``class_names``         ``{"0": "background", "1": "building"}``
``resolution``          cm per pixel of the data the model was trained on (float)
``tiles_size``          tile side in px (int); also written as ``tile_size``, the name Deepness's code reads
``tiles_overlap``       overlap of neighbouring tiles in percent of the tile side (int, rounded up)
``standardization_*``   per input channel; Deepness computes ``(value / 255 - mean) / std``. The recipe and
                        the training normalisation are inside the graph, so these are mean 0 and std 1/255:
                        they cancel the /255 and the graph gets the GeoTIFF values unchanged.
``seg_thresh``          probability from which a pixel is a building (float)
``seg_small_segment``   Deepness removes segments smaller than this (px, int; 0 keeps all)
======================  ==============================================================================

unosat keys (``unosat_*``): the format and its version, the task, the input (bands, units, nodata values),
the checkpoint's band recipe and normalisation (already applied inside the graph), the network spec, the
source checkpoint's name and SHA-256, and the tile classifier's window. :func:`read_metadata` checks them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from unosat.errors import UnosatError

FORMAT = "unosat-onnx"
FORMAT_VERSION = 1
#: Deepness divides every input value by this before standardising
DEEPNESS_SCALE = 255.0


@dataclass(frozen=True)
class DeepnessSettings:
    """What Deepness is told about tiling and post-processing (from the prediction settings, in ``conf/``).

    Args:
        resolution_cm: ground size of a pixel, cm (Sentinel-1 GRD IW: 10 m = 1000 cm).
        tile_px: tile side, px (``window.size`` of predict.py).
        overlap_px: overlap of neighbouring tiles, px (``window.overlap``).
        threshold: probability from which a pixel is a building (``threshold``).
        small_segment_px: segments smaller than this are removed by Deepness (0: none).
    """

    resolution_cm: float = 1000.0
    tile_px: int = 512
    overlap_px: int = 64
    threshold: float = 0.5
    small_segment_px: int = 0

    def __post_init__(self):
        if not self.resolution_cm > 0 or self.tile_px <= 0 or not 0 <= self.overlap_px < self.tile_px:
            raise UnosatError(
                f"deepness settings: resolution_cm and tile_px must be positive and 0 <= overlap_px < "
                f"tile_px, got {self.resolution_cm}, {self.tile_px}, {self.overlap_px}"
            )
        if not 0.0 <= self.threshold <= 1.0 or self.small_segment_px < 0:
            raise UnosatError(
                f"deepness settings: threshold must be in [0, 1] and small_segment_px >= 0, got "
                f"{self.threshold}, {self.small_segment_px}"
            )

    @property
    def overlap_percent(self) -> int:
        """Overlap in percent of the tile side, rounded up (Deepness takes an integer)."""
        return int(math.ceil(100.0 * self.overlap_px / self.tile_px))


def deepness_metadata(
    task: str, class_names: Sequence[str], input_channels: int, settings: DeepnessSettings
) -> dict:
    """The Deepness keys (values not yet JSON-encoded). No ``model_type`` for a tile classifier."""
    out: dict[str, Any] = {}
    if task == "segmentation":
        out["model_type"] = "Segmentor"
    out.update(
        {
            "class_names": {str(i): name for i, name in enumerate(class_names)},
            "resolution": float(settings.resolution_cm),
            "tiles_size": int(settings.tile_px),
            "tile_size": int(settings.tile_px),
            "tiles_overlap": settings.overlap_percent,
            "standardization_mean": [0.0] * input_channels,
            "standardization_std": [1.0 / DEEPNESS_SCALE] * input_channels,
            "seg_thresh": float(settings.threshold),
            "seg_small_segment": int(settings.small_segment_px),
        }
    )
    return out


def encode(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Every value as JSON text (ONNX metadata values are strings)."""
    return {str(k): json.dumps(v) for k, v in metadata.items()}


def decode(props: Mapping[str, str], where: str) -> dict[str, Any]:
    """JSON-decoded metadata; :class:`UnosatError` naming ``where`` when a value is not JSON."""
    out = {}
    for key, text in props.items():
        try:
            out[key] = json.loads(text)
        except (TypeError, json.JSONDecodeError):
            raise UnosatError(f"{where}: metadata '{key}' is not JSON ({str(text)[:60]!r})") from None
    return out


REQUIRED = (
    "unosat_format",
    "unosat_format_version",
    "unosat_task",
    "unosat_input",
    "unosat_recipe",
    "unosat_normalization",
    "unosat_model",
    "class_names",
)


def read_metadata(props: Mapping[str, str], where: str) -> dict[str, Any]:
    """The decoded metadata of a unosat ONNX export; :class:`UnosatError` naming ``where`` when the file was not
    written by ``python -m unosat.export`` (or by a newer format version)."""
    if props.get("unosat_format") is None:
        raise UnosatError(
            f"{where}: not a unosat ONNX export (no unosat_format metadata); export one with "
            "python -m unosat.export ckpt=... output=model.onnx"
        )
    meta = decode(props, where)
    missing = [k for k in REQUIRED if k not in meta]
    if meta.get("unosat_format") != FORMAT or missing:
        raise UnosatError(
            f"{where}: malformed unosat ONNX metadata (format {meta.get('unosat_format')!r}, missing "
            f"{missing})"
        )
    if not isinstance(meta["unosat_format_version"], int) or meta["unosat_format_version"] > FORMAT_VERSION:
        raise UnosatError(
            f"{where}: unosat ONNX format version {meta['unosat_format_version']!r} is newer than this "
            f"unosat reads ({FORMAT_VERSION}); update unosat"
        )
    return meta
