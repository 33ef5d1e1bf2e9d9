"""Scores of a city's predicted buildings against its label polygons: pixel scores and object-level F1.

Pixel scores, as the challenge scored them: the label polygons are rasterized on the prediction's grid
(``all_touched`` as in preparation: true for UNOSAT) and compared with the predicted mask over its valid
pixels (mask != 255), block by block (memory bounded by one strip). Building IoU, precision, recall and F1
come from :func:`unosat.metrics.scores_from_confusion`; the overall figures of several cities come from the
summed confusion matrices, not from a mean of the cities.

Object scores (SpaceNet style): predicted polygons and true polygons are matched one to one at IoU >= 0.5,
see :mod:`unosat.predict.object_matching`; the overall figures come from the summed TP/FP/FN.

**Object ceiling** (``object_ceiling``): the object scores of a perfect per-pixel prediction, i.e. the labels
burnt on the prediction's grid (same ``all_touched``, valid pixels only) as exact-outline 4-connected
polygons (what ``vectorize`` writes by default), matched with the true polygons as the prediction is. At
10 m a building is 1-5 pixels and its polygon does not follow pixel edges, so even that prediction misses the
IoU 0.5 of many small buildings, and ``all_touched`` burning merges neighbours that are a pixel apart. Read a
model's object F1 against this figure, not against 1 (measured on the demo's Samawah: 0.82 with
``all_touched=false``, 0.01 with ``all_touched=true``).

**True polygons are clipped to the valid area of the prediction first** (the raster's extent minus its
nodata pixels, 255). The labels also cover the swath's nodata wedge and may extend beyond the scene; a
prediction cannot see there, so counting those buildings as missed would measure the swath, not the model.
A true polygon wholly in nodata (or outside) is left out; one cut by the nodata border is kept in its valid
part. Predicted polygons never lie over nodata (255 is never building). Geometry is compared in the
prediction's CRS (projected, metres).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import shapely
from rasterio.windows import Window

from unosat.classes import CLASS_NAMES, IGNORE_INDEX, TARGET
from unosat.classes import class_names as class_names_checked
from unosat.errors import UnosatError
from unosat.io.labels import LabelsConfig, RasterAligner, VectorBurner
from unosat.io.raster import Grid, gdal_env, open_raster, read_window, row_windows
from unosat.metrics import confusion_matrix, scores_from_confusion
from unosat.predict.object_matching import match_polygons, object_scores
from unosat.predict.polygonize import polygonize_strips
from unosat.predict.vectorize import read_vectorized

log = logging.getLogger(__name__)

#: rows of the prediction read at a time
EVAL_BLOCK_ROWS = 1024


def count_keys(class_names: Sequence[str] = CLASS_NAMES) -> tuple[str, ...]:
    """The keys of an evaluation's ``counts`` (``true_<target>_pixels``: ``true_building_pixels`` by default)."""
    target = class_names[TARGET]
    return (
        "valid_pixels",
        "nodata_pixels",
        f"true_{target}_pixels",
        f"predicted_{target}_pixels",
        "true_polygons",
        "true_polygons_evaluated",
        "true_polygons_in_nodata",
        "predicted_polygons",
    )


#: the count keys of the default classes
COUNT_KEYS = count_keys()


