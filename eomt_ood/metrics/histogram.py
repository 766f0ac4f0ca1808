"""Binary-score metrics computed from level histograms: AUROC, AUPRC, FPR95, ECE (docs/metrics.md §5, §6, §7).

A score is quantised to an integer *level* in ``0 .. num_levels - 1`` (BRAVO: the 16-bit conf level). The data of
a binary problem is then two count arrays, ``pos[k]`` and ``neg[k]``: how many positive and negative pixels sit
at level k. **A higher level means "more likely positive".** Every level is one threshold, so pixels tied at a
level enter the sweep together; this is what the official BRAVO evaluator does and what scikit-learn does on
integer scores.

Histograms of images, workers and GPUs merge by addition, so memory never grows with the data:
`BinaryHistogram` is the streaming (torchmetrics) form, the plain functions take numpy count arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NUM_LEVELS = 65536
"""Number of confidence levels of a 16-bit BRAVO ``_conf.png``."""

FPR95_TPR = 0.95
"""TPR that FPR95 is read at; compared as a float64 literal, exactly 0.95 counts as reached."""


class EmptyClassError(ValueError):
    """A histogram pair without positives or without negatives: no curve metric is defined.

    The message says which side is empty ("no positives" / "no negatives"); callers that know the subset turn
    it into a `UserError` naming it.
    """


def _as_counts(name: str, counts) -> np.ndarray:
    """A 1-D int64 numpy copy-free view of a non-negative count array (programmer errors raise)."""
    if hasattr(counts, "detach"):  # a torch tensor; this module never imports torch itself
        counts = counts.detach().cpu().numpy()
    counts = np.asarray(counts)
    if counts.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D count array, got shape {counts.shape}")
    if counts.dtype.kind not in "iub":
        raise ValueError(f"{name}: expected integer counts, got dtype {counts.dtype}")
    counts = counts.astype(np.int64, copy=False)
    if counts.size and counts.min() < 0:
        raise ValueError(f"{name}: counts must be non-negative")
    return counts


def _check_pair(pos, neg, pos_name: str = "pos", neg_name: str = "neg") -> tuple[np.ndarray, np.ndarray]:
    pos, neg = _as_counts(pos_name, pos), _as_counts(neg_name, neg)
    if pos.shape != neg.shape:
        raise ValueError(f"{pos_name} and {neg_name} differ in length: {pos.shape[0]} vs {neg.shape[0]}")
    return pos, neg


def _sweep(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative counts over the non-empty levels, from the highest level down.

    Returns ``(levels, tp, fp)``, each of length n = number of non-empty levels: ``levels`` descending,
    ``tp[i]`` / ``fp[i]`` = positives / negatives at a level >= ``levels[i]`` (int64). Empty levels only repeat
    a curve point and add nothing to any area, so skipping them changes results by summation order only.
    Raises `EmptyClassError` when there are no positives or no negatives.
    """
    levels = np.flatnonzero(pos + neg)[::-1]
    tp = np.cumsum(pos[levels])
    fp = np.cumsum(neg[levels])
    num_pos = int(tp[-1]) if tp.size else 0
    num_neg = int(fp[-1]) if fp.size else 0
    if num_pos == 0 and num_neg == 0:
        raise EmptyClassError("no positives and no negatives (the histograms are empty)")
    if num_pos == 0:
        raise EmptyClassError("no positives")
    if num_neg == 0:
        raise EmptyClassError("no negatives")
    return levels, tp, fp


