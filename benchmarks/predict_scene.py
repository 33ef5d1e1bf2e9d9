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

    python benchmarks/predict_scene.py [--sizes 2048 4096] [--full-width 10980] [--workdir /tmp/unosat-bench-predict]
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
    torch.save({
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "unosat": {"model": {"_target_": "unosat.models.LWRefineNet", "in_channels": 3, "num_classes": 2},
                   "data": {"recipe": {"name": "db", "bands": ["vh", "vv", "mean"], "units": "db", "db_floor": 1e-8},
                            "normalization": {"mean": list(DB_MEAN), "std": list(DB_STD), "fill": 0.0},
                            "tile_size": 512, "classes": ["background", "building"], "ignore_index": 255}},
    }, path)
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
        net.register_forward_hook(lambda module, inputs, output: seconds.append(time.perf_counter() - started.pop()))
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

    forward: list[float] = []
    time_forward_passes(forward)
    bare_forward_seconds(args.batch_size, args.window, args.batch_size)  # warm-up of the kernels
    cfg = compose_config("predict", [
        f"ckpt={args.ckpt}", f"input={args.input}", f"output={args.output}", "overwrite=true",
        f"window.size={args.window}", f"window.overlap={args.overlap}", f"window.batch_size={args.batch_size}",
        "tta=none", "aggregate.method=none", "vectorize=false", f"paths.output_dir={args.output}",
    ])
    runs = []
    for _ in range(args.repeats):
        forward.clear()
        scene = run(cfg)["scenes"][0]
        runs.append((scene["seconds"], sum(forward), scene["forward_passes"]))
    peak = peak_rss_mb()
    seconds, forward_s, passes = min(runs)
    replay = bare_forward_seconds(scene["windows_predicted"], args.window, args.batch_size)
    return {"seconds": seconds, "forward_s": forward_s, "forward_passes": passes, "replay_s": replay,
            "runs": runs, "windows": scene["windows_predicted"], "pixels": scene["pixels"], "peak_rss_mb": peak,
            "threads": torch.get_num_threads()}


def child_forward(args) -> dict:
    """Peak memory of the bare network on a few batches (imports torch and the model only)."""
    bare_forward_seconds(3 * args.batch_size, args.window, args.batch_size)
    return {"peak_rss_mb": peak_rss_mb()}


def spawn(mode: str, **kwargs) -> dict:
    cmd = [sys.executable, __file__, "--child", mode] + [f"--{k.replace('_', '-')}={v}" for k, v in kwargs.items()]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def vectorize_figures(workdir: Path, size: int, seed: int = 0) -> dict:
    """Seconds of vectorize() and of rasterio.features.shapes on a size x size mask of 4 x 4 px blocks."""
    import rasterio
    from rasterio.features import shapes
    from rasterio.transform import from_origin

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
    write_cog(path, grid, "uint8", 255, ((r, mask[None, r : r + 512]) for r in range(0, size, 512)), CogOptions(),
              categorical=True)
    out = workdir / f"mask_{size}.gpkg"
    out.unlink(missing_ok=True)
    t = time.perf_counter()
    n = vectorize(path, out, VectorizeConfig())
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    n_shapes = sum(1 for _, v in shapes(mask, mask=mask == 1, transform=grid.transform) if v == 1)
    base = time.perf_counter() - t
    return {"building_px": int(mask.sum()), "polygons": n, "seconds": seconds, "shapes_s": base, "shapes_n": n_shapes}


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
    profile = dict(driver="GTiff", width=cols, height=rows, count=1, dtype="float32", crs="EPSG:32638",
                   transform=from_origin(300000.0, 4100000.0, 10.0, 10.0), nodata=0.0)
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=(2048, 4096), help="two square scene sizes (px)")
    parser.add_argument("--full-width", type=int, default=10980,
                        help="also a full-width strip of this width x 1024 rows (0: none): memory at the UNOSAT width")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/unosat-bench-predict"))
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=("predict", "forward"))
    parser.add_argument("--ckpt")
    parser.add_argument("--input")
    parser.add_argument("--output")
    args = parser.parse_args()

    if args.child:
        result = child_predict(args) if args.child == "predict" else child_forward(args)
        print(json.dumps(result))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
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
        pred = spawn("predict", ckpt=ckpt, input=raw, output=args.workdir / f"out_{height}x{width}", repeats=repeats,
                     **common)
        figures[(height, width)] = pred
        mp, ratio = pred["pixels"] / 1e6, pred["seconds"] / pred["forward_s"]
        rows.append((f"{height} x {width}", pred["windows"], f"{mp / pred['forward_s']:.3f}",
                     f"{mp / pred['replay_s']:.3f} ({pred['replay_s'] / pred['forward_s']:.2f})",
                     f"{mp / pred['seconds']:.3f}", f"{ratio:.3f}", f"{100 * (ratio - 1):+.1f} %",
                     f"{pred['peak_rss_mb']:.0f}", f"{pred['peak_rss_mb'] / fwd['peak_rss_mb']:.2f}"))
    vec = vectorize_figures(args.workdir, max(args.sizes))

    print(f"machine: {machine()}; predict child: torch threads {figures[scenes[0]]['threads']}")
    print(f"LW-RefineNet (3 dB bands), window {args.window}, overlap {args.overlap}, batch {args.batch_size}, "
          "channels_last, TTA none, uint8 probability + mask COGs (deflate, overviews)\n")
    print(table(rows, ("scene (rows x cols)", "windows", "forward MP/s (baseline)", "replayed forward MP/s (ratio)",
                       "predict MP/s", "time ratio", "overhead", "predict peak RSS MB", "RSS / bare forward")))
    small, large = figures[scenes[0]], figures[scenes[1]]
    print(f"\nbare forward (torch + LW-RefineNet + one batch): peak RSS {fwd['peak_rss_mb']:.0f} MB. Prediction: "
          f"{small['peak_rss_mb']:.0f} MB at {args.sizes[0]}^2, {large['peak_rss_mb']:.0f} MB at {args.sizes[1]}^2 "
          f"({large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x for {(args.sizes[1] / args.sizes[0]) ** 2:.0f}x the pixels).")
    if args.full_width:
        full = figures[scenes[2]]
        print(f"At the UNOSAT width, {args.full_width} columns (memory depends on the width, not the height): "
              f"{full['peak_rss_mb']:.0f} MB, so a {args.full_width} x {args.full_width} scene stays there "
              f"(goal < 2048 MB: {'met' if full['peak_rss_mb'] < 2048 else 'NOT met'}).")
    per_mpx = vec["seconds"] / (vec["building_px"] / 1e6)
    print(f"\nvectorisation of a {max(args.sizes)}^2 mask, {vec['building_px']:,} building px, {vec['polygons']:,} polygons: "
          f"{vec['seconds']:.2f} s = {per_mpx:.2f} s per million building px; "
          f"rasterio.features.shapes in memory (baseline, nothing written): {vec['shapes_s']:.2f} s "
          f"({vec['shapes_n']:,} polygons), ratio {vec['seconds'] / vec['shapes_s']:.2f}")


if __name__ == "__main__":
    main()
