"""The segmentation classes and the ignore value, defined once for the whole pipeline.

The pipeline segments one target class against a background: mask value 0 is the background, 1 the target,
255 ignored. What the two classes are called comes from config (``classes.names``, ``conf/classes/``):
``[background, building]`` by default, ``[land, water]`` for a user who trains water. The names make the
metric keys (``val/iou_water``), evaluation keys, band descriptions, product and figure labels; a prepared
dataset (``dataset.json``) and a checkpoint (``unosat.data.classes``) record them, so predict.py speaks of
what the model was trained on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from unosat.errors import UnosatError

#: Mask value of pixels that carry no information (image nodata, padding): ignored in loss and metrics.
IGNORE_INDEX: int = 255

#: The default class names in label order: mask value 0 is background, 1 is building.
CLASS_NAMES: tuple[str, ...] = ("background", "building")

#: Label of the target class (the class scored, vectorised and predicted as a probability).
TARGET: int = 1

#: What a class name may look like: it becomes part of metric keys and file names.
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")


def class_names(names: Sequence[str] | None, where: str = "classes.names") -> tuple[str, ...]:
    """``names`` checked: two distinct names (background, target), each a letter then letters, digits, ``_``
    or ``-`` (they become metric keys and file names); None gives :data:`CLASS_NAMES`.

    Raises :class:`UnosatError` naming ``where`` (a config key or a file) and the problem.
    """
    if names is None:
        return CLASS_NAMES
    if isinstance(names, str) or not isinstance(names, Sequence) and not hasattr(names, "__iter__"):
        raise UnosatError(f"{where} must be a list of two names [background, target], got {names!r}")
    out = tuple(str(n) for n in names)
    if len(out) != 2:
        raise UnosatError(
            f"{where} must name two classes [background, target] (masks hold 0 and 1), got {list(out)}"
        )
    bad = [n for n in out if not NAME_PATTERN.match(n)]
    if bad:
        raise UnosatError(
            f"{where}: class name(s) {bad} must start with a letter and hold only letters, digits, "
            "'_' or '-' (at most 40 characters): they become metric keys and file names"
        )
    if out[0] == out[1]:
        raise UnosatError(f"{where}: the two classes need different names, got {list(out)}")
    return out


def plural(name: str) -> str:
    """An English plural for product names: ``building`` -> ``buildings``, ``water`` -> ``waters``,
    ``bus`` -> ``buses``, ``city`` -> ``cities``."""
    if name.endswith(("s", "x", "z", "ch", "sh")):
        return f"{name}es"
    if len(name) > 1 and name.endswith("y") and name[-2].lower() not in "aeiou":
        return f"{name[:-1]}ies"
    return f"{name}s"
