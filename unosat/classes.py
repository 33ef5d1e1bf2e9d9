"""The segmentation classes and the ignore value, defined once for the whole pipeline."""

from __future__ import annotations

#: Mask value of pixels that carry no information (image nodata, padding): ignored in loss and metrics.
IGNORE_INDEX: int = 255

#: Class names in label order: mask value 0 is background, 1 is building.
CLASS_NAMES: tuple[str, ...] = ("background", "building")

#: Label of the building class (the class the challenge scored).
BUILDING: int = 1
