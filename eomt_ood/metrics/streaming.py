"""Streaming metrics with the torchmetrics contract: `BinaryHistogram` and `ConfusionMatrix`.

State is declared once and reduced by `sum`, so instances on different processes or GPUs merge exactly and
memory does not grow with the data. The formulas live in the numpy modules `histogram` and `segmentation`
(which never import torch, so scoring stays light); this module only holds the torch state.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

from eomt_ood.metrics.histogram import NUM_LEVELS, _check_pair, binary_histograms, curve_metrics
from eomt_ood.metrics.segmentation import _check_labels, _count_pairs, iou_per_class, mean_iou

# Streaming metrics bin CPU tensors with numpy; tests switch this off to exercise the torch path used on GPUs.
_NUMPY_ON_CPU = True


class BinaryHistogram(Metric):
    """Streaming histogram of a binary problem over integer score levels (torchmetrics contract).

    States ``pos`` and ``neg``: (num_levels,) int64 counts, reduced by sum, so instances on different processes
    or GPUs merge exactly and memory is constant. **Higher level = more likely positive.**

    - ``update(levels, target)``: levels, any shape, integer in [0, num_levels); target, same shape, bool,
      True = positive.
    - ``update_counts(pos, neg)``: add precomputed (num_levels,) histograms (e.g. ``np.bincount`` per image).
    - ``compute()``: ``{"auroc", "auprc", "fpr95"}`` as `curve_metrics` (FPR95: lower is better, hence
      ``higher_is_better = None``).
    - ``counts()``: the states as numpy int64 arrays, e.g. for `ece` or `curves`.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    pos: torch.Tensor
    neg: torch.Tensor

    def __init__(self, num_levels: int = NUM_LEVELS, **kwargs):
        super().__init__(**kwargs)
        if num_levels < 1:
            raise ValueError(f"num_levels must be positive, got {num_levels}")
        self.num_levels = int(num_levels)
        self.add_state("pos", default=torch.zeros(self.num_levels, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("neg", default=torch.zeros(self.num_levels, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, levels: torch.Tensor, target: torch.Tensor) -> None:
        levels, target = torch.as_tensor(levels), torch.as_tensor(target)
        if levels.shape != target.shape:
            raise ValueError(
                f"levels and target differ in shape: {tuple(levels.shape)} vs {tuple(target.shape)}"
            )
        if levels.dtype.is_floating_point or levels.dtype.is_complex or levels.dtype == torch.bool:
            raise ValueError(f"levels must be an integer tensor, got {levels.dtype}")
        if target.dtype != torch.bool:
            raise ValueError(f"target must be a bool tensor (True = positive), got {target.dtype}")
        if levels.numel() == 0:
            return
        device = self.pos.device
        if _NUMPY_ON_CPU and device.type == "cpu":
            # numpy's bincount is about 10x faster than torch's on CPU.
            pos, neg = binary_histograms(
                levels.detach().cpu().numpy(), target.detach().cpu().numpy(), self.num_levels
            )
            self._add_counts(pos, neg)
            return
        levels = levels.reshape(-1).to(device=device, dtype=torch.int64)
        target = target.reshape(-1).to(device=device)
        low, high = torch.aminmax(levels)
        if int(low) < 0 or int(high) >= self.num_levels:
            raise ValueError(
                f"levels must lie in [0, {self.num_levels}), got values in [{int(low)}, {int(high)}]"
            )
        # One bincount over (level, target) pairs: index 2k counts negatives, 2k + 1 positives at level k.
        both = torch.bincount(levels * 2 + target, minlength=2 * self.num_levels).view(self.num_levels, 2)
        self.neg += both[:, 0]
        self.pos += both[:, 1]

    def update_counts(self, pos: torch.Tensor | np.ndarray, neg: torch.Tensor | np.ndarray) -> None:
        pos, neg = _check_pair(pos, neg)
        if pos.shape[0] != self.num_levels:
            raise ValueError(f"expected histograms of {self.num_levels} levels, got {pos.shape[0]}")
        self._add_counts(pos, neg)

    def _add_counts(self, pos: np.ndarray, neg: np.ndarray) -> None:
        if self.pos.device.type == "cpu":
            # In place through numpy views of the CPU states: a torch add of 65536 elements goes through the
            # intra-op thread pool, which costs milliseconds per call on a busy machine.
            np.add(self.pos.numpy(), pos, out=self.pos.numpy())
            np.add(self.neg.numpy(), neg, out=self.neg.numpy())
        else:
            self.pos += torch.from_numpy(pos).to(self.pos.device)
            self.neg += torch.from_numpy(neg).to(self.neg.device)

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(pos, neg): copies of the states as (num_levels,) numpy int64 arrays.

        These are this process's counts; `compute` syncs across processes first (wrap a call in
        ``metric.sync_context()`` to read the merged counts under distributed training).
        """
        return (
            self.pos.detach().cpu().numpy().astype(np.int64, copy=True),
            self.neg.detach().cpu().numpy().astype(np.int64, copy=True),
        )

    def compute(self) -> dict[str, float]:
        pos, neg = self.counts()
        return curve_metrics(pos, neg)


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
