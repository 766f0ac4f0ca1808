"""Bootstrap intervals for the BRAVO metrics, from per-image sufficient statistics.

A pooled metric of a subset rests on a few hundred images, so a second draw of images would give another value.
This module says how far: the images of each subset are treated as an i.i.d. sample; a *replicate* draws n of
the subset's n images with replacement (`draw_counts`: how often each image enters, (B, n)), pools their
statistics exactly as the evaluator pools a subset (counts @ per-image statistics) and recomputes every metric
and summary. Subsets are resampled independently, so each is a job of its own (`SubsetJob`, run by
`subset_replicates` anywhere, a worker process included) and `combine` makes the summaries. The interval of a
metric is the percentile interval of its B replicates; the point value stays the official one, computed at
full resolution. The interval covers the choice of images only, not training seeds or anything else that would
change the model. Paired comparison: two runs over the same images use the same draws, and the interval of the
per-replicate difference says whether run A differs from run B beyond image sampling (`paired_differences`).

Input: per subset, an `eomt_ood.metrics.image_stats.ImageSetStatistics` (per-image confusion matrices and
sparse level histograms: the one per-image format of the records, the store and this module).

Official pixel sample (``--samples``): nothing changes here. When the per-image histograms were counted on the
sampled pixels and the confusion matrix on every V pixel (as the evaluator's per-image statistics are), the
sample stays fixed and only images are resampled, which is the intended behaviour.

Speed: up to its last non-linear step every metric is linear in the pooled counts, so all replicates of a
subset come from one matrix product (B, n) @ (n, K) per histogram, taken on per-image running counts at K level
bin starts (so the sweeps need no per-replicate cumulative sum). mIoU and ECE are always exact (19 x 19 and
15-bin sums per image). The curve metrics (AUROC, AUPRC, FPR95) sweep the K bins: one per non-empty level of the
subset when there are at most ``max_bins`` of them (lossless: empty levels add nothing), else about
``max_bins`` quantile bins (equal mass for each histogram the sweeps use, merged, plus the ECE edges). On coarse
bins, ties inside a bin bias AUROC and AUPRC a little; the bias barely varies between replicates, so each
replicate is shifted by (full-resolution point - coarse point), which also keeps the all-ones replicate equal to
the point value. FPR95 is re-swept level by level inside the bin where TPR crosses 0.95, so it stays exact.
`benchmarks/bench_bootstrap.py` measures the time and how far interval bounds move against the lossless
bootstrap (about 7e-5 at the default 1024 bins on 2 MP synthetic statistics, 6e-4 without the shift).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from eomt_ood.metrics.histogram import (
    FPR95_TPR,
    EmptyClassError,
    curve_metrics,
    ece,
    hmean,
    level_bin_edges,
)
from eomt_ood.metrics.image_stats import ImageSetStatistics
from eomt_ood.metrics.segmentation import mean_iou

SEMANTIC_METRICS = (
    "miou_valid",
    "ece_valid",
    "auroc_valid",
    "auprc_success_valid",
    "auprc_error_valid",
    "fpr95_valid",
)
"""Scalar per-subset keys of a semantic subset, official order (`iou_valid` lists are not resampled)."""

OOD_METRICS = ("auroc_ood", "auprc_ood", "fpr95_ood")
"""Per-subset keys of an OOD subset, official order."""

DEFAULT_REPLICATES = 1000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95
DEFAULT_MAX_BINS = 1024
ECE_BINS = 15
_CHUNK_ELEMENTS = 1 << 22  # (replicates x bins) per chunk: 32 MiB per float64 array


# ------------------------------------------------------------------------------------------------ resampling


def draw_counts(
    n_images: int, replicates: int = DEFAULT_REPLICATES, seed: int = DEFAULT_SEED, stream: str = ""
) -> np.ndarray:
    """(replicates, n_images) int64: how often each image enters each replicate; every row sums to n_images.

    Each row is a uniform multinomial draw (n_images draws with replacement). The stream is seeded by
    (seed, crc32(stream)), so a subset's draws depend on its name and size only: two runs over the same images
    get the same draws (paired), and adding a subset does not change the others.
    """
    if n_images < 0 or replicates < 1 or seed < 0:
        raise ValueError(
            f"need n_images >= 0, replicates >= 1, seed >= 0; got {n_images}, {replicates}, {seed}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(stream.encode())]))
    picks = rng.integers(0, max(n_images, 1), size=(replicates, n_images))
    picks += np.arange(replicates)[:, None] * n_images
    return np.bincount(picks.ravel(), minlength=replicates * n_images).reshape(replicates, n_images)


def draw_subsets(
    sizes: Mapping[str, int], replicates: int = DEFAULT_REPLICATES, seed: int = DEFAULT_SEED
) -> dict[str, np.ndarray]:
    """`draw_counts` for every subset: {subset: (replicates, n_subset)}, each stream named by the subset."""
    return {name: draw_counts(n, replicates, seed, stream=name) for name, n in sizes.items()}


# ------------------------------------------------------------------------------------------------ row metrics


def _curve_rows(tp: np.ndarray, fp: np.ndarray, fpr95: bool = True) -> dict[str, np.ndarray]:
    """AUROC, AUPRC (and FPR95) of every row of (b, K) cumulative counts in sweep order.

    tp / fp[r, i]: positives / negatives accepted once the i-th level (bin) of the sweep is in, from the most
    positive level on (exact integers in float64); P = tp[:, -1], N = fp[:, -1]. The definitions of
    `curve_metrics`: AUROC = sum (fp_i - fp_{i-1}) (tp_i + tp_{i-1}) / (2 P N) (trapezoids from (0, 0), ties
    counted 1/2), AUPRC = sum (tp_i - tp_{i-1}) / P * tp_i / (tp_i + fp_i) (step integral), FPR95 = fp_i / N at
    the first level with float64 tp_i / P >= 0.95. Levels empty in a row add nothing; the values equal
    `curve_metrics` up to float64 rounding of the sums (about 1e-16). Rows without positives or negatives give
    NaN. With ``fpr95``, also returns the sweep position ``cross`` of that level and the counts accepted
    before it, for `_refine_fpr95`.
    """
    num_pos, num_neg = tp[:, -1].copy(), fp[:, -1].copy()
    bad = (num_pos == 0) | (num_neg == 0)
    # Where nothing is accepted yet, tp = tp + fp = 0: any finite precision adds nothing.
    precision = tp / np.maximum(tp + fp, 1.0)
    # The first level's segment starts at (0, 0); the rest from the previous level.
    first_roc = fp[:, 0] * tp[:, 0]
    first_pr = tp[:, 0] * precision[:, 0]
    roc = np.sum((fp[:, 1:] - fp[:, :-1]) * (tp[:, 1:] + tp[:, :-1]), axis=1)
    pr = np.sum((tp[:, 1:] - tp[:, :-1]) * precision[:, 1:], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auroc = (first_roc + roc) / (2.0 * num_pos * num_neg)
        auprc = (first_pr + pr) / num_pos
    out = {"auroc": auroc, "auprc": auprc, "bad": bad, "num_pos": num_pos, "num_neg": num_neg}
    if fpr95:
        need = _fpr95_count(num_pos)
        cross = np.zeros(tp.shape[0], dtype=np.int64)
        for row in np.flatnonzero(~bad):  # rows are sorted: one binary search each
            cross[row] = np.searchsorted(tp[row], need[row], side="left")
        rows = np.arange(tp.shape[0])
        with np.errstate(divide="ignore", invalid="ignore"):
            out["fpr95"] = fp[rows, cross] / num_neg
        out["cross"] = cross
        before = np.maximum(cross - 1, 0)
        out["tp_before"] = np.where(cross > 0, tp[rows, before], 0.0)
        out["fp_before"] = np.where(cross > 0, fp[rows, before], 0.0)
    for key in ("auroc", "auprc", "fpr95"):
        if key in out:
            out[key][bad] = np.nan
    return out


def _sweep(below: np.ndarray, descending: bool) -> np.ndarray:
    """(b, K) cumulative counts in sweep order from (b, K + 1) counts below each bin start (last = total).

    descending: the sweep starts at the highest level (score = level), so step i has accepted every bin from
    K - 1 - i up (returned as a reversed view, no copy); else it starts at the lowest level (score = 65535 -
    level) and step i has bins 0 .. i.
    """
    if descending:
        return (below[:, -1:] - below[:, :-1])[:, ::-1]
    return below[:, 1:]


def _fpr95_count(num_pos: np.ndarray) -> np.ndarray:
    """The least integer t with float64 t / P >= 0.95, per P (where P > 0): the TP count where FPR95 is read.

    Division by P is monotone, so "tp / P >= 0.95" (the official test) is "tp >= t"; ceil(0.95 P) is off by
    at most one after rounding, which the two corrections fix.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.ceil(FPR95_TPR * num_pos)
        need = np.where((need - 1) / num_pos >= FPR95_TPR, need - 1, need)
        return np.where(need / num_pos < FPR95_TPR, need + 1, need)


