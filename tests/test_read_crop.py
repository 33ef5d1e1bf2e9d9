"""Training crops made while reading a tile: same pixels and the same crop distribution as albumentations'
crop of the whole tile, only the crop read; every other pipeline untouched."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from unosat.data import UnosatDataModule
from unosat.data.tile_dataset import TileDataset
from unosat.data.transforms import ReadCrop, compose, split_read_crop, starts_with_random_crop


def test_a_leading_always_applied_crop_is_split_off() -> None:
    flips = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    crop, rest = split_read_crop(compose([A.RandomCrop(48, 40), *flips], seed=1))
    assert crop == ReadCrop(48, 40, random=True)
    assert [type(t) for t in rest.transforms] == [A.HorizontalFlip, A.VerticalFlip]
    assert rest.seed == 1
    crop, rest = split_read_crop(compose([A.CenterCrop(32, 32)]))
    assert crop == ReadCrop(32, 32, random=False) and rest is None


@pytest.mark.parametrize(
    "transforms",
    [
        [A.RandomCrop(48, 48, p=0.5)],  # not always applied
        [A.HorizontalFlip(p=0.5), A.RandomCrop(48, 48)],  # not first
        [A.RandomResizedCrop(size=(48, 48))],  # resizes: not a window
    ],
)
def test_other_pipelines_are_left_whole(transforms) -> None:
    pipeline = compose(transforms)
    assert split_read_crop(pipeline) == (None, pipeline)
    assert not starts_with_random_crop(pipeline)  # nothing for data.crop_foreground to place


def test_only_a_leading_random_read_crop_can_be_placed_around_buildings() -> None:
    assert starts_with_random_crop(compose([A.RandomCrop(48, 48), A.HorizontalFlip(p=0.5)]))
    assert not starts_with_random_crop(compose([A.CenterCrop(48, 48), A.HorizontalFlip(p=0.5)]))
    assert not starts_with_random_crop(compose([]))
    assert not starts_with_random_crop(None)


def test_a_padding_crop_is_split_too_and_no_pipeline_gives_nothing() -> None:
    # padding only matters for tiles smaller than the crop, which keep the whole pipeline (tested below)
    padding = A.RandomCrop(48, 48, pad_if_needed=True, fill=0.0, fill_mask=255)
    crop, rest = split_read_crop(compose([padding, A.Rotate(limit=10)]))
    assert crop == ReadCrop(48, 48, random=True) and [type(t) for t in rest.transforms] == [A.Rotate]
    assert split_read_crop(None) == (None, None)


def test_offsets_cover_every_position_and_centre_like_albumentations() -> None:
    rng = np.random.default_rng(0)
    crop = ReadCrop(3, 2, random=True)
    seen = {crop.offsets(5, 4, rng) for _ in range(400)}
    assert seen == {(r, c) for r in range(3) for c in range(3)}  # 3 x 3 positions, each drawn
    assert crop.offsets(2, 4, rng) is None and crop.offsets(5, 1, rng) is None
    image = np.arange(7 * 10, dtype=np.float32).reshape(7, 10, 1)
    for h, w in ((3, 4), (4, 5), (7, 10)):
        r, c = ReadCrop(h, w, random=False).offsets(7, 10, rng)
        expected = A.CenterCrop(h, w)(image=image)["image"]
        np.testing.assert_array_equal(image[r : r + h, c : c + w], expected)


def _dataset(data_dir, transforms, seed: int = 5) -> TileDataset:
    dm = UnosatDataModule(data_dir, batch_size=1, epoch_length=4, augment=transforms, seed=seed)
    dm.setup("fit")
    return dm.train_dataset


def _full_tile(dataset: TileDataset, index: int) -> tuple[np.ndarray, np.ndarray]:
    image, mask = dataset.read_raw(index)
    return dataset.normalization.apply(image), mask


def test_a_centre_crop_read_alone_equals_the_crop_of_the_whole_tile(tiny_prepared_db) -> None:
    dataset = _dataset(tiny_prepared_db, [A.CenterCrop(40, 24)])
    assert dataset.read_crop == ReadCrop(40, 24, random=False)
    for index in range(len(dataset)):
        image, mask = _full_tile(dataset, index)
        out = A.CenterCrop(40, 24)(image=image, mask=mask)
        item = dataset[index]
        np.testing.assert_array_equal(item["image"].numpy(), out["image"].transpose(2, 0, 1))
        np.testing.assert_array_equal(item["mask"].numpy(), out["mask"])


def test_random_crops_are_windows_of_the_tile_at_many_places_and_replay_per_epoch(tiny_prepared_db) -> None:
    dataset = _dataset(tiny_prepared_db, [A.RandomCrop(24, 24)])
    index = next(i for i in range(len(dataset)) if np.isfinite(dataset.read_raw(i)[0]).all())
    image, mask = _full_tile(dataset, index)
    h, w = mask.shape
    dataset.set_epoch(0)
    places = []
    for _ in range(30):
        item = dataset[index]
        crop = item["image"].numpy().transpose(1, 2, 0)
        found = [
            (r, c)
            for r in range(h - 23)
            for c in range(w - 23)
            if np.array_equal(image[r : r + 24, c : c + 24], crop)
        ]
        assert len(found) == 1, "a read crop is exactly one window of the normalised tile"
        r, c = found[0]
        np.testing.assert_array_equal(item["mask"].numpy(), mask[r : r + 24, c : c + 24])
        places.append((r, c))
    assert len(set(places)) >= 20  # (h - 23) x (w - 23) positions, drawn uniformly
    dataset.set_epoch(0)
    again = [dataset[index]["image"] for _ in range(3)]
    dataset.set_epoch(0)
    assert all(np.array_equal(a.numpy(), dataset[index]["image"].numpy()) for a in again)


def test_a_tile_smaller_than_the_crop_is_padded_by_the_pipeline(tiny_prepared_db) -> None:
    pad = A.RandomCrop(600, 600, pad_if_needed=True, fill=0.0, fill_mask=255)
    dataset = _dataset(tiny_prepared_db, [pad, A.HorizontalFlip(p=0.0)])
    item = dataset[0]
    image, mask = _full_tile(dataset, 0)
    assert item["image"].shape[1:] == (600, 600)
    # the whole tile is inside, the rest is the pipeline's padding (ignored labels)
    assert int((item["mask"] != 255).sum()) == int((mask != 255).sum())
    assert dataset.read_cropped(0) is None
