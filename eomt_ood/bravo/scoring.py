"""BRAVO scoring (docs/metrics.md): per-image statistics, per-subset pooling, the official keys and summaries.

The one scoring path of the project. For every GT image, `image_statistics` turns (label, mask, pred, conf)
into one confusion matrix and three level histograms; a `Scorer` sums them per subset and per confidence score
(memory does not grow with the number of images) and turns the sums into the official `<subset>_<metric>` keys
and the harmonic-mean summaries. `eomt-ood score` feeds it from a raw submission on disk (`score_submission`,
images read in worker processes); `eomt-ood evaluate` feeds it from predictions still in memory
(`eomt_ood.evaluate`), through the same functions, so the two agree exactly.

Conventions (the official evaluator's): pixels are pooled over a subset, confidence level k stands for
(k + 0.5) / 65536, label 255 is void and dropped before anything else, mask != 0 is invalid. Semantic
histograms use valid (V) pixels; OOD uses invalid (I) pixels as positives and V pixels as negatives, ranked by
doubt = 65535 - conf.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from eomt_ood.bravo.layout import (
    IMAGE_SUFFIX,
    NUM_CLASSES,
    OOD_SUBSETS,
    SEMANTIC_SUBSETS,
    SUBSETS,
    GtImage,
    MemberRef,
    Tree,
    check_train_ids,
    id_list,
    match_gt,
    open_tree,
    read_conf,
    read_label,
    read_mask,
    read_pred,
    unmatched_submission_files,
    warn_unmatched,
)
from eomt_ood.errors import UserError
from eomt_ood.io import HeldTemporaryFolder, ProcessMap, default_workers, progress_file, warn
from eomt_ood.metrics.histogram import NUM_LEVELS

_CM_OUTSIDE = NUM_CLASSES * NUM_CLASSES  # the first pair code beyond the confusion matrix
# A pixel's pair code: label * 19 + pred (below 2^13 for every label 0..255 and pred 0..18), plus 2^13 when
# the pixel is invalid. Codes below 361 are the V pixels' confusion-matrix cells; 255 * 19 + pred are void.
_PAIR_INVALID_BIT = 13
_PAIR_INVALID = 1 << _PAIR_INVALID_BIT
_PAIR_BINS = 2 * _PAIR_INVALID
_VOID_CODES = slice(255 * NUM_CLASSES, 256 * NUM_CLASSES)

SEMANTIC_KEYS = (
    "miou_valid",
    "iou_valid",
    "ece_valid",
    "auroc_valid",
    "auprc_success_valid",
    "auprc_error_valid",
    "fpr95_valid",
)
OOD_KEYS = ("auroc_ood", "auprc_ood", "fpr95_ood")


# ------------------------------------------------------------------------------------------------ one image


@dataclass
class ImageStatistics:
    """Counts of one image, or the sums of a subset (`SubsetAccumulator`), with dense histograms; arrays int64.

    - ``cm``: (19, 19), rows = GT class, cols = predicted class, over every V pixel (full resolution always).
    - ``correct`` / ``wrong``: (65536,) V pixels (inside the sample, if any) per conf level with pred == / != GT.
    - ``ood_pos``: (65536,) I pixels (inside the sample, if any) per conf level; ``ood_neg`` (a property) is the
      V pixels per conf level, i.e. ``correct + wrong``. Indexed by conf: higher = more in-distribution.
    - pixel counts: ``valid``, ``invalid``, ``void`` (whole image), ``scored_valid`` / ``scored_invalid``
      (the pixels that entered the histograms).
    """

    cm: np.ndarray
    correct: np.ndarray
    wrong: np.ndarray
    ood_pos: np.ndarray
    valid: int = 0
    invalid: int = 0
    void: int = 0
    scored_valid: int = 0
    scored_invalid: int = 0

    @property
    def ood_neg(self) -> np.ndarray:
        return self.correct + self.wrong

    @classmethod
    def zeros(cls) -> ImageStatistics:
        return cls(
            cm=np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64),
            correct=np.zeros(NUM_LEVELS, dtype=np.int64),
            wrong=np.zeros(NUM_LEVELS, dtype=np.int64),
            ood_pos=np.zeros(NUM_LEVELS, dtype=np.int64),
        )

    def sparse_histograms(self) -> tuple[np.ndarray, np.ndarray]:
        """The level histograms without their empty levels: (levels (m,) uint16, counts (m, 3) int64), the
        columns `correct`, `wrong`, `ood_pos`; m = the levels where any of them is non-zero (the one per-image
        format, `eomt_ood.metrics.image_stats`: an image uses far fewer than 65536 levels)."""
        from eomt_ood.metrics.image_stats import sparse_levels

        return sparse_levels(np.stack([self.correct, self.wrong, self.ood_pos], axis=1))


@dataclass(frozen=True, eq=False)  # (arrays: no field-wise ==)
class SparseStatistics:
    """One image's statistics in the form they travel in: from worker processes, into records and statistics
    files, into a `Scorer`. The counts of `ImageStatistics` with the level histograms kept only where they are
    non-zero (the project's one per-image format, `eomt_ood.metrics.image_stats`), so an image's levels are
    added to a subset's totals where they are, never rebuilt as 65,536-level arrays first.

    cm: (19, 19) int64. levels: (m,) uint16, strictly increasing. counts: (m, 3) integers, the columns
    `correct`, `wrong`, `ood_pos` (int32 from `score_maps`: one image's count at one level always fits).
    valid / invalid / void: the image's pixel counts (whole image, whatever the sample).
    """

    cm: np.ndarray
    levels: np.ndarray
    counts: np.ndarray
    valid: int
    invalid: int
    void: int

    @property
    def pixels(self) -> tuple[int, int, int]:
        return self.valid, self.invalid, self.void

    def scored(self) -> tuple[int, int]:
        """(V pixels, I pixels) in the histograms: the whole image's, or the sample's."""
        # The flat sum reads contiguous memory: `counts.sum(axis=0)` takes about 8x as long (42k levels).
        total = int(self.counts.sum(dtype=np.int64))
        invalid = int(self.counts[:, 2].sum(dtype=np.int64))
        return total - invalid, invalid

    def dense(self) -> ImageStatistics:
        """The same counts as an `ImageStatistics` (65,536-level arrays), e.g. for `image_metrics`."""
        stats = ImageStatistics.zeros()
        stats.cm += self.cm
        _add_levels(stats, self.levels, self.counts)
        stats.valid, stats.invalid, stats.void = self.pixels
        stats.scored_valid, stats.scored_invalid = self.scored()
        return stats


def _add_levels(totals: ImageStatistics, levels: np.ndarray, counts: np.ndarray) -> None:
    """Add sparse level rows to the dense histograms of `totals` in place (levels distinct, so a fancy-index
    add is exact)."""
    index = levels.astype(np.intp)
    totals.correct[index] += counts[:, 0]
    totals.wrong[index] += counts[:, 1]
    totals.ood_pos[index] += counts[:, 2]


def image_statistics(
    label: np.ndarray,
    mask: np.ndarray,
    pred: np.ndarray,
    conf_levels: np.ndarray,
    sample_idx: np.ndarray | None = None,
    *,
    label_name: str = "label",
    pred_name: str = "pred",
    sample_name: str = "sample",
) -> ImageStatistics:
    """Confusion matrix and level histograms of one image (docs/metrics.md §4).

    label: (H, W) uint8 train ids, 255 = void. mask: (H, W), non-zero = invalid. pred: (H, W) uint8 train ids.
    conf_levels: (H, W) uint16 confidence levels, higher = more in-distribution. sample_idx: optional sorted
    flat indices (the official sample, docs/metrics.md §10); then the histograms use only sampled pixels while the
    confusion matrix still uses every V pixel. Bad values raise `UserError` naming `label_name` / `pred_name` /
    `sample_name`: a label outside 0..18 and 255, a pred > 18, a sample outside the image or on void.
    """
    names = {"label_name": label_name, "pred_name": pred_name, "sample_name": sample_name}
    return sparse_statistics(label, mask, pred, [conf_levels], sample_idx, **names)[0].dense()


def sparse_statistics(
    label: np.ndarray,
    mask: np.ndarray,
    pred: np.ndarray,
    confs: Sequence[np.ndarray],
    sample_idx: np.ndarray | None = None,
    *,
    label_name: str = "label",
    pred_name: str = "pred",
    sample_name: str = "sample",
) -> list[SparseStatistics]:
    """`image_statistics` of one image with each confidence map of `confs`, in the sparse form (levels where
    any histogram is non-zero), checked and raising as there.

    What the maps share is counted once. One compiled pass over the image (`eomt_ood.bravo.counting`) counts
    every pixel's pair code (label * 19 + pred, 2^13 added when invalid), from which come the confusion matrix,
    the pixel counts and the label check, and writes its category (0 = correct V, 1 = wrong V, 2 = I, 3 = void;
    void wins over invalid; the first three are the columns of the sparse counts,
    `eomt_ood.metrics.image_stats.COLUMNS`); without a sample, the same pass counts the first map's levels per
    category. Each further map (or every map, with a sample) is one more pass over the categories.
    """
    from eomt_ood.bravo import counting

    shape = label.shape
    if mask.shape != shape or pred.shape != shape:
        raise UserError(f"{label_name}: shapes differ: label {shape}, mask {mask.shape}, pred {pred.shape}")
    if label.dtype != np.uint8 or pred.dtype != np.uint8:
        raise TypeError(f"expected uint8 label/pred, got {label.dtype}, {pred.dtype}")
    for conf in confs:
        if conf.shape != shape:
            raise UserError(f"{label_name}: shapes differ: label {shape}, conf {conf.shape}")
        if conf.dtype != np.uint16:
            raise TypeError(f"expected uint16 conf, got {conf.dtype}")
    lab = label.ravel()
    prd = pred.ravel()
    inv = mask.ravel()
    try:
        check_train_ids(prd, pred_name)  # the pair codes assume predictions 0..18
    except UserError:
        _check_label_ids(lab, label_name)  # a bad label is reported first, as it is whatever the prediction
        raise
    size = lab.size
    codes = np.zeros(_PAIR_BINS, dtype=np.int64)
    category, first = counting.categorise(
        lab,
        prd,
        inv if inv.dtype in (np.uint8, np.bool_) else inv != 0,
        NUM_CLASSES,
        _PAIR_INVALID_BIT,
        codes,
        confs[0].ravel() if confs and sample_idx is None else None,
    )
    _check_label_codes(codes, label_name)
    void = int(codes[_VOID_CODES].sum() + codes[_PAIR_INVALID:][_VOID_CODES].sum())
    invalid = int(codes[_PAIR_INVALID : _PAIR_INVALID + _CM_OUTSIDE].sum())
    if sample_idx is not None:
        if sample_idx.size == 0 or sample_idx[-1] >= size or sample_idx[0] < 0:
            raise UserError(f"{sample_name}: sample indices fall outside the {size}-pixel image")
        category = category[sample_idx]
        if np.any(category == 3):
            raise UserError(
                f"{sample_name}: the sample contains void pixels (wrong sampling file for this GT?)"
            )
    tables = [] if first is None else [first]
    for conf in confs[len(tables) :]:
        levels = conf.ravel()
        tables.append(counting.count_levels(category, levels if sample_idx is None else levels[sample_idx]))
    cm = codes[:_CM_OUTSIDE].reshape(NUM_CLASSES, NUM_CLASSES)
    return [_sparse(table, cm, (size - void - invalid, invalid, void)) for table in tables]


def _sparse(table: np.ndarray, cm: np.ndarray, pixels: tuple[int, int, int]) -> SparseStatistics:
    """One map's `SparseStatistics` from its (category, level) table (`eomt_ood.bravo.counting`)."""
    levels = np.flatnonzero(table[0] | table[1] | table[2])
    return SparseStatistics(
        cm=cm.copy(),  # each map's statistics their own
        levels=levels.astype(np.uint16),
        counts=np.stack([table[0, levels], table[1, levels], table[2, levels]], axis=1),
        valid=pixels[0],
        invalid=pixels[1],
        void=pixels[2],
    )


def _check_label_ids(lab: np.ndarray, label_name: str) -> None:
    """`UserError` naming `label_name` unless every value of a flat GT label is a train id 0..18 or 255."""
    # lab + 237 wraps 0..18 to 237..255 and 255 to 236, so any other id makes the minimum fall below 236.
    if lab.size and int((lab + np.uint8(256 - NUM_CLASSES)).min()) < 255 - NUM_CLASSES:
        _raise_bad_labels(
            np.flatnonzero(np.bincount(lab, minlength=256)[NUM_CLASSES:255]) + NUM_CLASSES, label_name
        )


def _check_label_codes(codes: np.ndarray, label_name: str) -> None:
    """`UserError` naming `label_name` when the counts of the pair codes (`sparse_statistics`) hold a label
    outside 0..18 and 255: the codes from 361 to 255 * 19, invalid or not."""
    bad = (
        codes[_CM_OUTSIDE : _VOID_CODES.start]
        + codes[_PAIR_INVALID + _CM_OUTSIDE : _PAIR_INVALID + _VOID_CODES.start]
    )
    if bad.any():
        _raise_bad_labels(np.unique((np.flatnonzero(bad) + _CM_OUTSIDE) // NUM_CLASSES), label_name)


def _raise_bad_labels(ids: np.ndarray, label_name: str) -> None:
    raise UserError(f"{label_name}: GT label holds class id(s) {id_list(ids)} outside 0..18 (and 255 = void)")


def lower_is_better(key: str) -> bool:
    """True for ECE and FPR95 (`ece_valid`, `synobjs_fpr95_ood`, `ece`, ...): every other metric goes up.

    The one direction rule of the project: the summaries enter these as 1 - x, the regression gate, the
    comparison and the app's "worst first" all read it from here.
    """
    tokens = key.split("_")
    return "ece" in tokens or "fpr95" in tokens


def image_metrics(subset: str, stats: ImageStatistics) -> dict[str, float]:
    """Per-image statistics for the store, the report and the app (NaN where a metric is undefined).

    The official metrics of the image alone (pooled over its pixels as a subset would be): `miou` and `ece`
    (semantic subsets with valid pixels), `auroc_ood`, `auprc_ood`, `fpr95_ood` and `ood_fraction` (OOD subsets
    with both invalid and valid pixels), pixel counts `num_valid`, `num_invalid`, and `mean_confidence` (the
    mean confidence of the scored non-void pixels).
    """
    from eomt_ood.metrics.histogram import curve_metrics, ece
    from eomt_ood.metrics.segmentation import mean_iou

    nan = float("nan")
    out = {
        "num_valid": float(stats.valid),
        "num_invalid": float(stats.invalid),
        "miou": nan,
        "ece": nan,
        "auroc_ood": nan,
        "auprc_ood": nan,
        "fpr95_ood": nan,
        "ood_fraction": nan,
        "mean_confidence": nan,
    }
    pos, neg = stats.ood_pos, stats.ood_neg
    scored = pos + neg
    total = int(scored.sum())
    if total:
        levels = np.arange(NUM_LEVELS, dtype=np.float64)
        out["mean_confidence"] = float((scored @ (levels + 0.5)) / total / NUM_LEVELS)
    if stats.valid and subset in SEMANTIC_SUBSETS:
        out["miou"] = float(mean_iou(stats.cm))
        if stats.correct.sum() + stats.wrong.sum():
            out["ece"] = float(ece(stats.correct, stats.wrong))
    if subset in OOD_SUBSETS and pos.sum() and neg.sum():
        ood = curve_metrics(pos[::-1], neg[::-1])
        out.update(auroc_ood=ood["auroc"], auprc_ood=ood["auprc"], fpr95_ood=ood["fpr95"])
        out["ood_fraction"] = float(pos.sum() / (pos.sum() + neg.sum()))
    return out


# ------------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class GroundTruthRefs:
    """Where one GT image's files are (small and picklable, for worker processes)."""

    subset: str
    label: MemberRef
    mask: MemberRef
    samples: MemberRef | None = None


@dataclass
class GroundTruth:
    """One decoded GT image: label (H, W) uint8, mask (H, W) bool (True = invalid), optional sample indices."""

    subset: str
    label: np.ndarray
    mask: np.ndarray
    sample_idx: np.ndarray | None
    label_name: str
    samples_name: str = "sample"


def read_ground_truth(refs: GroundTruthRefs) -> GroundTruth:
    """Decode and check one GT image (label, mask and, with a sampling file, its sample indices)."""
    label = read_label(refs.label.read(), refs.label.name)
    mask = read_mask(refs.mask.read(), refs.mask.name)
    if mask.shape != label.shape:
        raise UserError(
            f"{refs.mask.name}: size {_size(mask)} differs from the GT label {refs.label.name} ({_size(label)})"
        )
    sample_idx = None
    if refs.samples is not None:
        from eomt_ood.bravo.sampling import decode_sample_indices

        sample_idx = decode_sample_indices(refs.samples.read(), refs.samples.name)
    samples_name = refs.samples.name if refs.samples is not None else "sample"
    return GroundTruth(refs.subset, label, mask, sample_idx, refs.label.name, samples_name)


def score_maps(
    gt: GroundTruth, pred: np.ndarray, confs: Mapping[str, np.ndarray], pred_name: str
) -> list[SparseStatistics]:
    """`image_statistics` of a prediction against its GT with each confidence map of `confs` ({file name: map},
    in order), in the sparse form, after checking that the sizes agree (naming the file); what the maps share
    is counted once."""
    for name, array in ((pred_name, pred), *confs.items()):
        if array.shape != gt.label.shape:
            raise UserError(
                f"{name}: size {_size(array)} differs from the GT label {gt.label_name} ({_size(gt.label)})"
            )
    return sparse_statistics(
        gt.label,
        gt.mask,
        pred,
        list(confs.values()),
        gt.sample_idx,
        label_name=gt.label_name,
        pred_name=pred_name,
        sample_name=gt.samples_name,
    )


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"


# ------------------------------------------------------------------------------------------------ accumulation


@dataclass
class SubsetAccumulator:
    """Sum of the statistics of the images of one subset (an `ImageStatistics`), plus its image count."""

    subset: str
    images: int = 0
    totals: ImageStatistics = field(default_factory=ImageStatistics.zeros)

    def add(self, stats: SparseStatistics) -> None:
        t = self.totals
        t.cm += stats.cm
        _add_levels(t, stats.levels, stats.counts)
        t.valid += stats.valid
        t.invalid += stats.invalid
        t.void += stats.void
        scored_valid, scored_invalid = stats.scored()
        t.scored_valid += scored_valid
        t.scored_invalid += scored_invalid
        self.images += 1

    def metrics(self) -> dict[str, float | list[float]]:
        return subset_metrics(self.subset, self.totals)

    def counts(self, sampled: bool) -> dict[str, int]:
        t = self.totals
        out = {"images": self.images, "valid": t.valid, "invalid": t.invalid, "void": t.void}
        if sampled:
            out.update(sampled_valid=t.scored_valid, sampled_invalid=t.scored_invalid)
        return out


class Scorer:
    """Per-subset sums of one confidence score's per-image statistics; order of `add` calls does not matter."""

    def __init__(self) -> None:
        self.subsets: dict[str, SubsetAccumulator] = {}

    def add(self, subset: str, stats: SparseStatistics) -> None:
        accumulator = self.subsets.get(subset)
        if accumulator is None:  # (not setdefault: that would build a zeroed accumulator on every call)
            accumulator = self.subsets[subset] = SubsetAccumulator(subset)
        accumulator.add(stats)

    def ordered(self) -> list[str]:
        """The subsets seen, in the official order."""
        return [s for s in SUBSETS if s in self.subsets]

    def metrics(self) -> tuple[dict[str, Any], dict[str, str]]:
        """(official keys + summaries, {subset: why it was left unscored}).

        A degenerate subset (e.g. no correctly classified pixel) gets no made-up number: it is left out of the
        keys and the summaries, and its reason is returned; the caller decides whether that is an error.
        """
        metrics: dict[str, Any] = {}
        unscored: dict[str, str] = {}
        scored = []
        for subset in self.ordered():
            try:
                values = self.subsets[subset].metrics()
            except UserError as exc:
                unscored[subset] = str(exc)
                continue
            metrics.update((f"{subset}_{k}", v) for k, v in values.items())
            scored.append(subset)
        if metrics:
            metrics.update(summarise(metrics, scored))
        return metrics, unscored

    def counts(self, sampled: bool) -> dict[str, dict[str, int]]:
        """Per-subset image and pixel counts (the `meta.subsets` block of a results file)."""
        return {s: self.subsets[s].counts(sampled) for s in self.ordered()}

    def state(self) -> np.ndarray:
        """All sums as one (len(SUBSETS), K) int64 array in a fixed layout: summing the states of several
        scorers (e.g. across processes) gives the state of their union. Inverse: `from_state`."""
        rows = []
        for subset in SUBSETS:
            acc = self.subsets.get(subset) or SubsetAccumulator(subset)
            t = acc.totals
            counts = [acc.images, t.valid, t.invalid, t.void, t.scored_valid, t.scored_invalid]
            rows.append(np.concatenate([np.array(counts), t.cm.ravel(), t.correct, t.wrong, t.ood_pos]))
        return np.stack(rows).astype(np.int64)

    @classmethod
    def from_state(cls, state: np.ndarray) -> Scorer:
        scorer = cls()
        cells = NUM_CLASSES * NUM_CLASSES
        for subset, row in zip(SUBSETS, np.asarray(state, dtype=np.int64), strict=True):
            images, valid, invalid, void, scored_valid, scored_invalid = (int(v) for v in row[:6])
            if images == 0:
                continue
            hists = row[6 + cells :].reshape(3, NUM_LEVELS)
            totals = ImageStatistics(
                row[6 : 6 + cells].reshape(NUM_CLASSES, NUM_CLASSES).copy(),
                hists[0].copy(),
                hists[1].copy(),
                hists[2].copy(),
                valid,
                invalid,
                void,
                scored_valid,
                scored_invalid,
            )
            scorer.subsets[subset] = SubsetAccumulator(subset, images, totals)
        return scorer

    def histograms(self) -> dict[str, dict[str, np.ndarray]]:
        """{subset: {"correct", "wrong", "ood_pos", "ood_neg": (65536,) int64}}, indexed by confidence level."""
        return {
            s: {
                "correct": acc.totals.correct,
                "wrong": acc.totals.wrong,
                "ood_pos": acc.totals.ood_pos,
                "ood_neg": acc.totals.ood_neg,
            }
            for s, acc in ((s, self.subsets[s]) for s in self.ordered())
        }


def subset_metrics(subset: str, totals: ImageStatistics) -> dict[str, float | list[float]]:
    """The official metrics of one subset (keys without the `<subset>_` prefix, official order,
    docs/metrics.md §6, §8).

    Degenerate data (no correct or no wrong V pixel for a semantic subset, no I or no V pixel for an OOD subset)
    is a `UserError` naming the subset, never a made-up number.
    """
    from eomt_ood.metrics.histogram import curve_metrics, ece
    from eomt_ood.metrics.segmentation import iou_per_class, mean_iou

    out: dict[str, float | list[float]] = {}
    if subset in SEMANTIC_SUBSETS:
        correct, wrong = totals.correct, totals.wrong
        if correct.sum() == 0 or wrong.sum() == 0:
            side = "correctly" if correct.sum() == 0 else "wrongly"
            raise UserError(
                f"subset {subset}: no {side} classified valid pixel, so AUROC/AUPRC/FPR95 are undefined"
            )
        success = curve_metrics(correct, wrong)
        # Errors as positives ranked by -conf: reversing both histograms turns "low conf" into "high level".
        error = curve_metrics(wrong[::-1], correct[::-1])
        out["miou_valid"] = float(mean_iou(totals.cm))
        out["iou_valid"] = [float(v) for v in iou_per_class(totals.cm)]
        out["ece_valid"] = float(ece(correct, wrong))
        out["auroc_valid"] = success["auroc"]
        out["auprc_success_valid"] = success["auprc"]
        out["auprc_error_valid"] = error["auprc"]
        out["fpr95_valid"] = success["fpr95"]
    if subset in OOD_SUBSETS:
        pos, neg = totals.ood_pos, totals.ood_neg
        if pos.sum() == 0:
            raise UserError(
                f"subset {subset}: no invalid (OOD) pixel among the scored pixels, so OOD metrics are undefined"
            )
        if neg.sum() == 0:
            raise UserError(
                f"subset {subset}: no valid pixel among the scored pixels, so OOD metrics are undefined"
            )
        # The OOD score is the doubt 65535 - conf: reversing the conf-indexed histograms puts doubt first.
        ood = curve_metrics(pos[::-1], neg[::-1])
        out["auroc_ood"] = ood["auroc"]
        out["auprc_ood"] = ood["auprc"]
        out["fpr95_ood"] = ood["fpr95"]
    return out


def summarise(metrics: dict[str, object], subsets: Sequence[str] | None = None) -> dict[str, float]:
    """Summary keys (docs/metrics.md, "Summaries"): `<S>_hmean` per subset, then `semantic_hmean`, `ood_hmean`, `bravo_index`.

    metrics: the flat `<subset>_<metric>` dict. Scalars only (lists are skipped); ECE and FPR95 keys
    (`lower_is_better`) enter as 1 - value. subsets: which `<S>_hmean` to write, default every subset with a key, in the
    official order. Harmonic means follow scipy (0 if any value is 0, NaN if any is NaN or none).
    """
    from eomt_ood.metrics.histogram import hmean

    scalars = {
        key: (1.0 - value if lower_is_better(key) else value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    if subsets is None:
        subsets = [s for s in SUBSETS if any(k.startswith(f"{s}_") for k in metrics)]
    out: dict[str, float] = {}
    for subset in subsets:
        out[f"{subset}_hmean"] = hmean([v for k, v in scalars.items() if k.startswith(f"{subset}_")])
    semantic = hmean([v for k, v in scalars.items() if k.endswith("_valid")])
    ood = hmean([v for k, v in scalars.items() if k.endswith("_ood")])
    out["semantic_hmean"] = semantic
    out["ood_hmean"] = ood
    out["bravo_index"] = hmean([semantic, ood])
    return out


# ------------------------------------------------------------------------------------------------ whole submission


@dataclass(frozen=True)
class ImageTask:
    """Everything a worker needs to score one GT image of a submission (small and picklable)."""

    gt: GroundTruthRefs
    pred: MemberRef
    conf: MemberRef


def score_image(task: ImageTask) -> tuple[str, SparseStatistics]:
    """Read, check and count one image of a submission (runs in a worker process)."""
    gt = read_ground_truth(task.gt)
    pred = read_pred(task.pred.read(), task.pred.name)
    conf = read_conf(task.conf.read(), task.conf.name)
    return gt.subset, score_maps(gt, pred, {task.conf.name: conf}, task.pred.name)[0]


def _score_numbered(item: tuple[int, ImageTask]) -> tuple[int, str, SparseStatistics]:
    return (item[0], *score_image(item[1]))


SUBMISSION_SCORE = "submission"
"""The confidence name of a `score` run's per-image statistics (a raw submission does not name its score)."""


def score_submission(
    gt: str | Path,
    submission: str | Path,
    subsets: Sequence[str] | None = None,
    samples: str | Path | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    warn: Callable[[str], None] | None = warn,
    bootstrap: Any = None,
    stats_out: str | Path | None = None,
) -> dict[str, object]:
    """Score a raw BRAVO submission against a GT tree; returns the results dict (official keys, then `meta`).

    gt, submission: folders or tars (submission may be gzip/bz2/xz) in the BRAVO layout (docs/formats.md).
    subsets: restrict to these subset names (default: every subset present in the GT). samples: the
    `bravo_SAMPLING.tar` to use the official per-image pixel sample (default: every pixel). workers: reading
    processes (default min(cpu count, 4); 0 or 1 = inline). progress: tqdm bar on stderr, as lines when stderr
    is not a terminal (`io.progress_file`; None = only on a terminal). warn: receives one line per warning
    (unmatched files). bootstrap: an `eomt_ood.bravo.intervals.Settings` (default: B = 1000, seed 0, 95%;
    replicates 0 = off): the per-image statistics give the intervals of every key under `meta.intervals`; they
    are written to a statistics file as images finish (a temporary one without `stats_out`), so memory stays
    flat however many images. stats_out: keep that file (`eomt_ood.store`), for paired tests against this run
    (`compare`, `regress`). Bad input raises `UserError`, a degenerate subset included (its metrics would be
    undefined).
    """
    from tqdm import tqdm

    from eomt_ood.bravo.intervals import Settings

    settings = (bootstrap if bootstrap is not None else Settings()).check()

    if subsets is not None:
        unknown = [s for s in subsets if s not in SUBSETS]
        if unknown:
            raise UserError(f"--subsets: unknown subset {unknown[0]!r}; valid names: {', '.join(SUBSETS)}")
    workers = default_workers() if workers is None else workers
    scorer = Scorer()
    # The per-image statistics (for the intervals, or --stats) go to a statistics file as images finish, so
    # memory does not grow with the images; without --stats the file is a temporary one.
    with _statistics_path(stats_out, settings.enabled) as stats_path:
        from eomt_ood.bravo.intervals import interval_pool

        # Workers are forked before the trees are opened: they need nothing of the parent but the task (and,
        # when there is a statistics file, they run the intervals too).
        pool_of = interval_pool if stats_path is not None else ProcessMap
        with (
            pool_of(workers if workers > 1 else 0) as pool,
            open_tree(gt, "ground truth") as gt_tree,
            open_tree(submission, "submission") as sub_tree,
            _maybe_open_samples(samples) as samples_tree,
        ):
            images, tasks = _tasks(gt, gt_tree, sub_tree, samples_tree, subsets, warn)
            disable = None if progress is None else not progress
            with (
                _statistics_writer(stats_path) as store,
                tqdm(
                    total=len(tasks), unit="img", file=progress_file(), disable=disable, desc="scoring"
                ) as bar,
            ):
                for index, subset, stats in pool.map(_score_numbered, enumerate(tasks), ordered=True):
                    scorer.add(subset, stats)
                    if store is not None:
                        store.add(_statistics_record(_input_path(images[index]), subset, stats))
                    bar.update()
                metrics, unscored = scorer.metrics()
                if unscored:  # raised inside: no statistics file is left
                    raise UserError(next(iter(unscored.values())))
                if store is not None:
                    for name, histograms in scorer.histograms().items():
                        store.add_histograms(SUBMISSION_SCORE, name, histograms)

            results: dict[str, object] = dict(metrics)
            results["meta"] = scoring_meta(gt, submission, samples, scorer)
            results["meta"]["statistics"] = str(stats_out) if stats_out is not None else None
            if settings.enabled:
                from eomt_ood.bravo.intervals import ScoreStatistics, block_intervals
                from eomt_ood.bravo.rundir import attach_intervals

                assert stats_path is not None
                # named after the submission in messages, not after the temporary file
                stats = replace(
                    ScoreStatistics.from_store(stats_path, SUBMISSION_SCORE),
                    source=f"{submission} ({SUBMISSION_SCORE})",
                )
                # the subsets side by side in the workers, each reading its own from the file
                intervals, meta = block_intervals(
                    {SUBMISSION_SCORE: stats}, {SUBMISSION_SCORE: metrics}, settings, pool.map
                )
                attach_intervals(results, intervals, meta)
    return results


def _tasks(
    gt: str | Path,
    gt_tree: Tree,
    sub_tree: Tree,
    samples_tree: Tree | None,
    subsets: Sequence[str] | None,
    warn: Callable[[str], None] | None,
) -> tuple[list[GtImage], list[ImageTask]]:
    """The GT images to score (of `subsets`, default every subset the GT has) and their tasks, in the order of
    their input paths: the statistics file lists them so, whatever order the pool finishes them in."""
    by_subset = match_gt(gt_tree.names, warn)
    if subsets is None:
        selected = [s for s in SUBSETS if by_subset[s]]
        if not selected:
            raise UserError(f"{gt}: no BRAVO ground-truth images found (expected bravo_<split>/... files)")
    else:
        selected = [s for s in SUBSETS if s in set(subsets)]
        for s in selected:
            if not by_subset[s]:
                raise UserError(
                    f"subset {s}: requested with --subsets but the ground truth {gt} has no images of it"
                )
    all_images = [image for s in SUBSETS for image in by_subset[s]]
    warn_unmatched(unmatched_submission_files(sub_tree.names, all_images), "submission", warn)
    images = sorted((image for s in selected for image in by_subset[s]), key=_input_path)
    tasks = [
        ImageTask(
            ground_truth_refs(image, gt_tree, samples_tree),
            _submission_ref(sub_tree, image.pred_name),
            _submission_ref(sub_tree, image.conf_name),
        )
        for image in images
    ]
    return images, tasks


def _input_path(image: GtImage) -> str:
    """An image's BRAVO input path (`bravo_x/.../name.png`), its key in statistics files."""
    return image.base + IMAGE_SUFFIX[image.split]


@contextlib.contextmanager
def _statistics_path(stats_out: str | Path | None, temporary: bool) -> Iterator[Path | None]:
    """Where `score_submission` writes its per-image statistics: `stats_out`, else (when the intervals need them,
    `temporary`) a file in a temporary folder that is removed on leaving, else None."""
    if stats_out is not None or not temporary:
        yield None if stats_out is None else Path(stats_out)
        return
    # A killed run cannot remove its folder (a BRAVO run's statistics are gigabytes); the next run does.
    with HeldTemporaryFolder("eomt-ood-score-") as folder:
        yield folder / "statistics.h5"


def _statistics_writer(path: Path | None) -> Any:
    """A `StoreWriter` of a statistics file (`eomt_ood.store`, no previews) at `path`, or nothing for None."""
    from eomt_ood.store import StoreWriter

    if path is None:
        return contextlib.nullcontext()
    return StoreWriter(path, model="", confidences=[SUBMISSION_SCORE], kind="statistics")


def _statistics_record(relpath: str, subset: str, stats: SparseStatistics) -> Any:
    """One scored image as a store record: its statistics, no previews (the image's size is not known)."""
    from eomt_ood.store import ImageRecord

    record = ImageRecord(relpath, subset, 0, 0, previews={}, cm=stats.cm, pixels=stats.pixels)
    record.sparse[SUBMISSION_SCORE] = (stats.levels, stats.counts)
    return record


class _NoTree:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


def _maybe_open_samples(samples: str | Path | None):
    if samples is None:
        return _NoTree()
    return open_tree(samples, "sampling file")


def _submission_ref(tree: Tree, name: str) -> MemberRef:
    if name not in tree:
        raise UserError(f"{name}: missing from the submission {tree.path}")
    return tree.ref(name)


def ground_truth_refs(image: GtImage, gt_tree: Tree, samples_tree: Tree | None) -> GroundTruthRefs:
    """Where `image`'s label, mask and (with a sampling file) sample live; a missing file is a `UserError`."""
    if image.mask_name not in gt_tree:
        raise UserError(
            f"{image.mask_name}: mask file missing from the ground truth (its label {image.label_name} exists)"
        )
    samples_ref = None
    if samples_tree is not None:
        if image.samples_name not in samples_tree:
            raise UserError(f"{image.samples_name}: missing from the sampling file {samples_tree.path}")
        samples_ref = samples_tree.ref(image.samples_name)
    return GroundTruthRefs(
        subset=image.subset,
        label=gt_tree.ref(image.label_name),
        mask=gt_tree.ref(image.mask_name),
        samples=samples_ref,
    )


def scoring_meta(gt, submission, samples, scorer: Scorer) -> dict[str, object]:
    """The `meta` block of a results file: inputs, the conventions used, and per-subset pixel counts."""
    from eomt_ood import __version__

    sampled = samples is not None
    return {
        "package": "eomt-ood",
        "version": __version__,
        "gt": str(gt) if gt is not None else None,
        "submission": str(submission),
        "samples": str(samples) if sampled else None,
        "pixels": "official sampling" if sampled else "all pixels",
        "pooling": "pooled over the pixels of each subset: one confusion matrix and one histogram set per subset",
        "confidence_levels": NUM_LEVELS,
        "confidence_of_level": "(k + 0.5) / 65536",
        "void": "label 255 is void and dropped first; mask != 0 marks invalid pixels (OOD positives)",
        "ece_weights": "float32(float32(T_b) / float32(N)), as the pinned official evaluator (numpy 1.x)",
        "subsets": scorer.counts(sampled),
    }
