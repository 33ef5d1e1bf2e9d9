"""ONNX export (issue 14): every registered network exports; onnxruntime matches torch and the checkpoint's own
band-recipe path; the Deepness metadata; predict.py with an exported model writes what the checkpoint writes;
clear errors. Skipped without the ``.[export]`` extra (onnx, onnxruntime)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import REPO

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from unosat.bands import BAND_FORMULAS, BandRecipe, Normalization, polarisations_to_stack  # noqa: E402
from unosat.config import compose_config  # noqa: E402
from unosat.errors import UnosatError  # noqa: E402
from unosat.export.graph import TORCH_BAND_FORMULAS, PolarisationInput  # noqa: E402
from unosat.export.run import INPUT_NAME, run, synthetic_polarisations  # noqa: E402
from unosat.models.registry import NETWORKS, build_network  # noqa: E402
from unosat.predict.distributed import Runtime  # noqa: E402
from unosat.predict.ensemble import Ensemble, load_model  # noqa: E402
from unosat.predict.inputs import ArrayReader  # noqa: E402
from unosat.predict.sliding_window import WindowConfig, predict_scene  # noqa: E402

RECIPE = {"name": "db", "bands": ["vh", "vv", "mean"], "units": "db", "db_floor": 1e-8}
NORMALIZATION = {"mean": [-19.0, -9.0, -12.0], "std": [3.0, 3.0, 3.0], "fill": 0.0}
#: small constructor arguments per registered network (others: in_channels / num_classes only)
TINY_ARGS = {
    "gscnn": {
        "aspp_channels": 8,
        "decoder_channels": 8,
        "low_level_channels": 8,
        "shape_channels": [4, 4, 4, 4],
        "input_recipe": {
            "bands": RECIPE["bands"],
            "units": "db",
            "mean": NORMALIZATION["mean"],
            "std": NORMALIZATION["std"],
        },
    },
    "tile_classifier": {"num_stages": 3, "window_px": 32},
    "lwrefinenet": {"output_stride": 1},  # conf/model/lwrefinenet.yaml's full-resolution layout
    "unet": {"widths": [8, 16, 32]},
    "fpn": {"pyramid_channels": 16, "segmentation_channels": 8},
    "vv_threshold": {
        "threshold_db": -10.0,
        "input_recipe": {
            "bands": RECIPE["bands"],
            "units": "db",
            "mean": NORMALIZATION["mean"],
            "std": NORMALIZATION["std"],
        },
    },
}
SMALL = ["trace.size=64", "check.sizes=[[48,80]]"]
#: prediction settings for the tiny demo's 160 x 192 px scenes (as tests/test_predict.py)
PRED = [
    "window.size=96",
    "window.overlap=32",
    "window.batch_size=4",
    "cog.blocksize=128",
    "block_rows=64",
    "aggregate.method=none",
    "vectorize=false",
]


def write_checkpoint(path: Path, name: str, seed: int = 0) -> Path:
    """A checkpoint as train.py writes it (registry spec, data recipe, ``net.`` weights) of network ``name``,
    with PyTorch's default initialisation so that its output follows the input."""
    args = {"in_channels": 3, "num_classes": 2, **TINY_ARGS.get(name, {})}
    spec = {"name": name, "args": args}
    torch.manual_seed(seed)
    net = build_network(spec)
    for module in net.modules():
        if module is not net and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    if isinstance(
        getattr(net, "weight", None), torch.Tensor
    ):  # pixel_logistic: fitted coefficients, 0 as built
        net.weight.normal_(0.0, 1.0)
    heads = [
        m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == args["num_classes"]
    ]
    if (
        heads and getattr(net, "task", "segmentation") == "segmentation"
    ):  # building - background logit: mean 0, std 2
        net.eval()
        with torch.inference_mode():
            x = torch.from_numpy(
                Normalization.from_dict(NORMALIZATION).apply(
                    polarisations_to_stack(
                        *synthetic_polarisations(1, 64, 64, 0.0, "linear")[0], BandRecipe.from_dict(RECIPE)
                    )[0],
                    channel_axis=0,
                )
            )[None]
            out = net(x)
            logits = out[0] if isinstance(out, tuple) else out
            head = heads[-1]
            bias = head.bias if head.bias is not None else torch.zeros(2)
            diff = logits[:, 1] - logits[:, 0] - (bias[1] - bias[0])
            k = 2.0 / max(float(diff.std()), 1e-6)
            head.weight.mul_(k)
            if head.bias is not None:
                head.bias.copy_(torch.tensor([0.0, -k * float(diff.mean())]))
    torch.save(
        {
            "state_dict": {"net." + k: v for k, v in net.state_dict().items()},
            "unosat": {
                "model": spec,
                "task": getattr(net, "task", "segmentation"),
                "data": {
                    "recipe": RECIPE,
                    "normalization": NORMALIZATION,
                    "tile_size": 64,
                    "classes": ["background", "building"],
                    "ignore_index": 255,
                },
            },
        },
        path,
    )
    return path


