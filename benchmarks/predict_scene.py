"""Whole-scene prediction on CPU: throughput against the bare network, peak memory at two scene sizes and at
the full UNOSAT width, and vectorisation time per million building pixels.

For each scene (two square sizes, and a strip of the UNOSAT scenes' full width) a synthetic VV/VH pair
(float32 linear power, a zero nodata wedge; :func:`write_scene`) is predicted by ``predict.py``'s code
(LW-RefineNet, dB recipe, TTA none, probability and mask COGs written) in a fresh child process, which
reports its peak resident memory (``ru_maxrss``) and the seconds spent on the scene (reading, bands,
windows, blending, writing both COGs). The baseline is the network's bare forward passes on the very
windows predicted, timed inside the same run by forward hooks (so a load change on the shared machine hits
both alike); the table also shows the bare network replayed afterwards on as many random windows, as a
check. Overhead = predict seconds / forward seconds - 1 (goal <= 15 %), from the best of ``--repeats``
runs. Memory baseline: a fresh child that only imports torch and runs the bare network. Prediction's memory
must not grow with the scene: it holds ``window`` rows of the scene width, whatever its height, so the
full-width strip (10980 x 1024 px) shows what a 10980 x 10980 scene needs without predicting 120
megapixels.

Vectorisation: ``unosat.predict.vectorize.vectorize`` on a mask of building blocks (about 2 % of the
pixels), against ``rasterio.features.shapes`` over the whole mask in memory (GDAL's polygonize, nothing
written).

Engines (``--engines``, issue 14): the same scene (``--engine-size``) predicted by ``predict.py`` with the
checkpoint (torch eager, channels-last, as by default) and with its ONNX export (``python -m unosat.export``,
onnxruntime CPU), at 1 and 2 threads, each in a fresh child: megapixels per second of the forward passes and
of the whole prediction, and peak RSS; the speed-up is onnxruntime over torch at the same thread count (goal
>= 1.3x for the default model, ``train.py``'s ``model``, or ``--model``). ``--rounds N`` runs the engines
alternately N times and keeps each one's best run: on a shared machine a busy spell then hits both engines.
Agreement: on a scene of the demo dataset (the project's generator) both engines run ``predict_scene`` in one
process and the float32
probabilities are compared (goal: max abs difference <= 1e-4; masks identical except where p is within 1e-4
of the threshold). The network has PyTorch's default initialisation with its head scaled so that the
building probability varies over the scene (an untrained LW-RefineNet predicts 0.5 everywhere, which would
make the mask comparison empty); speed does not depend on the weights.

    python benchmarks/predict_scene.py [--sizes 2048 4096] [--full-width 10980] [--workdir /tmp/unosat-bench-predict]
    python benchmarks/predict_scene.py --engines-only [--engine-size 2048] [--model lwrefinenet] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: dB statistics of the challenge's training folds (docs: unosat-data-facts.md), as a checkpoint records them
DB_MEAN, DB_STD = (-17.7, -10.3, -12.4), (6.5, 6.0, 6.1)


def write_checkpoint(path: Path) -> Path:
    """An (untrained) LW-RefineNet checkpoint as train.py writes it: speed does not depend on the weights."""
    import torch

    from unosat.models import LWRefineNet

    torch.manual_seed(0)
    net = LWRefineNet(in_channels=3, num_classes=2)
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "unosat": {
                "model": {"_target_": "unosat.models.LWRefineNet", "in_channels": 3, "num_classes": 2},
                "data": {
                    "recipe": {"name": "db", "bands": ["vh", "vv", "mean"], "units": "db", "db_floor": 1e-8},
                    "normalization": {"mean": list(DB_MEAN), "std": list(DB_STD), "fill": 0.0},
                    "tile_size": 512,
                    "classes": ["background", "building"],
                    "ignore_index": 255,
                },
            },
        },
        path,
    )
    return path


def model_spec(name: str | None) -> dict:
    """The registry spec of ``train.py``'s model (``model=name`` if given) for 3 input bands, as its config
    sets it (e.g. LW-RefineNet's output stride)."""
    from omegaconf import OmegaConf

    from unosat.config import compose_config
    from unosat.models.registry import network_spec

    cfg = compose_config("train", [f"model={name}"] if name else []).model
    spec = network_spec(OmegaConf.to_container(cfg, resolve=False))
    spec["args"] = {**spec["args"], "in_channels": 3, "num_classes": 2}
    return spec


def write_engine_checkpoint(path: Path, spec: dict, raw: Path) -> Path:
    """The network of registry ``spec`` (3 dB bands) as train.py writes it, PyTorch's default initialisation, the last
    2-channel convolution scaled so that building - background logit has mean 0 and std 2 on a window of the
    scene under ``raw`` (see the module docstring)."""
    import torch

    from unosat.bands import BandRecipe, Normalization
    from unosat.models.registry import build_network

    recipe = {"name": "db", "bands": ["vh", "vv", "mean"], "units": "db", "db_floor": 1e-8}
    torch.manual_seed(0)
    net = build_network(spec)
    for module in net.modules():
        if module is not net and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    net.eval()
    from rasterio.windows import Window

    scene = demo_scene(raw)
    with scene.open() as reader:
        block = reader.read(Window(0, 0, min(512, scene.grid.width), min(512, scene.grid.height)))
        x = Normalization(DB_MEAN, DB_STD).apply(block.bands(BandRecipe.from_dict(recipe)), channel_axis=0)
    heads = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 2]
    with torch.inference_mode():
        out = net(torch.from_numpy(x)[None])
        logits = out[0] if isinstance(out, tuple) else out
        head = heads[-1]
        bias = head.bias if head.bias is not None else torch.zeros(2)
        diff = (logits[:, 1] - logits[:, 0] - (bias[1] - bias[0]))[:, torch.from_numpy(block.valid)]
        k = 2.0 / max(float(diff.std()), 1e-6)
        head.weight.mul_(k)
        if head.bias is not None:
            head.bias.copy_(torch.tensor([0.0, -k * float(diff.mean())]))
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "unosat": {
                "model": spec,
                "task": "segmentation",
                "data": {
                    "recipe": recipe,
                    "normalization": {"mean": list(DB_MEAN), "std": list(DB_STD), "fill": 0.0},
                    "tile_size": 512,
                    "classes": ["background", "building"],
                    "ignore_index": 255,
                },
            },
        },
        path,
    )
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def bare_forward_seconds(windows: int, window: int, batch_size: int) -> float:
    """Seconds of LW-RefineNet's forward pass alone on ``windows`` windows (same size, batch size, memory
    format and threads as prediction); the input's content does not change the speed."""
    import torch

    from unosat.models import LWRefineNet

    net = LWRefineNet(in_channels=3, num_classes=2).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, window, window).contiguous(memory_format=torch.channels_last)
    sizes = [batch_size] * (windows // batch_size) + ([windows % batch_size] if windows % batch_size else [])
    with torch.inference_mode():
        net(x)  # oneDNN picks its kernels on the first call of a shape
        t = time.perf_counter()
        for n in sizes:
            net(x[:n])
        return time.perf_counter() - t


def time_forward_passes(seconds: list[float]) -> None:
    """Make every network prediction prepares add the wall time of each forward pass to ``seconds`` (CPU
    execution is synchronous: the time between the pre-hook and the hook is the forward pass)."""
    from unosat.predict.distributed import Runtime

    prepare = Runtime.prepare_module

    def timed(self, net):
        net = prepare(self, net)
        started = []
        net.register_forward_pre_hook(lambda module, inputs: started.append(time.perf_counter()))
        net.register_forward_hook(
            lambda module, inputs, output: seconds.append(time.perf_counter() - started.pop())
        )
        return net

    Runtime.prepare_module = timed


def child_predict(args) -> dict:
    """Predict one raw scene in this process ``args.repeats`` times; report the run with the best total: its
    seconds on the scene and the seconds its network's forward passes took (the baseline: the bare network
    on the very windows predicted, measured in the same run), then the bare network replayed on as many
    windows; and the peak memory of prediction."""
    import torch

    from unosat.config import compose_config
    from unosat.predict.run import run

    if args.threads:
        torch.set_num_threads(args.threads)
    forward: list[float] = []
    time_forward_passes(forward)
    onnx = str(args.ckpt).endswith(".onnx")
    if not onnx:
        bare_forward_seconds(args.batch_size, args.window, args.batch_size)  # warm-up of the kernels
    cfg = compose_config(
        "predict",
        [
            f"ckpt={args.ckpt}",
            f"input={args.input}",
            f"output={args.output}",
            "overwrite=true",
            f"window.size={args.window}",
            f"window.overlap={args.overlap}",
            f"window.batch_size={args.batch_size}",
            "tta=none",
            "aggregate.method=none",
            "vectorize=false",
            f"paths.output_dir={args.output}",
            f"onnxruntime.threads={args.threads or 'null'}",
            "onnxruntime.providers=[CPUExecutionProvider]",
        ],
    )
    runs = []
    for _ in range(args.repeats):
        forward.clear()
        scene = run(cfg)["scenes"][0]
        runs.append((scene["seconds"], sum(forward), scene["forward_passes"]))
    peak = peak_rss_mb()
    seconds, forward_s, passes = min(runs)
    if onnx:
        return {
            "seconds": seconds,
            "forward_s": forward_s,
            "forward_passes": passes,
            "runs": runs,
            "windows": scene["windows_predicted"],
            "pixels": scene["pixels"],
            "peak_rss_mb": peak,
            "threads": torch.get_num_threads(),
        }
    replay = bare_forward_seconds(scene["windows_predicted"], args.window, args.batch_size)
    return {
        "seconds": seconds,
        "forward_s": forward_s,
        "forward_passes": passes,
        "replay_s": replay,
        "runs": runs,
        "windows": scene["windows_predicted"],
        "pixels": scene["pixels"],
        "peak_rss_mb": peak,
        "threads": torch.get_num_threads(),
    }


def child_export(args) -> dict:
    """``python -m unosat.export`` of ``args.ckpt`` to ``args.output`` (what it reports)."""
    from unosat.config import compose_config
    from unosat.export.run import run

    return run(
        compose_config(
            "export",
            [
                f"ckpt={args.ckpt}",
                f"output={args.output}",
                "overwrite=true",
                f"paths.output_dir={Path(args.output).parent / 'export_hydra'}",
            ],
        )
    )


def child_agree(args) -> dict:
    """Both engines on one demo scene through ``predict_scene`` (same windows, blending): float32 probabilities
    compared."""
    from unosat.predict.distributed import Runtime
    from unosat.predict.ensemble import Ensemble, load_model
    from unosat.predict.sliding_window import WindowConfig, predict_scene

    scene = demo_scene(Path(args.input))
    config = WindowConfig(size=args.window, overlap=args.overlap, batch_size=args.batch_size)
    probs = []
    for path in (args.ckpt, args.onnx):
        ensemble = Ensemble([load_model(path)], Runtime(None, channels_last=True), "none")
        with scene.open() as reader:
            probs.append(np.concatenate([p for _, p in predict_scene(reader, ensemble, config)]))
    a, b = probs
    both = np.isfinite(a) & np.isfinite(b)
    diff = np.abs(a - b)[both]
    masks_differ = (a >= args.threshold) != (b >= args.threshold)
    near = np.abs(a - args.threshold) <= 1e-4
    return {
        "scene": scene.scene_id,
        "pixels": int(a.size),
        "valid": int(both.sum()),
        "nodata_equal": bool(np.array_equal(np.isnan(a), np.isnan(b))),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "p_std": float(a[both].std()),
        "mask_differences": int((masks_differ & both).sum()),
        "mask_differences_not_near_threshold": int((masks_differ & both & ~near).sum()),
    }


def child_forward(args) -> dict:
    """Peak memory of the bare network on a few batches (imports torch and the model only)."""
    bare_forward_seconds(3 * args.batch_size, args.window, args.batch_size)
    return {"peak_rss_mb": peak_rss_mb()}


def spawn(mode: str, **kwargs) -> dict:
    cmd = [sys.executable, __file__, "--child", mode] + [
        f"--{k.replace('_', '-')}={v}" for k, v in kwargs.items()
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def vectorize_figures(workdir: Path, size: int, seed: int = 0) -> dict:
    """Seconds of vectorize() and of rasterio.features.shapes on a size x size mask of 4 x 4 px blocks."""
    import rasterio
    from rasterio.features import shapes
    from rasterio.transform import from_origin

    from unosat.classes import IGNORE_INDEX
    from unosat.io.cog import CogOptions, write_cog
    from unosat.io.raster import Grid
    from unosat.predict.vectorize import VectorizeConfig, vectorize

    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), dtype=np.uint8)
    n_side = size // 20
    rows, cols = np.nonzero(rng.random((n_side, n_side)) < 0.35)
    r0, c0 = rows * 20 + rng.integers(0, 16, len(rows)), cols * 20 + rng.integers(0, 16, len(cols))
    for dr in range(4):
        for dc in range(4):
            mask[r0 + dr, c0 + dc] = 1
    grid = Grid(rasterio.crs.CRS.from_epsg(32638), from_origin(300000.0, 4100000.0, 10.0, 10.0), size, size)
    path = workdir / f"mask_{size}.tif"
    write_cog(
        path,
        grid,
        "uint8",
        IGNORE_INDEX,
        ((r, mask[None, r : r + 512]) for r in range(0, size, 512)),
        CogOptions(),
        categorical=True,
    )
    out = workdir / f"mask_{size}.gpkg"
    out.unlink(missing_ok=True)
    t = time.perf_counter()
    n = vectorize(path, out, VectorizeConfig())
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    n_shapes = sum(1 for _, v in shapes(mask, mask=mask == 1, transform=grid.transform) if v == 1)
    base = time.perf_counter() - t
    return {
        "building_px": int(mask.sum()),
        "polygons": n,
        "seconds": seconds,
        "shapes_s": base,
        "shapes_n": n_shapes,
    }


