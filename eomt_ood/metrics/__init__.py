"""Metrics: streaming binary histograms (AUROC/AUPRC/FPR95/ECE) and segmentation confusion/IoU (bravo.md §4)."""

from eomt_ood.metrics.histogram import (
    NUM_LEVELS,
    BinaryHistogram,
    EmptyClassError,
    binary_histograms,
    curve_metrics,
    curves,
    ece,
    hmean,
    level_bin_edges,
    reliability,
)
from eomt_ood.metrics.segmentation import ConfusionMatrix, confusion_matrix, iou_per_class, mean_iou

__all__ = [
    "NUM_LEVELS",
    "BinaryHistogram",
    "ConfusionMatrix",
    "EmptyClassError",
    "binary_histograms",
    "confusion_matrix",
    "curve_metrics",
    "curves",
    "ece",
    "hmean",
    "iou_per_class",
    "level_bin_edges",
    "mean_iou",
    "reliability",
]
