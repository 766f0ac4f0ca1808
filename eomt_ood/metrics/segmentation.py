"""Semantic segmentation metrics: confusion matrix, per-class IoU, mIoU (bravo.md §4.2).

One confusion matrix pooled over all pixels of a set (never an average of per-image values). Rows are ground
truth, columns are predictions. Matrices of images, workers and GPUs merge by addition.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics import Metric


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


# Streaming metrics count CPU tensors with numpy; tests switch this off to exercise the torch path used on GPUs.
_NUMPY_ON_CPU = True


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


class ConfusionMatrix(Metric):
    """Streaming (C, C) confusion matrix (torchmetrics contract), rows = GT, cols = pred.

    State ``cm``: (C, C) int64, reduced by sum, so instances merge exactly across processes/GPUs.

    - ``update(pred, target)``: integer tensors of equal (any) shape; pixels where ``target == ignore_index``
      are skipped (their pred is not looked at). Other target values and the pred of scored pixels must lie in
      0..C-1, else ValueError.
    - ``update_counts(cm)``: add a precomputed (C, C) matrix (e.g. from `confusion_matrix`).
    - ``compute()``: ``{"miou": float, "iou": list of C floats (NaN for absent classes)}``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    cm: torch.Tensor

    def __init__(self, num_classes: int = 19, ignore_index: int | None = 255, **kwargs):
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.add_state(
            "cm", default=torch.zeros(num_classes, num_classes, dtype=torch.int64), dist_reduce_fx="sum"
        )

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"pred and target differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
        for name, labels in (("pred", pred), ("target", target)):
            if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
                raise ValueError(f"{name} must be an integer tensor, got {labels.dtype}")
        c = self.num_classes
        allowed = f" (or {self.ignore_index})" if self.ignore_index is not None else ""
        device = self.cm.device
        if _NUMPY_ON_CPU and device.type == "cpu":
            # numpy's bincount is far faster than torch's on CPU.
            pred_np = pred.detach().cpu().numpy().ravel()
            target_np = target.detach().cpu().numpy().ravel()
            if self.ignore_index is not None:
                scored = target_np != self.ignore_index
                if not scored.all():
                    pred_np, target_np = pred_np[scored], target_np[scored]
            _check_labels("target", target_np, c, allowed)
            _check_labels("pred", pred_np, c)
            self.cm += torch.from_numpy(_count_pairs(target_np, pred_np, c))
            return
        pred = pred.reshape(-1).to(device=device, dtype=torch.int64)
        target = target.reshape(-1).to(device=device, dtype=torch.int64)
        if self.ignore_index is not None:
            scored = target != self.ignore_index
            pred, target = pred[scored], target[scored]
        if target.numel() == 0:
            return
        for name, labels in (("target", target), ("pred", pred)):
            low, high = (int(v) for v in torch.aminmax(labels))
            if low < 0 or high >= c:
                extra = allowed if name == "target" else ""
                raise ValueError(
                    f"{name}: class ids must lie in 0..{c - 1}{extra}, got values in {low}..{high}"
                )
        self.cm += torch.bincount(target * c + pred, minlength=c * c).view(c, c)

    def update_counts(self, cm: torch.Tensor | np.ndarray) -> None:
        cm = torch.as_tensor(np.asarray(cm) if not isinstance(cm, torch.Tensor) else cm)
        if cm.shape != self.cm.shape:
            raise ValueError(f"expected a {tuple(self.cm.shape)} matrix, got {tuple(cm.shape)}")
        if cm.dtype.is_floating_point or cm.dtype.is_complex:
            raise ValueError(f"expected integer counts, got {cm.dtype}")
        if cm.numel() and int(cm.min()) < 0:
            raise ValueError("counts must be non-negative")
        self.cm += cm.to(device=self.cm.device, dtype=torch.int64)

    def compute(self) -> dict[str, float | list[float]]:
        cm = self.cm.detach().cpu().numpy()
        return {"miou": mean_iou(cm), "iou": iou_per_class(cm).tolist()}
