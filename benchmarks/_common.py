"""Helpers shared by the benchmark scripts: machine description, timing, synthetic data."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return (
        f"{platform.node()}: {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads, Python {platform.python_version()}"
    )


def rate(func: Callable[[int], object], n: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` calls per second of ``func(i)`` over ``n`` calls."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(n):
            func(i)
        best = min(best, time.perf_counter() - t)
    return n / best


def median_rate(func: Callable[[], float], repeats: int) -> float:
    return statistics.median(func() for _ in range(repeats))


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def demo_dataset(
    workdir: Path, size: int, cities: int = 1, acquisitions: int = 2, recipe: str = "3b", tile: int = 512
) -> Path:
    """Generate (once) a synthetic raw dataset of ``size`` x ``size`` scenes and prepare it; return the
    prepared dataset's directory."""
    from unosat.config import compose_config
    from unosat.prepare import run as prepare

    raw = workdir / f"raw_{size}_{cities}x{acquisitions}"
    out = workdir / f"prepared_{size}_{cities}x{acquisitions}_{recipe}_{tile}"
    if (out / "statistics.csv").exists():
        return out
    demo = compose_config("prepare", []).demo
    names = [c for c in demo.cities if c.role == "train"][:cities]
    city_list = ",".join(
        f"{{name:{c.name},mgrs:{c.mgrs},role:train,acquisitions:[{','.join(list(c.acquisitions)[:acquisitions])}],"
        "label_format:shp,label_crs:null,nodata_value:0.0,towns:3}"
        for c in names
    )
    cfg = compose_config(
        "prepare",
        [
            f"raw_dir={raw}",
            f"out_dir={out}",
            f"paths.demo_dir={workdir}",
            f"demo.height={size}",
            f"demo.width={size}",
            f"demo.cities=[{city_list}]",
            f"bands={recipe}",
            f"tiling.train_size={tile}",
            "split.test_cities=[]",
            "steps=[bands,labels,tiles,stats]",
            "workers=1",
        ],
    )
    if not raw.exists():
        from unosat.synthetic import DemoSpec, generate_demo

        generate_demo(raw, DemoSpec.from_config(cfg.demo))
    prepare(cfg)
    return out
