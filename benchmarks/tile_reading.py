"""Random training tiles (512 x 512 x 3 float32) fetched per second, one process, warm page cache.

Ours: a window of the memory-mapped band stack (and mask) of the prepared dataset
(:class:`unosat.data.TileDataset`). Baselines measured in the same run on the same scenes and windows:
one GeoTIFF per tile opened and read with rasterio (the UNOSAT team's layout), and a random window of the
band-stack GeoTIFF read with rasterio. The floor is a numpy copy of 3 MB already in memory.

    python benchmarks/tile_reading.py [--size 4096] [--tiles 1500] [--workdir /tmp/unosat-bench]

Goal (issue 2): >= 1500 tiles/s per core and >= 8x the one-GeoTIFF-per-tile baseline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import demo_dataset, machine, rate, table  # noqa: E402

from unosat.data.tile_dataset import TileReader  # noqa: E402
from unosat.prepared import PreparedDataset  # noqa: E402


def write_tile_files(dataset: PreparedDataset, tiles, directory: Path) -> list[Path]:
    """The original layout: every train tile as its own 3-band float32 GeoTIFF."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in tiles.itertuples():
        path = directory / f"{t.tile_id}.tif"
        if not path.exists():
            with rasterio.open(dataset.bands_path(t.scene_id)) as src:
                window = Window(t.col_off, t.row_off, t.width, t.height)
                data = src.read(window=window, boundless=True, fill_value=np.nan)
                profile = {
                    "driver": "GTiff",
                    "width": t.width,
                    "height": t.height,
                    "count": data.shape[0],
                    "dtype": "float32",
                    "crs": src.crs,
                    "transform": src.window_transform(window),
                }
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(data)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4096, help="scene side in pixels")
    parser.add_argument("--tiles", type=int, default=1500, help="random tile reads per measurement")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/unosat-bench"))
    args = parser.parse_args()

    root = demo_dataset(args.workdir, args.size)
    dataset = PreparedDataset(root)
    stats = dataset.statistics()
    tiles = stats[(stats.scheme == "train") & ~stats.skip].reset_index(drop=True)
    tile_files = write_tile_files(dataset, tiles, root.parent / f"tile_files_{root.name}")
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(tiles), args.tiles)
    windows = tiles[["scene_id", "row_off", "col_off", "height", "width"]].to_records(index=False)

    reader = TileReader(root)
    handles = {sid: rasterio.open(dataset.bands_path(sid)) for sid in tiles.scene_id.unique()}

    def ours_image(i):
        sid, r, c, h, w = windows[picks[i]]
        return reader.read_image(str(sid), int(r), int(c), int(h), int(w))

    def ours_image_and_mask(i):
        sid, r, c, h, w = windows[picks[i]]
        return reader.read(str(sid), int(r), int(c), int(h), int(w))

    def one_file_per_tile(i):
        with rasterio.open(tile_files[picks[i]]) as src:
            return src.read()

    def stack_window_rasterio(i):
        sid, r, c, h, w = windows[picks[i]]
        return handles[str(sid)].read(window=Window(int(c), int(r), int(w), int(h)))

    floor_src = np.random.default_rng(1).random((512, 512, 3), dtype=np.float32)

    def floor(i):
        return floor_src.copy()

    assert ours_image(0).shape == (512, 512, 3)
    np.testing.assert_array_equal(
        np.nan_to_num(ours_image(0).transpose(2, 0, 1), nan=-1),
        np.nan_to_num(stack_window_rasterio(0), nan=-1),
    )
    for f in (ours_image, one_file_per_tile, stack_window_rasterio):  # warm the page cache
        for i in range(min(len(tiles), args.tiles)):
            f(i)

    n = args.tiles
    baseline = rate(one_file_per_tile, n)
    results = [
        ("floor: numpy copy of 3 MB in memory", rate(floor, n)),
        ("unosat: memory-mapped stack window (image)", rate(ours_image, n)),
        ("unosat: memory-mapped stack window (image + mask)", rate(ours_image_and_mask, n)),
        ("baseline: one GeoTIFF per tile, rasterio (original layout)", baseline),
        ("baseline: band-stack GeoTIFF window, rasterio", rate(stack_window_rasterio, n)),
    ]
    print(f"machine: {machine()}")
    print(
        f"dataset: {root} ({len(tiles)} train tiles of 512 x 512 x 3 float32 in {tiles.scene_id.nunique()} "
        f"scenes of {args.size} x {args.size}); {n} random reads per measurement, best of 3, warm cache\n"
    )
    rows = [(name, f"{r:,.0f}", f"{1000 / r:.2f}", f"{r / baseline:.1f}x") for name, r in results]
    print(table(rows, ("how the tile is read", "tiles/s", "ms/tile", "vs one-GeoTIFF-per-tile")))
    ours = results[1][1]
    print(
        f"\ngoal: >= 1500 tiles/s per core -> {'met' if ours >= 1500 else 'NOT met'} ({ours:,.0f}); "
        f">= 8x the one-GeoTIFF-per-tile baseline -> {'met' if ours / baseline >= 8 else 'NOT met'} "
        f"({ours / baseline:.1f}x)"
    )


if __name__ == "__main__":
    main()