def evaluate_city(
    pred_mask_path,
    pred_polygons_path,
    label_path,
    all_touched: bool = True,
    iou_threshold: float = 0.5,
    *,
    block_rows: int = EVAL_BLOCK_ROWS,
    labels: LabelsConfig | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
) -> dict:
    """Pixel and object scores of one city (or scene) prediction; a JSON-ready dict.

    Args:
        pred_mask_path: predicted mask GeoTIFF (0 background, 1 building, 255 nodata); its grid is the
            reference grid.
        pred_polygons_path: the polygons vectorised from it (any OGR format, any CRS).
        label_path: the city's label polygons (any OGR format with a CRS), or with ``labels.source`` ``raster``
            / ``prepared`` a label raster (read as :class:`~unosat.io.labels.RasterAligner` reads it: on
            another grid it is warped; its unknown pixels, and a prepared mask's 255, are left out of the
            pixel scores; its true polygons are its target regions, 4-connected).
        all_touched: how labels are burnt for pixel scores (as in preparation).
        iou_threshold: IoU for an object match.
        labels: where ``source``, ``raster_nodata`` and ``positive_values`` come from (None: vector labels).
        class_names: ``[background, target]``: name the score and count keys.

    Returns ``{"pixel": {"confusion": [[tn, fp], [fn, tp]], "iou_<target>": ..., "precision_<target>": ...,
    "recall_<target>": ..., "f1_<target>": ..., ...}, "object": {"tp", "fp", "fn", "precision", "recall",
    "f1"}, "object_ceiling": {the same keys, for the labels burnt on this grid as the prediction (module
    docstring)}, "counts": {...}, "settings": {...}, "files": {...}, "classes": [...]}`` (``<target>``:
    ``building`` by default). A missing, unreadable or CRS-less label
    or polygon file raises :class:`UnosatError` naming it.
    """
    pred_mask_path, pred_polygons_path, label_path = (
        Path(pred_mask_path),
        Path(pred_polygons_path),
        Path(label_path),
    )
    with gdal_env(), open_raster(pred_mask_path) as src:
        grid = Grid.of(src)
        if grid.crs is None:
            raise UnosatError(
                f"{pred_mask_path}: the prediction has no CRS, it cannot be compared with labels"
            )
        with label_reader(label_path, grid, labels, all_touched, pred_mask_path.stem) as burner:
            confusion = pixel_confusion(src, burner, block_rows)
            if isinstance(burner, VectorBurner):
                true_geoms = burner.geoms
            else:
                true_geoms = _polygons(
                    polygonize_strips(_BurntLabels(burner, label_path), TARGET, block_rows)
                )
            perfect = _polygons(polygonize_strips(_BurntLabels(burner, label_path, src), TARGET, block_rows))
        nodata = _polygons(polygonize_strips(src, IGNORE_INDEX, block_rows))

    truth, in_scene, in_nodata = clip_to_valid_area(true_geoms, grid, nodata)
    pred = np.asarray(read_vectorized(pred_polygons_path, grid.crs).values, dtype=object)
    match = match_polygons(pred, truth, iou_threshold)
    ceiling = match_polygons(perfect, truth, iou_threshold)
    valid = int(confusion.sum())
    if valid == 0:
        log.warning(
            "evaluation: %s has no valid pixel (nodata everywhere): its pixel scores are undefined (null)",
            pred_mask_path,
        )
    class_names = class_names_checked(class_names)
    counts = (
        valid,
        grid.width * grid.height - valid,
        int(confusion[TARGET].sum()),
        int(confusion[:, TARGET].sum()),
        in_scene,
        len(truth),
        in_nodata,
        len(pred),
    )
    return {
        "pixel": {"confusion": confusion.tolist(), **scores_from_confusion(confusion, class_names)},
        "object": object_scores(match.tp, match.fp, match.fn),
        "object_ceiling": object_scores(ceiling.tp, ceiling.fp, ceiling.fn),
        "counts": dict(zip(count_keys(class_names), counts, strict=True)),
        "classes": list(class_names),
        "settings": {"all_touched": bool(all_touched), "iou_threshold": float(iou_threshold)},
        "files": {
            "mask": str(pred_mask_path),
            "polygons": str(pred_polygons_path),
            "labels": str(label_path),
            "labels_source": labels.source if labels is not None else "vector",
        },
    }


def label_reader(
    label_path: Path, grid: Grid, labels: LabelsConfig | None, all_touched: bool, name: str
) -> VectorBurner | RasterAligner:
    """What burns the truth on ``grid``: polygons (vector labels) or a label raster aligned to the grid."""
    source = labels.source if labels is not None else "vector"
    if source == "vector":
        return VectorBurner(label_path, grid, all_touched, name)
    if source == "prepared":  # a prepared dataset's mask: 0, 1 and 255 (ignore)
        return RasterAligner(label_path, grid, IGNORE_INDEX, None)
    return RasterAligner(label_path, grid, labels.raster_nodata, labels.positive_values)


