"""``python -m unosat.export ckpt=... format=onnx output=model.onnx``: a checkpoint as an ONNX model that QGIS
(the Deepness plugin), onnxruntime and ``predict.py ckpt=model.onnx`` run.

The network and its data recipe come from the checkpoint, built only through the registry
(:func:`unosat.checkpoint.build_model`, via :func:`unosat.predict.ensemble.load_model`); nothing read from the
checkpoint is instantiated. The exported graph (:mod:`unosat.export.graph`) takes VH and VV and returns class
probabilities, with dynamic batch, height and width. Written atomically next to each other:

- ``<output>``: the ONNX model with Deepness's and unosat's metadata (:mod:`unosat.io.onnx_metadata`);
- ``<output stem>.md``: the model card (:mod:`unosat.export.model_card`): what to give the model in QGIS.

Before anything is written the export is checked: onnxruntime must reproduce the torch module's outputs on
synthetic VH/VV of every ``check.sizes`` (including a non-square one and nodata pixels) within
``check.tolerance``; otherwise nothing is written and the error says by how much they differ. An existing
output is replaced only with ``overwrite=true``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from unosat.checkpoint import best_of_latest_run
from unosat.classes import TARGET
from unosat.errors import UnosatError
from unosat.export.concat_split import needs_size_multiples
from unosat.export.graph import INPUT_BANDS, PolarisationInput, exported_module
from unosat.export.model_card import model_card
from unosat.io.atomic import atomic_path, write_text_atomic
from unosat.io.onnx_metadata import FORMAT, FORMAT_VERSION, DeepnessSettings, deepness_metadata, encode
from unosat.predict.ensemble import LoadedModel, load_model, size_divisor

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
INPUT_NAME = "vh_vv"
OUTPUT_NAMES = {"segmentation": "probabilities", "tile_classification": "building_probability"}


def require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or :class:`UnosatError` saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise UnosatError(
            f'ONNX export needs onnx and onnxruntime ({err.name} is missing): pip install -e ".[export]"'
        ) from None
    return onnx, onnxruntime


def synthetic_polarisations(
    batch: int, rows: int, cols: int, nodata: float | None, units: str, seed: int = 0
) -> np.ndarray:
    """``(batch, 2, rows, cols)`` float32 VH, VV like Sentinel-1 sigma0 (gamma speckle around -20 / -10 dB,
    bright 4 px blocks), a nodata corner (``nodata`` or NaN), in ``units``: export and check input."""
    rng = np.random.default_rng(seed)
    level = np.array([0.01, 0.1], dtype=np.float32)[None, :, None, None]
    bright = (
        (rng.random((batch, 1, rows // 4 + 1, cols // 4 + 1)) < 0.15)
        .repeat(4, 2)
        .repeat(4, 3)[:, :, :rows, :cols]
    )
    x = level * np.where(bright, 30.0, 1.0) * rng.gamma(4.4, 1 / 4.4, (batch, 2, rows, cols))
    x = x.astype(np.float32)
    if units == "db":
        x = (10 * np.log10(x)).astype(np.float32)
    x[:, :, : rows // 6, : cols // 5] = np.nan if nodata is None else nodata
    return x


def onnx_export(
    module: torch.nn.Module, sample: torch.Tensor, path: Path, task: str, opset: int, axes: dict
) -> None:
    """Trace ``module`` on ``sample`` into ``path`` (TorchScript-based exporter: no onnxscript needed), with
    dynamic batch and spatial axes named by ``axes`` (``batch``, ``height``, ``width``)."""
    spatial = {0: axes["batch"], 2: axes["height"], 3: axes["width"]}
    dynamic = {
        INPUT_NAME: spatial,
        OUTPUT_NAMES[task]: spatial if task == "segmentation" else {0: axes["batch"]},
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer warnings about shapes
        torch.onnx.export(
            module,
            (sample,),
            str(path),
            dynamo=False,
            opset_version=int(opset),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAMES[task]],
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )


def check_against_torch(
    path: Path,
    module: torch.nn.Module,
    sizes: list[tuple[int, int]],
    nodata: float | None,
    units: str,
    tolerance: float,
) -> float:
    """Largest absolute difference between onnxruntime on ``path`` and ``module`` over synthetic inputs of
    ``sizes``; :class:`UnosatError` when above ``tolerance``."""
    _, ort = require_onnx()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for i, (rows, cols) in enumerate(sizes):
        x = synthetic_polarisations(2, rows, cols, nodata, units, seed=100 + i)
        with torch.inference_mode():
            expected = module(torch.from_numpy(x)).numpy()
        got = session.run(None, {INPUT_NAME: x})[0]
        if got.shape != expected.shape:
            raise UnosatError(
                f"{path}: onnxruntime returns {got.shape} for a {x.shape} input, torch {expected.shape}"
            )
        diff = float(np.nanmax(np.abs(got - expected))) if got.size else 0.0
        if not np.isfinite(got).all() or diff > tolerance:
            raise UnosatError(
                f"export check failed: onnxruntime and torch differ by {diff:.3g} (> check.tolerance "
                f"{tolerance}) on a {rows} x {cols} input; nothing written"
            )
        worst = max(worst, diff)
    return worst


def check_sides(net: torch.nn.Module, sides: dict[str, list[int]]) -> None:
    """:class:`UnosatError` naming the setting when the exported form of ``net`` takes only multiples of its size
    divisor (:func:`~unosat.export.concat_split.needs_size_multiples`) and one of ``sides`` is not."""
    if not needs_size_multiples(net):
        return
    divisor = size_divisor(net)
    for setting, values in sides.items():
        bad = [v for v in values if v % divisor]
        if bad:
            raise UnosatError(
                f"{setting}={bad if len(values) > 1 else bad[0]}: the exported {type(net).__name__} takes sides "
                f"that are multiples of {divisor} px; choose such sizes"
            )


def metadata_for(
    model: LoadedModel, task: str, settings: DeepnessSettings, input_units: str, nodata_values: list[float]
) -> dict:
    """Deepness's keys and unosat's for ``model`` (values before JSON encoding)."""
    meta = deepness_metadata(task, model.classes, len(INPUT_BANDS), settings)
    meta.update(
        {
            "unosat_format": FORMAT,
            "unosat_format_version": FORMAT_VERSION,
            "unosat_task": task,
            "unosat_input": {
                "bands": list(INPUT_BANDS),
                "units": input_units,
                "nodata_values": nodata_values,
                "layout": "NCHW float32",
                "name": INPUT_NAME,
                # height and width must be multiples of this (1: any side)
                "side_multiple": size_divisor(model.net) if needs_size_multiples(model.net) else 1,
            },
            "unosat_output": {
                "name": OUTPUT_NAMES[task],
                "what": "softmax class probabilities (N, classes, H, W)"
                if task == "segmentation"
                else f"probability that the window holds {model.classes[TARGET]} pixels (N, 1)",
            },
            "unosat_recipe": model.recipe.to_dict(),
            "unosat_normalization": {k: v for k, v in model.normalization.to_dict().items() if k != "source"},
            "unosat_model": model.model,
            "unosat_checkpoint": {
                "name": model.path.name if model.path else model.name,
                "sha256": model.sha256,
            },
            # predict.py pads windows (mirrored) to multiples of this and crops back, as for the checkpoint
            "unosat_size_divisor": size_divisor(model.net),
        }
    )
    window_px = getattr(model.net, "window_px", None)
    if task == "tile_classification":
        meta["unosat_window_px"] = window_px
    return meta


def resolve_paths(cfg: DictConfig) -> tuple[Path, Path, Path]:
    """``(checkpoint, onnx output, model card)``; the checkpoint defaults to the latest training run's best."""
    if cfg.get("ckpt") in (None, ""):
        ckpt = best_of_latest_run(Path(cfg.paths.log_dir).expanduser())
    else:
        ckpt = Path(str(cfg.ckpt)).expanduser()
    output = (
        Path(str(cfg.output)).expanduser()
        if cfg.get("output") not in (None, "")
        else ckpt.with_suffix(".onnx")
    )
    if output.suffix != ".onnx":
        raise UnosatError(f"output {output}: an ONNX model's file name must end in .onnx")
    return ckpt, output, output.with_suffix(".md")


