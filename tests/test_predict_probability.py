"""unosat.predict.probability: stored probabilities (uint8, float16) keep their side of the threshold; masks
threshold the float probability; prepared stacks give the raw scenes' probabilities."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import SAMAWAH, predict_cfg, read_band

from unosat.predict.aggregate import mean_probability, threshold_mask
from unosat.predict.probability import UINT8_SCALE, decode_probability
from unosat.predict.run import run


def test_stored_probabilities_keep_their_side_of_the_threshold():
    from unosat.predict.probability import encode_probability

    p = np.array([0.4979, 0.498, 0.4999, 0.5, 0.5001, 0.3, 0.7, np.nan, 0.0, 1.0], dtype=np.float32)
    plain = decode_probability(encode_probability(p, "uint8"))
    assert plain[2] == 0.5  # 0.4999 rounds to 127/254 = 0.5 exactly: a building once stored
    for dtype, step in (("uint8", 1 / UINT8_SCALE), ("float16", 2.0**-10)):
        for thr in (0.5, 0.3, 0.7, 0.0, 1.0):
            stored = decode_probability(encode_probability(p, dtype, threshold=thr))
            valid = np.isfinite(p)
            np.testing.assert_array_equal(stored[valid] >= thr, p[valid] >= thr, err_msg=f"{dtype} {thr}")
            assert np.isnan(stored[~valid]).all()
            assert np.abs(stored[valid] - p[valid]).max() <= step  # at most one storage step off
    # the mean of two dates stored at 0.4999 is background, as the floats say
    two = np.stack(
        [decode_probability(encode_probability(np.full((1, 2), 0.4999, np.float32), "uint8", 0.5))] * 2
    )
    np.testing.assert_array_equal(threshold_mask(mean_probability(two), 0.5), [[0, 0]])


def constant_checkpoint(best_ckpt: Path, p: float, out: Path) -> Path:
    """train.py's checkpoint with its classifier set to give building probability ``p`` on every pixel."""
    ckpt = torch.load(best_ckpt, weights_only=True)
    prefix = next(k for k in ckpt["state_dict"] if k.endswith("decoder.classifier.weight"))[: -len("weight")]
    ckpt["state_dict"][prefix + "weight"] = torch.zeros_like(ckpt["state_dict"][prefix + "weight"])
    ckpt["state_dict"][prefix + "bias"] = torch.tensor([0.0, math.log(p / (1 - p))])
    torch.save(ckpt, out)
    return out


@pytest.mark.slow
def test_masks_threshold_the_float_probability_not_the_stored_one(best_ckpt, tiny_raw_session, tmp_path):
    # p = 0.499 rounds to 127 of 254 = 0.5 exactly: thresholding that stored value made every pixel a building
    # at threshold 0.5. The mask thresholds the float, and the stored value keeps its side: 126
    ckpt = constant_checkpoint(best_ckpt, 0.499, tmp_path / "p0499.ckpt")
    out = tmp_path / "out"
    common = [f"ckpt={ckpt}", f"input={tiny_raw_session}", "cities=[Samawah]", "vectorize=false"]
    run(predict_cfg(out, *common))
    prob, mask = (
        read_band(out / "scenes" / f"{SAMAWAH[0]}_probability.tif"),
        read_band(out / "scenes" / f"{SAMAWAH[0]}_mask.tif"),
    )
    valid = prob != 255
    assert valid.any() and (prob[valid] == 126).all() and (decode_probability(prob)[valid] < 0.5).all()
    assert (mask[valid] == 0).all() and (mask[~valid] == 255).all()
    assert (
        read_band(out / "cities" / "Samawah_mask.tif")[valid] == 0
    ).all()  # the mean of the dates' stored values
    # a mask remade on its own (deleted here) comes from the network's floats again, not from the stored file
    (out / "scenes" / f"{SAMAWAH[0]}_mask.tif").unlink()
    manifest = run(predict_cfg(out, *common))
    assert (read_band(out / "scenes" / f"{SAMAWAH[0]}_mask.tif")[valid] == 0).all()
    assert [s["skipped"] for s in manifest["scenes"]] == [False, True]
    # and a threshold below p makes every valid pixel a building
    run(predict_cfg(tmp_path / "low", *common, "threshold=0.498"))
    assert (read_band(tmp_path / "low" / "scenes" / f"{SAMAWAH[0]}_mask.tif")[valid] == 1).all()


@pytest.mark.slow
def test_mean_aggregation_float16_and_prepared_input(demo_run, best_ckpt, tiny_prepared_db, tmp_path):
    out = tmp_path / "out"
    run(
        predict_cfg(
            out,
            f"ckpt={best_ckpt}",
            f"input={tiny_prepared_db}",
            "dataset_split=test",
            "aggregate.method=mean",
            "aggregate.threshold=0.4",
            "probability_dtype=float16",
            "vectorize=false",
        )
    )
    probs = np.stack([read_band(out / "scenes" / f"{sid}_probability.tif") for sid in SAMAWAH])
    assert probs.dtype == np.float32  # float16 values, stored as 16-bit floats
    with rasterio.open(out / "scenes" / f"{SAMAWAH[0]}_probability.tif") as src:
        assert src.tags(1, ns="IMAGE_STRUCTURE").get("NBITS") == "16"
    # the prepared stacks hold the bands the checkpoint computes from the raw scenes: same probabilities
    raw_probs = np.stack(
        [decode_probability(read_band(demo_run / "scenes" / f"{sid}_probability.tif")) for sid in SAMAWAH]
    )
    np.testing.assert_array_equal(np.isnan(probs), np.isnan(raw_probs))
    # uint8 rounding (half a step; a whole step where a value keeps its side of the threshold, 0.5 there) + float16
    np.testing.assert_allclose(probs, raw_probs, atol=1 / UINT8_SCALE + 1e-3, equal_nan=True)
    city = read_band(out / "cities" / "Samawah_probability.tif")
    np.testing.assert_allclose(city, mean_probability(probs), atol=1e-3, equal_nan=True)
    # the city mask thresholds the mean of the dates' stored probabilities before it is stored (float16) again
    np.testing.assert_array_equal(
        read_band(out / "cities" / "Samawah_mask.tif"), threshold_mask(mean_probability(probs), 0.4)
    )
