"""Load state_dicts saved by the UNOSAT team's Light-Weight RefineNet into :class:`LWRefineNet`.

The team wrapped DrSleep's ``light-weight-refinenet`` MobileNetV2 model in an attribute ``mbv2``, so their
keys read ``mbv2.<reference name>.<tensor>`` (``module.mbv2...`` when saved from ``DataParallel``); 339 keys
for the standard model, BatchNorm running statistics and ``num_batches_tracked`` included. The reference
names and ours, module by module (reference name after ``mbv2.`` -> ours):

- ``layer1.0``, ``layer1.1`` -> ``encoder.stem.conv``, ``encoder.stem.bn`` (stem = feature 0);
- ``layer{k+2}.{b}.output.{j}.0`` and ``.1`` -> ``encoder.stages.{k}.blocks.{b}.{part}.conv`` and ``.bn``, with
  part ``expand``, ``depthwise``, ``project`` for j = 0, 1, 2 (stage k = feature k + 1 = ``layer{k+2}``);
- ``conv8``, ``conv7``, ``conv6``, ``conv5``, ``conv4``, ``conv3`` -> ``decoder.lateral_320``, ``lateral_160``,
  ``lateral_96``, ``lateral_64``, ``lateral_32``, ``lateral_24``;
- ``crp4``, ``crp3``, ``crp2``, ``crp1`` -> ``decoder.crp_1_32``, ``crp_1_16``, ``crp_1_8``, ``crp_1_4``, with
  ``crpX.0.{i+1}_outvar_dimred`` -> ``crp_*.convs.{i}``;
- ``conv_adapt4``, ``conv_adapt3``, ``conv_adapt2`` -> ``decoder.adapt_1_32``, ``adapt_1_16``, ``adapt_1_8``;
- ``segm`` -> ``decoder.classifier``.

Every tensor of each module pair (``weight``, ``bias``, ``running_mean``, ``running_var``,
``num_batches_tracked``) maps to the tensor of the same name; :func:`reference_key_map` spells the whole map
out and checks that it covers every tensor of the model exactly once.

An **output-stride-1** model (``LWRefineNet(output_stride=1)``) shares every reference tensor but ``segm`` (the
1/4-resolution classifier, which it does not have); its 1/2 and 1/1 levels
(:func:`unosat.models.lwrefinenet.new_full_resolution_keys`) have no reference counterpart.
:func:`load_reference_state_dict` then loads the 337 shared tensors, drops the checkpoint's ``segm`` (logged), and
leaves the new tensors as they were (freshly initialised): a starting point for fine-tuning, not a model that
reproduces the reference's predictions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from unosat.errors import UnosatError
from unosat.io.weights_only import load_weights_only
from unosat.models.lwrefinenet import LWRefineNet, new_full_resolution_keys

log = logging.getLogger(__name__)

REFERENCE_PREFIX = "mbv2."
DATA_PARALLEL_PREFIX = "module."
# Keys under which training scripts commonly wrap a state_dict in a checkpoint dict.
WRAPPER_KEYS = ("state_dict", "model")

# Parts of an inverted residual block: ours, in the order of the reference's ``output`` Sequential.
_BLOCK_PARTS = ("expand", "depthwise", "project")
# The reference's conv-BN Sequentials: index of the conv and of the BN.
_CONV_BN = (("0", "conv"), ("1", "bn"))
# Decoder modules, reference name -> ours.
_DECODER_CONVS = {
    "conv8": "decoder.lateral_320",
    "conv7": "decoder.lateral_160",
    "conv6": "decoder.lateral_96",
    "conv5": "decoder.lateral_64",
    "conv4": "decoder.lateral_32",
    "conv3": "decoder.lateral_24",
    "conv_adapt4": "decoder.adapt_1_32",
    "conv_adapt3": "decoder.adapt_1_16",
    "conv_adapt2": "decoder.adapt_1_8",
    "segm": "decoder.classifier",
}
_DECODER_CRPS = {
    "crp4": "decoder.crp_1_32",
    "crp3": "decoder.crp_1_16",
    "crp2": "decoder.crp_1_8",
    "crp1": "decoder.crp_1_4",
}
# Reference tensors whose absence is tolerated: checkpoints from PyTorch < 0.4.1 have no
# ``num_batches_tracked``, which only matters for BatchNorm with momentum=None (not used here).
_OPTIONAL_SUFFIX = ".num_batches_tracked"
# The reference's 1/4-resolution classifier: an output-stride-1 model has no counterpart.
_QUARTER_CLASSIFIER = "segm"
_MAX_LISTED = 20


def reference_module_map(model: LWRefineNet) -> dict[str, str]:
    """Reference module name (with ``mbv2.``) -> our module name, for every conv and BatchNorm of ``model``."""
    pairs: dict[str, str] = {}
    for ref_idx, ours in _CONV_BN:
        pairs[f"layer1.{ref_idx}"] = f"encoder.stem.{ours}"
    for k, stage in enumerate(model.encoder.stages):
        for b in range(len(stage.blocks)):
            for part_idx, part in enumerate(_BLOCK_PARTS):
                for ref_idx, ours in _CONV_BN:
                    pairs[f"layer{k + 2}.{b}.output.{part_idx}.{ref_idx}"] = (
                        f"encoder.stages.{k}.blocks.{b}.{part}.{ours}"
                    )
    pairs.update(_DECODER_CONVS)
    if model.output_stride != 4:
        del pairs[_QUARTER_CLASSIFIER]
    for ref_name, ours in _DECODER_CRPS.items():
        crp = model.get_submodule(ours)
        for i in range(len(crp.convs)):
            pairs[f"{ref_name}.0.{i + 1}_outvar_dimred"] = f"{ours}.convs.{i}"
    return {REFERENCE_PREFIX + ref: ours for ref, ours in pairs.items()}


def reference_key_map(model: LWRefineNet) -> dict[str, str]:
    """Reference state_dict key (``mbv2.``...) -> our state_dict key; 339 entries for the standard model, 337
    at output stride 1 (no ``segm``; the new tensors are not in the map).

    Raises:
        RuntimeError: if the map misses a tensor of ``model`` (other than the new full-resolution ones) or maps
            two keys to one (a bug here).
    """
    key_map: dict[str, str] = {}
    for ref_module, our_module in reference_module_map(model).items():
        for tensor_name in model.get_submodule(our_module).state_dict():
            key_map[f"{ref_module}.{tensor_name}"] = f"{our_module}.{tensor_name}"
    ours = set(model.state_dict()) - set(new_full_resolution_keys(model))
    targets = set(key_map.values())
    if targets != ours or len(targets) != len(key_map):
        raise RuntimeError(
            f"reference key map is incomplete: unmapped {sorted(ours - targets)[:_MAX_LISTED]}, "
            f"unknown {sorted(targets - ours)[:_MAX_LISTED]}, {len(key_map)} keys for {len(targets)} tensors"
        )
    return key_map


def load_reference_state_dict(model: LWRefineNet, source: str | Path | Mapping[str, Tensor]) -> LWRefineNet:
    """Copy the weights of a UNOSAT-team checkpoint into ``model`` (in place) and return ``model``.

    At output stride 1 only the shared tensors are loaded (the checkpoint's ``segm`` is dropped, the new 1/2 and
    1/1 levels keep their values); see the module docstring.

    Args:
        model: the model to fill; its bands and classes must match the checkpoint.
        source: a state_dict, or a path to one saved with ``torch.save`` (loaded with ``weights_only=True``
            on the CPU). A dict that wraps the state_dict under ``state_dict`` or ``model`` is unwrapped. Keys
            may carry ``module.`` (DataParallel); the ``mbv2.`` prefix may be absent (DrSleep's bare model).

    Raises:
        UnosatError: the file cannot be read, or the keys or shapes do not match exactly; the message lists
            missing and unexpected keys and every shape mismatch (reference key, our key, both shapes).
    """
    name = str(source) if isinstance(source, (str, Path)) else "the given state_dict"
    state = _normalise_keys(unwrap_state_dict(read_state_source(source), name), name)
    key_map = reference_key_map(model)
    ours = model.state_dict()

    dropped = []
    if model.output_stride != 4:
        quarter = f"{REFERENCE_PREFIX}{_QUARTER_CLASSIFIER}."
        dropped = sorted(k for k in state if k.startswith(quarter))
        state = {k: v for k, v in state.items() if k not in dropped}
    missing = [k for k in key_map if k not in state and not k.endswith(_OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in key_map]
    mismatched = [
        _describe_mismatch(ref_key, our_key, tuple(state[ref_key].shape), tuple(ours[our_key].shape))
        for ref_key, our_key in key_map.items()
        if ref_key in state and state[ref_key].shape != ours[our_key].shape
    ]
    if missing or unexpected or mismatched:
        raise UnosatError(_mismatch_message(name, model, missing, unexpected, mismatched))

    converted = {our_key: state[ref_key] for ref_key, our_key in key_map.items() if ref_key in state}
    new = set(new_full_resolution_keys(model))
    for our_key in set(ours) - set(converted) - new:  # only the tolerated num_batches_tracked
        converted[our_key] = torch.zeros_like(ours[our_key])
    converted.update({k: ours[k] for k in new})  # the full-resolution levels keep their values
    model.load_state_dict(converted, strict=True)
    log.info("loaded %d reference tensors from %s", len(state), name)
    if dropped:
        log.info(
            "output stride %d: dropped the reference's 1/4-resolution classifier (%s); %d new full-resolution "
            "tensors keep their initial values",
            model.output_stride,
            ", ".join(dropped),
            len(new),
        )
    return model


def read_state_source(source: str | Path | Mapping[str, Tensor]) -> Mapping:
    """``source`` itself when it is a state dict, else the file it names (:func:`load_weights_only`)."""
    if not isinstance(source, (str, Path)):
        return source
    return load_weights_only(source)


def unwrap_state_dict(state: object, name: str) -> Mapping[str, Tensor]:
    while isinstance(state, Mapping) and not any(isinstance(v, Tensor) for v in state.values()):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
        if wrapper is None:
            break
        state = state[wrapper]
    if not isinstance(state, Mapping):
        raise UnosatError(
            f"checkpoint {name}: expected a state_dict (a dict of tensors), got {type(state).__name__}"
        )
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise UnosatError(
            f"checkpoint {name}: expected a state_dict of tensors, but these entries are not tensors: "
            f"{', '.join(not_tensors[:_MAX_LISTED])}"
        )
    return state


def _normalise_keys(state: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
    """Drop a ``module.`` prefix and make sure of the ``mbv2.`` one."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        norm = key.removeprefix(DATA_PARALLEL_PREFIX)
        if not norm.startswith(REFERENCE_PREFIX):
            norm = REFERENCE_PREFIX + norm
        if norm in out:
            raise UnosatError(f"checkpoint {name}: key {key!r} appears twice (with and without a prefix)")
        out[norm] = value
    return out


def _describe_mismatch(ref_key: str, our_key: str, theirs: tuple[int, ...], ours: tuple[int, ...]) -> str:
    text = f"{ref_key} (our {our_key}): checkpoint shape {theirs}, model shape {ours}"
    if ref_key == REFERENCE_PREFIX + "layer1.0.weight" and len(theirs) == len(ours) == 4:
        text += f" -- the checkpoint takes {theirs[1]} input bands, the model {ours[1]}"
    elif ref_key.startswith(REFERENCE_PREFIX + "segm.") and theirs and ours:
        text += f" -- the checkpoint predicts {theirs[0]} classes, the model {ours[0]}"
    return text


def _listed(items: list[str]) -> str:
    shown = "\n  ".join(items[:_MAX_LISTED])
    more = f"\n  ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"\n  {shown}{more}"


def _mismatch_message(
    name: str, model: LWRefineNet, missing: list[str], unexpected: list[str], mismatched: list[str]
) -> str:
    lines = [
        f"checkpoint {name} does not fit LWRefineNet(in_channels={model.in_channels}, "
        f"num_classes={model.num_classes}, output_stride={model.output_stride}) in the UNOSAT team's layout:"
    ]
    if mismatched:
        lines.append(f"shape mismatches ({len(mismatched)}):{_listed(mismatched)}")
    if missing:
        lines.append(f"missing keys ({len(missing)}):{_listed(missing)}")
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}):{_listed(unexpected)}")
        if any(
            ".encoder." in k or k.removeprefix(REFERENCE_PREFIX).startswith("encoder.") for k in unexpected
        ):
            lines.append(
                "(the keys look like a unosat checkpoint, which loads with load_state_dict, not here)"
            )
    return "\n".join(lines)
