"""Semantic segmentation metrics: confusion matrix, per-class IoU, mIoU (docs/metrics.md §6).

One confusion matrix pooled over all pixels of a set (never an average of per-image values). Rows are ground
truth, columns are predictions. Matrices of images, workers and GPUs merge by addition.
"""

from __future__ import annotations

import math

import numpy as np


def _check_labels(name: str, labels: np.ndarray, num_classes: int, also_allowed: str = "") -> None:
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer class ids, got dtype {labels.dtype}")
    if labels.size == 0:
        return
    # For unsigned inputs the minimum cannot be negative; skip that pass over the data.
    low = 0 if labels.dtype.kind == "u" else int(labels.min())
    high = int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{name}: class ids must lie in 0..{num_classes - 1}{also_allowed}, got values in {low}..{high}"
        )


def _count_pairs(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts of (gt, pred) pairs; values already checked to lie in 0..C-1."""
    # bincount needs intp indices anyway; astype copies, so the in-place ops build the index in one allocation.
    index = gt.astype(np.intp).ravel()
    index *= num_classes
    index += pred.ravel()
    cm = np.bincount(index, minlength=num_classes * num_classes)
    return cm.astype(np.int64, copy=False).reshape(num_classes, num_classes)


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int = 19) -> np.ndarray:
    """(C, C) int64 confusion matrix, ``cm[g, p]`` = number of pixels with GT class g predicted as p.

    gt, pred: integer arrays of equal (any) shape, already restricted to the scored pixels (void removed by the
    caller). Every value must lie in 0..C-1, else ValueError (programmer error: callers validate user data
    with a user-facing message first).
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred differ in shape: {gt.shape} vs {pred.shape}")
    _check_labels("gt", gt, num_classes)
    _check_labels("pred", pred, num_classes)
    return _count_pairs(gt, pred, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """(C,) float64 IoU per class: ``cm[c,c] / (row_c + col_c - cm[c,c])``.

    NaN (0/0) where class c occurs neither in the GT nor in the prediction; 0 for a class that is only predicted
    (or only in the GT).
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {cm.shape}")
    cm = cm.astype(np.float64)
    hits = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - hits
    with np.errstate(divide="ignore", invalid="ignore"):
        return hits / union


def mean_iou(cm: np.ndarray) -> float:
    """Mean of the non-NaN entries of `iou_per_class`; NaN if every class is NaN (empty matrix)."""
    iou = iou_per_class(cm)
    present = iou[~np.isnan(iou)]
    return float(present.mean()) if present.size else math.nan
