"""Per-scene products: the probability and mask COGs of one acquisition, predicted window by window
(skipped when already made with the same parameters).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

from unosat.io.cog import CogRowWriter
from unosat.io.provenance import canonical, digest, needs_work
from unosat.io.raster import PARAMS_TAG
from unosat.predict.aggregate import MASK_NODATA
from unosat.predict.distributed import Runtime
from unosat.predict.ensemble import Ensemble, LoadedModel
from unosat.predict.gate import TileGate
from unosat.predict.inputs import InputScene
from unosat.predict.output_dir import OutputPaths
from unosat.predict.settings import Settings
from unosat.predict.sliding_window import NodataSkip, SceneStats, predict_scene
from unosat.predict.writers import masked_as_they_pass, write_probability

log = logging.getLogger(__name__)


def mask_params(prob_params: dict, threshold: float) -> dict:
    return {"product": "mask", "probability": digest(prob_params), "threshold": threshold}


def scene_pending(scene: InputScene, paths: OutputPaths, params: dict, settings: Settings) -> bool:
    """Whether a scene's probability or mask must be (re)made (raises for outputs of other settings)."""
    prob = needs_work(paths.scene_probability(scene.scene_id), params, settings.overwrite)
    mask = needs_work(
        paths.scene_mask(scene.scene_id), mask_params(params, settings.threshold), settings.overwrite
    )
    return prob or mask


def predict_one(
    scene: InputScene,
    ensemble: Ensemble,
    paths: OutputPaths,
    params: dict,
    settings: Settings,
    runtime: Runtime,
    skips: Sequence = (NodataSkip(),),
) -> dict:
    """Probability and mask COGs of one scene; returns its record for the manifest."""
    t0 = time.perf_counter()
    stats = SceneStats()
    prob_path, mask_path = paths.scene_probability(scene.scene_id), paths.scene_mask(scene.scene_id)
    calls_before = ensemble.forward_calls
    mparams = mask_params(params, settings.threshold)
    need_prob = needs_work(prob_path, params, settings.overwrite)
    need_mask = needs_work(mask_path, mparams, settings.overwrite)

    def store_probability(blocks) -> None:
        write_probability(
            prob_path,
            scene.grid,
            blocks,
            settings.dtype,
            settings.cog,
            params,
            {"UNOSAT_SCENE": json.dumps(scene.scene.to_record())},
            settings.target,
            settings.threshold,
        )

    if need_prob or need_mask:
        # the mask thresholds the network's float probabilities as they stream out; the stored probability is
        # quantised (uint8: steps of 1/254) with each value kept on its pixel's side of the threshold, which
        # is therefore one of its parameters: another threshold remakes both in one pass of the network.
        with scene.open() as reader:
            blocks = predict_scene(reader, ensemble, settings.window, tuple(skips), stats)
            if need_mask:
                with CogRowWriter(
                    mask_path,
                    scene.grid,
                    "uint8",
                    MASK_NODATA,
                    settings.cog,
                    categorical=True,
                    tags={PARAMS_TAG: canonical(mparams)},
                    band_descriptions=[settings.target],
                ) as mask_out:
                    blocks = masked_as_they_pass(blocks, settings.threshold, mask_out)
                    if need_prob:
                        store_probability(blocks)
                    else:
                        for _ in blocks:
                            pass
            else:
                store_probability(blocks)
    t_prob = time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    log.info(
        "rank %d: %s (%s) %dx%d px: %d windows, %d predicted, skipped %s, %.1f s",
        runtime.rank,
        scene.scene_id,
        scene.city,
        scene.grid.width,
        scene.grid.height,
        stats.windows,
        stats.predicted,
        stats.skipped or 0,
        seconds,
    )
    return {
        "scene_id": scene.scene_id,
        "city": scene.city,
        **paths.scene_files(scene.scene_id),
        "width": scene.grid.width,
        "height": scene.grid.height,
        "pixels": scene.grid.width * scene.grid.height,
        "windows": stats.windows,
        "windows_predicted": stats.predicted,
        "windows_skipped": stats.skipped,
        "forward_passes": ensemble.forward_calls - calls_before,
        "probability_s": t_prob,
        "seconds": seconds,
        "rank": runtime.rank,
        "skipped": False,
    }


def predict_scenes(
    scenes: Sequence[InputScene],
    models: Sequence[LoadedModel],
    gate_model: LoadedModel | None,
    paths: OutputPaths,
    params: dict[str, dict],
    settings: Settings,
    runtime: Runtime,
) -> tuple[list[dict], float]:
    """Predict the scenes not yet made with these settings, shared among the ranks (the tile gate, when
    given, skips windows); ``(records of this rank's scenes, seconds)``, after every rank is done."""
    ensemble = Ensemble(models, runtime, settings.tta)
    skips = [NodataSkip()]
    if gate_model is not None:
        skips.append(TileGate.attach(gate_model, settings.gate_threshold, ensemble))
    pending = [s for s in scenes if scene_pending(s, paths, params[s.scene_id], settings)]
    if len(pending) < len(scenes):
        log.info(
            "%d of %d scenes already predicted with these settings: skipped",
            len(scenes) - len(pending),
            len(scenes),
        )
    t_scenes = time.perf_counter()
    done = runtime.run_shards(
        pending, lambda s: predict_one(s, ensemble, paths, params[s.scene_id], settings, runtime, skips)
    )
    seconds_scenes = time.perf_counter() - t_scenes
    runtime.barrier()
    return done, seconds_scenes
