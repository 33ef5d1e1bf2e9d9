"""What prediction reads: raw VV/VH scenes, or the band stacks of a prepared dataset.

``input`` is a directory. If it holds a prepared dataset's ``dataset.json`` its band stacks are read (a
checkpoint's band recipe must then equal the dataset's); otherwise it holds raw scenes, found as
``prepare.py`` finds them (``discovery`` config), and each checkpoint's own recipe is computed from VV and
VH. (VH and VV themselves, what an exported ONNX graph takes, are also taken back from any prepared stack
that holds both.) Either way a scene is read by windows on its own grid (CRS and transform of the input files), as
:class:`PixelBlock`: the valid-pixel mask and, for a band recipe, the ``(bands, rows, cols)`` float32 stack
with NaN at nodata.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from unosat.bands import BandRecipe, polarisations_to_stack, valid_pixels
from unosat.errors import UnosatError
from unosat.io.provenance import file_identity
from unosat.io.raster import Grid, gdal_env, open_raster, read_window
from unosat.prepared import PreparedDataset
from unosat.raw_input import RawInput
from unosat.scenes import DiscoveryConfig, Scene, check_scene_units, discover_scenes, scene_grid, scene_nodata


@dataclass(frozen=True)
class InputScene:
    """One acquisition to predict.

    ``kind`` is ``raw`` (``scene.sources`` give the VH and VV files, read in ``raw.units`` with the nodata
    values ``vh_nodata`` / ``vv_nodata``: the raw-input settings plus each file's own tag) or ``prepared``
    (``bands_path`` is the band stack, whose recipe is ``recipe``). ``label_dirs`` are where the city's label
    vectors are looked for (the raw directory).
    """

    scene: Scene
    kind: str
    grid: Grid
    bands_path: Path | None = None
    recipe: BandRecipe | None = None
    raw: RawInput = RawInput()
    vh_nodata: tuple[float, ...] = ()
    vv_nodata: tuple[float, ...] = ()
    label_dirs: tuple[Path, ...] = field(default=())

    @property
    def scene_id(self) -> str:
        return self.scene.scene_id

    @property
    def city(self) -> str:
        return self.scene.city

    def identity(self) -> dict:
        """What identifies the pixels read (file names and sizes, band recipe or nodata rules)."""
        if self.kind == "prepared":
            return {
                "kind": "prepared",
                "bands": file_identity(self.bands_path),
                "recipe": self.recipe.to_dict(),
            }
        return {
            "kind": "raw",
            "units": self.raw.units,
            "nodata": {"vh": list(self.vh_nodata), "vv": list(self.vv_nodata)},
            "sources": {
                pol: {**file_identity(p), "band": b} for pol, (p, b) in sorted(self.scene.sources.items())
            },
        }

    def quicklook_source(self) -> tuple[Path, int, str]:
        """``(path, band, units)`` of the VV backscatter, for quicklooks."""
        if self.kind == "prepared":
            if "vv" in self.recipe.bands:
                return self.bands_path, self.recipe.bands.index("vv") + 1, self.recipe.units
            return self.bands_path, 1, self.recipe.units
        path, band = self.scene.sources.get("vv") or self.scene.sources["vh"]
        return path, band, self.raw.units

    @contextlib.contextmanager
    def open(self) -> Iterator[SceneReader]:
        """A reader of this scene's windows (GDAL's block cache bounded, see :func:`gdal_env`)."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(gdal_env())
            if self.kind == "prepared":
                src = stack.enter_context(open_raster(self.bands_path))
                yield PreparedReader(self, src)
            else:
                srcs = {
                    pol: stack.enter_context(open_raster(path))
                    for pol, (path, _) in self.scene.sources.items()
                }
                yield RawReader(self, srcs)


class PixelBlock:
    """Pixels of a scene: ``valid`` ``(rows, cols)`` and band stacks for recipes."""

    valid: np.ndarray

    def bands(self, recipe: BandRecipe) -> np.ndarray:
        """``(recipe.count, rows, cols)`` float32, NaN where not valid."""
        raise NotImplementedError

    def take(self, rows: np.ndarray, cols: np.ndarray) -> PixelBlock:
        """The block of pixels ``[rows[i], cols[j]]`` (integer indices into this block)."""
        raise NotImplementedError


class SceneReader:
    """Reads windows of one scene (inside its grid)."""

    def __init__(self, scene: InputScene):
        self.scene = scene

    def read(self, window: Window) -> PixelBlock:
        raise NotImplementedError


