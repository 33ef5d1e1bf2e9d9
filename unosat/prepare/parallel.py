"""Run one preparation step over many scenes, in worker processes that never outlive the main process
(:mod:`unosat.worker_pool`), with a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from tqdm.auto import tqdm

from unosat.worker_pool import WorkerPool

T = TypeVar("T")
R = TypeVar("R")


def map_scenes(func: Callable[[T], R], items: Sequence[T], workers: int, desc: str) -> list[R]:
    """``[func(item) for item in items]`` over ``workers`` processes (inline when ``workers <= 1``).

    ``func`` and the items must be picklable (a module-level function, dataclasses). Results keep the order
    of ``items``. The first exception (e.g. a :class:`~unosat.errors.UnosatError` about one scene's file)
    stops the workers and is raised; outputs already finished stay (each is written atomically), so a re-run
    continues from there.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [func(item) for item in tqdm(items, desc=desc, unit="scene", leave=False)]
    with (
        WorkerPool(min(workers, len(items))) as pool,
        tqdm(total=len(items), desc=desc, unit="scene", leave=False) as bar,
    ):
        return pool.map(func, items, progress=bar.update)
