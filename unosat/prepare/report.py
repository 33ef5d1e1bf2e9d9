"""Step ``report``: an exploratory report of a prepared dataset, in ``<out_dir>/report/``.

Figures: a quicklook per scene (VV or the first band, in dB, with the label outline and the nodata area),
backscatter histograms of target (``classes.names``) vs background pixels per band, the target-ratio
distribution per city, and the nodata fraction per scene; ``report.md`` links them with summary tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rasterio.enums import Resampling
from rasterio.windows import Window

from unosat.agg_figures import save_figure, subplots
from unosat.bands import BandRecipe, to_db
from unosat.classes import CLASS_NAMES, IGNORE_INDEX, TARGET, class_names, plural
from unosat.io.atomic import write_text_atomic
from unosat.io.labels import decimated_mask
from unosat.io.raster import open_raster, read_window
from unosat.prepared import PreparedDataset


@dataclass(frozen=True)
class ReportConfig:
    """``quicklook_px``: longest side of quicklooks; ``samples_per_class``: pixels per class and scene kept
    for the histograms; ``tiles_per_scene``: train tiles read per scene to draw those samples; ``seed``."""

    quicklook_px: int = 1024
    samples_per_class: int = 20000
    tiles_per_scene: int = 8
    histogram_bins: int = 80
    dpi: int = 110
    seed: int = 0


def display_db(values: np.ndarray, recipe: BandRecipe) -> np.ndarray:
    """Band values in dB for display (linear recipes are converted; dB recipes are returned as they are)."""
    return values if recipe.units == "db" else to_db(values)


def quicklook(
    dataset: PreparedDataset, scene_id: str, recipe: BandRecipe, config: ReportConfig, path: Path
) -> None:
    """Quicklook PNG of one scene: VV (or band 1) in dB, label outline in yellow, nodata area in red."""
    band = recipe.bands.index("vv") + 1 if "vv" in recipe.bands else 1
    with open_raster(dataset.mask_path(scene_id)) as src:
        factor = max(1, math.ceil(max(src.height, src.width) / config.quicklook_px))
        building, nodata = decimated_mask(src, factor)
    shape = building.shape
    with open_raster(dataset.bands_path(scene_id)) as src:
        image = src.read(band, out_shape=shape, resampling=Resampling.average)
    nodata |= ~np.isfinite(image)
    shown = display_db(image, recipe)
    finite = shown[np.isfinite(shown)]
    lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    fig, ax = subplots(figsize=(7, 7 * shape[0] / shape[1]))
    ax.imshow(np.where(nodata, np.nan, shown), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    if building.any():
        ax.contour(building.astype(float), levels=[0.5], colors="yellow", linewidths=0.4)
    overlay = np.zeros((*shape, 4))
    overlay[nodata] = (1.0, 0.0, 0.0, 0.35)
    ax.imshow(overlay, interpolation="nearest")
    ax.set_title(f"{scene_id}: {recipe.bands[band - 1]} (dB), labels (yellow), nodata (red)", fontsize=9)
    ax.set_axis_off()
    save_figure(fig, path, config.dpi)


def sample_pixels(dataset: PreparedDataset, tiles: pd.DataFrame, config: ReportConfig, n_bands: int) -> dict:
    """Pixels of building and background, per band, sampled from a few train tiles of every scene."""
    rng = np.random.default_rng(config.seed)
    samples = {0: [], TARGET: []}
    for scene_id, group in tiles.groupby("scene_id"):
        chosen = group.sample(n=min(config.tiles_per_scene, len(group)), random_state=config.seed)
        per_scene = {0: [], TARGET: []}
        with (
            open_raster(dataset.bands_path(scene_id)) as stack,
            open_raster(dataset.mask_path(scene_id)) as masks,
        ):
            for t in chosen.itertuples():
                w = Window(t.col_off, t.row_off, t.width, t.height)
                image = read_window(stack, w, boundless=True, fill_value=np.nan)
                mask = read_window(masks, w, 1, boundless=True, fill_value=IGNORE_INDEX)
                for cls in per_scene:
                    per_scene[cls].append(image[:, mask == cls].T)
        for cls, parts in per_scene.items():
            values = np.concatenate(parts) if parts else np.empty((0, n_bands), np.float32)
            if len(values) > config.samples_per_class:
                values = values[rng.choice(len(values), config.samples_per_class, replace=False)]
            samples[cls].append(values)
    return {cls: np.concatenate(v) if v else np.empty((0, n_bands), np.float32) for cls, v in samples.items()}


def histograms(
    samples: dict,
    recipe: BandRecipe,
    config: ReportConfig,
    path: Path,
    class_names: Sequence[str] = CLASS_NAMES,
) -> None:
    """Histograms (dB) of the sampled target and background pixels, one panel per band."""
    background, target = class_names[0], class_names[TARGET]
    n = recipe.count
    cols = min(n, 3)
    fig, axes = subplots(
        math.ceil(n / cols), cols, figsize=(4.5 * cols, 3.2 * math.ceil(n / cols)), squeeze=False
    )
    for i, name in enumerate(recipe.bands):
        ax = axes.flat[i]
        bg = display_db(samples[0][:, i], recipe)
        bd = display_db(samples[TARGET][:, i], recipe)
        both = np.concatenate([bg, bd])
        both = both[np.isfinite(both)]
        if both.size == 0:
            continue
        bins = np.linspace(*np.percentile(both, [0.5, 99.5]), config.histogram_bins)
        ax.hist(bg, bins=bins, density=True, alpha=0.55, label=f"{background} (n={len(bg)})")
        ax.hist(bd, bins=bins, density=True, alpha=0.55, label=f"{target} (n={len(bd)})")
        ax.set_xlabel(f"{name} (dB)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"Backscatter of {target} vs {background} pixels")
    save_figure(fig, path, config.dpi)


def target_ratio_figure(
    stats: pd.DataFrame, config: ReportConfig, path: Path, target: str = CLASS_NAMES[TARGET]
) -> None:
    train = stats[(stats["scheme"] == "train") & ~stats["skip"]]
    cities = sorted(train["city"].unique())
    fig, ax = subplots(figsize=(1.6 * max(3, len(cities)), 3.5))
    ax.boxplot(
        [100 * train.loc[train["city"] == c, "target_ratio"].to_numpy() for c in cities], showfliers=True
    )
    ax.set_xticks(range(1, len(cities) + 1), cities)
    ax.set_ylabel(f"{target} pixels per tile (%)")
    ax.set_title("Target ratio of train tiles per city")
    save_figure(fig, path, config.dpi)


def nodata_figure(scenes: pd.DataFrame, config: ReportConfig, path: Path) -> None:
    frac = 100 * scenes["n_nodata"] / (scenes["height"] * scenes["width"])
    fig, ax = subplots(figsize=(max(4, 0.45 * len(scenes)), 3.5))
    ax.bar(range(len(scenes)), frac)
    ax.set_xticks(range(len(scenes)), scenes["scene_id"], rotation=90, fontsize=7)
    ax.set_ylabel("nodata pixels (%)")
    ax.set_title("Nodata fraction per scene")
    save_figure(fig, path, config.dpi)


def quality_figure(quality: pd.DataFrame, band: str, config: ReportConfig, path: Path) -> None:
    """Contrast of the likelihood band per acquisition (flagged ones in red), best shift written above."""
    col = (
        f"contrast_{band}_db"
        if f"contrast_{band}_db" in quality
        else next(c for c in quality if c.startswith("contrast_"))
    )
    quality = quality.sort_values(["city", "scene_id"]).reset_index(drop=True)
    flagged = quality["quality_flag"].astype(str).str.lower() == "true"
    fig, ax = subplots(figsize=(max(4, 0.5 * len(quality)), 3.8))
    ax.bar(range(len(quality)), quality[col], color=np.where(flagged, "tab:red", "tab:blue"))
    for i, row in quality.iterrows():
        ax.annotate(
            f"({row.shift_rows},{row.shift_cols})", (i, row[col]), ha="center", va="bottom", fontsize=6
        )
    ax.set_xticks(range(len(quality)), quality["city"] + " " + quality["scene_id"], rotation=90, fontsize=7)
    ax.set_ylabel(f"{col.removeprefix('contrast_').removesuffix('_db')} contrast, labels vs around (dB)")
    ax.set_title(
        "Label quality per acquisition: contrast (bars), best label shift in px (above); red = flagged",
        fontsize=8,
    )
    save_figure(fig, path, config.dpi)


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table (not ``DataFrame.to_markdown``: it needs ``tabulate``, not a dependency)."""
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float | np.floating):
        return f"{v:.4g}"
    return str(v)


