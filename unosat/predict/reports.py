"""What a run reports about its products: their scores against the truth (``evaluation.json``) and a
quicklook PNG each (``quicklooks=true``).
"""

from __future__ import annotations

from pathlib import Path

from unosat.io.atomic import write_json_atomic
from unosat.predict.inputs import InputScene
from unosat.predict.output_dir import EVALUATION, QUICKLOOK_DIR, OutputPaths
from unosat.predict.settings import Settings


def evaluate_products(
    products: list[dict], truth: dict[str, Path], paths: OutputPaths, settings: Settings
) -> dict:
    """Scores of every product against its truth (:func:`find_truth`); written to ``evaluation.json``."""
    from unosat.predict.evaluate import evaluate_city, evaluation_report, evaluation_table

    per_product = {}
    for p in products:
        labels = truth[p["name"]]
        per_product[p["name"]] = evaluate_city(
            Path(p["mask"]),
            Path(p["polygons"]),
            labels,
            all_touched=bool(settings.evaluation["all_touched"]),
            iou_threshold=float(settings.evaluation["iou_threshold"]),
            labels=settings.labels,
            class_names=settings.classes,
        )
        p["labels"] = str(labels)
    report = evaluation_report(per_product)
    write_json_atomic(paths.root / EVALUATION, report)
    print(
        f"evaluation ({settings.target} class; written to {paths.root / EVALUATION}):\n{evaluation_table(report)}",
        flush=True,
    )
    return report


def write_quicklooks(
    products: list[dict],
    cities: dict[str, list[InputScene]],
    paths: OutputPaths,
    settings: Settings,
    truth: dict[str, Path] | None = None,
) -> None:
    """A PNG per product: the first acquisition's VV backscatter with predicted (and true) target outlines."""
    from unosat.predict.quicklook import quicklook

    scenes = {s.scene_id: s for members in cities.values() for s in members}
    for p in products:
        scene = scenes[p["scenes"][0]]
        image, band, units = scene.quicklook_source()
        labels = p.get("labels") or (truth or {}).get(p["name"])
        if labels is not None and settings.labels.source != "vector":
            labels = None  # quicklooks outline label polygons only
        out = paths.root / QUICKLOOK_DIR / f"{p['name']}.png"
        quicklook(
            image,
            band,
            units,
            out,
            predicted=Path(p["mask"]),
            truth=Path(labels) if labels else None,
            max_px=int(settings.quicklook["max_px"]),
            title=f"{p['name']}: predicted {paths.polygons}",
        )
        p["quicklook"] = str(out)
