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
    dm = UnosatDataModule(data_dir, batch_size=1, num_workers=num_workers, epoch_length=8, augment=augment, seed=3)
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
