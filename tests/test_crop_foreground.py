"""Foreground oversampling (``data.crop_foreground``): a read-time random crop placed around a target pixel.

The crop contains the drawn pixel anywhere inside it that the tile's edges allow; tiles without a target fall
back to a uniform crop; 0 keeps the uniform crops' random stream unchanged; a pipeline without a leading random
crop cannot use the option (the datamodule leaves it out with a warning)."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from unosat.config import compose_config
from unosat.data import UnosatDataModule
from unosat.data.tile_dataset import TileDataset
from unosat.data.transforms import ReadCrop, compose
from unosat.errors import UnosatError


def test_a_crop_around_a_pixel_holds_it_at_every_place_the_tile_allows() -> None:
    rng = np.random.default_rng(0)
    crop = ReadCrop(4, 3, random=True)
    # away from the edges: the pixel (6, 5) of a 12 x 10 tile falls at each of the crop's 4 x 3 places
    seen = {crop.offsets_around(6, 5, 12, 10, rng) for _ in range(600)}
    assert seen == {(6 - dr, 5 - dc) for dr in range(4) for dc in range(3)}
    # at the edges the crop stays inside the tile and still holds the pixel
    for row, col in ((0, 0), (11, 9), (0, 9), (11, 0), (2, 8)):
        for _ in range(50):
            r0, c0 = crop.offsets_around(row, col, 12, 10, rng)
            assert 0 <= r0 <= 12 - 4 and 0 <= c0 <= 10 - 3
            assert r0 <= row < r0 + 4 and c0 <= col < c0 + 3
    assert {crop.offsets_around(0, 0, 12, 10, rng) for _ in range(50)} == {(0, 0)}
    assert crop.offsets_around(1, 1, 3, 10, rng) is None  # tile smaller than the crop


def _dataset(data_dir, p: float, crop: int = 24, seed: int = 5) -> TileDataset:
    dm = UnosatDataModule(
        data_dir,
        batch_size=1,
        epoch_length=4,
        augment=[A.RandomCrop(crop, crop), A.HorizontalFlip(p=0.5)],
        crop_foreground=p,
        seed=seed,
    )
    dm.setup("fit")
    return dm.train_dataset


def _target_pixels(mask: np.ndarray) -> int:
    return int(((mask > 0) & (mask != 255)).sum())


def test_every_crop_of_a_tile_with_buildings_holds_one_at_p_1(tiny_prepared_db) -> None:
    dataset = _dataset(tiny_prepared_db, 1.0, crop=16)
    with_target = [i for i in range(len(dataset)) if _target_pixels(dataset.read_raw(i)[1]) > 0]
    assert with_target, "the tiny demo has tiles with buildings"
    dataset.set_epoch(0)
    for index in with_target:
        for _ in range(10):
            assert _target_pixels(dataset[index]["mask"].numpy()) > 0
    # uniform crops of the same size miss the buildings in some draws: the option changes what is drawn
    uniform = _dataset(tiny_prepared_db, 0.0, crop=16)
    uniform.set_epoch(0)
    counts = [_target_pixels(uniform[i]["mask"].numpy()) for i in with_target for _ in range(10)]
    assert min(counts) == 0


def test_a_tile_without_target_gets_a_uniform_crop(tiny_prepared_db, monkeypatch) -> None:
    dataset = _dataset(tiny_prepared_db, 1.0)
    empty = np.zeros_like(dataset.read_raw(0)[1])
    monkeypatch.setattr(dataset.reader, "read_labels", lambda *args: empty)
    assert dataset.foreground_offsets(0) is None
    dataset.set_epoch(0)
    places = {dataset.read_cropped(0)[0].tobytes() for _ in range(20)}
    assert len(places) > 10  # uniform crops at many places, no error


def test_zero_keeps_the_uniform_crops_random_stream(tiny_prepared_db) -> None:
    a, b = _dataset(tiny_prepared_db, 0.0), _dataset(tiny_prepared_db, 0.0)
    a.set_epoch(3)
    b.set_epoch(3)
    h, w = (int(v) for v in a.tiles.loc[0, ["height", "width"]])
    expected = [a.read_crop.offsets(h, w, b.crop_rng) for _ in range(5)]
    full = a.read_raw(0)[0]
    for r0, c0 in expected:
        image, _ = a.read_cropped(0)
        np.testing.assert_array_equal(image, full[r0 : r0 + 24, c0 : c0 + 24])


def test_the_option_needs_a_leading_random_crop_and_a_probability(tiny_prepared_db, caplog) -> None:
    # the dataset refuses it without a random crop to place; the datamodule (a user's data.augment without
    # a crop, e.g. data.augment=[]) leaves it out and says so
    flips = compose([A.HorizontalFlip(p=0.5)])
    dm = UnosatDataModule(tiny_prepared_db, augment=[A.HorizontalFlip(p=0.5)], crop_foreground=0.5)
    dm.setup("fit")
    with pytest.raises(UnosatError, match="crop_foreground.*RandomCrop"):
        TileDataset(tiny_prepared_db, dm.train_tiles, dm.recipe, dm.normalization, flips, foreground_p=0.5)
    for augment in ([A.HorizontalFlip(p=0.5)], [A.CenterCrop(24, 24)], []):
        caplog.clear()
        dm = UnosatDataModule(tiny_prepared_db, augment=augment, crop_foreground=0.5, epoch_length=4)
        with caplog.at_level("WARNING", logger="unosat.data.datamodule"):
            dm.setup("fit")
        assert dm.train_dataset.foreground_p == 0.0
        assert "data.crop_foreground=0.5 is not used" in caplog.text
    with pytest.raises(UnosatError, match=r"crop_foreground must lie in \[0, 1\]"):
        _dataset(tiny_prepared_db, 1.5)


def test_the_config_reaches_the_training_dataset_only(tiny_prepared_db) -> None:
    import hydra

    cfg = compose_config("train", [f"data.dir={tiny_prepared_db}", "data.crop_foreground=0.25"])
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    assert dm.train_dataset.foreground_p == 0.25
    assert dm.val_dataset.foreground_p == 0.0 and dm.test_dataset.foreground_p == 0.0


@pytest.mark.parametrize(
    "overrides",
    [["experiment=unosat_ce"], ["experiment=gscnn"], ["model=tile_classifier"], ["debug=overfit"]],
)
def test_the_original_recipe_the_gate_and_overfit_keep_uniform_crops(overrides) -> None:
    # the original's RandomResizedCrop and overfit's centre crop have no random crop to place; the gate's
    # probabilities must keep the tiles' share of empty windows
    assert compose_config("train", overrides).data.crop_foreground == 0.0
    assert compose_config("train", []).data.crop_foreground > 0.0


def test_worker_processes_place_crops_around_buildings_too(tiny_prepared_db) -> None:
    # the configuration users run may use loader workers: each reseeds its stream and opens the files itself
    dm = UnosatDataModule(
        tiny_prepared_db,
        batch_size=4,
        epoch_length=16,
        num_workers=2,
        augment=[A.RandomCrop(16, 16)],
        crop_foreground=1.0,
        seed=3,
    )
    dm.setup("fit")
    has_target = {
        i: _target_pixels(dm.train_dataset.read_raw(i)[1]) > 0 for i in range(len(dm.train_dataset))
    }
    seen = 0
    for batch in dm.train_dataloader():
        for index, mask in zip(batch["index"].tolist(), batch["mask"].numpy()):
            if has_target[index]:
                assert _target_pixels(mask) > 0
                seen += 1
    assert seen > 0
