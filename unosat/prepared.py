"""The on-disk layout of a prepared dataset, shared by preparation, the data module and prediction.

::

    <out_dir>/
      dataset.json         settings it was made with: band recipe, classes, tiling, split, steps done
      scenes.csv           one row per scene: identity, raw files, grid, valid/nodata/NaN pixel counts
      bands/<scene_id>.tif band stack, float32, NaN = nodata, pixel-interleaved and uncompressed
      masks/<scene_id>.tif uint8 mask: 0 background, 1 building, 255 ignore (image nodata)
      tiles.csv            tile index: scene, scheme (train/test), window, map bounds
      statistics.csv       tile index + per-band statistics, target and nodata ratios, fold, skip flag
      normalization.json   per-band mean/std over the training tiles (valid pixels)
      quality.csv          label quality per acquisition: contrast, best shift, flags (step ``quality``)
      report/              EDA report (report.md and figures)
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import pandas as pd

from unosat.bands import BandRecipe, Normalization
from unosat.errors import UnosatError
from unosat.io.provenance import digest, stored_params
from unosat.io.raster import open_raster
from unosat.raw_input import RawInput

FORMAT = "unosat-prepared-dataset"
FORMAT_VERSION = 1


class PreparedDataset:
    """Paths and readers of a prepared dataset rooted at ``root``."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    # ----------------------------------------------------------------- paths
    @property
    def manifest_path(self) -> Path:
        return self.root / "dataset.json"

    @property
    def scenes_csv(self) -> Path:
        return self.root / "scenes.csv"

    @property
    def tiles_csv(self) -> Path:
        return self.root / "tiles.csv"

    @property
    def statistics_csv(self) -> Path:
        return self.root / "statistics.csv"

    @property
    def normalization_json(self) -> Path:
        return self.root / "normalization.json"

    @property
    def quality_csv(self) -> Path:
        return self.root / "quality.csv"

    @property
    def bands_dir(self) -> Path:
        return self.root / "bands"

    @property
    def masks_dir(self) -> Path:
        return self.root / "masks"

    @property
    def scene_stats_dir(self) -> Path:
        """Per-scene partial statistics (merged into statistics.csv)."""
        return self.root / "stats"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def bands_path(self, scene_id: str) -> Path:
        return self.bands_dir / f"{scene_id}.tif"

    def mask_path(self, scene_id: str) -> Path:
        return self.masks_dir / f"{scene_id}.tif"

    # --------------------------------------------------------------- readers
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    @cached_property
    def manifest(self) -> dict:
        if not self.manifest_path.is_file():
            raise UnosatError(self._not_prepared(["dataset.json"]))
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise UnosatError(f"{self.manifest_path}: not valid JSON ({err})") from None
        if manifest.get("format") != FORMAT:
            raise UnosatError(f"{self.manifest_path}: not a unosat prepared dataset manifest")
        return manifest

    @property
    def recipe(self) -> BandRecipe:
        return BandRecipe.from_dict(self.manifest["recipe"])

    def raw_input(self) -> RawInput:
        """The raw-input settings (units, nodata) the band stacks were made with (``settings.discovery``)."""
        return RawInput.from_dict(self.manifest.get("settings", {}).get("discovery", {}))

    def scenes(self) -> pd.DataFrame:
        self.require("scenes.csv")
        return pd.read_csv(
            self.scenes_csv,
            dtype={"scene_id": str, "city": str, "date": str, "time": str, "pass": str, "mgrs": str},
            keep_default_na=False,
        )

    def statistics(self) -> pd.DataFrame:
        """``statistics.csv``, every value checked (see :func:`read_statistics`)."""
        self.require("statistics.csv")
        return read_statistics(self.statistics_csv)

    def normalization(self) -> Normalization:
        self.require("normalization.json")
        return Normalization.from_dict(json.loads(self.normalization_json.read_text()))

    def require(self, *names: str) -> None:
        """Raise :class:`UnosatError` saying what is missing (and how to make it) unless all ``names`` exist.

        ``names`` are file names relative to the root, or ``bands``/``masks`` for every scene's rasters.
        """
        missing = []
        for name in names:
            if name in ("bands", "masks"):
                directory = self.bands_dir if name == "bands" else self.masks_dir
                ids = self.manifest.get("scenes", [])
                lacking = [i for i in ids if not (directory / f"{i}.tif").is_file()]
                if lacking or not ids:
                    missing.append(f"{name}/ ({len(lacking)} of {len(ids)} scenes missing)")
            elif not (self.root / name).exists():
                missing.append(name)
        if missing:
            raise UnosatError(self._not_prepared(missing))

    def _not_prepared(self, missing: list[str]) -> str:
        return (
            f"{self.root} is not a complete prepared dataset: missing {', '.join(missing)}. "
            f"Prepare it with: python prepare.py raw_dir=<your raw scenes> out_dir={self.root}"
        )


