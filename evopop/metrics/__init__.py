"""Metrics of evaluation sets."""

from .base import Metric
from .saliency import SaliencyMetric, fbeta_adaptive, fbeta_curve, mae

__all__ = ["Metric", "SaliencyMetric", "fbeta_adaptive", "fbeta_curve", "mae"]
