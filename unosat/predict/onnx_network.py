"""Exported ONNX models (``python -m unosat.export``) as prediction networks, run by onnxruntime.

``predict.py ckpt=model.onnx`` (or ``gate.ckpt=classifier.onnx``) loads the file with :func:`load_onnx_model`:
its unosat metadata say what it takes and returns (:func:`unosat.io.onnx_metadata.read_metadata`). The graph
takes VH and VV and computes the band recipe itself, so the prediction windows hand it the polarisations
(:func:`polarisation_recipe`, in the units the graph was exported for) with nodata left as NaN
(:data:`PASS_THROUGH`), and the graph gives nodata pixels the normalisation's fill, as the checkpoint path
does. The network returns probabilities, not logits (:attr:`OnnxNetwork.returns_probabilities`).

Execution providers: ``auto`` uses CUDA when the installed onnxruntime offers it (``onnxruntime-gpu``), else the
CPU; ``threads`` sets onnxruntime's intra-op threads (None: as many as torch uses, so both engines compare on
equal terms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unosat.bands import BandRecipe, Normalization
from unosat.classes import class_names
from unosat.errors import UnosatError

ONNX_SUFFIX = ".onnx"
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"

#: windows handed to an exported graph: the polarisations as read, NaN kept at nodata (the graph fills it)
PASS_THROUGH = Normalization((0.0, 0.0), (1.0, 1.0), fill=math.nan, source="inside the ONNX graph")


def polarisation_recipe(units: str) -> BandRecipe:
    """The 'recipe' of an exported graph's input: VH and VV in ``units``."""
    return BandRecipe(f"vh_vv_{units}", ("vh", "vv"), units)


def is_onnx(path: Path | str) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


@dataclass(frozen=True)
class OnnxOptions:
    """How onnxruntime runs exported models (``onnxruntime`` in ``conf/predict.yaml``).

    Args:
        providers: ``auto`` (CUDA when available, else CPU) or a list of onnxruntime execution providers.
        threads: intra-op threads; None: ``torch.get_num_threads()``.
    """

    providers: str | Sequence[str] = "auto"
    threads: int | None = None

    def provider_list(self, available: Sequence[str]) -> list[str]:
        if isinstance(self.providers, str):
            if self.providers != "auto":
                raise UnosatError(f"onnxruntime.providers must be 'auto' or a list, got '{self.providers}'")
            return [CUDA, CPU] if CUDA in available else [CPU]
        wanted = [str(p) for p in self.providers]
        unknown = [p for p in wanted if p not in available]
        if unknown or not wanted:
            raise UnosatError(
                f"onnxruntime.providers {wanted}: {unknown or 'none'} not available here "
                f"(available: {list(available)})"
            )
        return wanted


def onnxruntime_module():
    try:
        import onnxruntime
    except ImportError:
        raise UnosatError('ONNX models need onnxruntime: pip install -e ".[export]"') from None
    return onnxruntime


class OnnxNetwork(nn.Module):
    """An onnxruntime session behind the ``nn.Module`` interface prediction uses: ``(N, 2, H, W)`` VH/VV tensor
    in (any device, any float dtype), its output as a float32 tensor on the input's device out.

    Attributes: ``task`` (``segmentation`` / ``tile_classification``), ``window_px`` (the tile classifier's
    window), ``size_divisor`` (the exported network's: prediction pads windows to its multiples, as for the
    checkpoint), ``returns_probabilities`` (True: the graph ends in softmax / sigmoid).
    """

    returns_probabilities = True

    def __init__(self, session, task: str, window_px: int | None = None, size_divisor: int = 1) -> None:
        super().__init__()
        self.session = session
        self.size_divisor = int(size_divisor)
        self.task = task
        self.window_px = window_px
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = self.session.run([self.output_name], {self.input_name: array})[0]
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return f"task={self.task}, providers={self.session.get_providers()}"


def load_onnx_model(path: Path | str, options: OnnxOptions | None = None):
    """A :class:`~unosat.predict.ensemble.LoadedModel` running the exported model at ``path`` with onnxruntime.

    Raises :class:`UnosatError` naming the file when it is missing, not ONNX, or not a unosat export.
    """
    from unosat.io.onnx_metadata import read_metadata
    from unosat.predict.ensemble import LoadedModel, file_sha256

    path = Path(path).expanduser()
    options = options or OnnxOptions()
    if not path.is_file():
        raise UnosatError(f"checkpoint {path} not found")
    ort = onnxruntime_module()
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = int(options.threads or torch.get_num_threads())
    session_options.inter_op_num_threads = 1
    providers = options.provider_list(ort.get_available_providers())
    try:
        session = ort.InferenceSession(str(path), session_options, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types for unreadable files
        first = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise UnosatError(f"{path}: not a readable ONNX model ({first})") from None
    meta = read_metadata(session.get_modelmeta().custom_metadata_map, str(path))
    classes = class_names(
        [meta["class_names"][k] for k in sorted(meta["class_names"], key=int)], f"{path}: class_names"
    )
    units = meta["unosat_input"].get("units", "linear")
    net = OnnxNetwork(
        session,
        str(meta["unosat_task"]),
        meta.get("unosat_window_px"),
        int(meta.get("unosat_size_divisor") or 1),
    )
    return LoadedModel(
        path.name,
        net,
        polarisation_recipe(units),
        PASS_THROUGH,
        path.resolve(),
        file_sha256(path),
        meta["unosat_model"],
        {
            "onnx": {k: v for k, v in meta.items() if k.startswith("unosat_")},
            "providers": session.get_providers(),
        },
        classes=classes,
    )
