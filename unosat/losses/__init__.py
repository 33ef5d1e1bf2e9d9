"""Segmentation losses: cross-entropy with safe label smoothing, soft Jaccard, their combination."""

from unosat.losses.combined import CrossEntropyJaccardLoss
from unosat.losses.cross_entropy import SmoothedCrossEntropy
from unosat.losses.jaccard import SoftJaccardLoss

__all__ = ["CrossEntropyJaccardLoss", "SmoothedCrossEntropy", "SoftJaccardLoss"]