def _ece_rows(total: np.ndarray, correct: np.ndarray, level_sum: np.ndarray, num_levels: int) -> np.ndarray:
    """ECE of every row of (b, 15) bin sums: pixels T_b, correct pixels D_b, and sum t_k (2k + 1) per bin.

    Same operations as `ece` with float32 weights; the bin confidence sum is level_sum / (2 L), exact in
    float64, as the per-level float sum of `ece` is. Rows without pixels give NaN.
    """
    count = total.sum(axis=1)
    filled = total > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        confidence_sum = level_sum / (2.0 * num_levels)
        gap = np.abs(confidence_sum / total - correct / total)
        weight = (total.astype(np.float32) / count.astype(np.float32)[:, None]).astype(np.float64)
        weight = np.where(filled, weight, 0.0)
        gap = np.where(filled, gap, 0.0)
        out = np.sum(weight * gap, axis=1) / np.sum(weight, axis=1)
    out[count == 0] = np.nan
    return out


def _miou_rows(cm: np.ndarray) -> np.ndarray:
    """mIoU of every (C, C) matrix of (b, C, C) float64 counts, as `mean_iou` (NaN classes skipped)."""
    hits = np.diagonal(cm, axis1=1, axis2=2)
    union = cm.sum(axis=1) + cm.sum(axis=2) - hits
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = hits / union
    present = ~np.isnan(iou)
    n_present = present.sum(axis=1)
    total = np.where(present, iou, 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_present > 0, total / n_present, np.nan)