def write_report(dataset: PreparedDataset, config: ReportConfig) -> Path:
    """Write the report (figures and ``report.md``) and return the path of ``report.md``."""
    out = dataset.report_dir
    (out / "quicklooks").mkdir(parents=True, exist_ok=True)
    recipe = dataset.recipe
    scenes = dataset.scenes()
    stats = dataset.statistics()
    norm = dataset.normalization()
    names = class_names(dataset.manifest.get("classes"), f"{dataset.manifest_path} classes")
    background, target = names[0], names[TARGET]

    for sid in scenes["scene_id"]:
        quicklook(dataset, sid, recipe, config, out / "quicklooks" / f"{sid}.png")
    train_tiles = stats[(stats["scheme"] == "train") & ~stats["skip"]]
    histograms(
        sample_pixels(dataset, train_tiles, config, recipe.count),
        recipe,
        config,
        out / "histograms.png",
        names,
    )
    target_ratio_figure(stats, config, out / "target_ratio.png", target)
    nodata_figure(scenes, config, out / "nodata.png")

    size = scenes["height"] * scenes["width"]
    scene_table = pd.DataFrame(
        {
            "scene": scenes["scene_id"],
            "city": scenes["city"],
            "date": scenes["date"],
            "pass": scenes["pass"],
            "size (px)": scenes["height"].astype(str) + " x " + scenes["width"].astype(str),
            "nodata %": 100 * scenes["n_nodata"] / size,
            "NaN/inf px": scenes["n_nonfinite"],
            f"{target} % of valid": 100 * scenes.get("n_building", 0) / scenes["n_valid"].clip(lower=1),
            "labels intersect": scenes.get("intersects", True),
        }
    )
    per_city = (
        stats[stats["scheme"] == "train"]
        .groupby("city")
        .agg(
            fold=("fold", "first"),
            split=("split", "first"),
            tiles=("tile_id", "count"),
            skipped=("skip", "sum"),
            **{f"with_{plural(target)}": ("target_ratio", lambda r: int((r > 0).sum()))},
            mean_target_pct=("target_ratio", lambda r: 100 * r.mean()),
        )
        .reset_index()
    )
    norm_table = pd.DataFrame({"band": list(recipe.bands), "mean": norm.mean, "std": norm.std})
    quality_text = "Not measured (run the `quality` step)."
    if "quality" in dataset.manifest.get("steps_done", []) and dataset.quality_csv.exists():
        quality = pd.read_csv(dataset.quality_csv, dtype={"scene_id": str, "city": str})
        band = dataset.manifest["settings"].get("quality", {}).get("likelihood_band", "vv")
        quality_figure(quality, band, config, out / "label_quality.png")
        cols = (
            ["scene_id", "city"]
            + [c for c in quality.columns if c.startswith("contrast_")]
            + ["shift_rows", "shift_cols", "quality_flag", "quality_reason"]
        )
        quality_text = markdown_table(quality[cols]) + "\n\n![label quality](label_quality.png)"
    quick = "\n".join(f"![{sid}](quicklooks/{sid}.png)" for sid in scenes["scene_id"])
    bands = ", ".join(recipe.bands)
    text = f"""# Prepared dataset report

Dataset: `{dataset.root}`. Classes: 0 {background}, 1 {target}. Band recipe `{recipe.name}`: {bands} ({recipe.units}).
{len(scenes)} scenes, {scenes["city"].nunique()} cities, {len(stats)} tiles ({int(stats["skip"].sum())} skipped).

## Scenes
{markdown_table(scene_table)}

Nodata pixels (nodata values, NaN or infinite backscatter) are ignored (mask 255); NaN/inf pixels are counted
separately above.

![nodata fraction per scene](nodata.png)

## Tiles and folds (train tiling)
{markdown_table(per_city)}

![target ratio per city](target_ratio.png)

## Backscatter of {plural(target)} vs {background}
![histograms](histograms.png)

## Label quality
Contrast (dB) of the backscatter inside the label polygons against the pixels around them, and the label
shift (rows, columns) that best matches the image; flagged acquisitions can be left out of training with
`data.exclude_flagged=true`.

{quality_text}

## Normalisation ({norm.source})
{markdown_table(norm_table)}

## Quicklooks
{quick}
"""
    write_text_atomic(out / "report.md", text)
    return out / "report.md"
