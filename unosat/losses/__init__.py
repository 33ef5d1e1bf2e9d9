"""Segmentation losses: cross-entropy with safe label smoothing, soft Jaccard, their combination, GSCNN's dual-task loss."""

from unosat.losses.combined import CrossEntropyJaccardLoss
from unosat.losses.cross_entropy import SmoothedCrossEntropy
from unosat.losses.edges import edge_targets
from unosat.losses.gscnn import GSCNNLoss
from unosat.losses.jaccard import SoftJaccardLoss

__all__ = ["CrossEntropyJaccardLoss", "GSCNNLoss", "SmoothedCrossEntropy", "SoftJaccardLoss", "edge_targets"]
