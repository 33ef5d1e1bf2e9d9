"""Preparation's worker processes (``unosat.worker_pool``: plain child processes that die with the main
process) against the ``concurrent.futures.ProcessPoolExecutor`` (spawn) they replaced, side by side.

The tiny demo (6 scenes of 160 x 192 px) is prepared with ``workers=N`` (steps bands, labels, quality,
stats) in fresh directories, alternating the two pools for ``--rounds`` rounds; medians are printed. On
scenes this small the time is mostly the start-up of the worker processes (each step starts its pool), the
cost the replacement could add; on full scenes the steps' own work dominates both.

    python benchmarks/worker_pool.py [--workers 2] [--rounds 3] [--workdir /tmp/unosat-bench-pool]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "demo=tiny",
    "tiling.train_size=64",
    "tiling.train_min_overlap=8",
    "tiling.test_size=128",
    "block_rows=48",
]


def executor_map(func, items, workers, desc):
    """The replaced implementation: a spawn ProcessPoolExecutor per step."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [func(item) for item in items]
    with ProcessPoolExecutor(
        max_workers=min(workers, len(items)), mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        return list(pool.map(func, items))


def prepare_once(raw: Path, out: Path, workers: int) -> float:
    from unosat.config import compose_config
    from unosat.prepare import run

    shutil.rmtree(out, ignore_errors=True)
    cfg = compose_config(
        "prepare",
        [
            f"raw_dir={raw}",
            f"out_dir={out}",
            f"workers={workers}",
            *TINY,
            "steps=[bands,labels,quality,tiles,stats]",
        ],
    )
    t = time.perf_counter()
    run(cfg)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/unosat-bench-pool"))
    args = parser.parse_args()

    from unosat.config import compose_config
    from unosat.synthetic import DemoSpec, generate_demo

    raw = args.workdir / "raw"
    if not raw.exists():
        generate_demo(raw, DemoSpec.from_config(compose_config("prepare", ["demo=tiny"]).demo))
    times: dict[str, list[float]] = {"unosat.worker_pool": [], "ProcessPoolExecutor (baseline)": []}
    for _ in range(args.rounds):
        times["unosat.worker_pool"].append(prepare_once(raw, args.workdir / "new", args.workers))
        with mock.patch("unosat.prepare.run.map_scenes", executor_map):
            times["ProcessPoolExecutor (baseline)"].append(
                prepare_once(raw, args.workdir / "old", args.workers)
            )
    base = statistics.median(times["ProcessPoolExecutor (baseline)"])
    rows = [
        (
            name,
            f"{statistics.median(t):.1f}",
            " ".join(f"{v:.1f}" for v in t),
            f"{statistics.median(t) / base:.2f}x",
        )
        for name, t in times.items()
    ]
    print(machine())
    print(
        f"tiny demo, workers={args.workers}, steps bands, labels, quality, tiles, stats; "
        f"{args.rounds} alternating rounds"
    )
    print(table(rows, ("pool", "median s", "rounds s", "vs baseline")))


if __name__ == "__main__":
    main()