class _BurntLabels:
    """Labels burnt on a grid (polygons or an aligned label raster), read like a one-band raster (for
    :func:`polygonize_strips`); with ``prediction``, only where the prediction is valid (255 elsewhere)."""

    def __init__(self, burner: VectorBurner | RasterAligner, path: Path, prediction=None):
        self.burner, self.name, self.prediction = burner, str(path), prediction
        self.height, self.width, self.transform = burner.grid.height, burner.grid.width, burner.grid.transform

    def read(self, indexes=None, window: Window | None = None, **kwargs) -> np.ndarray:
        burnt = self.burner.burn(window)
        if self.prediction is None:
            return burnt
        return np.where(read_window(self.prediction, window, 1) == IGNORE_INDEX, IGNORE_INDEX, burnt)


def _polygons(strips) -> np.ndarray:
    parts = [geoms for geoms, _ in strips]
    return np.concatenate(parts) if parts else np.empty(0, dtype=object)


def pixel_confusion(src, burner: VectorBurner | RasterAligner, block_rows: int) -> np.ndarray:
    """``(2, 2)`` confusion matrix (rows: truth, columns: prediction) over the valid pixels of ``src``."""
    total = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), dtype=np.int64)
    for window in row_windows(src.width, src.height, block_rows):
        pred = read_window(src, window, 1)
        valid = pred != IGNORE_INDEX
        if (pred[valid] > TARGET).any():
            raise UnosatError(
                f"{src.name}: a prediction mask holds 0, 1 and 255 only; found "
                f"{sorted(set(np.unique(pred[valid]).tolist()) - {0, 1})[:5]}"
            )
        target = np.where(valid, burner.burn(window), IGNORE_INDEX)
        total += confusion_matrix(target, pred, len(CLASS_NAMES), IGNORE_INDEX)
    return total


def clip_to_valid_area(truth: np.ndarray, grid: Grid, nodata: np.ndarray) -> tuple[np.ndarray, int, int]:
    """True polygons clipped to the raster extent minus the ``nodata`` polygons (map coordinates).

    Returns ``(clipped polygons with area > 0, how many met the extent, how many of those lay wholly in
    nodata)``.
    """
    truth = np.asarray(truth, dtype=object)
    extent = shapely.box(*grid.bounds)
    shapely.prepare(extent)
    truth = truth[shapely.intersects(extent, truth)]
    in_scene = len(truth)
    truth = truth.copy()
    partly_out = ~shapely.covers(extent, truth)
    truth[partly_out] = shapely.intersection(truth[partly_out], extent)
    if len(nodata) and len(truth):
        nd_index, t_index = shapely.STRtree(truth).query(nodata, predicate="intersects")
        order = np.argsort(t_index, kind="stable")
        nd_index, t_index = nd_index[order], t_index[order]
        starts = np.flatnonzero(np.r_[True, t_index[1:] != t_index[:-1]]) if len(t_index) else []
        for k, start in enumerate(starts):
            stop = starts[k + 1] if k + 1 < len(starts) else len(t_index)
            t = t_index[start]
            truth[t] = shapely.difference(truth[t], shapely.union_all(nodata[nd_index[start:stop]]))
    truth = np.array([_polygonal(g) for g in truth], dtype=object).reshape(-1)
    keep = shapely.area(truth) > 0
    return truth[keep], in_scene, int(in_scene - keep.sum())


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    """The polygonal part of a clipped geometry (a polygon touching the border leaves lines behind)."""
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def evaluation_report(per_city: dict[str, dict]) -> dict:
    """``{"overall": {...}, "cities": {...}}``: overall pixel scores from the summed confusion matrices,
    overall object scores from the summed TP/FP/FN, summed counts."""
    if not per_city:
        raise UnosatError("evaluation: no city to report")
    settings = {name: city["settings"] for name, city in per_city.items()}
    if len({tuple(sorted(s.items())) for s in settings.values()}) > 1:
        raise UnosatError(f"evaluation: cities were scored with different settings: {settings}")
    names = {tuple(city.get("classes") or CLASS_NAMES) for city in per_city.values()}
    if len(names) > 1:
        raise UnosatError(f"evaluation: cities were scored with different class names: {sorted(names)}")
    class_names = names.pop()
    confusion = sum(np.asarray(city["pixel"]["confusion"], dtype=np.int64) for city in per_city.values())
    overall = {
        "pixel": {"confusion": confusion.tolist(), **scores_from_confusion(confusion, class_names)},
        "object": _summed_objects(per_city.values(), "object"),
        "counts": {
            k: sum(int(city["counts"][k]) for city in per_city.values()) for k in count_keys(class_names)
        },
        "settings": next(iter(settings.values())),
        "classes": list(class_names),
        "n_cities": len(per_city),
    }
    if all("object_ceiling" in city for city in per_city.values()):  # evaluations written before it have none
        overall["object_ceiling"] = _summed_objects(per_city.values(), "object_ceiling")
    undefined: list[str] = []
    report = json_safe({"overall": overall, "cities": dict(per_city)}, "", undefined)
    if undefined:
        log.warning(
            "evaluation: %d score(s) are undefined (a ratio of zero counts) and written as null: %s",
            len(undefined),
            ", ".join(undefined[:8]) + (" ..." if len(undefined) > 8 else ""),
        )
    return report