class _RawBlock(PixelBlock):
    def __init__(self, vh: np.ndarray, vv: np.ndarray, scene: InputScene):
        self.vh, self.vv, self.scene = vh, vv, scene
        self.valid = valid_pixels(vh, vv, scene.vh_nodata, scene.vv_nodata)

    def bands(self, recipe: BandRecipe) -> np.ndarray:
        # only the polarisations the recipe needs: the same stack (and nodata) as prepare.py makes
        vh, vv = (a if p in recipe.needs() else None for p, a in (("vh", self.vh), ("vv", self.vv)))
        stack, _, _ = polarisations_to_stack(
            vh, vv, recipe, self.scene.vh_nodata, self.scene.raw.units, self.scene.vv_nodata
        )
        return stack

    def take(self, rows: np.ndarray, cols: np.ndarray) -> PixelBlock:
        index = np.ix_(rows, cols)
        return _RawBlock(*(a[index] if a is not None else None for a in (self.vh, self.vv)), self.scene)


class RawReader(SceneReader):
    """VH and VV files of a raw scene -> any band recipe."""

    def __init__(self, scene: InputScene, srcs: dict):
        super().__init__(scene)
        self.srcs = srcs

    def read(self, window: Window) -> PixelBlock:
        pols = {}
        for pol, (_, band) in self.scene.scene.sources.items():
            pols[pol] = read_window(self.srcs[pol], window, band).astype(np.float32, copy=False)
        return _RawBlock(pols.get("vh"), pols.get("vv"), self.scene)


class _PreparedBlock(PixelBlock):
    def __init__(self, stack: np.ndarray, scene: InputScene):
        self.stack, self.scene = stack, scene
        # prepared stacks are NaN in every band at nodata; a non-finite value in any band (NaN, +-inf) is nodata
        self.valid = np.isfinite(stack).all(axis=0)
        if not self.valid.all():
            self.stack = np.where(self.valid, stack, np.float32(np.nan))

    def bands(self, recipe: BandRecipe) -> np.ndarray:
        differ = recipe.differences(self.scene.recipe)
        if differ and set(recipe.bands) <= {"vh", "vv"} and {"vh", "vv"} <= set(self.scene.recipe.bands):
            # only the polarisations (an exported ONNX graph's input): taken back from the stack
            vh, vv = self.scene.recipe.polarisations(self.stack)
            return recipe.compute(vh, vv)
        if differ:
            raise UnosatError(
                f"{self.scene.bands_path}: holds bands of recipe '{self.scene.recipe.name}', not "
                f"'{recipe.name}' ({'; '.join(differ)})"
            )
        return self.stack

    def take(self, rows: np.ndarray, cols: np.ndarray) -> PixelBlock:
        return _PreparedBlock(self.stack[(slice(None), *np.ix_(rows, cols))], self.scene)


class PreparedReader(SceneReader):
    """The band stack of a prepared dataset's scene (only its own recipe)."""

    def __init__(self, scene: InputScene, src):
        super().__init__(scene)
        self.src = src

    def read(self, window: Window) -> PixelBlock:
        return _PreparedBlock(read_window(self.src, window).astype(np.float32, copy=False), self.scene)


class ArrayReader(SceneReader):
    """A band stack held in memory, ``(bands, rows, cols)`` float32 with NaN at nodata, on ``grid`` (e.g. to
    predict an array from a notebook, or in tests)."""

    def __init__(self, stack: np.ndarray, recipe: BandRecipe, grid: Grid | None = None):
        from rasterio.transform import Affine

        stack = np.asarray(stack, dtype=np.float32)
        if stack.ndim != 3 or stack.shape[0] != recipe.count:
            raise UnosatError(
                f"ArrayReader: expected a ({recipe.count}, rows, cols) stack for recipe "
                f"'{recipe.name}', got shape {stack.shape}"
            )
        grid = grid or Grid(None, Affine.identity(), stack.shape[2], stack.shape[1])
        scene = Scene("array", "00AAA", "00000000", None, None, {})
        super().__init__(InputScene(scene, "prepared", grid, recipe=recipe))
        self.stack = stack

    def read(self, window: Window) -> PixelBlock:
        (r0, r1), (c0, c1) = window.toranges()
        return _PreparedBlock(self.stack[:, r0:r1, c0:c1], self.scene)


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class Selection:
    """Which scenes of the input: ``cities`` (None: all), and for a prepared dataset ``split``
    (``train``/``test``) and ``fold`` (an integer)."""

    cities: tuple[str, ...] | None = None
    split: str | None = None
    fold: int | None = None

    def to_dict(self) -> dict:
        return {
            "cities": list(self.cities) if self.cities is not None else None,
            "split": self.split,
            "fold": self.fold,
        }


def input_kind(path: Path) -> str:
    """``prepared`` when ``path`` holds a prepared dataset's manifest, else ``raw``."""
    return "prepared" if PreparedDataset(path).exists() else "raw"


