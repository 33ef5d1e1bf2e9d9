"""City products: the scenes grouped by city, each city's mean probability and mask (or k-of-N vote),
and the polygons of every product (``vectorize=true``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unosat.io.cog import CogRowWriter
from unosat.io.provenance import canonical, digest, needs_work
from unosat.io.raster import PARAMS_TAG
from unosat.predict.aggregate import MASK_NODATA, decode_stack, mean_probability, vote
from unosat.predict.inputs import InputScene
from unosat.predict.output_dir import OutputPaths
from unosat.predict.settings import Settings
from unosat.predict.vectorize import vectorize
from unosat.predict.writers import masked_as_they_pass, read_rows, write_mask, write_probability


def group_by_city(scenes: Sequence[InputScene]) -> dict[str, list[InputScene]]:
    cities: dict[str, list[InputScene]] = {}
    for s in scenes:
        cities.setdefault(s.city, []).append(s)
    return cities


def make_products(
    cities: dict[str, list[InputScene]], paths: OutputPaths, params: dict[str, dict], settings: Settings
) -> list[dict]:
    """City rasters (unless ``aggregate.method=none``) and polygons; one record per product."""
    products = []
    for city, members in cities.items():
        if settings.aggregate.method == "none":
            for s in members:
                products.append(
                    {
                        "name": s.scene_id,
                        "city": city,
                        "scenes": [s.scene_id],
                        "per_city": False,
                        "probability": str(paths.scene_probability(s.scene_id)),
                        "mask": str(paths.scene_mask(s.scene_id)),
                        "remade": False,
                    }
                )
        else:
            products.append(city_product(city, members, paths, params, settings))
    if settings.vectorize:
        config = settings.vector_config()
        for p in products:
            out = paths.product(p["name"], paths.polygons, p["per_city"])
            if settings.overwrite or p["remade"] or not out.exists():
                t = time.perf_counter()
                dates = [str(paths.scene_mask(sid)) for sid in p["scenes"]] if p["per_city"] else []
                p["polygons_count"] = int(
                    vectorize(
                        Path(p["mask"]),
                        out,
                        config,
                        prob_path=Path(p["probability"]),
                        date_mask_paths=tuple(Path(d) for d in dates),
                    )
                )
                p["vectorize_s"] = time.perf_counter() - t
            p["polygons"] = str(out)
    return products


def city_product(
    city: str, members: list[InputScene], paths: OutputPaths, params: dict[str, dict], settings: Settings
) -> dict:
    """Mean probability and mask of a city's acquisitions (all on one grid, checked before predicting)."""
    t0 = time.perf_counter()
    agg = settings.aggregate
    grid = members[0].grid
    prob_paths = [paths.scene_probability(s.scene_id) for s in members]
    mask_paths = [paths.scene_mask(s.scene_id) for s in members]
    base = {"city": city, "scenes": [digest(params[s.scene_id]) for s in members], "dtype": settings.dtype}
    prob_params = {"product": "city_probability", **base, "threshold": agg.threshold}
    city_mask_params = {"product": "city_mask", **base, "aggregate": agg.to_dict()}
    prob_out, mask_out = paths.product(city, "probability", True), paths.product(city, "mask", True)
    remade = False
    need_prob = needs_work(prob_out, prob_params, settings.overwrite)
    need_mask = needs_work(mask_out, city_mask_params, settings.overwrite)

    def store_probability(blocks) -> None:
        write_probability(
            prob_out,
            grid,
            blocks,
            settings.dtype,
            settings.cog,
            prob_params,
            target=settings.target,
            threshold=agg.threshold,
        )

    if need_prob or (need_mask and agg.method == "mean"):
        # the mean of the dates' decoded probabilities, thresholded before it is quantised again for storage
        blocks = (
            (r, mean_probability(decode_stack(values)))
            for r, values in read_rows(prob_paths, grid, agg.block_rows)
        )
        if need_mask and agg.method == "mean":
            with CogRowWriter(
                mask_out,
                grid,
                "uint8",
                MASK_NODATA,
                settings.cog,
                categorical=True,
                tags={PARAMS_TAG: canonical(city_mask_params)},
                band_descriptions=[settings.target],
            ) as sink:
                blocks = masked_as_they_pass(blocks, agg.threshold, sink)
                if need_prob:
                    store_probability(blocks)
                else:
                    for _ in blocks:
                        pass
        else:
            store_probability(blocks)
        remade = True
    if need_mask and agg.method != "mean":
        k = agg.votes_needed(len(members))
        blocks = ((r, vote(np.stack(values), k)) for r, values in read_rows(mask_paths, grid, agg.block_rows))
        write_mask(mask_out, grid, blocks, settings.cog, city_mask_params, settings.target)
    remade = remade or need_mask
    return {
        "name": city,
        "city": city,
        "scenes": [s.scene_id for s in members],
        "per_city": True,
        "probability": str(prob_out),
        "mask": str(mask_out),
        "method": agg.method,
        "votes_needed": agg.votes_needed(len(members)) if agg.method == "vote" else None,
        "remade": remade,
        "seconds": time.perf_counter() - t0,
    }