def _summed_objects(cities, key: str) -> dict[str, float | int]:
    """Object scores from the TP/FP/FN of ``key`` summed over ``cities``."""
    tp, fp, fn = (sum(int(city[key][k]) for city in cities) for k in ("tp", "fp", "fn"))
    return object_scores(tp, fp, fn)


def json_safe(value, where: str, undefined: list[str]):
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN); the dotted paths of
    the replaced values are appended to ``undefined``."""
    if isinstance(value, dict):
        return {k: json_safe(v, f"{where}.{k}" if where else str(k), undefined) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, f"{where}[{i}]", undefined) for i, v in enumerate(value)]
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        undefined.append(where)
        return None
    return value


def evaluation_table(report: dict) -> str:
    """The console summary of an :func:`evaluation_report`: a row per city and one overall, with pixel IoU,
    precision, recall, F1 of the target class (``building`` by default) and object-level precision, recall, F1
    (counts of matches)."""
    target = (report["overall"].get("classes") or CLASS_NAMES)[TARGET]
    header = (
        "",
        "pixel IoU",
        "pixel P",
        "pixel R",
        "pixel F1",
        "object P",
        "object R",
        "object F1",
        "TP/FP/FN",
    )
    rows = [(name, score) for name, score in report["cities"].items()] + [("overall", report["overall"])]
    width = max(len(header[1]), *(len(name) for name, _ in rows))
    lines = [f"{'':<{width}}  " + "  ".join(f"{h:>9}" for h in header[1:-1]) + f"  {header[-1]}"]
    for name, score in rows:
        px, ob = score["pixel"], score["object"]
        values = (
            px[f"iou_{target}"],
            px[f"precision_{target}"],
            px[f"recall_{target}"],
            px[f"f1_{target}"],
            ob["precision"],
            ob["recall"],
            ob["f1"],
        )
        cells = (f"{v:>9.4f}" if v is not None else f"{'n/a':>9}" for v in values)  # None: undefined (0/0)
        lines.append(f"{name:<{width}}  " + "  ".join(cells) + f"  {ob['tp']}/{ob['fp']}/{ob['fn']}")
    ceiling = report["overall"].get("object_ceiling")
    if ceiling is not None and ceiling["f1"] is not None:
        lines.append(
            f"object F1 of a perfect per-pixel prediction (the labels burnt on this grid): {ceiling['f1']:.4f}"
        )
    return "\n".join(lines)
