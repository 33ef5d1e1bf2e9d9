"""Evaluation: pixel scores against numpy, object matching against a brute-force matcher, clipping to the
valid area, the report, and user errors."""

from __future__ import annotations

import json
import time

import geopandas as gpd
import numpy as np
import pytest
import shapely
from conftest import MASK_CRS, MASK_TRANSFORM, numpy_confusion, write_mask
from rasterio.features import rasterize

from unosat.errors import UnosatError
from unosat.metrics import scores_from_confusion
from unosat.predict.evaluate import COUNT_KEYS, evaluate_city, evaluation_report, evaluation_table
from unosat.predict.object_matching import match_polygons, object_scores
from unosat.predict.vectorize import VectorizeConfig, vectorize

CRS, TRANSFORM = MASK_CRS, MASK_TRANSFORM


def px_box(col0, row0, col1, row1, transform=TRANSFORM) -> shapely.Polygon:
    """A box given by pixel corners (columns ``col0..col1``, rows ``row0..row1``) in map coordinates."""
    x0, y0 = transform * (col0, row0)
    x1, y1 = transform * (col1, row1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def write_labels(path, geoms, crs=CRS, to_crs=None):
    frame = gpd.GeoDataFrame({"DN": np.full(len(geoms), 255, dtype=np.int32)}, geometry=list(geoms), crs=crs)
    if to_crs:
        frame = frame.to_crs(to_crs)
    frame.to_file(path, engine="pyogrio")
    return path


# ------------------------------------------------------------------------------------------- pixel scores
@pytest.mark.parametrize("all_touched", [True, False])
def test_pixel_scores_match_a_numpy_confusion_matrix(tmp_path, all_touched):
    rng = np.random.default_rng(0)
    shape = (57, 43)
    geoms = [
        px_box(c + rng.random(), r + rng.random(), c + 1 + 4 * rng.random(), r + 1 + 4 * rng.random())
        for r, c in zip(rng.integers(-2, 57, 60), rng.integers(-2, 43, 60))
    ]
    geoms.append(shapely.affinity.rotate(px_box(10, 10, 25, 14), 30))
    labels = write_labels(tmp_path / "labels.gpkg", geoms, to_crs="EPSG:4326")  # reprojected when read
    truth = rasterize(
        ((g, 1) for g in gpd.read_file(labels).to_crs(CRS).geometry),
        out_shape=shape,
        transform=TRANSFORM,
        all_touched=all_touched,
        dtype="uint8",
    )
    pred = np.where(rng.random(shape) < 0.3, 1, 0).astype(np.uint8)
    pred[truth.astype(bool) & (rng.random(shape) < 0.6)] = 1
    rows, cols = np.indices(shape)
    pred[cols > rows + 20] = 255  # nodata wedge: ignored, labels there or not
    mask = write_mask(tmp_path / "pred.tif", pred)
    polygons = tmp_path / "pred.gpkg"
    vectorize(mask, polygons, VectorizeConfig())

    result = evaluate_city(mask, polygons, labels, all_touched=all_touched, block_rows=7)
    expected = numpy_confusion(truth, pred)
    assert result["pixel"]["confusion"] == expected.tolist()
    for key, value in scores_from_confusion(expected).items():
        assert result["pixel"][key] == pytest.approx(value, nan_ok=True)
    assert result["counts"]["valid_pixels"] == int((pred != 255).sum())
    assert result["counts"]["nodata_pixels"] == int((pred == 255).sum())
    assert result["counts"]["true_building_pixels"] == int(truth[pred != 255].sum())
    json.dumps(result)


# ------------------------------------------------------------------------------------------- object matching
def brute_force_match(pred, truth, threshold):
    """All pairs, IoU from shapely's intersection and union, greedy by decreasing IoU (ties: pred, true)."""
    candidates = []
    for i, p in enumerate(pred):
        for j, t in enumerate(truth):
            union = p.union(t).area
            iou = p.intersection(t).area / union if union else 0.0
            if iou >= threshold and iou > 0:
                candidates.append((-iou, i, j))
    used_p, used_t, pairs = set(), set(), set()
    for _, i, j in sorted(candidates):
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            pairs.add((i, j))
    return pairs


def random_polygons(rng, n, extent=60.0):
    out = []
    for _ in range(n):
        cx, cy = rng.random(2) * extent
        points = rng.normal(size=(6, 2)) * rng.uniform(1, 4) + (cx, cy)
        out.append(shapely.convex_hull(shapely.multipoints(points)))
    return out


def predictions_of(rng, truth):
    """Jittered copies of most true polygons, duplicates and near-duplicates, and false alarms."""
    pred = []
    for t in truth:
        if rng.random() < 0.75:
            g = shapely.affinity.scale(t, *rng.uniform(0.7, 1.3, 2))
            pred.append(shapely.affinity.translate(g, *rng.normal(scale=0.8, size=2)))
    for g in list(pred[: len(pred) // 4]):
        pred.append(g)  # exact duplicate: one of the two is a false positive
        pred.append(shapely.affinity.translate(g, 0.3, -0.2))
    pred += random_polygons(rng, len(truth) // 3)
    return [pred[k] for k in rng.permutation(len(pred))]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.5, 0.25])
def test_matching_agrees_with_a_brute_force_matcher(seed, threshold):
    rng = np.random.default_rng(seed)
    truth = random_polygons(rng, 40)  # true polygons may overlap each other too
    pred = predictions_of(rng, truth)
    result = match_polygons(pred, truth, threshold)
    expected = brute_force_match(pred, truth, threshold)
    assert {tuple(p) for p in result.pairs.tolist()} == expected
    assert result.tp == len(expected) > 5
    assert result.fp == len(pred) - len(expected)
    assert result.fn == len(truth) - len(expected)
    assert len(set(result.pairs[:, 0].tolist())) == len(set(result.pairs[:, 1].tolist())) == result.tp


def test_matching_hand_made_case():
    a, b, c = shapely.box(0, 0, 10, 10), shapely.box(20, 0, 30, 10), shapely.box(40, 0, 50, 10)
    pred = [
        shapely.box(2, 0, 12, 10),  # A shifted: IoU 80/120, but A has a better match below -> FP
        shapely.box(0, 0, 10, 10),  # A exactly: IoU 1 -> TP
        shapely.box(25, 0, 35, 10),  # B shifted by half: IoU 1/3 < 0.5 -> FP, and B is missed
        shapely.box(100, 100, 101, 101),  # nothing there -> FP
        shapely.box(40, 0, 50, 5),  # half of C: IoU exactly 0.5 -> TP (threshold inclusive)
    ]
    result = match_polygons(pred, [a, b, c], 0.5)
    assert sorted(result.pairs.tolist()) == [[1, 0], [4, 2]]
    np.testing.assert_allclose(sorted(result.ious), [0.5, 1.0])
    scores = object_scores(result.tp, result.fp, result.fn)
    assert scores == {"tp": 2, "fp": 3, "fn": 1, "precision": 0.4, "recall": pytest.approx(2 / 3), "f1": 0.5}

    # greedy by decreasing IoU, not by prediction order: Q ties between T1 and T2, R is T1 exactly
    t1, t2 = shapely.box(0, 0, 10, 10), shapely.box(6, 0, 16, 10)
    q, r = shapely.box(3, 0, 13, 10), shapely.box(0, 0, 10, 10)
    assert sorted(match_polygons([q, r], [t1, t2]).pairs.tolist()) == [[0, 1], [1, 0]]
    assert match_polygons([], [t1]).fn == 1 and match_polygons([q], []).fp == 1
    with pytest.raises(UnosatError, match="iou_threshold"):
        match_polygons([q], [t1], 0.0)


def test_matching_scales_to_tens_of_thousands_of_buildings():
    side = 142  # 20,164 tiny squares, predicted with a small shift (IoU 0.68)
    x, y = np.meshgrid(np.arange(side) * 30.0, np.arange(side) * 30.0)
    truth = shapely.box(x.ravel(), y.ravel(), x.ravel() + 10, y.ravel() + 10)
    pred = shapely.box(x.ravel() + 2, y.ravel() + 1, x.ravel() + 12, y.ravel() + 11)
    start = time.perf_counter()
    result = match_polygons(pred, truth)
    print(f"\nmatched {len(truth)} buildings in {time.perf_counter() - start:.2f} s")
    assert result.tp == len(truth) and result.fp == result.fn == 0


# ------------------------------------------------------------------------------------------- whole city
def hand_made_city(tmp_path, label_crs=CRS):
    """30 x 30 px prediction, nodata from column 20; labels: T1 found, T2 straddling nodata (found in its
    valid part), T3 wholly in nodata, T4 outside the scene, T5 missed; one false alarm."""
    pred = np.zeros((30, 30), dtype=np.uint8)
    pred[:, 20:] = 255
    pred[2:6, 2:6] = 1  # T1
    pred[10:14, 16:20] = 1  # valid part of T2
    pred[15:17, 2:4] = 1  # false alarm
    labels = write_labels(
        tmp_path / "labels.shp",
        [
            px_box(2, 2, 6, 6),
            px_box(16, 10, 26, 14),
            px_box(22, 2, 26, 6),
            px_box(40, 2, 44, 6),
            px_box(8, 20, 11, 23),
        ],
        to_crs=label_crs,
    )
    mask = write_mask(tmp_path / "pred.tif", pred)
    polygons = tmp_path / "pred.geojson"
    vectorize(mask, polygons, VectorizeConfig(driver="GeoJSON", crs="EPSG:4326"))
    return mask, polygons, labels, pred


def test_true_polygons_are_clipped_to_the_valid_area(tmp_path):
    mask, polygons, labels, pred = hand_made_city(tmp_path, label_crs="EPSG:4326")
    result = evaluate_city(mask, polygons, labels, all_touched=False, block_rows=4)
    # T2 clipped to its valid part matches with IoU 1 (unclipped, it would be 16/40 = 0.4: missed)
    assert result["object"] == object_scores(2, 1, 1)
    counts = result["counts"]
    assert counts["true_polygons"] == 4  # T4 lies outside the scene
    assert counts["true_polygons_evaluated"] == 3
    assert counts["true_polygons_in_nodata"] == 1
    assert counts["predicted_polygons"] == 3
    truth = np.zeros_like(pred)
    for r0, r1, c0, c1 in [(2, 6, 2, 6), (10, 14, 16, 26), (20, 23, 8, 11)]:
        truth[r0:r1, c0:c1] = 1
    assert result["pixel"]["confusion"] == numpy_confusion(truth, pred).tolist()
    assert result["settings"] == {"all_touched": False, "iou_threshold": 0.5}


def test_object_ceiling_is_the_score_of_the_labels_burnt_on_the_grid(tmp_path):
    """A: a 1.2 px square across pixel edges, burnt as 1 pixel (IoU 0.49 / 1.95 = 0.25: even a perfect per-pixel
    prediction misses it); B: pixel-aligned (found); C and D: 1.4 px wide, 1.2 px apart: separate when burnt by
    pixel centres (IoU 2 / 2.8 each), one merged region when burnt all_touched (both missed)."""
    labels = write_labels(
        tmp_path / "labels.shp",
        [px_box(2.5, 2.5, 3.7, 3.7), px_box(10, 10, 12, 12), px_box(20, 2, 21.4, 4), px_box(22.6, 2, 24, 4)],
    )
    pred = np.zeros((30, 30), dtype=np.uint8)
    pred[10:12, 10:12] = 1  # B only
    pred[25:, :] = 255  # nodata rows hold no label: the ceiling is scored on valid pixels, as the prediction
    mask = write_mask(tmp_path / "pred.tif", pred)
    polygons = tmp_path / "pred.gpkg"
    vectorize(mask, polygons, VectorizeConfig(block_rows=8))
    centres = evaluate_city(mask, polygons, labels, all_touched=False, block_rows=7)
    assert centres["object"] == object_scores(1, 0, 3)
    assert centres["object_ceiling"] == object_scores(3, 1, 1)  # B, C, D found; A missed
    touched = evaluate_city(mask, polygons, labels, all_touched=True, block_rows=7)
    assert (
        touched["object_ceiling"]["tp"] == 1 and touched["object_ceiling"]["fn"] == 3
    )  # C + D merged, A too big
    report = evaluation_report({"Mosul": centres, "Najaf": centres})
    assert report["overall"]["object_ceiling"] == object_scores(6, 2, 2)
    assert evaluation_table(report).splitlines()[-1].endswith(f"{object_scores(6, 2, 2)['f1']:.4f}")


def test_a_perfect_prediction_of_a_prepared_scene(tiny_prepared, tiny_raw_session, tiny_spec, tmp_path):
    """The label mask of a prepared scene, taken as a prediction, scores pixel F1 = 1 against the raw labels
    (rasterized the same way, in another CRS for Samawah)."""
    from unosat.prepared import PreparedDataset
    from unosat.synthetic.generator import label_path

    dataset = PreparedDataset(tiny_prepared)
    scenes = dataset.scenes()
    scene = scenes[scenes["city"] == "Samawah"].iloc[0]
    labels = label_path(tiny_raw_session, next(c for c in tiny_spec.cities if c.name == "Samawah"))
    mask = dataset.mask_path(scene["scene_id"])
    polygons = tmp_path / "pred.gpkg"
    vectorize(mask, polygons, VectorizeConfig(block_rows=16))
    result = evaluate_city(mask, polygons, labels, all_touched=False, block_rows=16)
    (tn, fp), (fn, tp) = result["pixel"]["confusion"]
    assert fp == fn == 0 and tp > 0
    assert result["pixel"]["f1_building"] == 1.0
    assert result["object"]["tp"] > 0


def test_report_sums_confusions_and_object_counts(tmp_path):
    mask, polygons, labels, _ = hand_made_city(tmp_path)
    a = evaluate_city(mask, polygons, labels)
    b = json.loads(json.dumps(a))  # a second city, as read back from JSON
    b["object"] = object_scores(10, 0, 30)
    b["pixel"]["confusion"] = [[500, 0], [40, 60]]
    report = evaluation_report({"Mosul": a, "Najaf": b})
    overall = report["overall"]
    expected = np.asarray(a["pixel"]["confusion"]) + np.asarray(b["pixel"]["confusion"])
    assert overall["pixel"]["confusion"] == expected.tolist()
    assert overall["pixel"]["f1_building"] == pytest.approx(scores_from_confusion(expected)["f1_building"])
    assert overall["object"] == object_scores(12, 1, 31)
    assert overall["object"]["f1"] != pytest.approx((a["object"]["f1"] + b["object"]["f1"]) / 2)
    assert overall["counts"]["predicted_polygons"] == 2 * a["counts"]["predicted_polygons"]
    assert set(report["cities"]) == {"Mosul", "Najaf"}
    json.dumps(report)
    with pytest.raises(UnosatError):
        evaluation_report({})


def test_label_file_errors_name_the_file(tmp_path):
    mask, polygons, labels, _ = hand_made_city(tmp_path)
    with pytest.raises(UnosatError, match="missing_labels.shp"):
        evaluate_city(mask, polygons, tmp_path / "missing_labels.shp")
    garbage = tmp_path / "garbage.gpkg"
    garbage.write_bytes(b"not a geopackage at all")
    with pytest.raises(UnosatError, match="garbage.gpkg"):
        evaluate_city(mask, polygons, garbage)
    no_crs = write_labels(tmp_path / "no_crs.shp", [px_box(2, 2, 6, 6)])
    no_crs.with_suffix(".prj").unlink()
    with pytest.raises(UnosatError, match=r"no_crs.shp.*no CRS"):
        evaluate_city(mask, polygons, no_crs)
    with pytest.raises(UnosatError, match="missing_polygons.gpkg"):
        evaluate_city(mask, tmp_path / "missing_polygons.gpkg", labels)


def test_a_city_without_a_valid_pixel_warns_and_the_report_is_strict_json(tmp_path, caplog):
    mask, polygons, labels, _ = hand_made_city(tmp_path)
    blank = write_mask(tmp_path / "blank.tif", np.full((30, 40), 255, dtype=np.uint8))
    blank_polygons = tmp_path / "blank.gpkg"
    vectorize(blank, blank_polygons, VectorizeConfig(block_rows=8))
    with caplog.at_level("WARNING", logger="unosat.predict.evaluate"):
        nothing = evaluate_city(blank, blank_polygons, labels)
        report = evaluation_report({"Mosul": evaluate_city(mask, polygons, labels), "Nowhere": nothing})
    assert any("blank.tif has no valid pixel" in r.getMessage() for r in caplog.records)
    assert any(
        "written as null" in r.getMessage() and "cities.Nowhere.pixel.iou_building" in r.getMessage()
        for r in caplog.records
    )
    text = json.dumps(report, allow_nan=False)  # strict JSON: no NaN anywhere
    back = json.loads(text)
    assert back["cities"]["Nowhere"]["pixel"]["iou_building"] is None
    assert back["cities"]["Nowhere"]["counts"]["valid_pixels"] == 0
    assert back["overall"]["pixel"]["iou_building"] == report["cities"]["Mosul"]["pixel"]["iou_building"]


def test_evaluation_table_prints_each_city_and_the_overall_scores():
    def city(confusion, tp, fp, fn):
        return {
            "pixel": {"confusion": confusion, **scores_from_confusion(np.array(confusion))},
            "object": object_scores(tp, fp, fn),
            "counts": dict.fromkeys(COUNT_KEYS, 1),
            "settings": {"all_touched": True, "iou_threshold": 0.5},
        }

    report = evaluation_report(
        {"Samawah": city([[90, 2], [3, 5]], 2, 1, 1), "Mosul": city([[50, 0], [5, 5]], 0, 2, 4)}
    )
    lines = evaluation_table(report).splitlines()
    assert lines[0].split() == [
        "pixel",
        "IoU",
        "pixel",
        "P",
        "pixel",
        "R",
        "pixel",
        "F1",
        "object",
        "P",
        "object",
        "R",
        "object",
        "F1",
        "TP/FP/FN",
    ]
    # Samawah: IoU 5/(5+2+3), P 5/7, R 5/8, F1 10/15; objects P 2/3, R 2/3, F1 2/3
    assert lines[1].split() == [
        "Samawah",
        "0.5000",
        "0.7143",
        "0.6250",
        "0.6667",
        "0.6667",
        "0.6667",
        "0.6667",
        "2/1/1",
    ]
    # overall from the summed confusion [[140, 2], [8, 10]] and summed matches 2/3/5
    assert lines[3].split() == [
        "overall",
        "0.5000",
        "0.8333",
        "0.5556",
        "0.6667",
        "0.4000",
        "0.2857",
        "0.3333",
        "2/3/5",
    ]
