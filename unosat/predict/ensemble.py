"""The networks that predict: one checkpoint or several averaged at the probability level.

Each checkpoint brings its own band recipe and normalisation (``checkpoint["unosat"]["data"]``). For raw
input every model gets its own stack; models that share recipe and normalisation share one input
(:attr:`Ensemble.groups`). For a prepared dataset every checkpoint's recipe must equal the dataset's. The
building probability of a model is the softmax of its segmentation logits (the first output of models that
return several, e.g. GSCNN's ``(seg_logits, edge_logits)``), averaged over the TTA transforms; the
ensemble's is the mean over models.

**Window sizes.** Every network states ``size_divisor``: input sides that are multiples of it give exact 2x steps
between its levels (32 for the MobileNetV2 and ResNet-50 models, 2^(depth-1) for U-Net, 8 for GSCNN on the
dilated ResNet-50; 1 when a network does not say). A window whose side is not a multiple is padded on its bottom
and right by mirroring (replicating when the window is smaller than the padding) up to the next multiple, and
the logits are cropped back: any ``window.size`` works, and the pixels of the window get the same logits as in
a window of the padded size whose extra rows and columns mirror the scene. Windows of a multiple (the default 512
for every model here) are not padded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unosat.bands import BandRecipe, Normalization
from unosat.checkpoint import build_model, describe_model, load_checkpoint, model_config
from unosat.classes import CLASS_NAMES, TARGET, class_names
from unosat.errors import UnosatError
from unosat.models.outputs import segmentation_logits
from unosat.predict.distributed import Runtime
from unosat.predict.tta import D4Transform, tta_average, tta_transforms
from unosat.raw_input import RawInput
from unosat.scenes import DiscoveryConfig

HASH_CHUNK_BYTES = 1 << 20


@dataclass
class LoadedModel:
    """A network with what it needs to read its input. ``sha256`` identifies the checkpoint file."""

    name: str
    net: nn.Module
    recipe: BandRecipe
    normalization: Normalization
    path: Path | None = None
    sha256: str = ""
    model: dict | None = None
    metadata: dict | None = None
    raw_input: RawInput | None = None
    classes: tuple[str, ...] = CLASS_NAMES

    @property
    def task(self) -> str:
        """``segmentation`` or ``tile_classification`` (what the network predicts)."""
        return getattr(self.net, "task", "segmentation")

    def identity(self) -> dict:
        return {
            "checkpoint": str(self.path) if self.path else self.name,
            "sha256": self.sha256,
            "model": describe_model(self.model or {}),
            "recipe": self.recipe.to_dict(),
            "normalization": {k: v for k, v in self.normalization.to_dict().items() if k != "source"},
        }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(path: Path | str, onnx_options=None) -> LoadedModel:
    """The network of a unosat checkpoint (read with ``weights_only``) and its data recipe, or of a model
    exported with ``python -m unosat.export`` (``*.onnx``, run by onnxruntime with ``onnx_options``, an
    :class:`unosat.predict.onnx_network.OnnxOptions`).

    Raises :class:`UnosatError` naming the file when it is missing, not a unosat checkpoint, or its recipe,
    normalisation and network do not agree.
    """
    from unosat.predict.onnx_network import is_onnx, load_onnx_model

    path = Path(path).expanduser()
    if is_onnx(path):
        return load_onnx_model(path, onnx_options)
    checkpoint = load_checkpoint(path)
    data = checkpoint["unosat"].get("data") or {}
    if "recipe" not in data or "normalization" not in data:
        raise UnosatError(
            f"{path}: the checkpoint records no band recipe or normalisation (unosat.data); it was "
            "not made by train.py"
        )
    recipe = BandRecipe.from_dict(data["recipe"])
    normalization = Normalization.from_dict(data["normalization"])
    if normalization.count != recipe.count:
        raise UnosatError(
            f"{path}: normalisation has {normalization.count} bands but recipe '{recipe.name}' has "
            f"{recipe.count}"
        )
    classes = class_names(data.get("classes"), f"{path}: classes")  # None (older checkpoints): the default
    cfg = model_config(checkpoint, path)
    in_channels = cfg["args"].get("in_channels")
    if in_channels is not None and int(in_channels) != recipe.count:
        raise UnosatError(
            f"{path}: the network takes {in_channels} bands but its recipe '{recipe.name}' has {recipe.count}"
        )
    raw_input = data.get("raw_input")
    if raw_input is not None and not isinstance(raw_input, dict):
        raise UnosatError(f"{path}: malformed raw-input settings in the checkpoint's data recipe")
    raw_input = RawInput.from_dict(raw_input) if raw_input is not None else None
    net = build_model(checkpoint, path)
    return LoadedModel(
        path.name,
        net,
        recipe,
        normalization,
        path.resolve(),
        file_sha256(path),
        cfg,
        {k: v for k, v in checkpoint["unosat"].items() if k != "config"},
        raw_input,
        classes,
    )


#: ``input_mismatch`` values: what to do when predict-time raw-input settings differ from a checkpoint's
INPUT_MISMATCH = ("refuse", "allow")


def resolve_raw_input(
    models: Sequence[LoadedModel], discovery: DiscoveryConfig, mismatch: str = "refuse"
) -> RawInput:
    """The raw-input settings (units, nodata) to read raw scenes with.

    ``discovery.units`` / ``nodata_values`` / ``file_nodata`` left unset (null) come from the checkpoints'
    data recipes (checkpoints made before these were recorded count as linear with the default nodata).
    Settings that differ from a checkpoint's are refused unless ``mismatch == "allow"``: the checkpoint's
    network was trained on inputs read with its own settings. Checkpoints that disagree among themselves
    need explicit settings (and ``allow``).
    """
    if mismatch not in INPUT_MISMATCH:
        raise UnosatError(f"input_mismatch must be one of {list(INPUT_MISMATCH)}, got '{mismatch}'")
    recorded = [(m, m.raw_input) for m in models if m.raw_input is not None]
    distinct = list(dict.fromkeys(r for _, r in recorded))
    explicit = (
        discovery.units is not None
        and discovery.nodata_values is not None
        and discovery.file_nodata is not None
    )
    if len(distinct) > 1 and not explicit:
        listing = "; ".join(f"{m.path or m.name}: {r.to_dict()}" for m, r in recorded)
        raise UnosatError(
            f"the checkpoints were trained on raw inputs read with different settings ({listing}); set "
            "discovery.units, discovery.nodata_values and discovery.file_nodata for these scenes, and "
            "input_mismatch=allow"
        )
    raw = discovery.raw_input(distinct[0] if distinct else None)
    if mismatch == "refuse":
        check_raw_input(models, raw, "predict.py's discovery settings")
    return raw


def check_raw_input(models: Sequence[LoadedModel], raw: RawInput, what: str) -> None:
    """Refuse models whose recorded raw-input settings differ from ``raw`` (``what`` says where it comes from)."""
    for m in models:
        if m.raw_input is None:
            continue
        differ = m.raw_input.differences(raw)
        if differ:
            raise UnosatError(
                f"checkpoint {m.path or m.name} was trained on raw inputs read with other settings than {what} "
                f"({'; '.join(f'{d} (checkpoint vs here)' for d in differ)}); leave those discovery keys unset "
                "(null) to use the checkpoint's, or set input_mismatch=allow if these scenes really need other settings"
            )


def check_prepared_recipe(models: Sequence[LoadedModel], recipe: BandRecipe, dataset: Path) -> None:
    """Every model must read the dataset's band recipe, or only VH/VV (an exported ONNX graph) from a dataset that
    holds both; otherwise say which checkpoint and what differs."""
    for m in models:
        if set(m.recipe.bands) <= {"vh", "vv"} and {"vh", "vv"} <= set(recipe.bands):
            continue  # the polarisations are recovered from the stack (see unosat.predict.inputs)
        differ = m.recipe.differences(recipe)
        if differ:
            raise UnosatError(
                f"checkpoint {m.path or m.name} was trained on band recipe '{m.recipe.name}' but the prepared dataset "
                f"{dataset} holds recipe '{recipe.name}' ({'; '.join(differ)}); predict from the raw scenes instead "
                "(input=<raw dir>), which computes each checkpoint's own bands, or prepare the data with its recipe"
            )


def size_divisor(net: nn.Module) -> int:
    """The input side multiple ``net`` asks for (its ``size_divisor``; 1 when it states none)."""
    return max(1, int(getattr(net, "size_divisor", 1) or 1))


def forward_padded(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Float segmentation logits of ``x`` (N, C, H, W), cropped to (H, W) after padding the bottom and right of
    ``x`` to multiples of the network's :func:`size_divisor` (mirrored; replicated when a side is too short to
    mirror)."""
    divisor = size_divisor(net)
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % divisor, (-w) % divisor
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    logits = segmentation_logits(net(x)).float()
    return logits[..., :h, :w] if logits.shape[-2:] == x.shape[-2:] else logits


