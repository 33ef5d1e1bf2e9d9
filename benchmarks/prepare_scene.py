"""Preparing one large VV/VH scene pair: seconds per step and peak memory (goal: < 1 GB at 10980 x 10980).

The raw pair (float32 linear power, UTM, 10 m, a zero nodata wedge, speckled land with bright building
blocks) and its label polygons are written by blocks, then ``prepare.py`` runs in a child process
(``workers=1``) whose peak resident memory is read from the OS when it ends. Baseline, measured after it in
the same run: reading the raw pair once by row blocks (the I/O every step starts from).

    python benchmarks/prepare_scene.py [--size 10980] [--workdir /tmp/unosat-bench]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.transform import from_origin
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PIXEL = 10.0
ORIGIN = (300000.0, 4100000.0)


def write_raw_pair(raw: Path, size: int, seed: int = 0, block: int = 512) -> tuple[Path, int]:
    """Write s1a_38SLF_{vh,vv}_ASC_20150426t145805.tif (size x size) and labels; return (dir, n_polygons)."""
    scene_dir = raw / "Mosul_2015" / "20150426_38SLF"
    scene_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    transform = from_origin(*ORIGIN, PIXEL, PIXEL)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="float32",
        crs="EPSG:32638",
        transform=transform,
        nodata=0.0,
        tiled=True,
        blockxsize=512,
        blockysize=512,
    )
    # building blocks: 4 x 4 px squares on a coarse random lattice (about 2 % of the pixels)
    n_side = size // 20
    cells = rng.random((n_side, n_side)) < 0.35
    rows, cols = np.nonzero(cells)
    offsets = rng.integers(0, 16, (len(rows), 2))
    r0, c0 = rows * 20 + offsets[:, 0], cols * 20 + offsets[:, 1]
    building = np.zeros((size, size), dtype=bool)
    for dr in range(4):
        for dc in range(4):
            building[np.minimum(r0 + dr, size - 1), np.minimum(c0 + dc, size - 1)] = True
    paths = {pol: scene_dir / f"s1a_38SLF_{pol}_ASC_20150426t145805.tif" for pol in ("vh", "vv")}
    level = {"vh": (0.014, 0.2), "vv": (0.12, 3.0)}
    with rasterio.open(paths["vh"], "w", **profile) as dvh, rasterio.open(paths["vv"], "w", **profile) as dvv:
        for r in range(0, size, block):
            h = min(block, size - r)
            rr, cc = np.mgrid[r : r + h, 0:size]
            wedge = cc > size - (rr * 0.3 + size * 0.1)  # zero nodata wedge on the right
            for pol, dst in (("vh", dvh), ("vv", dvv)):
                base, bright = level[pol]
                sigma0 = np.where(building[r : r + h], bright, base).astype(np.float32)
                band = sigma0 * rng.gamma(4.4, 1 / 4.4, (h, size)).astype(np.float32)
                band[wedge] = 0.0
                dst.write(band, 1, window=Window(0, r, size, h))
    boxes = shapely.box(
        ORIGIN[0] + c0 * PIXEL,
        ORIGIN[1] - (r0 + 4) * PIXEL,
        ORIGIN[0] + (c0 + 4) * PIXEL,
        ORIGIN[1] - r0 * PIXEL,
    )
    (raw / "labels").mkdir(exist_ok=True)
    gpd.GeoDataFrame({"DN": np.full(len(boxes), 255)}, geometry=boxes, crs="EPSG:32638").to_file(
        raw / "labels" / "38SLF_Mosul.gpkg"
    )
    return raw, len(boxes)


def read_floor(raw: Path, block_rows: int = 512) -> float:
    """Seconds to read every raw GeoTIFF under ``raw`` once by row blocks: the I/O floor of any step."""
    import rasterio
    from rasterio.windows import Window

    start = time.perf_counter()
    for path in sorted(raw.rglob("*.tif")):
        with rasterio.open(path) as src:
            for row in range(0, src.height, block_rows):
                src.read(1, window=Window(0, row, src.width, min(block_rows, src.height - row)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/unosat-bench"))
    parser.add_argument(
        "--steps",
        default="[bands,labels,quality,tiles,stats,report]",
        help="prepare.py steps (all by default)",
    )
    args = parser.parse_args()

    raw = args.workdir / f"scene_raw_{args.size}"
    out = args.workdir / f"scene_prepared_{args.size}"
    t = time.perf_counter()
    if not raw.exists():
        write_raw_pair(raw, args.size)
    n_polygons = len(gpd.read_file(raw / "labels" / "38SLF_Mosul.gpkg", columns=[]))
    print(
        f"raw pair {args.size} x {args.size} ready in {time.perf_counter() - t:.0f} s "
        f"({sum(p.stat().st_size for p in raw.rglob('*.tif')) / 2**20:.0f} MB, {n_polygons:,} label polygons)"
    )

    cmd = [
        sys.executable,
        "prepare.py",
        f"raw_dir={raw}",
        f"out_dir={out}",
        f"steps={args.steps}",
        "workers=1",
        "overwrite=true",
        "split.test_cities=[]",
        f"hydra.run.dir={args.workdir / 'hydra' / str(args.size)}",
    ]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    wall = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: kB
    steps = json.loads((out / "dataset.json").read_text())["last_run_seconds"]

    floor = read_floor(raw)
    print(f"machine: {machine()}\n")
    rows = [(name, f"{sec:.1f}", f"{sec / floor:.1f}x") for name, sec in steps.items()]
    rows += [
        ("total (process wall time)", f"{wall:.1f}", f"{wall / floor:.1f}x"),
        ("baseline: read the VV/VH pair once (rasterio, 512-row blocks)", f"{floor:.1f}", "1.0x"),
    ]
    print(table(rows, ("step", "seconds", "vs reading the pair")))
    print(
        f"\npeak resident memory of prepare.py: {peak_mb:,.0f} MB (goal < 1024 MB: "
        f"{'met' if peak_mb < 1024 else 'NOT met'}); input: a {args.size} x {args.size} VV/VH pair"
    )


if __name__ == "__main__":
    main()
