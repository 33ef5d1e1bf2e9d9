"""Run one preparation step over many scenes, in parallel processes, with a progress bar."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
R = TypeVar("R")


def map_scenes(func: Callable[[T], R], items: Sequence[T], workers: int, desc: str) -> list[R]:
    """``[func(item) for item in items]`` over ``workers`` processes (inline when ``workers <= 1``).

    Results keep the order of ``items``. The first exception (e.g. a :class:`~unosat.errors.UnosatError`
    about one scene's file) cancels the work not yet started and is raised; outputs already finished stay
    (each is written atomically), so a re-run continues from there.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [func(item) for item in tqdm(items, desc=desc, unit="scene", leave=False)]
    results: list = [None] * len(items)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx) as pool:
        futures = {pool.submit(func, item): i for i, item in enumerate(items)}
        pending = set(futures)
        with tqdm(total=len(items), desc=desc, unit="scene", leave=False) as bar:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    err = fut.exception()
                    if err is not None:
                        for other in pending:
                            other.cancel()
                        raise err
                    results[futures[fut]] = fut.result()
                    bar.update(1)
    return results
