"""Metrics: two-sample statistics for testing samplers against a known distribution, and the
sample-quality statistics of generated images on the features of a network.

- :mod:`.twosample` — energy distance, MMD, null calibration, moment checks (samplers vs truth).
- :mod:`.frechet` — the Fréchet distance ("FID") of two feature sets, from their means and covariances.
- :mod:`.kernel_distance` — the Kernel Inception Distance with its standard error.
- :mod:`.knn_manifolds` — k-NN precision and recall.
- :mod:`.quality` — :func:`sample_quality`: all of them with their nulls, in one call.
- :mod:`.digits` — the built-in feature network for the 8x8 digits (trained here, cached on disk).
- :mod:`.classes` — :func:`class_accuracy`: a classifier's accuracy on conditional samples.
"""
from .classes import ClassAccuracy, class_accuracy
from .digits import DigitsClassifier, digits_classifier, digits_features
from .frechet import GaussianStats, feature_statistics, frechet_distance
from .kernel_distance import KIDResult, kid
from .knn_manifolds import PrecisionRecall, precision_recall
from .quality import SampleQuality, sample_quality
from .twosample import MomentErrors, calibrate_threshold, energy_distance, mmd, moment_errors, null_distribution

__all__ = [
    "energy_distance", "mmd", "null_distribution", "calibrate_threshold", "MomentErrors", "moment_errors",
    "frechet_distance", "feature_statistics", "GaussianStats", "kid", "KIDResult", "precision_recall",
    "PrecisionRecall", "sample_quality", "SampleQuality", "digits_classifier", "digits_features", "DigitsClassifier",
    "class_accuracy", "ClassAccuracy",
]