def run(cfg: DictConfig) -> dict:
    """Export as configured (``conf/export.yaml``); return what was written and checked."""
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise UnosatError(f"format={fmt} is not supported; known: {', '.join(FORMATS)}")
    ckpt, output, card = resolve_paths(cfg)
    overwrite = bool(cfg.overwrite)
    for path in (output, card):
        if path.exists() and not overwrite:
            raise UnosatError(f"{path} exists; pass overwrite=true to replace it")
    onnx, _ = require_onnx()
    model = load_model(ckpt)
    task = model.task
    units = str(cfg.input.units)
    nodata_values = [float(v) for v in cfg.input.nodata_values]
    settings = DeepnessSettings(**OmegaConf.to_container(cfg.deepness, resolve=True))
    prepare = PolarisationInput(model.recipe, model.normalization, nodata_values, units)
    module = exported_module(model.net, prepare)
    reference = exported_module(model.net, prepare, rewrite=False)  # the network as trained, checked against
    nodata = nodata_values[0] if nodata_values else None
    trace = synthetic_polarisations(
        int(cfg.trace.batch), int(cfg.trace.size), int(cfg.trace.size), nodata, units
    )
    sizes = [(int(r), int(c)) for r, c in cfg.check.sizes]
    meta = metadata_for(model, task, settings, units, nodata_values)
    check_sides(
        model.net,
        {
            "trace.size": [int(cfg.trace.size)],
            "check.sizes": [v for rc in sizes for v in rc],
            "deepness.tile_px": [int(settings.tile_px)],
        },
    )

    with atomic_path(output) as tmp:
        onnx_export(module, torch.from_numpy(trace), tmp, task, int(cfg.opset), dict(cfg.axes))
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        for key, value in encode(meta).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name, proto.doc_string = (
            "unosat",
            f"{model.model['name']} from {ckpt.name}: {OUTPUT_NAMES[task]}",
        )
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        max_diff = check_against_torch(tmp, reference, sizes, nodata, units, float(cfg.check.tolerance))
    summary = {
        "checkpoint": str(ckpt),
        "output": str(output),
        "model_card": str(card),
        "task": task,
        "model": model.model,
        "opset": int(cfg.opset),
        "check_sizes": sizes,
        "check_max_abs_diff": max_diff,
        "bytes": output.stat().st_size,
    }
    write_text_atomic(card, model_card(meta, summary, output.name))
    log.info(
        "exported %s (%s) to %s; onnxruntime matches torch within %.2g on %s",
        ckpt.name,
        model.model["name"],
        output,
        max_diff,
        sizes,
    )
    return summary