def export_cfg(ckpt: Path, output: Path, *overrides: str):
    return compose_config(
        "export",
        [
            f"ckpt={ckpt}",
            f"output={output}",
            f"paths.output_dir={output.parent / 'hydra'}",
            *SMALL,
            *overrides,
        ],
    )


class Exports(dict):
    """``name -> (checkpoint, exported .onnx)`` of registered networks, exported when first asked for."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> tuple[Path, Path]:
        ckpt = write_checkpoint(self.root / f"{name}.ckpt", name)
        run(export_cfg(ckpt, self.root / f"{name}.onnx"))
        self[name] = (ckpt, self.root / f"{name}.onnx")
        return self[name]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Exports:
    return Exports(tmp_path_factory.mktemp("export"))


def session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def recipe_path(ckpt: Path, x: np.ndarray) -> np.ndarray:
    """What predict.py computes from a checkpoint for VH/VV ``x`` (N, 2, H, W): the numpy band recipe,
    the normalisation, the network, softmax (segmentation) or sigmoid (tile classifier)."""
    model = load_model(ckpt)
    stacks = [
        model.normalization.apply(polarisations_to_stack(v[0], v[1], model.recipe)[0], channel_axis=0)
        for v in x
    ]
    with torch.inference_mode():
        out = model.net(torch.from_numpy(np.stack(stacks)))
    if model.task == "tile_classification":
        return torch.sigmoid(out).numpy()
    out = out[0] if isinstance(out, tuple) else out
    return torch.softmax(out, dim=1).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_network_exports_and_onnxruntime_matches_the_checkpoints_own_path(exports, name):
    ckpt, path = exports[name]
    sess = session(path)
    (inp,), outputs = sess.get_inputs(), sess.get_outputs()
    assert inp.name == INPUT_NAME and inp.shape == ["batch", 2, "size", "size"] and len(outputs) == 1
    for i, (rows, cols) in enumerate([(64, 64), (40, 72)]):  # two sizes, one not square, with nodata
        x = synthetic_polarisations(2, rows, cols, 0.0, "linear", seed=i)
        got = sess.run(None, {INPUT_NAME: x})[0]
        want = recipe_path(ckpt, x)
        assert got.shape == want.shape == ((2, 2, rows, cols) if name != "tile_classifier" else (2, 1))
        assert np.abs(got - want).max() <= 1e-4, name
        if name != "tile_classifier":
            assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)
            assert got[:, 1].std() > 1e-3  # the output follows the input: the comparison can fail


def test_torch_band_formulas_equal_numpys_on_every_band_and_both_units():
    rng = np.random.default_rng(0)
    vh, vv = rng.gamma(2.0, 0.02, (2, 5, 7)).astype(np.float32)
    vh[0, 0], vv[1, 1] = 0.0, np.nan  # nodata
    assert set(TORCH_BAND_FORMULAS) == set(BAND_FORMULAS)
    with np.errstate(divide="ignore"):
        in_db = (10 * np.log10(vh), 10 * np.log10(vv))  # 0 -> -inf: nodata as well
    for units in ("linear", "db"):
        recipe = BandRecipe("all", tuple(sorted(BAND_FORMULAS)), units)
        norm = Normalization(tuple(rng.normal(size=recipe.count)), tuple(rng.uniform(0.5, 2, recipe.count)))
        want = norm.apply(polarisations_to_stack(vh, vv, recipe)[0], channel_axis=0)
        for input_units, given in (("linear", (vh, vv)), ("db", in_db)):
            nodata = (0.0, -99999.0) if input_units == "linear" else (-99999.0,)
            graph = PolarisationInput(recipe, norm, nodata, input_units)
            x = torch.from_numpy(np.stack(given)[None].astype(np.float32))
            got = graph(x)[0].numpy()
            assert np.abs(got - want).max() < 1e-4, (units, input_units)
            assert (got[:, 0, 0] == 0).all() and (got[:, 1, 1] == 0).all()  # nodata -> the fill


@pytest.mark.slow
def test_deepness_metadata_keys_types_and_model_card(exports):
    _, path = exports["lwrefinenet"]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    meta = {k: json.loads(v) for k, v in props.items()}
    assert meta["model_type"] == "Segmentor"
    assert meta["class_names"] == {"0": "background", "1": "building"}
    assert isinstance(meta["resolution"], float) and meta["resolution"] == 1000.0
    assert meta["tiles_size"] == meta["tile_size"] == 512 and isinstance(meta["tiles_size"], int)
    assert meta["tiles_overlap"] == 13  # 64 px of 512, rounded up
    assert meta["standardization_mean"] == [0.0, 0.0]
    assert meta["standardization_std"] == pytest.approx([1 / 255, 1 / 255])
    assert isinstance(meta["seg_thresh"], float) and meta["seg_thresh"] == 0.5
    assert isinstance(meta["seg_small_segment"], int)
    assert meta["unosat_recipe"] == RECIPE and meta["unosat_input"]["bands"] == ["vh", "vv"]
    # Deepness's own preprocessing, (x / 255 - mean) / std, hands the graph the values unchanged
    x = synthetic_polarisations(1, 32, 32, 0.0, "linear")
    mean, std = (
        np.array(meta[k], dtype=np.float32)[None, :, None, None]
        for k in ("standardization_mean", "standardization_std")
    )
    assert np.allclose((x / 255.0 - mean) / std, x, rtol=1e-5)
    card = path.with_suffix(".md").read_text()
    assert "band 1 = VH, band 2 = VV" in card and "(VH + VV) / 2" in card and "13 %" in card
    tile = {p.key: json.loads(p.value) for p in onnx.load(str(exports["tile_classifier"][1])).metadata_props}
    assert (
        "model_type" not in tile
        and tile["unosat_task"] == "tile_classification"
        and tile["unosat_window_px"] == 32
    )
    assert "gate.ckpt" in exports["tile_classifier"][1].with_suffix(".md").read_text()


@pytest.mark.slow
def test_export_errors(exports, tmp_path):
    ckpt, path = exports["lwrefinenet"]
    with pytest.raises(UnosatError, match=r"lwrefinenet.onnx exists; pass overwrite=true"):
        run(export_cfg(ckpt, path))
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(UnosatError, match=r"plain.ckpt: not a unosat checkpoint"):
        run(export_cfg(plain, tmp_path / "plain.onnx"))
    with pytest.raises(UnosatError, match=r"format=tflite is not supported"):
        run(export_cfg(ckpt, tmp_path / "x.onnx", "format=tflite"))
    assert not (tmp_path / "plain.onnx").exists() and not (tmp_path / "x.onnx").exists()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unosat.export",
            f"ckpt={tmp_path / 'missing.ckpt'}",
            f"output={tmp_path / 'm.onnx'}",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"error: checkpoint {tmp_path / 'missing.ckpt'} not found"


def test_predict_refuses_an_onnx_file_that_is_not_a_unosat_export(tmp_path, tiny_raw_session):
    from onnx import TensorProto, helper

    from unosat.predict.run import run as predict

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
    )
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(other))
    cfg = compose_config(
        "predict",
        [
            f"ckpt={other}",
            f"input={tiny_raw_session}",
            f"output={tmp_path / 'o'}",
            f"paths.output_dir={tmp_path / 'h'}",
            *PRED,
        ],
    )
    with pytest.raises(UnosatError, match=r"other.onnx: not a unosat ONNX export"):
        predict(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lwrefinenet", "unet"])
def test_sliding_window_prediction_with_onnxruntime_equals_the_checkpoints(exports, name):
    """The whole window / blending path on a scene with nodata and a non-square shape: within 1e-4."""
    ckpt, path = exports[name]
    x = synthetic_polarisations(1, 150, 110, 0.0, "linear", seed=3)[0]
    x[:, 60:64, :] = np.nan  # a nodata band across the scene
    # U-Net (side multiple 4): windows of 62 px, padded to 64 for both engines
    config = WindowConfig(size=64 if name == "lwrefinenet" else 62, overlap=16, batch_size=2)
    models = [load_model(ckpt), load_model(path)]
    recipe = models[0].recipe
    stack, _, _ = polarisations_to_stack(x[0], x[1], recipe)  # the windows give each model its own input
    out = []
    for members in ([models[0]], [models[1]], models):  # torch, onnxruntime, an ensemble of both
        ensemble = Ensemble(members, Runtime(None, channels_last=True), "none")
        out.append(
            np.concatenate([p for _, p in predict_scene(ArrayReader(stack, recipe), ensemble, config)])
        )
    torch_p, onnx_p, mixed = out
    assert np.array_equal(np.isnan(torch_p), np.isnan(onnx_p)) and np.isnan(torch_p).any()
    assert np.nanmax(np.abs(torch_p - onnx_p)) <= 1e-4 and np.nanstd(torch_p) > 1e-3
    assert np.nanmax(np.abs(mixed - torch_p)) <= 1e-4


@pytest.mark.slow
def test_a_prepared_stack_gives_an_exported_graph_its_polarisations_back(exports):
    _, path = exports["lwrefinenet"]
    model = load_model(path)
    x = synthetic_polarisations(1, 20, 30, 0.0, "linear")[0]
    recipe = BandRecipe.from_dict(RECIPE)
    stack, valid, _ = polarisations_to_stack(x[0], x[1], recipe)
    block = ArrayReader(stack, recipe).read(rasterio.windows.Window(0, 0, 30, 20))
    vhvv = block.bands(model.recipe)
    assert np.allclose(vhvv[:, valid], x[:, valid], rtol=1e-5) and np.isnan(vhvv[:, ~valid]).all()


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.mark.slow
def test_predict_py_with_the_onnx_model_writes_the_checkpoints_cogs(exports, tiny_raw_session, tmp_path):
    from unosat.predict.aggregate import MASK_NODATA
    from unosat.predict.probability import decode_probability
    from unosat.predict.run import run as predict

    ckpt, path = exports["lwrefinenet"]
    outs = {}
    for label, model in (("ckpt", ckpt), ("onnx", path)):
        outs[label] = tmp_path / label
        manifest = predict(
            compose_config(
                "predict",
                [
                    f"ckpt={model}",
                    f"input={tiny_raw_session}",
                    f"output={outs[label]}",
                    f"paths.output_dir={tmp_path / 'h'}",
                    "cities=[Samawah]",
                    "probability_dtype=float16",
                    *PRED,
                ],
            )
        )
        assert manifest["status"] == "complete"
    probs = sorted((outs["ckpt"] / "scenes").glob("*_probability.tif"))
    assert probs
    for prob in probs:
        a, b = decode_probability(read(prob)), decode_probability(read(outs["onnx"] / "scenes" / prob.name))
        assert np.array_equal(np.isnan(a), np.isnan(b))
        # float16 storage: values within 1e-4 may round to neighbouring float16 numbers (one ulp apart)
        ulp = np.spacing(np.abs(a[np.isfinite(a)]).astype(np.float16)).astype(np.float32)
        assert (np.abs(a - b)[np.isfinite(a)] <= 1e-4 + ulp).all() and np.nanstd(a) > 1e-3
        mask_a = read(prob.with_name(prob.name.replace("_probability", "_mask")))
        mask_b = read(outs["onnx"] / "scenes" / prob.name.replace("_probability", "_mask"))
        near = np.abs(a - 0.5) <= 1e-4 + np.spacing(np.float16(0.5))
        assert ((mask_a == mask_b) | near).all() and (mask_a == MASK_NODATA).any()
    manifest = json.loads((outs["onnx"] / "predict.json").read_text())
    assert manifest["checkpoints"][0]["checkpoint"].endswith("lwrefinenet.onnx")


def test_aspp_guidance_pooling_written_for_onnx_equals_adaptive_average_pooling(monkeypatch):
    import torch.nn.functional as F

    from unosat.models import aspp

    x = torch.randn(2, 1, 37, 53)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)  # the branch the exporter traces
    for size in [
        (2, 2),
        (5, 7),
        (10, 13),
        (37, 53),
    ]:  # sizes that do not divide the input's, and the identity
        assert torch.allclose(aspp.adaptive_avg_pool2d(x, size), F.adaptive_avg_pool2d(x, size), atol=1e-6), (
            size
        )


def test_split_decoder_concats_keeps_the_unets_values_and_leaves_the_checkpoint_network_alone():
    from unosat.export.concat_split import SplitUpBlock, split_decoder_concats
    from unosat.models.unet import UNet, UpBlock

    torch.manual_seed(0)
    net = UNet(3, 2, widths=[8, 16, 32, 64]).eval()
    for bn in (
        m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)
    ):  # statistics as after training
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    split = split_decoder_concats(net)
    assert [type(b) for b in split.decoder] == [SplitUpBlock] * 3 and all(
        type(b) is UpBlock for b in net.decoder
    )
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    for shape in [(2, 3, 64, 64), (1, 3, 40, 56)]:  # multiples of the size divisor (8), one not square
        x = torch.randn(shape)
        with torch.inference_mode():
            want, got = net(x), split(x)
        assert got.shape == want.shape == (shape[0], 2, *shape[2:])
        assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
    with pytest.raises(UnosatError, match="multiples of its size divisor"):
        split(torch.randn(1, 3, 37, 50))  # the network itself takes odd sides; its exported form does not
    other = torch.nn.Conv2d(3, 2, 1)
    assert split_decoder_concats(other) is other  # networks without U-Net decoder levels: as they are


@pytest.mark.slow
def test_an_exported_unet_is_checked_and_described_at_multiples_of_its_size_divisor(exports, tmp_path):
    ckpt, path = exports["unet"]  # widths [8, 16, 32]: size divisor 4
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["unosat_input"])["side_multiple"] == 4
    assert "must be multiples of 4 px" in path.with_suffix(".md").read_text()
    for override, name in [
        ("check.sizes=[[48,78]]", r"check.sizes=\[78\]"),
        ("trace.size=66", "trace.size=66"),
        ("window.size=510", "deepness.tile_px=510"),
    ]:
        with pytest.raises(UnosatError, match=f"{name}.*multiples of 4 px"):
            run(export_cfg(ckpt, tmp_path / "odd.onnx", override))
    assert not (tmp_path / "odd.onnx").exists()
    lw_ckpt, lw_path = exports["lwrefinenet"]
    lw_props = {p.key: p.value for p in onnx.load(str(lw_path)).metadata_props}
    assert json.loads(lw_props["unosat_input"])["side_multiple"] == 1  # other networks take any side


def test_two_class_probabilities_are_the_softmax():
    from unosat.export.graph import class_probabilities

    logits = torch.randn(2, 2, 9, 11) * 20  # up to saturation of both classes
    assert torch.allclose(class_probabilities(logits), torch.softmax(logits, dim=1), atol=1e-6)
    three = torch.randn(2, 3, 5, 5)
    assert torch.equal(class_probabilities(three), torch.softmax(three, dim=1))


def test_the_exported_unet_graph_has_no_decoder_concat(tmp_path):
    from unosat.export.graph import ExportedSegmentation, exported_module
    from unosat.export.run import onnx_export
    from unosat.models.unet import UNet

    prepare = PolarisationInput(BandRecipe.from_dict(RECIPE), Normalization.from_dict(NORMALIZATION))
    net = UNet(3, 2, widths=[8, 16, 32]).eval()
    counts = {}
    for rewrite in (True, False):
        module = exported_module(net, prepare, rewrite=rewrite)
        assert isinstance(module, ExportedSegmentation)
        path = tmp_path / f"{rewrite}.onnx"
        onnx_export(
            module,
            torch.from_numpy(synthetic_polarisations(1, 32, 32, 0.0, "linear")),
            path,
            "segmentation",
            17,
            {"batch": "batch", "height": "size", "width": "size"},
        )
        nodes = onnx.load(str(path)).graph.node
        conv_inputs = {name for node in nodes if node.op_type == "Conv" for name in node.input}
        concats_into_convs = sum(1 for n in nodes if n.op_type == "Concat" and n.output[0] in conv_inputs)
        counts[rewrite] = (concats_into_convs, sum(1 for n in nodes if n.op_type == "Softmax"))
    # the 2 decoder levels of the reference concatenate into a conv; the rewritten graph has no such concat
    assert counts == {False: (2, 1), True: (0, 0)}


def test_onnxruntime_providers_auto_take_cuda_when_offered_and_a_list_is_checked():
    from unosat.predict.onnx_network import CPU, CUDA, OnnxOptions

    assert OnnxOptions().provider_list([CUDA, CPU]) == [CUDA, CPU]  # onnxruntime-gpu: CUDA first, CPU behind
    assert OnnxOptions().provider_list([CPU]) == [CPU]
    assert OnnxOptions(providers=[CPU]).provider_list([CUDA, CPU]) == [CPU]  # a list is taken as given
    with pytest.raises(UnosatError, match=r"\['CUDAExecutionProvider'\] not available"):
        OnnxOptions(providers=[CUDA]).provider_list([CPU])
    with pytest.raises(UnosatError, match="must be 'auto' or a list"):
        OnnxOptions(providers="cuda").provider_list([CUDA, CPU])
