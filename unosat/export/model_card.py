"""The short ``model.md`` written beside an exported ONNX model: what it is and what to give it in QGIS."""

from __future__ import annotations

BAND_WORDS = {
    "vh": "VH",
    "vv": "VV",
    "mean": "(VH + VV) / 2",
    "diff": "VV - VH",
    "norm": "sqrt(VH² + VV²)",
    "product": "VV · VH",
    "ratio": "VV / VH",
}


SQUARE_TILES = (
    "in QGIS give square tiles: Deepness checks that the output is square, "
    "so both spatial axes carry one symbol"
)


def _sides(meta: dict) -> str:
    """What heights and widths the graph takes (``unosat_input.side_multiple``, absent in older exports)."""
    divisor = meta.get("unosat_size_divisor", 1)
    multiple = meta["unosat_input"].get("side_multiple", 1)
    if multiple > 1:
        return (
            f"Any batch works; **height and width must be multiples of {multiple} px** (512 is; {SQUARE_TILES}). "
            "predict.py pads other windows to such multiples by mirroring and crops the result back."
        )
    return (
        f"Any batch, height and width work ({SQUARE_TILES}); sides that are multiples of {divisor} px (512 is) give "
        "exactly what predict.py computes, which pads other windows to such multiples by mirroring."
    )


def _recipe_words(recipe: dict) -> str:
    bands = ", ".join(BAND_WORDS.get(b, b) for b in recipe["bands"])
    units = (
        "in dB (10·log10, values below {:g} clamped)".format(recipe.get("db_floor", 1e-8))
        if recipe["units"] == "db"
        else "in linear power"
    )
    return f"{bands}, {units}"


def model_card(meta: dict, summary: dict, onnx_name: str) -> str:
    """Markdown describing the export whose metadata is ``meta`` (before JSON encoding)."""
    task = meta["unosat_task"]
    names = meta["class_names"]
    target = names.get("1", "building")  # the target class (mask value 1)
    inp = meta["unosat_input"]
    norm = meta["unosat_normalization"]
    units = "linear power (sigma0 as delivered, not dB)" if inp["units"] == "linear" else "dB"
    nodata = ", ".join(f"{v:g}" for v in inp["nodata_values"]) or "none besides NaN"
    lines = [
        f"# {onnx_name}",
        "",
        f"Exported by `python -m unosat.export` from `{meta['unosat_checkpoint']['name']}` "
        f"(sha256 {meta['unosat_checkpoint']['sha256'][:16]}…): network `{meta['unosat_model']['name']}`, "
        f"ONNX opset {summary['opset']}. onnxruntime reproduced the PyTorch module within "
        f"{summary['check_max_abs_diff']:.1e} (max abs) on synthetic inputs of "
        f"{', '.join(f'{r} × {c}' for r, c in summary['check_sizes'])} px before the file was written.",
        "",
        "## Input: VH and VV, nothing else",
        "",
        f"One tensor `{inp['name']}`, {inp['layout']}, shape (batch, 2, height, width): **band 1 = VH, band 2 = VV**, "
        f"Sentinel-1 backscatter in {units}. {_sides(meta)}",
        "",
        f"The band recipe is inside the graph: it computes {_recipe_words(meta['unosat_recipe'])} from VH and VV, "
        f"then standardises each band with the training tiles' mean {[round(m, 4) for m in norm['mean']]} and "
        f"std {[round(s, 4) for s in norm['std']]}. No raster-calculator step is needed. Pixels where VH or VV is "
        f"NaN, infinite or equal to a nodata value ({nodata}) are treated as nodata (given the normalised value "
        f"{norm.get('fill', 0.0):g}, as in training); mask them out of the results.",
        "",
        "If VH and VV are separate GeoTIFFs, stack them into one layer first: Raster ▸ Miscellaneous ▸ Build "
        "Virtual Raster with *Place each input file into a separate band*, VH first, VV second (or choose the "
        "two bands in Deepness's input-channel mapping).",
        "",
    ]
    if task == "segmentation":
        lines += [
            "## Output",
            "",
            f"`{meta['unosat_output']['name']}`, (batch, 2, height, width): softmax probabilities of "
            f"{', '.join(f'{k} = {v}' for k, v in meta['class_names'].items())}. A pixel is {target} where "
            f"p({target}) ≥ {meta['seg_thresh']}.",
            "",
            "## In QGIS (Deepness plugin)",
            "",
            "Load the file in Deepness: it reads these settings from the model's metadata:",
            "",
            "| setting | value |",
            "| --- | --- |",
            f"| model type | {meta['model_type']} |",
            f"| resolution | {meta['resolution']:g} cm/px |",
            f"| tile size | {meta['tiles_size']} px |",
            f"| tiles overlap | {meta['tiles_overlap']} % |",
            f"| segmentation threshold | {meta['seg_thresh']} |",
            f"| remove small segments | {meta['seg_small_segment']} px |",
            "| standardization | mean 0, std 1/255: cancels Deepness's division by 255, so the graph gets the "
            "layer's values unchanged |",
            "",
            "Run it on the layer's native resolution (10 m for Sentinel-1 GRD IW).",
            "",
        ]
    else:
        lines += [
            "## Output and what it is for",
            "",
            f"`{meta['unosat_output']['name']}`, (batch, 1): the probability that a window of "
            f"{meta.get('unosat_window_px') or 'any'} px holds {target} pixels. This is the tile classifier that "
            "lets `predict.py` skip empty windows before the segmentation network runs "
            "(`python predict.py ckpt=<segmentation>.onnx gate.ckpt=<this file> gate.threshold=0.2`). Deepness has "
            "no model type for it (its Detector and Recognition types expect boxes or embeddings): it carries no "
            "`model_type` and is not meant to be loaded in QGIS; it serves pipelines that run onnxruntime over "
            "large mosaics.",
            "",
        ]
    lines += [
        "## With unosat",
        "",
        f"`python predict.py ckpt={onnx_name} input=<raw scenes>` runs this model with onnxruntime through the same "
        "sliding windows, blending, COGs and polygons as a checkpoint (CPU; the CUDA provider when "
        "onnxruntime-gpu has one).",
        "Ensembles and test-time augmentation are prediction-time choices, not part of the file: "
        f"`ckpt=[{onnx_name},other.onnx]` averages the models' probabilities; predict.py averages each window "
        "over its four flips by default (`tta=flips`), `tta=none` runs it once as QGIS Deepness does, `tta=d4` "
        "adds rotations (only for a model trained with them: they turn the SAR look direction).",
        "",
    ]
    return "\n".join(lines)