class Ensemble:
    """Averages the building probability of ``models`` (each with TTA) on batches of windows.

    ``groups`` lists the distinct ``(recipe, normalization)`` inputs; :meth:`probability` takes one
    normalised batch per group.
    """

    def __init__(self, models: Sequence[LoadedModel], runtime: Runtime, tta: str = "none"):
        if not models:
            raise UnosatError("no checkpoint to predict with")
        for m in models:
            if m.task != "segmentation":
                raise UnosatError(
                    f"checkpoint {m.path or m.name} is a {m.task.replace('_', ' ')} model, not a "
                    "segmentation model: pass it as gate.ckpt, and a segmentation checkpoint as ckpt"
                )
        self.models = list(models)
        self.runtime = runtime
        self.transforms: tuple[D4Transform, ...] = tta_transforms(tta)
        self.groups: list[tuple[BandRecipe, Normalization]] = []
        self.group_of: list[int] = []
        for m in self.models:
            key = (m.recipe, m.normalization)
            if key not in self.groups:
                self.groups.append(key)
            self.group_of.append(self.groups.index(key))
        self.nets = [runtime.prepare_module(m.net) for m in self.models]
        self.forward_calls = 0
        self.size_divisors = [size_divisor(m.net) for m in self.models]

    def input_group(self, recipe: BandRecipe, normalization: Normalization) -> int:
        """Index of the window inputs normalised for ``(recipe, normalization)``, added when new (for other
        networks that look at the windows, e.g. a tile-classifier gate)."""
        key = (recipe, normalization)
        if key not in self.groups:
            self.groups.append(key)
        return self.groups.index(key)

    def _building_probability(self, net: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        out = forward_padded(net, x)
        if out.shape[-2:] != x.shape[-2:] or out.ndim != 4 or out.shape[1] != len(CLASS_NAMES):
            raise UnosatError(
                f"{name}: the network maps {tuple(x.shape)} inputs to {tuple(out.shape)} logits; "
                f"expected (N, {len(CLASS_NAMES)}, {x.shape[-2]}, {x.shape[-1]})"
            )
        if getattr(net, "returns_probabilities", False):  # an exported graph ends in the softmax
            return out[:, TARGET]
        return torch.softmax(out, dim=1)[:, TARGET]

    def probability(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Building probability ``(N, H, W)`` float32 of a batch; ``inputs[g]`` is ``(N, C_g, H, W)``
        normalised for group ``g``."""
        total = None
        with self.runtime.forward_context():
            tensors = [self.runtime.to_input(a) for a in inputs]
            for net, m, g in zip(self.nets, self.models, self.group_of):
                p = tta_average(
                    lambda t, net=net, m=m: self._building_probability(net, m.name, t),
                    tensors[g],
                    self.transforms,
                )
                total = p if total is None else total + p
        return (total / len(self.models)).float().cpu().numpy()