def curve_metrics(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC and FPR95 of a histogram pair, exactly as docs/metrics.md §5.

    pos, neg: (L,) integer counts per score level; a **higher level = more likely positive**; all pixels of a
    level form one threshold (ties enter together).

    - ``auroc``: trapezoid rule over the ROC points, starting at the implicit (0, 0). Equals scikit-learn's
      ``roc_auc_score`` (Mann-Whitney U with ties counted 1/2, over P*N).
    - ``auprc``: step integral sum((rec[i] - rec[i-1]) * prec[i]) from recall 0; no interpolation. Equals
      ``average_precision_score`` on the integer levels.
    - ``fpr95``: the FPR at the highest threshold whose TPR (float64 tp / P) is >= 0.95; every negative tied at
      that level is counted (pessimistic). Lower is better.

    Raises `EmptyClassError` if P == 0 ("no positives") or N == 0 ("no negatives").
    """
    pos, neg = _check_pair(pos, neg)
    _, tp, fp = _sweep(pos, neg)
    tpr = tp / tp[-1]
    fpr = fp / fp[-1]
    # Previous point of each segment, the first one being the implicit (0, 0).
    tpr_prev = np.concatenate(([0.0], tpr[:-1]))
    fpr_prev = np.concatenate(([0.0], fpr[:-1]))
    auroc = float(np.sum((fpr - fpr_prev) * (tpr + tpr_prev)) / 2.0)
    # tp + fp > 0 at every non-empty level, so the "precision 1 where nothing is predicted" rule never applies.
    precision = tp / (tp + fp)
    auprc = float(np.sum((tpr - tpr_prev) * precision))
    # tpr[-1] == 1.0, so a level reaching 0.95 always exists.
    fpr95 = float(fpr[np.argmax(tpr >= FPR95_TPR)])
    return {"auroc": auroc, "auprc": auprc, "fpr95": fpr95}


def curves(pos: np.ndarray, neg: np.ndarray, max_points: int | None = None) -> dict[str, np.ndarray]:
    """ROC and PR curve points of a histogram pair, for plots (same sweep as `curve_metrics`).

    pos, neg: (L,) integer counts per level, higher level = more likely positive.
    Returns arrays of equal length n + 1 (n = number of non-empty levels): point i accepts every pixel with
    level >= ``threshold[i]``. Point 0 is the implicit start (nothing accepted): threshold L, fpr = tpr = 0,
    recall 0, precision 1. Keys: ``threshold`` (int64, descending), ``fpr``, ``tpr``, ``recall`` (== tpr),
    ``precision`` (float64). With ``max_points``, at most that many points are kept, evenly spread over the
    sweep, always including the first and the last (enough for a plot; areas must come from `curve_metrics`).
    Raises `EmptyClassError` as `curve_metrics` does.
    """
    pos, neg = _check_pair(pos, neg)
    levels, tp, fp = _sweep(pos, neg)
    tpr = np.concatenate(([0.0], tp / tp[-1]))
    out = {
        "threshold": np.concatenate(([pos.shape[0]], levels)).astype(np.int64),
        "fpr": np.concatenate(([0.0], fp / fp[-1])),
        "tpr": tpr,
        "recall": tpr.copy(),
        "precision": np.concatenate(([1.0], tp / (tp + fp))),
    }
    if max_points is not None:
        if max_points < 2:
            raise ValueError(f"max_points must be at least 2, got {max_points}")
        n = out["fpr"].shape[0]
        if n > max_points:
            keep = np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))
            out = {key: value[keep] for key, value in out.items()}
    return out


def level_bin_edges(num_levels: int = NUM_LEVELS, n_bins: int = 15) -> np.ndarray:
    """(n_bins + 1,) int64 level boundaries ``round(linspace(0, num_levels, n_bins + 1))`` (docs/metrics.md §7).

    Bin b holds levels ``edges[b] .. edges[b + 1] - 1``. With ``c[k] = (k + 0.5) / num_levels`` this is the same
    as binning c into [b / n_bins, (b + 1) / n_bins) for 65536 levels and 15 bins.
    """
    if not 1 <= n_bins <= num_levels:
        raise ValueError(f"n_bins must lie in 1..{num_levels}, got {n_bins}")
    return np.round(np.linspace(0, num_levels, n_bins + 1)).astype(np.int64)


def _bin_sums(correct: np.ndarray, wrong: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    """Per-bin (edges, count T_b, correct count D_b, confidence sum sum t*c) over contiguous level bins."""
    correct, wrong = _check_pair(correct, wrong, "correct", "wrong")
    num_levels = correct.shape[0]
    edges = level_bin_edges(num_levels, n_bins)
    total = correct + wrong
    # Level k stands for confidence (k + 0.5) / L; exact in float64 for L = 65536.
    confidence = (np.arange(num_levels, dtype=np.float64) + 0.5) / num_levels
    # Edges are strictly increasing (n_bins <= L), so reduceat sums exactly the levels of each bin.
    starts = edges[:-1]
    count = np.add.reduceat(total, starts)
    num_correct = np.add.reduceat(correct, starts)
    confidence_sum = np.add.reduceat(total * confidence, starts)
    return edges, count, num_correct, confidence_sum


def reliability(correct: np.ndarray, wrong: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Reliability-diagram data: per-bin mean confidence, accuracy and pixel count (docs/metrics.md §7 binning).

    correct, wrong: (L,) integer counts per confidence level (level k = confidence (k + 0.5) / L).
    Returns (n_bins,) arrays: ``lower`` / ``upper`` (bin confidence edges, edges / L), ``confidence`` (mean
    confidence in the bin), ``accuracy`` (fraction correct), ``count`` (int64 pixels). Empty bins have NaN
    confidence and accuracy.
    """
    edges, count, num_correct, confidence_sum = _bin_sums(correct, wrong, n_bins)
    num_levels = edges[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_confidence = np.where(count > 0, confidence_sum / count, np.nan)
        accuracy = np.where(count > 0, num_correct / count, np.nan)
    return {
        "lower": edges[:-1] / num_levels,
        "upper": edges[1:] / num_levels,
        "confidence": mean_confidence,
        "accuracy": accuracy,
        "count": count.astype(np.int64),
    }


def ece(correct: np.ndarray, wrong: np.ndarray, n_bins: int = 15, float32_weights: bool = True) -> float:
    """Expected calibration error of confidence-level histograms, exactly as docs/metrics.md §7. Lower is better.

    correct, wrong: (L,) integer counts of correctly / wrongly classified pixels per confidence level
    (level k = confidence (k + 0.5) / L). Bins are contiguous levels (`level_bin_edges`); empty bins are dropped.
    ``ECE = sum_b w_b |conf_b - acc_b| / sum_b w_b`` in float64, with ``w_b = float32(float32(T_b) /
    float32(N))`` when ``float32_weights`` (the pinned official evaluator under numpy 1.x) and
    ``w_b = T_b / N`` in float64 otherwise (about 1e-9 apart).
    Raises `EmptyClassError` when there are no pixels at all.
    """
    _, count, num_correct, confidence_sum = _bin_sums(correct, wrong, n_bins)
    total = int(count.sum())
    if total == 0:
        raise EmptyClassError("no pixels (the histograms are empty)")
    filled = count > 0
    count, num_correct, confidence_sum = count[filled], num_correct[filled], confidence_sum[filled]
    gap = np.abs(confidence_sum / count - num_correct / count)
    if float32_weights:
        weight = (count.astype(np.float32) / np.float32(total)).astype(np.float64)
    else:
        weight = count / total
    return float(np.sum(weight * gap) / np.sum(weight))


def hmean(values: Sequence[float]) -> float:
    """Harmonic mean with ``scipy.stats.hmean`` semantics as used by BRAVO (docs/metrics.md §9).

    ``1 / mean(1 / x)``; NaN if any value is NaN or the sequence is empty; 0 if any value is 0 (and none is
    NaN); ValueError for negative values (as the pinned SciPy 1.13; newer SciPy returns NaN instead).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0 or np.isnan(x).any():
        return math.nan
    if (x < 0).any():
        raise ValueError(f"the harmonic mean is defined for non-negative values only, got {x[x < 0][0]}")
    if (x == 0).any():
        return 0.0
    return float(1.0 / np.mean(1.0 / x))


def binary_histograms(
    levels: np.ndarray, target: np.ndarray, num_levels: int = NUM_LEVELS
) -> tuple[np.ndarray, np.ndarray]:
    """Per-level counts of positive and negative pixels: ``(pos, neg)``, each (num_levels,) int64.

    levels: integer array, any shape, values in [0, num_levels) (else ValueError); target: bool array of the
    same shape, True = positive. One ``np.bincount`` over (level, target) pairs.
    """
    levels, target = np.asarray(levels), np.asarray(target)
    if levels.shape != target.shape:
        raise ValueError(f"levels and target differ in shape: {levels.shape} vs {target.shape}")
    if levels.dtype.kind not in "iu":
        raise ValueError(f"levels must be integers, got dtype {levels.dtype}")
    if target.dtype != np.bool_:
        raise ValueError(f"target must be bool (True = positive), got dtype {target.dtype}")
    if levels.size == 0:
        return np.zeros(num_levels, np.int64), np.zeros(num_levels, np.int64)
    low = 0 if levels.dtype.kind == "u" else int(levels.min())
    high = int(levels.max())
    if low < 0 or high >= num_levels:
        raise ValueError(f"levels must lie in [0, {num_levels}), got values in [{low}, {high}]")
    # Index 2k counts negatives at level k, 2k + 1 positives; astype copies, so the in-place ops are safe.
    index = levels.astype(np.intp).ravel()
    index *= 2
    index += target.ravel()
    both = np.bincount(index, minlength=2 * num_levels).astype(np.int64, copy=False).reshape(num_levels, 2)
    return both[:, 1].copy(), both[:, 0].copy()