def find_inputs(
    input_dir: Path | str, selection: Selection, discovery: DiscoveryConfig, raw: RawInput | None = None
) -> tuple[str, list[InputScene]]:
    """``(kind, scenes)`` to predict under ``input_dir``, sorted by city then scene id.

    Raw scenes are read with the raw-input settings ``raw`` (default: ``discovery``'s), their files' values
    checked against its units (``discovery.units_check``). Raises :class:`UnosatError` when ``input_dir`` is
    missing or empty, when the selection matches nothing (naming what there is), when a scene's VV and VH
    files are not on one grid, or when a file's values contradict the units.
    """
    input_dir = Path(input_dir).expanduser()
    if not input_dir.is_dir():
        raise UnosatError(f"input {input_dir} does not exist or is not a directory")
    kind = input_kind(input_dir)
    if kind == "prepared":
        scenes = _prepared_scenes(PreparedDataset(input_dir), selection)
    else:
        if selection.split is not None or selection.fold is not None:
            raise UnosatError(
                f"dataset_split/fold select scenes of a prepared dataset; {input_dir} holds raw scenes "
                "(no dataset.json): use cities=[...] instead"
            )
        found = discover_scenes(input_dir, discovery)
        chosen = _select_cities(found, selection.cities, input_dir)
        raw = raw or discovery.raw_input()
        scenes = []
        for s in chosen:
            grid = scene_grid(s)
            check_scene_units(s, raw, discovery.units_check)
            vh_nodata, vv_nodata = scene_nodata(s, raw)
            scenes.append(
                InputScene(
                    s,
                    "raw",
                    grid,
                    raw=raw,
                    vh_nodata=vh_nodata,
                    vv_nodata=vv_nodata,
                    label_dirs=(input_dir.resolve(),),
                )
            )
    return kind, scenes


def _select_cities(scenes: Sequence[Scene], cities: Sequence[str] | None, where: Path) -> list[Scene]:
    if cities is None:
        return list(scenes)
    wanted = list(cities)
    chosen = [s for s in scenes if s.city in wanted]
    if not chosen:
        have = sorted({s.city for s in scenes})
        raise UnosatError(
            f"no scene of cities {wanted} in {where}; it holds {have} (cities=null predicts all)"
        )
    return chosen


def _prepared_scenes(dataset: PreparedDataset, selection: Selection) -> list[InputScene]:
    dataset.require("scenes.csv", "bands")
    table = dataset.scenes()
    if table.empty:
        raise UnosatError(f"{dataset.root} lists no scene in scenes.csv")
    recipe = dataset.recipe
    raw_dir = Path(dataset.manifest.get("raw_dir", ""))
    raw = dataset.raw_input()
    if selection.split is not None or selection.fold is not None:
        dataset.require("statistics.csv")
        stats = dataset.statistics()
        keep = stats
        if selection.split is not None:
            keep = keep[keep["split"] == selection.split]
        if selection.fold is not None:
            keep = keep[keep["fold"].astype(int) == int(selection.fold)]
        if keep.empty:
            have = sorted(
                {(r.split, int(r.fold)) for r in stats[["split", "fold"]].drop_duplicates().itertuples()}
            )
            raise UnosatError(
                f"{dataset.root}: no scene in split {selection.split!r} / fold {selection.fold!r}; "
                f"its (split, fold) pairs are {have}"
            )
        table = table[table["scene_id"].isin(set(keep["scene_id"]))]
    scenes = []
    for rec in table.to_dict("records"):
        scene = Scene(
            rec["city"],
            rec["mgrs"],
            rec["date"],
            rec["time"] or None,
            rec["pass"] or None,
            {p: (Path(rec[f"{p}_path"]), int(rec[f"{p}_band"])) for p in ("vh", "vv") if rec[f"{p}_path"]},
        )
        path = dataset.bands_path(rec["scene_id"])
        with open_raster(path) as src:
            grid = Grid.of(src)
            if src.count != recipe.count:
                raise UnosatError(
                    f"{path}: {src.count} bands, but {dataset.manifest_path} says recipe "
                    f"'{recipe.name}' has {recipe.count}"
                )
        scenes.append(
            InputScene(
                scene,
                "prepared",
                grid,
                bands_path=path,
                recipe=recipe,
                raw=raw,
                label_dirs=(raw_dir,) if str(raw_dir) else (),
            )
        )
    scenes = (
        [s for s in scenes if s.scene.city in selection.cities] if selection.cities is not None else scenes
    )
    if not scenes:
        cities = sorted(set(table["city"])) if not table.empty else []
        raise UnosatError(f"{dataset.root}: no scene matches {selection.to_dict()} (its cities: {cities})")
    return sorted(scenes, key=lambda s: (s.city, s.scene_id))
