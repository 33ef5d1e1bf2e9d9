"""``UnosatDataModule``: the tiles of a prepared dataset, split by city folds, for Lightning.

- train: train-scheme tiles of ``train_folds`` (default: every training fold but the validation ones),
  skipped tiles excluded, drawn by :class:`~unosat.data.sampler.DistributedWeightedSampler`;
- val: train-scheme tiles of ``val_folds`` (default: the last training fold, i.e. one held-out city);
- test: the test cities' tiles (``test_scheme``, default their constant-stride test tiles).

Normalisation is the pooled mean/std of the training tiles' valid pixels (from the statistics table,
without reading pixels) unless fixed values are configured.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from unosat.bands import BandRecipe, Normalization, pooled_normalization
from unosat.classes import IGNORE_INDEX
from unosat.classes import class_names as class_names_checked
from unosat.data.sampler import DistributedWeightedSampler, UnpaddedDistributedSampler, tile_weights
from unosat.data.tile_dataset import TileDataset, seed_worker
from unosat.data.transforms import SpeckleNoise, compose, starts_with_random_crop
from unosat.errors import UnosatError
from unosat.prepared import PreparedDataset, check_consistency

log = logging.getLogger(__name__)


class UnosatDataModule(pl.LightningDataModule):
    """Serves a prepared dataset (see :mod:`unosat.prepared`) to a Lightning Trainer.

    Args:
        dir: the prepared dataset.
        train_folds / val_folds: fold indices (one per city, see ``statistics.csv``); None: defaults above.
        test_scheme: tiling of the test split, ``test`` (constant stride) or ``train``.
        batch_size, val_batch_size, num_workers, pin_memory, persistent_workers: DataLoader settings.
        epoch_length: training tiles drawn per epoch (all ranks together); None: the number of train tiles.
        sampling: ``{without_buildings: 0.7, with_buildings: 0.3, bins: null, bin_weights: null}``, see
            :func:`~unosat.data.sampler.tile_weights`.
        augment: albumentations transforms for training (crop, flips, rot90...); ``val_augment`` for
            validation and test (e.g. a centre crop), usually none.
        speckle: optional :class:`~unosat.data.transforms.SpeckleNoise` for training.
        crop_px: side (px) of the random training crops that the ``augment=...`` configs make; recorded in
            the checkpoint's data recipe (None: not a crop-based pipeline).
        crop_foreground: probability that a training crop is placed around a building pixel of its tile
            instead of uniformly (foreground oversampling, see :class:`~unosat.data.tile_dataset.TileDataset`);
            used when ``augment`` starts with an always-applied ``RandomCrop`` (with another pipeline it is
            ignored, with a warning). 0: uniform crops.
        normalization: ``dataset`` (pooled over the training tiles) or ``{mean: [...], std: [...]}`` in the
            stack's units (e.g. the original's linear/5: mean 0, std 5).
        exclude_flagged: drop tiles of acquisitions flagged by the label-quality step (``quality_flag``).
        demo_dir: when ``dir`` is a folder of ``demo_dir`` and missing, it is prepared on first use from
            the demo's raw scenes (generated if needed).
        prepare_overrides: extra ``prepare.py`` overrides used for that (e.g. ``bands=db``).
        seed: seed of the sampler and the augmentations.
        count_once: validation and test tiles overlap (train-scheme tiles by at least ``train_min_overlap``):
            each tile scores only the pixels it owns (nearest tile centre, see
            :func:`~unosat.data.tile_dataset.owned_pixels`), so every valid pixel counts once. Under DDP the
            evaluation tiles are shared out without padding (:class:`~unosat.data.sampler.UnpaddedDistributedSampler`).
            False for a whole-tile target (the tile classifier's centre crops).
        class_names: ``[background, target]`` (``classes.names``); must be what the dataset was prepared with
            (``dataset.json`` ``classes``); None: ``[background, building]``. Recorded in the data recipe.
    """

    def __init__(
        self,
        dir: str | Path,
        train_folds: Sequence[int] | None = None,
        val_folds: Sequence[int] | None = None,
        test_scheme: str = "test",
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        epoch_length: int | None = None,
        sampling: Mapping | None = None,
        augment: Sequence | None = None,
        val_augment: Sequence | None = None,
        speckle: SpeckleNoise | None = None,
        crop_px: int | None = None,
        crop_foreground: float = 0.0,
        normalization: str | Mapping = "dataset",
        exclude_flagged: bool = False,
        demo_dir: str | Path | None = None,
        prepare_overrides: Sequence[str] = (),
        seed: int = 0,
        count_once: bool = True,
        class_names: Sequence[str] | None = None,
    ):
        super().__init__()
        self.dir = Path(dir).expanduser()
        self.layout = PreparedDataset(self.dir)
        self.train_folds = list(train_folds) if train_folds is not None else None
        self.val_folds = list(val_folds) if val_folds is not None else None
        self.test_scheme = test_scheme
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.epoch_length = epoch_length
        self.sampling = dict(sampling or {})
        self.augment = list(augment or [])
        self.val_augment = list(val_augment or [])
        self.speckle = speckle
        self.crop_px = None if crop_px is None else int(crop_px)
        self.crop_foreground = float(crop_foreground)
        self.normalization_config = normalization
        self.exclude_flagged = exclude_flagged
        self.demo_dir = Path(demo_dir).expanduser() if demo_dir else None
        self.prepare_overrides = list(prepare_overrides)
        self.seed = int(seed)
        self.count_once = bool(count_once)
        self.class_names = class_names_checked(class_names, "data.class_names")
        self._ready = False

    # ------------------------------------------------------------ preparation
    def prepare_data(self) -> None:
        """Prepare the demo dataset if it is the one asked for and it is missing (runs on one process)."""
        if self.layout.statistics_csv.exists():
            return
        if self.demo_dir is not None and self.dir.resolve().parent == self.demo_dir.resolve():
            from unosat.config import compose_config
            from unosat.prepare import run as prepare

            log.info("preparing the demo dataset in %s (first use)", self.dir)
            prepare(
                compose_config(
                    "prepare",
                    [
                        f"paths.demo_dir={self.demo_dir}",
                        f"out_dir={self.dir}",
                        f"classes.names=[{','.join(self.class_names)}]",
                        *self.prepare_overrides,
                    ],
                )
            )

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        self.layout.require("statistics.csv", "bands", "masks")
        if self.layout.manifest.get("settings", {}).get("labels", {}).get("source") == "none":
            raise UnosatError(
                f"{self.dir} was prepared without labels (labels=none): its scenes serve prediction "
                "(python predict.py input=<raw scenes>), not training; prepare them with labels=vector "
                "or labels=raster to train"
            )
        check_consistency(self.layout)  # every file describes the recorded recipe
        recorded = class_names_checked(
            self.layout.manifest.get("classes"), f"{self.layout.manifest_path} classes"
        )
        if recorded != self.class_names:
            raise UnosatError(
                f"{self.layout.manifest_path}: the dataset was prepared with classes {list(recorded)}, "
                f"not {list(self.class_names)}; train with classes.names=[{','.join(recorded)}], or "
                f"rename them: python prepare.py out_dir={self.dir} classes.names="
                f"[{','.join(self.class_names)}] steps=[report]"
            )
        stats = self.layout.statistics()
        self.recipe: BandRecipe = self.layout.recipe
        self.tile_size = int(self.layout.manifest["settings"]["tiling"]["train_size"])
        train_stats = stats[stats["split"] == "train"]
        cities_of = train_stats.groupby("fold")["city"].agg(lambda c: sorted(set(c))).to_dict()
        available = sorted(int(f) for f in cities_of)
        if not available:
            raise UnosatError(f"{self.dir}: no training city (every city is a test city)")
        val = self.val_folds if self.val_folds is not None else available[-1:]
        train = self.train_folds if self.train_folds is not None else [f for f in available if f not in val]
        for name, folds in (("data.val_folds", val), ("data.train_folds", train)):
            unknown = [f for f in folds if f not in cities_of]
            if unknown:
                listing = ", ".join(f"{f}: {'/'.join(c)}" for f, c in cities_of.items())
                raise UnosatError(
                    f"{name}: fold(s) {unknown} name no city in {self.dir}; its folds are {{{listing}}}"
                )
        if not train:
            raise UnosatError(f"data.train_folds is empty (available folds {available}, val_folds {val})")
        overlap = sorted(set(train) & set(val))
        if overlap:
            log.warning("folds %s are used for both training and validation", overlap)
        self.folds = {"train": train, "val": list(val)}

        usable = stats[~stats["skip"].astype(bool)]
        if self.exclude_flagged:
            if "quality_flag" not in usable.columns:
                raise UnosatError(
                    f"data.exclude_flagged=true but {self.dir} has no label-quality flags: "
                    "run python prepare.py steps=[quality,stats] on it first"
                )
            usable = usable[~usable["quality_flag"].astype(bool)]
        in_train = usable[(usable["scheme"] == "train") & (usable["split"] == "train")]
        self.train_tiles = in_train[in_train["fold"].isin(train)].reset_index(drop=True)
        self.val_tiles = in_train[in_train["fold"].isin(val)].reset_index(drop=True)
        self.test_tiles = usable[
            (usable["split"] == "test") & (usable["scheme"] == self.test_scheme)
        ].reset_index(drop=True)
        if self.train_tiles.empty or self.val_tiles.empty:
            raise UnosatError(f"{self.dir}: no usable tile in train folds {train} or val folds {val}")

        self.normalization = self._normalization(self.train_tiles)
        if self.speckle is not None:
            self.recipe.polarisation_indices()  # the noise needs VH and VV in the stack
        train_tf = compose(self.augment, seed=self.seed)
        foreground_p = self.crop_foreground
        if foreground_p > 0 and not starts_with_random_crop(train_tf):
            log.warning(
                "data.crop_foreground=%s is not used: the training augmentations (data.augment) do not start "
                "with an always-applied albumentations.RandomCrop, so there is no random crop to place "
                "around buildings (set data.crop_foreground=0 to silence this)",
                foreground_p,
            )
            foreground_p = 0.0
        val_tf = compose(self.val_augment, seed=self.seed)
        self.train_dataset = TileDataset(
            self.dir,
            self.train_tiles,
            self.recipe,
            self.normalization,
            train_tf,
            self.speckle,
            seed=self.seed,
            foreground_p=foreground_p,
        )
        self.val_dataset = TileDataset(
            self.dir,
            self.val_tiles,
            self.recipe,
            self.normalization,
            val_tf,
            seed=self.seed,
            count_once=self.count_once,
        )
        self.test_dataset = TileDataset(
            self.dir,
            self.test_tiles,
            self.recipe,
            self.normalization,
            val_tf,
            seed=self.seed,
            count_once=self.count_once,
        )
        self.weights = tile_weights(self.train_tiles["target_ratio"], **self.sampling)
        log.info(
            "tiles: train %d (folds %s), val %d (folds %s), test %d; normalisation %s",
            len(self.train_tiles),
            train,
            len(self.val_tiles),
            list(val),
            len(self.test_tiles),
            self.normalization,
        )
        self._ready = True

    def _normalization(self, train_tiles: pd.DataFrame) -> Normalization:
        cfg = self.normalization_config
        if isinstance(cfg, str):
            if cfg != "dataset":
                raise UnosatError(
                    f"data.normalization must be 'dataset' or {{mean: [...], std: [...]}}, got '{cfg}'"
                )
            folds = sorted(int(f) for f in train_tiles["fold"].unique())
            return pooled_normalization(
                train_tiles, self.recipe.bands, source=f"train tiles of folds {folds}"
            )
        mean, std = list(cfg["mean"]), list(cfg["std"])
        if len(mean) == 1 and len(std) == 1:
            mean, std = mean * self.recipe.count, std * self.recipe.count
        if len(mean) != self.recipe.count:
            raise UnosatError(
                f"data.normalization has {len(mean)} values but the dataset has {self.recipe.count} bands"
            )
        return Normalization(tuple(mean), tuple(std), source="config")

    def data_recipe(self) -> dict:
        """What prediction needs to rebuild the model's input: bands, normalisation, tile size, classes, and
        the raw-input settings the dataset was prepared with (units, nodata; :mod:`unosat.raw_input`)."""
        return {
            "recipe": self.recipe.to_dict(),
            "raw_input": self.layout.raw_input().to_dict(),
            "normalization": self.normalization.to_dict(),
            "tile_size": self.tile_size,
            "crop_px": self.crop_px,
            "classes": list(self.class_names),
            "ignore_index": IGNORE_INDEX,
            "dataset": str(self.dir.resolve()),
            "folds": self.folds,
        }

    # ------------------------------------------------------------ dataloaders
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, dataset, batch_size: int, sampler, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=False,
            worker_init_fn=seed_worker if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        self.train_dataset.rank = rank
        sampler = DistributedWeightedSampler(
            self.train_dataset,
            self.weights,
            self.epoch_length or len(self.train_dataset),
            num_replicas=world,
            rank=rank,
            seed=self.seed,
        )
        return self._loader(self.train_dataset, self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        if len(self.test_dataset) == 0:
            raise UnosatError(f"{self.dir} has no test tiles (scheme '{self.test_scheme}' of test cities)")
        return self._eval_loader(self.test_dataset)

    def _eval_loader(self, dataset) -> DataLoader:
        world, rank = self._world()
        sampler = UnpaddedDistributedSampler(dataset, world, rank) if world > 1 else None
        return self._loader(dataset, self.val_batch_size, sampler)
