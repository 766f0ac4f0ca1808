"""Metrics: binary histograms (AUROC/AUPRC/FPR95/ECE) and segmentation confusion/IoU (docs/metrics.md).

`histogram` and `segmentation` are numpy only; `streaming` holds the torchmetrics classes (`BinaryHistogram`,
`ConfusionMatrix`) and is imported on first use, so scoring never pays for importing torch.
"""

from eomt_ood.metrics.histogram import (
    NUM_LEVELS,
    EmptyClassError,
    binary_histograms,
    curve_metrics,
    curves,
    ece,
    hmean,
    level_bin_edges,
    reliability,
)
from eomt_ood.metrics.segmentation import confusion_matrix, iou_per_class, mean_iou

_STREAMING = ("BinaryHistogram", "ConfusionMatrix")


def __getattr__(name: str):
    if name in _STREAMING:
        from eomt_ood.metrics import streaming

        return getattr(streaming, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
