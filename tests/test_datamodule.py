"""The data module: augmentation streams across DataLoader workers and epochs, validation pixels counted once."""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch

from unosat.data import UnosatDataModule


def _one_tile_module(data_dir, num_workers: int) -> UnosatDataModule:
    """A data module whose sampler draws only the first training tile, cropped at random (48 of 64 px) and
    flipped: two items are equal only if their augmentations are."""
    augment = [A.RandomCrop(48, 48), A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    dm = UnosatDataModule(
        data_dir, batch_size=1, num_workers=num_workers, epoch_length=8, augment=augment, seed=3
    )
    dm.setup("fit")
    dm.weights = np.eye(1, len(dm.train_dataset))[0]  # weight 1 for tile 0, 0 for the others
    return dm


def _epoch(loader, epoch: int) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch)  # what Lightning does before each epoch
    batches = list(loader)
    assert all(int(b["index"]) == 0 for b in batches)
    return [b["image"][0] for b in batches]


def test_two_workers_draw_different_augmentations_and_epochs_do_not_repeat(tiny_prepared_db):
    torch.manual_seed(0)  # the workers' base seed comes from torch's generator (train.py seeds it)
    dm = _one_tile_module(tiny_prepared_db, num_workers=2)
    loader = dm.train_dataloader()
    first, second = _epoch(loader, 0), _epoch(loader, 1)
    # worker 0 makes items 0, 2, 4, 6 and worker 1 items 1, 3, 5, 7: with one random state copied into both
    # workers, item 2k equalled item 2k+1 (same tile, same crop and flips), and epoch 1 replayed epoch 0
    pairs_equal = [torch.equal(first[2 * k], first[2 * k + 1]) for k in range(4)]
    assert not all(pairs_equal)
    assert not all(torch.equal(a, b) for a, b in zip(first, second))
    # 8 draws of 17 x 17 crop positions x 4 flips: almost surely at least 6 distinct items per epoch
    assert len({tuple(x.flatten()[:64].tolist()) for x in first}) >= 6
    # and it is reproducible: the same seeds give the same epoch 0
    torch.manual_seed(0)
    again = _epoch(_one_tile_module(tiny_prepared_db, num_workers=2).train_dataloader(), 0)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_main_process_epochs_do_not_repeat(tiny_prepared_db):
    loader = _one_tile_module(tiny_prepared_db, num_workers=0).train_dataloader()
    first, second = _epoch(loader, 0), _epoch(loader, 1)
    assert not all(torch.equal(a, b) for a, b in zip(first, second))


def _times_counted(dataset) -> dict[str, np.ndarray]:
    """Per scene, how many times each pixel is a valid (scored) pixel of some tile of ``dataset``."""
    from unosat.prepared import PreparedDataset

    layout = PreparedDataset(dataset.reader.layout.root)
    counts: dict[str, np.ndarray] = {}
    for i, row in dataset.tiles.iterrows():
        sid = row["scene_id"]
        if sid not in counts:
            import rasterio

            with rasterio.open(layout.mask_path(sid)) as src:
                counts[sid] = np.zeros((src.height, src.width), dtype=np.int64)
        _, mask = dataset.read_raw(i)
        r, c, h, w = int(row["row_off"]), int(row["col_off"]), int(row["height"]), int(row["width"])
        counts[sid][r : r + h, c : c + w] += mask != 255
    return counts


def test_validation_counts_every_valid_pixel_once(tiny_prepared_db):
    once = UnosatDataModule(tiny_prepared_db, seed=0)
    once.setup("fit")
    twice = UnosatDataModule(tiny_prepared_db, seed=0, count_once=False)
    twice.setup("fit")
    counted, before = _times_counted(once.val_dataset), _times_counted(twice.val_dataset)
    # the tiny demo's 64 px tiles overlap by at least 8 px: without ownership those pixels counted 2 or 4 times
    assert max(int(c.max()) for c in before.values()) >= 2
    for sid, count in counted.items():
        assert count.max() == 1, sid
        # and no valid pixel is lost: counted once wherever some tile saw it valid
        np.testing.assert_array_equal(count, (before[sid] > 0).astype(np.int64))


def test_an_overlap_is_split_at_its_middle():
    from unosat.data.tile_dataset import owned_pixels

    # tiles 0 and 1 of one row, 64 px wide, overlapping by 16 columns (48..63): 8 columns each
    owned0 = owned_pixels((0, 0, 64, 64), [(0, 48, 64, 64)], 0, np.array([1]))
    owned1 = owned_pixels((0, 48, 64, 64), [(0, 0, 64, 64)], 1, np.array([0]))
    assert owned0[:, :56].all() and not owned0[:, 56:].any()
    assert owned1[:, 8:].all() and not owned1[:, :8].any()


def test_evaluation_shares_under_ddp_are_not_padded():
    from torch.utils.data import DistributedSampler

    from unosat.data.sampler import UnpaddedDistributedSampler

    data = list(range(5))
    shares = [list(UnpaddedDistributedSampler(data, 2, r)) for r in (0, 1)]
    assert shares == [[0, 2, 4], [1, 3]] and sorted(shares[0] + shares[1]) == data
    assert [len(UnpaddedDistributedSampler(data, 2, r)) for r in (0, 1)] == [3, 2]
    # torch's sampler pads: 6 tiles seen, tile 0 twice
    padded = [i for r in (0, 1) for i in DistributedSampler(data, 2, r, shuffle=False)]
    assert len(padded) == 6
