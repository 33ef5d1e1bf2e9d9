"""Classical baselines every learned model is compared with, as networks predict.py can run.

Each baseline is fitted on the training cities of a prepared dataset and exported as a unosat checkpoint
(:mod:`unosat.baselines.export`), so it is scored by exactly the same sliding-window prediction, city
aggregation, vectorisation and evaluation as a trained model, on exactly the same pixels:

- :class:`~unosat.baselines.vv_threshold_net.VVThresholdNet`: one global threshold on VV (dB), chosen on the
  training tiles by :func:`unosat.training.baseline.vv_threshold_baseline` (the baseline every training run
  reports);
- :class:`~unosat.baselines.pixel_classifier.PixelLogisticRegression`: a per-pixel logistic regression on
  the bands and their local means and standard deviations at a few window sizes (the settlement-mapping
  classic), fitted with scikit-learn (:func:`~unosat.baselines.pixel_classifier.fit_pixel_classifier`).
"""

from unosat.baselines.pixel_classifier import PixelLogisticRegression
from unosat.baselines.vv_threshold_net import VVThresholdNet

__all__ = ["PixelLogisticRegression", "VVThresholdNet"]