def write_scene(raw: Path, rows: int, cols: int, seed: int = 0, block: int = 512) -> Path:
    """A synthetic VV/VH pair (float32 linear power, speckled, bright 4 x 4 px building blocks on ~2 % of the
    pixels, a zero nodata wedge on the right), named and laid out as the UNOSAT data, written by row blocks."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    folder = raw / "Mosul_2015" / "20150426_38SLF"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lattice = rng.random((rows // 20 + 1, cols // 20 + 1)) < 0.35  # which 20 px cells hold a building block
    profile = dict(
        driver="GTiff",
        width=cols,
        height=rows,
        count=1,
        dtype="float32",
        crs="EPSG:32638",
        transform=from_origin(300000.0, 4100000.0, 10.0, 10.0),
        nodata=0.0,
    )
    level = {"vh": (0.014, 0.2), "vv": (0.12, 3.0)}  # (background, building) sigma0
    paths = {pol: folder / f"s1a_38SLF_{pol}_ASC_20150426t145805.tif" for pol in level}
    with rasterio.open(paths["vh"], "w", **profile) as dvh, rasterio.open(paths["vv"], "w", **profile) as dvv:
        for r in range(0, rows, block):
            h = min(block, rows - r)
            rr, cc = np.mgrid[r : r + h, 0:cols]
            building = lattice[rr // 20, cc // 20] & ((rr % 20) < 4) & ((cc % 20) < 4)
            wedge = cc > cols - (rr * 0.3 + cols * 0.1)
            for pol, dst in (("vh", dvh), ("vv", dvv)):
                base, bright = level[pol]
                sigma0 = np.where(building, bright, base).astype(np.float32)
                band = sigma0 * rng.gamma(4.4, 1 / 4.4, (h, cols)).astype(np.float32)
                band[wedge] = 0.0
                dst.write(band, 1, window=Window(0, r, cols, h))
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs=2, default=(2048, 4096), help="two square scene sizes (px)"
    )
    parser.add_argument(
        "--full-width",
        type=int,
        default=10980,
        help="also a full-width strip of this width x 1024 rows (0: none): memory at the UNOSAT width",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/unosat-bench-predict"))
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--engines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also torch eager vs onnxruntime (needs the .[export] extra)",
    )
    parser.add_argument("--engines-only", action="store_true", help="only the engine comparison")
    parser.add_argument(
        "--engine-size", type=int, default=2048, help="square scene (px) of the engine comparison"
    )
    parser.add_argument("--engine-threads", type=int, nargs="+", default=(1, 2))
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="engine comparison: rounds of (torch, onnxruntime) runs at every thread count; best kept",
    )
    parser.add_argument(
        "--model", default=None, help="model config compared (conf/model/NAME.yaml; default: train.py's)"
    )
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--child", choices=("predict", "forward", "export", "agree"))
    parser.add_argument("--onnx")
    parser.add_argument("--ckpt")
    parser.add_argument("--input")
    parser.add_argument("--output")
    args = parser.parse_args()

    if args.child:
        children = {
            "predict": child_predict,
            "forward": child_forward,
            "export": child_export,
            "agree": child_agree,
        }
        print(json.dumps(children[args.child](args)))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.engines_only:
        engines(args)
        return
    ckpt = write_checkpoint(args.workdir / "lwrefinenet_db.ckpt")
    common = {"window": args.window, "overlap": args.overlap, "batch_size": args.batch_size}
    scenes = [(n, n) for n in args.sizes] + ([(1024, args.full_width)] if args.full_width else [])
    fwd = spawn("forward", **common)
    rows, figures = [], {}
    for height, width in scenes:
        raw = args.workdir / f"scene_{height}x{width}"
        if not raw.exists():
            write_scene(raw, height, width)
        repeats = args.repeats if height == width else 1
        pred = spawn(
            "predict",
            ckpt=ckpt,
            input=raw,
            output=args.workdir / f"out_{height}x{width}",
            repeats=repeats,
            **common,
        )
        figures[(height, width)] = pred
        mp, ratio = pred["pixels"] / 1e6, pred["seconds"] / pred["forward_s"]
        rows.append(
            (
                f"{height} x {width}",
                pred["windows"],
                f"{mp / pred['forward_s']:.3f}",
                f"{mp / pred['replay_s']:.3f} ({pred['replay_s'] / pred['forward_s']:.2f})",
                f"{mp / pred['seconds']:.3f}",
                f"{ratio:.3f}",
                f"{100 * (ratio - 1):+.1f} %",
                f"{pred['peak_rss_mb']:.0f}",
                f"{pred['peak_rss_mb'] / fwd['peak_rss_mb']:.2f}",
            )
        )
    vec = vectorize_figures(args.workdir, max(args.sizes))

    print(f"machine: {machine()}; predict child: torch threads {figures[scenes[0]]['threads']}")
    print(
        f"LW-RefineNet (3 dB bands), window {args.window}, overlap {args.overlap}, batch {args.batch_size}, "
        "channels_last, TTA none, uint8 probability + mask COGs (deflate, overviews)\n"
    )
    print(
        table(
            rows,
            (
                "scene (rows x cols)",
                "windows",
                "forward MP/s (baseline)",
                "replayed forward MP/s (ratio)",
                "predict MP/s",
                "time ratio",
                "overhead",
                "predict peak RSS MB",
                "RSS / bare forward",
            ),
        )
    )
    small, large = figures[scenes[0]], figures[scenes[1]]
    print(
        f"\nbare forward (torch + LW-RefineNet + one batch): peak RSS {fwd['peak_rss_mb']:.0f} MB. Prediction: "
        f"{small['peak_rss_mb']:.0f} MB at {args.sizes[0]}^2, {large['peak_rss_mb']:.0f} MB at {args.sizes[1]}^2 "
        f"({large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x "
        f"for {(args.sizes[1] / args.sizes[0]) ** 2:.0f}x the pixels)."
    )
    if args.full_width:
        full = figures[scenes[2]]
        print(
            f"At the UNOSAT width, {args.full_width} columns (memory depends on the width, not the height): "
            f"{full['peak_rss_mb']:.0f} MB, so a {args.full_width} x {args.full_width} scene stays there "
            f"(goal < 2048 MB: {'met' if full['peak_rss_mb'] < 2048 else 'NOT met'})."
        )
    per_mpx = vec["seconds"] / (vec["building_px"] / 1e6)
    print(
        f"\nvectorisation of a {max(args.sizes)}^2 mask, {vec['building_px']:,} building px, "
        f"{vec['polygons']:,} polygons: "
        f"{vec['seconds']:.2f} s = {per_mpx:.2f} s per million building px; "
        f"rasterio.features.shapes in memory (baseline, nothing written): {vec['shapes_s']:.2f} s "
        f"({vec['shapes_n']:,} polygons), ratio {vec['seconds'] / vec['shapes_s']:.2f}"
    )
    if args.engines:
        print()
        engines(args)


def demo_scene_dir(workdir: Path) -> Path:
    """Raw scenes of the demo dataset (the project's generator, default settings), generated once."""
    from unosat.config import compose_config
    from unosat.synthetic import DemoSpec, generate_demo

    raw = workdir / "demo_raw"
    if not raw.exists():
        generate_demo(raw, DemoSpec.from_config(compose_config("prepare", []).demo))
    return raw


def demo_scene(raw: Path):
    """The first acquisition of the demo's held-out city (an :class:`unosat.predict.inputs.InputScene`)."""
    from unosat.config import compose_config
    from unosat.predict.inputs import Selection, find_inputs
    from unosat.scenes import DiscoveryConfig

    city = str(compose_config("predict", []).demo_cities[0])
    return find_inputs(raw, Selection(cities=(city,)), DiscoveryConfig())[1][0]


def engines(args) -> None:
    """torch eager vs onnxruntime: throughput at each thread count, peak RSS, and agreement (module docstring)."""
    spec = model_spec(args.model)
    name = spec["name"]
    demo = demo_scene_dir(args.workdir)
    ckpt = write_engine_checkpoint(args.workdir / f"{name}_engines.ckpt", spec, demo)
    onnx = args.workdir / f"{name}_engines.onnx"
    exported = spawn("export", ckpt=ckpt, output=onnx)
    common = {"window": args.window, "overlap": args.overlap, "batch_size": args.batch_size}
    raw = args.workdir / f"scene_{args.engine_size}x{args.engine_size}"
    if not raw.exists():
        write_scene(raw, args.engine_size, args.engine_size)
    rows, results = [], {}
    engine_models = (("torch eager", ckpt), ("onnxruntime", onnx))
    for _ in range(
        args.rounds
    ):  # rounds alternate the engines, so that a busy spell of the machine hits both
        for threads in args.engine_threads:
            for engine, model in engine_models:
                r = spawn(
                    "predict",
                    ckpt=model,
                    input=raw,
                    output=args.workdir / f"out_engine_{threads}_{engine[:5]}",
                    repeats=args.repeats,
                    threads=threads,
                    **common,
                )
                if (engine, threads) not in results or r["seconds"] < results[engine, threads]["seconds"]:
                    results[engine, threads] = r
    for threads in args.engine_threads:
        base = results["torch eager", threads]
        for engine, _ in engine_models:
            r = results[engine, threads]
            mp = r["pixels"] / 1e6
            rows.append(
                (
                    engine,
                    threads,
                    r["windows"],
                    f"{mp / r['forward_s']:.3f}",
                    f"{mp / r['seconds']:.3f}",
                    f"{base['forward_s'] / r['forward_s']:.2f}x",
                    f"{base['seconds'] / r['seconds']:.2f}x",
                    f"{r['peak_rss_mb']:.0f}",
                )
            )
    agree = spawn("agree", ckpt=ckpt, onnx=onnx, input=demo, threshold=args.threshold, **common)
    print(f"machine: {machine()}")
    print(
        f"{name} {spec['args']} (3 dB bands; ONNX: VH/VV in, recipe inside, opset {exported['opset']}, "
        f"{exported['bytes'] / 1e6:.1f} MB), {args.engine_size}^2 scene, window {args.window}, overlap {args.overlap}, "
        f"batch {args.batch_size}, TTA none, COGs written; best of {args.rounds} round(s) x {args.repeats}, "
        f"engines alternating\n"
    )
    print(
        table(
            rows,
            (
                "engine",
                "threads",
                "windows",
                "forward MP/s",
                "predict MP/s",
                "forward speed-up",
                "predict speed-up",
                "peak RSS MB",
            ),
        )
    )
    goal = min(
        results["torch eager", t]["seconds"] / results["onnxruntime", t]["seconds"]
        for t in args.engine_threads
    )
    print(
        f"\nonnxruntime / torch eager, whole prediction, worst thread count: {goal:.2f}x "
        f"(goal >= 1.3x: {'met' if goal >= 1.3 else 'NOT met'})"
    )
    print(
        f"agreement on demo scene {agree['scene']} ({agree['valid']:,} valid px, p std {agree['p_std']:.3f}): "
        f"max |p_torch - p_onnx| = {agree['max_abs_diff']:.2e} (mean {agree['mean_abs_diff']:.1e}; goal <= 1e-4: "
        f"{'met' if agree['max_abs_diff'] <= 1e-4 else 'NOT met'}); nodata identical: {agree['nodata_equal']}; "
        f"mask pixels that differ at threshold {args.threshold}: {agree['mask_differences']} "
        f"({agree['mask_differences_not_near_threshold']} with p farther than 1e-4 from it)"
    )


if __name__ == "__main__":
    main()
