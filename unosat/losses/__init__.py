"""Segmentation losses: cross-entropy with safe label smoothing, soft Jaccard, their combination, focal,
Lovasz-softmax, a weighted sum of any of them, GSCNN's dual-task loss."""

from unosat.losses.combined import CrossEntropyJaccardLoss
from unosat.losses.cross_entropy import SmoothedCrossEntropy
from unosat.losses.edges import edge_targets
from unosat.losses.focal import FocalLoss
from unosat.losses.gscnn import GSCNNLoss
from unosat.losses.jaccard import SoftJaccardLoss
from unosat.losses.lovasz import LovaszSoftmaxLoss
from unosat.losses.weighted_sum import WeightedSumLoss

__all__ = [
    "CrossEntropyJaccardLoss",
    "FocalLoss",
    "GSCNNLoss",
    "LovaszSoftmaxLoss",
    "SmoothedCrossEntropy",
    "SoftJaccardLoss",
    "WeightedSumLoss",
    "edge_targets",
]