def read_table(path: Path | str) -> pd.DataFrame:
    """Read a tile/scene table written by preparation, with identity columns kept as strings."""
    return pd.read_csv(
        path,
        dtype={
            "scene_id": str,
            "city": str,
            "mgrs": str,
            "date": str,
            "time": str,
            "pass": str,
            "scheme": str,
            "split": str,
        },
        keep_default_na=False,
    )


#: columns of ``statistics.csv`` that hold text; ``BOOLEAN_COLUMNS`` hold True/False; every other is a number
TEXT_COLUMNS = ("tile_id", "scene_id", "city", "mgrs", "date", "time", "pass", "scheme", "split")
BOOLEAN_COLUMNS = ("constant", "skip", "quality_flag")
#: per-band statistics are empty for a tile without a valid pixel
BAND_STATISTIC_SUFFIXES = ("_min", "_max", "_mean", "_std")
REQUIRED_STATISTICS = (
    "tile_id",
    "scene_id",
    "city",
    "scheme",
    "row_off",
    "col_off",
    "height",
    "width",
    "n_valid",
    "target_ratio",
    "fold",
    "split",
    "skip",
)
BOOLEAN_TEXT = {"true": True, "false": False, "1": True, "0": False}


def read_statistics(path: Path | str) -> pd.DataFrame:
    """``statistics.csv`` with numbers as numbers and flags as booleans.

    Raises :class:`UnosatError` naming the file and the first bad line (line 1 is the header) for bytes that
    are not text, a row with too many or too few fields, a cell that is not a number where one is expected,
    or a flag (``skip``, ``constant``, ``quality_flag``) other than True/False.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        bad_at = raw.index(b"\x00") if b"\x00" in raw else None
    except UnicodeDecodeError as err:
        bad_at = err.start
    if bad_at is not None:
        line = raw[:bad_at].count(b"\n") + 1
        raise UnosatError(
            f"{path}: line {line} is not text (binary or corrupted bytes); "
            "run python prepare.py steps=[stats] overwrite=true to remake it"
        )
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnosatError(f"{path}: not a readable table ({reason})") from None
    missing = [c for c in REQUIRED_STATISTICS if c not in table.columns]
    if missing:
        raise UnosatError(f"{path}: no column {missing}; run python prepare.py steps=[stats] to remake it")
    width = len(table.columns)
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.rstrip("\r\n").count(",") + 1
            if line.strip() and fields != width and '"' not in line:
                raise UnosatError(
                    f"{path}: line {number} has {fields} fields, the header {width} (a truncated or "
                    "damaged row)"
                )

    def fail(index, column: str, problem: str):
        tile = table.at[index, "tile_id"]
        raise UnosatError(f"{path}: line {index + 2} (tile {tile}): column '{column}' {problem}")

    out = table.copy()
    for column in table.columns:
        values = table[column].str.strip()
        if column in TEXT_COLUMNS:
            continue
        if column in BOOLEAN_COLUMNS:
            parsed = values.str.lower().map(BOOLEAN_TEXT)
            bad = parsed.isna()
            if bad.any():
                index = bad.idxmax()
                fail(index, column, f"is {table.at[index, column]!r}, not True or False")
            out[column] = parsed.astype(bool)
            continue
        numbers = pd.to_numeric(values, errors="coerce")
        may_be_empty = column.endswith(BAND_STATISTIC_SUFFIXES)
        bad = numbers.isna() & ~(values.eq("") & may_be_empty) | numbers.isin([float("inf"), float("-inf")])
        if bad.any():
            index = bad.idxmax()
            fail(index, column, f"is {table.at[index, column]!r}, not a finite number")
        out[column] = numbers
    for column in ("row_off", "col_off", "height", "width", "n_valid", "fold"):
        if column in out.columns:
            whole = out[column] == out[column].round()
            if not whole.all():
                fail(
                    (~whole).idxmax(),
                    column,
                    f"is {table.at[(~whole).idxmax(), column]!r}, not a whole number",
                )
            out[column] = out[column].astype(int)
    return out


# Whether a prepared dataset's files all describe the recipe its ``dataset.json`` records.
#
# Training reads ``dataset.json`` (recipe, tiling), ``statistics.csv`` and ``normalization.json`` (the
# normalisation), the band stacks and the masks. They are made by different steps; a dataset in which one of
# them was made from another recipe (a step redone by hand, files copied between datasets, an interrupted
# run) would train silently on wrongly normalised tiles. :func:`check_consistency` refuses it, naming the
# file and what disagrees.

#: the steps whose outputs training reads
TRAINING_STEPS = ("bands", "labels", "tiles", "stats")


def check_consistency(dataset: PreparedDataset, steps: tuple[str, ...] = TRAINING_STEPS) -> None:
    """Raise :class:`UnosatError` ``<file>: <problem>`` unless the outputs of ``steps`` agree with the recipe
    recorded in ``dataset.json``: every step done, ``normalization.json``'s bands and units, the statistics'
    band columns, each band stack's band count and recorded recipe, each mask and each scene's statistics
    made from the stack that is there now."""
    manifest = dataset.manifest
    recipe = dataset.recipe
    where = f"{dataset.root}: prepare it again with python prepare.py out_dir={dataset.root} overwrite=true"
    missing = [s for s in steps if s not in manifest.get("steps_done", [])]
    if missing:
        raise UnosatError(
            f"{dataset.manifest_path}: step(s) {missing} are not done (an interrupted or partial "
            f"preparation); run python prepare.py out_dir={dataset.root} steps=[{','.join(missing)}]"
        )
    if "stats" in steps:
        norm = json.loads(dataset.normalization_json.read_text())
        if (
            list(norm.get("bands", recipe.bands)) != list(recipe.bands)
            or norm.get("units", recipe.units) != recipe.units
            or len(norm.get("mean", [])) != recipe.count
        ):
            raise UnosatError(
                f"{dataset.normalization_json}: holds the normalisation of bands {norm.get('bands')} "
                f"({norm.get('units')}), but the dataset's recipe '{recipe.name}' has bands "
                f"{list(recipe.bands)} ({recipe.units}); {where}"
            )
        header = dataset.statistics_csv.open(errors="replace").readline().strip().split(",")
        lacking = [f"{b}_mean" for b in recipe.bands if f"{b}_mean" not in header]
        if lacking:
            raise UnosatError(
                f"{dataset.statistics_csv}: no column {lacking} for the recipe '{recipe.name}' "
                f"(bands {list(recipe.bands)}); {where}"
            )
    for scene_id in manifest.get("scenes", []):
        stack_path = dataset.bands_path(scene_id)
        with open_raster(stack_path) as src:
            count = src.count
        stack_params = stored_params(stack_path) or {}
        if count != recipe.count or stack_params.get("recipe") != recipe.to_dict():
            made = stack_params.get("recipe", {}).get("name", "an unrecorded recipe")
            raise UnosatError(
                f"{stack_path}: holds {count} band(s) of recipe '{made}', but {dataset.manifest_path.name} "
                f"records recipe '{recipe.name}' ({recipe.count} bands: {', '.join(recipe.bands)}); {where}"
            )
        made_from = {"bands": digest(stack_params)}
        mask_path = dataset.mask_path(scene_id)
        checks = []
        if "labels" in steps:
            checks.append((mask_path, "mask", ("bands",)))
            made_from["labels"] = digest(stored_params(mask_path) or {})
        if "stats" in steps:
            checks.append((dataset.scene_stats_dir / f"{scene_id}.json", "statistics", ("bands", "labels")))
        for path, what, keys in checks:
            params = stored_params(path) if path.exists() else None
            for key in keys:
                if params is not None and key in made_from and params.get(key) != made_from[key]:
                    source = stack_path.name if key == "bands" else f"masks/{mask_path.name}"
                    raise UnosatError(
                        f"{path}: this {what} was made from another {key} file than {source} "
                        f"(recipe '{recipe.name}'); {where}"
                    )
