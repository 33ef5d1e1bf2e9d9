"""The networks a checkpoint may name: an explicit table of the project's classes.

A checkpoint is data that users download and share, so nothing read from it is ever given to
``hydra.utils.instantiate``. Training configs keep their ``_target_`` (the user wrote them); the checkpoint
stores a *network spec* instead::

    {"name": "lwrefinenet", "args": {"in_channels": 3, "num_classes": 2, ...}}

``name`` is a key of :data:`NETWORKS`; ``args`` must be plain data (``None``, bools, numbers, strings, and
lists / string-keyed dicts of those) with no ``_target_``-like key (a key starting with ``_``) at any depth,
and every argument must be a parameter of the class's constructor. :func:`build_network` checks all of that
and then calls the class itself.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from unosat.baselines.pixel_classifier import PixelLogisticRegression
from unosat.baselines.vv_threshold_net import VVThresholdNet
from unosat.errors import UnosatError
from unosat.models.fpn import FPN
from unosat.models.gscnn import GSCNN
from unosat.models.lwrefinenet import LWRefineNet
from unosat.models.tile_classifier import TileClassifier
from unosat.models.unet import UNet

#: registry name -> network class; the only classes a checkpoint can build
NETWORKS: dict[str, type[nn.Module]] = {
    "lwrefinenet": LWRefineNet,
    "gscnn": GSCNN,
    "tile_classifier": TileClassifier,
    "unet": UNet,
    "fpn": FPN,
    # classical baselines (unosat.baselines), exported as checkpoints so predict.py scores them like models
    "vv_threshold": VVThresholdNet,
    "pixel_logistic": PixelLogisticRegression,
}

#: constructor arguments that point outside the checkpoint (a local weights file): ignored when the network is
#: rebuilt from a checkpoint, whose own weights are loaded next
EXTERNAL_ARGS = ("pretrained",)

#: deepest nesting of lists / dicts accepted in a spec's arguments
MAX_DEPTH = 8


def class_paths(cls: type) -> tuple[str, ...]:
    """The dotted paths a training config may give as ``_target_`` for ``cls``."""
    return (f"{cls.__module__}.{cls.__qualname__}", f"unosat.models.{cls.__qualname__}")


def name_of_target(target: str) -> str | None:
    """The registry name of a ``_target_`` string, or None. A plain string comparison: nothing is imported."""
    for name, cls in NETWORKS.items():
        if target in class_paths(cls):
            return name
    return None


def network_spec(model_cfg: Mapping[str, Any]) -> dict:
    """The spec a checkpoint stores for a training config's model (``_target_`` + arguments).

    Raises :class:`UnosatError` when the target is not a registered network (only those can be predicted
    with) or the arguments are not plain data.
    """
    target = str(model_cfg.get("_target_", ""))
    name = name_of_target(target)
    if name is None:
        known = ", ".join(f"{n} ({class_paths(c)[1]})" for n, c in NETWORKS.items())
        raise UnosatError(
            f"model._target_ '{target}' is not a registered unosat network; known: {known} "
            "(add a new network to unosat.models.registry.NETWORKS)"
        )
    args = {k: v for k, v in model_cfg.items() if k != "_target_"}
    check_plain(args, "model")
    return {"name": name, "args": args}


def check_plain(value: Any, where: str, depth: int = 0) -> None:
    """Raise :class:`UnosatError` unless ``value`` is plain data without ``_``-prefixed keys."""
    if depth > MAX_DEPTH:
        raise UnosatError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if math.isnan(value):
            raise UnosatError(f"{where}: NaN is not a valid argument")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnosatError(f"{where}: key {key!r} is not a string")
            if key.startswith("_"):
                raise UnosatError(
                    f"{where}.{key}: keys starting with '_' (such as _target_) are not accepted"
                )
            check_plain(item, f"{where}.{key}", depth + 1)
        return
    raise UnosatError(f"{where}: a {type(value).__name__} is not plain data (numbers, strings, lists, dicts)")


def spec_from_checkpoint(entry: Any) -> dict:
    """The validated network spec of a checkpoint's ``unosat.model`` entry.

    Accepts ``{"name", "args"}``, and the older layout ``{"_target_": <path of a registered class>, **args}``
    (matched as a string against the registered classes' paths, never imported). Raises
    :class:`UnosatError` on anything else.
    """
    if not isinstance(entry, Mapping):
        raise UnosatError(f"the model entry is a {type(entry).__name__}, not a network spec")
    if "_target_" in entry and "name" not in entry:
        target = entry["_target_"]
        name = name_of_target(target) if isinstance(target, str) else None
        if name is None:
            raise UnosatError(
                f"model target {target!r} is not a registered unosat network; refusing to build it"
            )
        entry = {"name": name, "args": {k: v for k, v in entry.items() if k != "_target_"}}
    if set(entry) - {"name", "args"}:
        raise UnosatError(f"the model entry has unexpected keys {sorted(set(entry) - {'name', 'args'})}")
    name, args = entry.get("name"), entry.get("args", {})
    if not isinstance(name, str) or name not in NETWORKS:
        raise UnosatError(f"model {name!r} is not a registered unosat network (known: {', '.join(NETWORKS)})")
    if not isinstance(args, Mapping):
        raise UnosatError(f"model '{name}': arguments are a {type(args).__name__}, not a dict")
    check_plain(args, f"model '{name}' arguments")
    accepted = inspect.signature(NETWORKS[name].__init__).parameters
    unknown = sorted(k for k in args if k not in accepted or k == "self")
    if unknown:
        raise UnosatError(f"model '{name}' takes no argument {', '.join(unknown)}")
    return {"name": name, "args": dict(args)}


def effective_args(spec: Mapping[str, Any]) -> dict:
    """A validated spec's arguments with the constructor's defaults filled in for those it does not give (a
    checkpoint saved before an argument existed was built with that argument's default)."""
    cls = NETWORKS[spec["name"]]
    defaults = {
        k: p.default
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if k != "self" and p.default is not inspect.Parameter.empty
    }
    return {**defaults, **spec["args"]}


def build_network(spec: Mapping[str, Any]) -> nn.Module:
    """The network of a validated spec (see :func:`spec_from_checkpoint`), with freshly initialised weights;
    arguments naming external files (:data:`EXTERNAL_ARGS`) are dropped."""
    spec = spec_from_checkpoint(spec)
    args = {k: v for k, v in spec["args"].items() if k not in EXTERNAL_ARGS}
    try:
        return NETWORKS[spec["name"]](**args)
    except UnosatError:
        raise
    except (TypeError, ValueError, KeyError, IndexError) as err:
        raise UnosatError(
            f"model '{spec['name']}': invalid arguments ({str(err).splitlines()[0][:200]})"
        ) from None


__all__ = [
    "NETWORKS",
    "build_network",
    "check_plain",
    "effective_args",
    "name_of_target",
    "network_spec",
    "spec_from_checkpoint",
]
