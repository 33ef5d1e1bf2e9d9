"""Serving prepared tiles to training: dataset, weighted sampler, transforms, the LightningDataModule."""

from unosat.data.datamodule import UnosatDataModule
from unosat.data.sampler import DistributedWeightedSampler, tile_weights
from unosat.data.tile_dataset import TileDataset, TileReader

__all__ = ["DistributedWeightedSampler", "TileDataset", "TileReader", "UnosatDataModule", "tile_weights"]