def _hmean_rows(columns: list[np.ndarray], size: int) -> np.ndarray:
    """Harmonic mean across `columns` (each (b,)) with `hmean`'s rules: NaN if any NaN or none, 0 if any 0."""
    if not columns:
        return np.full(size, np.nan)
    x = np.stack(columns, axis=1)
    with np.errstate(divide="ignore"):
        out = 1.0 / np.mean(1.0 / x, axis=1)
    out[(x == 0).any(axis=1)] = 0.0
    out[np.isnan(x).any(axis=1)] = np.nan
    return out


# ------------------------------------------------------------------------------------------------ one subset


def _bin_starts(hists: list[np.ndarray], max_bins: int | None) -> tuple[np.ndarray, bool]:
    """First level of each bin (K,) int64 ascending, and whether the binning is lossless.

    Lossless: one bin per non-empty level of the pooled histograms. Coarse: for each histogram, bins of about
    equal mass (max_bins // len(hists) of them), merged over the histograms, so a small class (errors, OOD
    pixels) is resolved as finely as a large one.
    """
    total = np.sum(hists, axis=0)
    nonempty = np.flatnonzero(total)
    if nonempty.size == 0:
        return np.zeros(1, dtype=np.int64), True
    if max_bins is None or nonempty.size <= max_bins:
        return nonempty.astype(np.int64), True
    per = max(max_bins // len(hists), 1)
    starts = [np.zeros(1, dtype=np.int64)]
    for hist in hists:
        mass = int(hist.sum())
        if mass == 0:
            continue
        cum = np.cumsum(hist)
        targets = mass * np.arange(1, per, dtype=np.float64) / per
        # The bin reaching a target ends at the first level whose cumulative count gets there.
        starts.append(np.searchsorted(cum, targets, side="left").astype(np.int64) + 1)
    merged = np.unique(np.concatenate(starts))
    return merged[merged < total.shape[0]], False


def _below(
    stats: ImageSetStatistics, starts: np.ndarray, ece_edges: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-image running counts at the K bin starts: (3, n, K + 1) float64 (first axis: the `COLUMNS` of the
    counts), column j = pixels at levels below ``starts[j]``, last column = all pixels. With ``ece_edges``
    (E + 1 level edges), also (n, E) sums of (correct + wrong) * (2 level + 1) per edge bin (the ECE confidence
    sums, times 2 L).

    Every sweep of a replicate is a linear map of these (counts @ below), so no per-replicate cumulative sum
    is needed; all values are exact integers in float64 (far below 2**53). Each image's levels are sorted, so
    one binary search per image and a running sum give all three columns.
    """
    n, k = stats.n_images, starts.shape[0]
    below = np.zeros((3, n, k + 1))
    level_sums = np.zeros((n, ece_edges.shape[0] - 1)) if ece_edges is not None else None
    for i in range(n):
        levels, counts = stats.row(i)
        if levels.size == 0:
            continue
        bounds = np.searchsorted(levels, starts, side="left")
        first = counts[: bounds[0]].sum(axis=0, dtype=np.float64)
        running = np.cumsum(_segment_sums(counts, bounds), axis=0)
        running += first
        below[:, i, 0] = first
        below[:, i, 1:] = running.T
        if level_sums is not None and ece_edges is not None:
            weighted = (counts[:, 0] + counts[:, 1]) * (2.0 * levels + 1.0)
            edges = np.searchsorted(levels, ece_edges[:-1], side="left")
            level_sums[i] = _segment_sums(weighted, edges)
    return below, level_sums


def _segment_sums(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """float64 sums of values[bounds[j]:bounds[j + 1]] (the last one to the end) along the first axis; empty
    segments give 0. values: (m,) or (m, c); returns (len(bounds),) or (len(bounds), c).

    bounds: non-decreasing. The non-empty segments tile values[bounds[0]:] in order, so one reduceat over
    their starts (strictly increasing, all inside the array) sums exactly them.
    """
    filled = np.append(bounds[1:], values.shape[0]) > bounds
    sums = np.zeros((bounds.shape[0], *values.shape[1:]))
    if filled.any():
        sums[filled] = np.add.reduceat(values, bounds[filled], axis=0, dtype=np.float64)
    return sums


def _level_block(stats: ImageSetStatistics, columns: list[int], lo: int, hi: int) -> np.ndarray:
    """(n, hi - lo) float64 per-image counts at levels lo .. hi - 1, summed over the count `columns`."""
    n = stats.n_images
    width = hi - lo
    # Each image's levels in [lo, hi) are one contiguous run of its sorted row.
    begin = np.empty(n, dtype=np.int64)
    end = np.empty(n, dtype=np.int64)
    for i in range(n):
        start, stop = stats.offsets[i], stats.offsets[i + 1]
        begin[i], end[i] = start + np.searchsorted(stats.levels[start:stop], [lo, hi], side="left")
    sizes = end - begin
    if sizes.sum() == 0:
        return np.zeros((n, width))
    # Positions of all selected entries: begin[i] .. end[i] - 1 for every image, in one array.
    row = np.repeat(np.arange(n), sizes)
    entry = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes) + begin[row]
    index = row * width + (stats.levels[entry].astype(np.int64) - lo)
    weights = stats.counts[entry][:, columns].sum(axis=1, dtype=np.float64)
    return np.bincount(index, weights=weights, minlength=n * width).reshape(n, width)


def _refine_fpr95(
    curve: dict[str, np.ndarray],
    weights: np.ndarray,
    starts: np.ndarray,
    stats: ImageSetStatistics,
    columns: tuple[list[int], list[int]],
    score_is_level: bool,
) -> np.ndarray:
    """Exact FPR95 of coarse-binned rows: re-sweep, level by level, each row's crossing bin.

    TPR is below 0.95 before a row's crossing bin and reaches it by the bin's end, so the full-resolution
    crossing level lies in that bin. Rows are grouped by crossing bin: one small product per bin and side.
    weights: (b, n) image counts of the rows; columns: the count columns summed into the positives and into
    the negatives; score_is_level: the sweep runs from the highest level down (else from the lowest up).
    """
    out = np.full(weights.shape[0], np.nan)
    ok = np.flatnonzero(~curve["bad"])
    if ok.size == 0:
        return out
    k = starts.shape[0]
    ends = np.append(starts[1:], stats.num_levels)
    # Sweep position -> bin: a descending sweep visits the last bin first.
    bins = (k - 1 - curve["cross"][ok]) if score_is_level else curve["cross"][ok]
    lo, hi = int(starts[bins.min()]), int(ends[bins.max()])
    # (levels, n): per-image counts at every level of the span, one contiguous row per level.
    pos_levels = np.ascontiguousarray(_level_block(stats, columns[0], lo, hi).T)
    neg_levels = np.ascontiguousarray(_level_block(stats, columns[1], lo, hi).T)
    order = np.argsort(bins, kind="stable")
    rows, bins = ok[order], bins[order]
    sorted_weights = weights[rows]
    need = _fpr95_count(curve["num_pos"][rows])
    tp_before, fp_before = curve["tp_before"][rows], curve["fp_before"][rows]
    group_starts = np.flatnonzero(np.diff(bins, prepend=-1))
    group_ends = np.append(group_starts[1:], rows.size)
    for a, e in zip(group_starts, group_ends, strict=True):
        b = bins[a]
        cols = slice(int(starts[b]) - lo, int(ends[b]) - lo)
        # einsum, not BLAS: these products are small, and a threaded BLAS on busy cores is slow for them.
        pos = np.einsum("rn,wn->rw", sorted_weights[a:e], pos_levels[cols])
        neg = np.einsum("rn,wn->rw", sorted_weights[a:e], neg_levels[cols])
        if score_is_level:
            pos, neg = pos[:, ::-1], neg[:, ::-1]
        tp = tp_before[a:e, None] + np.cumsum(pos, axis=1)
        fp = fp_before[a:e, None] + np.cumsum(neg, axis=1)
        first = np.argmax(tp >= need[a:e, None], axis=1)
        out[rows[a:e]] = fp[np.arange(e - a), first] / curve["num_neg"][rows[a:e]]
    return out


def _safe(fn, *args) -> float:
    try:
        return float(fn(*args))
    except EmptyClassError:
        return math.nan


def _point_metrics(
    cm: np.ndarray, pooled: Mapping[str, np.ndarray], semantic: bool, ood: bool
) -> dict[str, float]:
    """The official per-subset scalars at full resolution (the evaluator's functions on the pooled counts);
    NaN where a metric is undefined."""
    correct, wrong = pooled["correct"], pooled["wrong"]
    undefined = dict.fromkeys(("auroc", "auprc", "fpr95"), math.nan)
    out: dict[str, float] = {}
    if semantic:
        try:
            success = curve_metrics(correct, wrong)
            error = curve_metrics(wrong[::-1], correct[::-1])
        except EmptyClassError:
            success = error = undefined
        out["miou_valid"] = float(mean_iou(cm))
        out["ece_valid"] = _safe(ece, correct, wrong)
        out["auroc_valid"] = success["auroc"]
        out["auprc_success_valid"] = success["auprc"]
        out["auprc_error_valid"] = error["auprc"]
        out["fpr95_valid"] = success["fpr95"]
    if ood:
        try:
            metrics = curve_metrics(pooled["ood_pos"][::-1], (correct + wrong)[::-1])
        except EmptyClassError:
            metrics = undefined
        out["auroc_ood"] = metrics["auroc"]
        out["auprc_ood"] = metrics["auprc"]
        out["fpr95_ood"] = metrics["fpr95"]
    return out


def _subset_replicates(
    stats: ImageSetStatistics,
    counts: np.ndarray,
    semantic: bool,
    ood: bool,
    max_bins: int | None,
    shift: bool = True,
) -> tuple[dict[str, float], dict[str, np.ndarray], int, bool]:
    """Point values, (B,) replicate values per key, number of level bins and whether they are lossless."""
    table = stats.pooled()
    pooled = {"correct": table[:, 0], "wrong": table[:, 1], "ood_pos": table[:, 2]}
    point = _point_metrics(stats.cm.sum(axis=0), pooled, semantic, ood)
    if not (semantic or ood):
        return point, {}, 0, True
    n_rep, n = counts.shape
    num_levels = stats.num_levels
    weights = counts.astype(np.float64)

    # Bin on the histograms the sweeps use: correct and wrong apart for a semantic subset, the V total as the
    # negatives of an OOD-only subset.
    valid_pooled = pooled["correct"] + pooled["wrong"]
    bin_hists = [pooled["correct"], pooled["wrong"]] if semantic else [valid_pooled]
    if ood:
        bin_hists.append(pooled["ood_pos"])
    starts, lossless = _bin_starts(bin_hists, max_bins)
    ece_edges = level_bin_edges(num_levels, ECE_BINS)
    if semantic:
        # ECE bins are unions of whole level bins, so the ECE counts come from the same running counts.
        starts = np.union1d(starts, ece_edges[:-1])
    below, level_sum = _below(stats, starts, ece_edges if semantic else None)
    correct, wrong, ood_pos = below[0], below[1], below[2]
    del below
    valid = correct + wrong

    values: dict[str, np.ndarray] = {}
    if semantic:
        classes = stats.cm.shape[1]
        cm = (weights @ stats.cm.reshape(n, -1).astype(np.float64)).reshape(n_rep, classes, classes)
        values["miou_valid"] = _miou_rows(cm)
        assert level_sum is not None  # asked for with ece_edges
        at_edges = np.append(np.searchsorted(starts, ece_edges[:-1]), starts.shape[0])
        total, num_correct = np.diff(valid[:, at_edges]), np.diff(correct[:, at_edges])
        values["ece_valid"] = _ece_rows(
            weights @ total, weights @ num_correct, weights @ level_sum, num_levels
        )

    def sweeps(w: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(tp, fp) in sweep order of each binary problem for the replicates with image counts w."""
        out = {}
        if semantic:
            c, e = w @ correct, w @ wrong
            out["success"] = (_sweep(c, True), _sweep(e, True))
            out["error"] = (_sweep(e, False), _sweep(c, False))
        if ood:
            out["ood"] = (_sweep(w @ ood_pos, False), _sweep(w @ valid, False))
        return out

    parts: dict[str, list[dict[str, np.ndarray]]] = {"success": [], "error": [], "ood": []}
    chunk = max(1, _CHUNK_ELEMENTS // starts.shape[0])
    for begin in range(0, n_rep, chunk):
        w = weights[begin : begin + chunk]
        for name, (tp, fp) in sweeps(w).items():
            curve = _curve_rows(tp, fp, fpr95=name != "error")
            if not lossless and name == "success":
                curve["fpr95"] = _refine_fpr95(curve, w, starts, stats, ([0], [1]), True)
            if not lossless and name == "ood":
                curve["fpr95"] = _refine_fpr95(curve, w, starts, stats, ([2], [0, 1]), False)
            parts[name].append(curve)
    sources = {
        "auroc_valid": ("success", "auroc"),
        "auprc_success_valid": ("success", "auprc"),
        "auprc_error_valid": ("error", "auprc"),
        "fpr95_valid": ("success", "fpr95"),
        "auroc_ood": ("ood", "auroc"),
        "auprc_ood": ("ood", "auprc"),
        "fpr95_ood": ("ood", "fpr95"),
    }
    for key, (name, metric) in sources.items():
        if parts[name]:
            values[key] = np.concatenate([part[metric] for part in parts[name]])

    if shift and not lossless:
        # Coarse AUROC / AUPRC carry a bias from the ties that coarsening adds; it barely varies between
        # replicates, so shifting every replicate by (full point - coarse point) removes it.
        coarse = {
            name: _curve_rows(tp, fp, fpr95=False) for name, (tp, fp) in sweeps(np.ones((1, n))).items()
        }
        for key, (name, metric) in sources.items():
            if key in values and metric != "fpr95":
                bias = point[key] - coarse[name][metric][0]
                values[key] = np.clip(values[key] + bias, 0.0, 1.0)

    order = [k for k in (*SEMANTIC_METRICS, *OOD_METRICS) if k in values]
    return point, {k: values[k] for k in order}, int(starts.shape[0]), lossless


# ------------------------------------------------------------------------------------------------ all subsets


@dataclass(frozen=True)
class Replicates:
    """Bootstrap replicates of every metric of one run.

    - ``point``: {key: official value} in the official key order (per-subset keys, `<S>_hmean`,
      `semantic_hmean`, `ood_hmean`, `bravo_index`); NaN where the metric is undefined.
    - ``values``: {key: (B,) float64}, same keys; NaN marks a degenerate replicate (e.g. no OOD pixel drawn).
    - ``draws``: {subset: (B, n) int64 image counts} that made the replicates (shared by paired runs).
    - ``bins``: {subset: level bins of the curve sweeps}; ``lossless``: {subset: whether those are lossless}.
    """

    point: dict[str, float]
    values: dict[str, np.ndarray]
    draws: dict[str, np.ndarray]
    bins: dict[str, int]
    lossless: dict[str, bool]
    seed: int | None = None

    @property
    def replicates(self) -> int:
        return next(iter(self.draws.values())).shape[0] if self.draws else 0

    def degenerate(self) -> dict[str, int]:
        """{key: number of NaN replicates}."""
        return {key: int(np.isnan(v).sum()) for key, v in self.values.items()}


@dataclass(frozen=True, eq=False)  # (arrays: no field-wise ==)
class SubsetJob:
    """One subset's share of a bootstrap, self-contained so that a worker process can run it
    (`subset_replicates`): its name, a zero-argument `load` of its `ImageSetStatistics` (called where the job
    runs: one that reads a file pickles small), the (B, n) image counts of its draws, whether it gets the
    semantic / OOD keys, and the level binning (`bootstrap`'s max_bins and shift)."""

    name: str
    load: Callable[[], ImageSetStatistics]
    counts: np.ndarray
    semantic: bool
    ood: bool
    max_bins: int | None = DEFAULT_MAX_BINS
    shift: bool = True


@dataclass(frozen=True, eq=False)
class SubsetReplicates:
    """What a `SubsetJob` gives: the point value and (B,) replicates of each of its keys (named without the
    subset), its level bins and whether they are lossless."""

    name: str
    point: dict[str, float]
    values: dict[str, np.ndarray]
    bins: int
    lossless: bool


def subset_replicates(job: SubsetJob) -> SubsetReplicates:
    """Run one `SubsetJob` (module-level, so a process pool can run it)."""
    stats = job.load()
    if stats.n_images != job.counts.shape[1]:
        raise ValueError(f"{job.name}: {stats.n_images} images, but draws for {job.counts.shape[1]}")
    point, values, bins, lossless = _subset_replicates(
        stats, job.counts, job.semantic, job.ood, job.max_bins, job.shift
    )
    return SubsetReplicates(job.name, point, values, bins, lossless)


def bootstrap(
    subsets: Mapping[str, ImageSetStatistics],
    semantic: Collection[str],
    ood: Collection[str],
    replicates: int = DEFAULT_REPLICATES,
    seed: int = DEFAULT_SEED,
    draws: Mapping[str, np.ndarray] | None = None,
    max_bins: int | None = DEFAULT_MAX_BINS,
    shift: bool = True,
) -> Replicates:
    """Replicates of every per-subset metric and every summary, computed here, one subset after another.

    subsets: {subset name: its per-image statistics}, in the official subset order (it fixes the key order);
    each value is read once, in order, so a lazy mapping (one subset decoded from HDF5 at a time) keeps memory
    to one subset. semantic / ood: the names that get the `_valid` / `_ood` keys (BRAVO: every subset but
    SMIYC / SMIYC and synobjs). draws: {subset: (B, n) counts} to reuse (a paired run, a test); default
    `draw_counts(n, replicates, seed, stream=subset)` per subset. max_bins: level bins of the curve sweeps
    (None = always lossless; see the module docstring). shift: correct coarse AUROC / AUPRC replicates by the
    coarsening bias at the point value (off only to measure what it buys). The summaries: `combine`. To run
    the subsets in parallel, map `subset_replicates` over `SubsetJob`s and `combine` the results.
    """
    if draws is not None and len({np.shape(d)[0] for d in draws.values()}) > 1:
        raise ValueError("draws differ in their number of replicates")
    parts: list[SubsetReplicates] = []
    used_draws: dict[str, np.ndarray] = {}
    for name, stats in subsets.items():
        if draws is None:
            counts = draw_counts(stats.n_images, replicates, seed, stream=name)
        else:
            counts = np.asarray(draws[name])
            if counts.ndim != 2 or counts.shape[1] != stats.n_images or counts.dtype.kind not in "iu":
                raise ValueError(f"{name}: draws must be (B, {stats.n_images}) integers, got {counts.shape}")
            if (counts < 0).any():
                raise ValueError(f"{name}: draws must be non-negative")
        used_draws[name] = counts
        job = SubsetJob(name, lambda s=stats: s, counts, name in semantic, name in ood, max_bins, shift)
        parts.append(subset_replicates(job))
    return combine(parts, used_draws, replicates, seed if draws is None else None)


def combine(
    parts: Sequence[SubsetReplicates],
    draws: Mapping[str, np.ndarray],
    replicates: int = DEFAULT_REPLICATES,
    seed: int | None = DEFAULT_SEED,
) -> Replicates:
    """The `Replicates` of a run from its subsets' (in the official subset order) and the draws that made them
    (replicates: B, used when there are no draws; seed: theirs, None for given draws), with the summaries. The
    summaries follow the official rules per replicate: keys with `_ece_` or `_fpr95_` enter as 1 - x; harmonic
    means are NaN if any value is NaN and 0 if any is 0."""
    point: dict[str, float] = {}
    values: dict[str, np.ndarray] = {}
    per_subset: dict[str, list[str]] = {}
    for part in parts:
        per_subset[part.name] = [f"{part.name}_{key}" for key in part.values]
        point.update((f"{part.name}_{key}", value) for key, value in part.point.items())
        values.update((f"{part.name}_{key}", value) for key, value in part.values.items())
    n_rep = next(iter(draws.values())).shape[0] if draws else replicates

    def entered(key: str, value):
        return 1.0 - value if ("_ece_" in key or "_fpr95_" in key) else value

    metric_keys = list(values)
    for name, keys in per_subset.items():
        point[f"{name}_hmean"] = hmean([entered(k, point[k]) for k in keys])
        values[f"{name}_hmean"] = _hmean_rows([entered(k, values[k]) for k in keys], n_rep)
    groups = {}
    for group, suffix in (("semantic_hmean", "_valid"), ("ood_hmean", "_ood")):
        keys = [k for k in metric_keys if k.endswith(suffix)]
        point[group] = hmean([entered(k, point[k]) for k in keys])
        values[group] = groups[group] = _hmean_rows([entered(k, values[k]) for k in keys], n_rep)
    point["bravo_index"] = hmean([point["semantic_hmean"], point["ood_hmean"]])
    values["bravo_index"] = _hmean_rows([groups["semantic_hmean"], groups["ood_hmean"]], n_rep)
    bins = {part.name: part.bins for part in parts}
    lossless = {part.name: part.lossless for part in parts}
    return Replicates(point, values, dict(draws), bins, lossless, seed)


# ------------------------------------------------------------------------------------------------ intervals


@dataclass(frozen=True)
class Interval:
    """Percentile interval of one metric: ``low`` .. ``high`` around the official ``point``.

    ``degenerate``: replicates where the metric is undefined (left out of the percentiles); all of them NaN
    gives a NaN interval.
    """

    point: float
    low: float
    high: float
    degenerate: int


@dataclass(frozen=True)
class Difference:
    """Paired difference run A - run B of one metric over the same resampled images.

    ``excludes_zero``: the interval lies strictly above or strictly below 0, i.e. the difference is larger
    than image sampling explains at this level (False when the interval is NaN).
    """

    point: float
    low: float
    high: float
    excludes_zero: bool
    degenerate: int


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float, int]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return math.nan, math.nan, int(values.size)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high), int(values.size - finite.size)


def percentile_intervals(replicates: Replicates, level: float = DEFAULT_LEVEL) -> dict[str, Interval]:
    """{key: Interval} for every key of `replicates`, percentile method at `level` (0.95 = 2.5% .. 97.5%)."""
    out = {}
    for key, values in replicates.values.items():
        low, high, bad = _percentiles(values, level)
        out[key] = Interval(replicates.point[key], low, high, bad)
    return out


def paired_differences(a: Replicates, b: Replicates, level: float = DEFAULT_LEVEL) -> dict[str, Difference]:
    """{key: Difference} of run a minus run b for every key both have, over the same resampled images.

    Every subset both runs cover must have the same draws in both (the same seed and B over the same number
    of images, or the same `draws` passed in); else ValueError. A subset only one run covers (e.g. one the other
    left unscored) enters that run's summaries alone, as it does in the official values, so the summary
    differences stay the official point differences. The draws cannot tell whether the images are the same
    and in the same order: the caller checks the image names (and orders both runs alike) before pairing. A
    replicate where either run is degenerate is left out.
    """
    shared = [name for name in a.draws if name in b.draws]
    if not shared:
        raise ValueError(f"the runs share no subset: {list(a.draws)} vs {list(b.draws)}")
    for name in shared:
        if not np.array_equal(a.draws[name], b.draws[name]):
            raise ValueError(
                f"subset {name}: the two runs were resampled with different draws; pairing needs the same"
            )
    out = {}
    for key, values in a.values.items():
        if key not in b.values:
            continue
        low, high, bad = _percentiles(values - b.values[key], level)
        excludes = bool(low > 0.0 or high < 0.0)
        out[key] = Difference(a.point[key] - b.point[key], low, high, excludes, bad)
    return out


def intervals_meta(
    replicates: Replicates, intervals: Mapping[str, Interval], level: float = DEFAULT_LEVEL
) -> dict[str, object]:
    """A JSON-ready block for a results file's `meta`: method, settings and {key: [low, high]}."""
    return {
        "method": "percentile bootstrap; images resampled with replacement within each subset",
        "covers": "the choice of images only (not training seeds)",
        "replicates": replicates.replicates,
        "seed": replicates.seed,
        "level": level,
        "level_bins": dict(replicates.bins),
        "lossless": dict(replicates.lossless),
        "intervals": {key: [iv.low, iv.high] for key, iv in intervals.items()},
        "degenerate": {key: iv.degenerate for key, iv in intervals.items() if iv.degenerate},
    }
