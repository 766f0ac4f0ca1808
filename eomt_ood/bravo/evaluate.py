"""BRAVO scoring (`bravo.md` §4): per-image statistics, per-subset pooling, the official keys and summaries.

Data flow: for every GT image, `image_statistics` turns (label, mask, pred, conf) into one confusion matrix
and three level histograms; a `SubsetAccumulator` sums them per subset (memory does not grow with the number of
images); `subset_metrics` turns one accumulator into the official `<metric>` values; `summarise` adds the
harmonic means of §4.9. `score_submission` does all of it over a GT tree and a raw submission tree (folders or
tars), reading images in worker processes.

Conventions (the official evaluator's): pixels are pooled over a subset, confidence level k stands for
(k + 0.5) / 65536, label 255 is void and dropped before anything else, mask != 0 is invalid. Semantic
histograms use valid (V) pixels; OOD uses invalid (I) pixels as positives and V pixels as negatives, ranked by
doubt = 65535 - conf.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eomt_ood.data.bravo import (
    NUM_CLASSES,
    OOD_SUBSETS,
    SEMANTIC_SUBSETS,
    SUBSETS,
    GtImage,
    MemberRef,
    Tree,
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

NUM_LEVELS = 65536  # 16-bit confidence levels; equals eomt_ood.metrics.histogram.NUM_LEVELS
_CM_OUTSIDE = NUM_CLASSES * NUM_CLASSES  # bincount slot for pixels that are not in the confusion matrix

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
    """Counts of one image (or of many, after `+`); all arrays int64.

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

    def __iadd__(self, other: ImageStatistics) -> ImageStatistics:
        self.cm += other.cm
        self.correct += other.correct
        self.wrong += other.wrong
        self.ood_pos += other.ood_pos
        self.valid += other.valid
        self.invalid += other.invalid
        self.void += other.void
        self.scored_valid += other.scored_valid
        self.scored_invalid += other.scored_invalid
        return self


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
    """Confusion matrix and level histograms of one image (`bravo.md` §4.1).

    label: (H, W) uint8 train ids, 255 = void. mask: (H, W), non-zero = invalid. pred: (H, W) uint8 train ids.
    conf_levels: (H, W) uint16 confidence levels, higher = more in-distribution. sample_idx: optional sorted
    flat indices (the official sample, §5.2); then the histograms use only sampled pixels while the confusion
    matrix still uses every V pixel. Bad values raise `UserError` naming `label_name` / `pred_name` /
    `sample_name`: a label outside 0..18 and 255, a pred > 18, a sample outside the image or on void.
    """
    shape = label.shape
    if mask.shape != shape or pred.shape != shape or conf_levels.shape != shape:
        raise UserError(
            f"{label_name}: shapes differ: label {shape}, mask {mask.shape}, pred {pred.shape}, "
            f"conf {conf_levels.shape}"
        )
    if label.dtype != np.uint8 or pred.dtype != np.uint8 or conf_levels.dtype != np.uint16:
        raise TypeError(
            f"expected uint8 label/pred and uint16 conf, got {label.dtype}, {pred.dtype}, {conf_levels.dtype}"
        )
    lab = label.ravel()
    prd = pred.ravel()
    conf = conf_levels.ravel()
    inv = mask.ravel() != 0

    label_counts = np.bincount(lab, minlength=256)
    bad_labels = np.flatnonzero(label_counts[NUM_CLASSES:255]) + NUM_CLASSES
    if bad_labels.size:
        raise UserError(
            f"{label_name}: GT label holds class id(s) {_ids(bad_labels)} outside 0..18 (and 255 = void)"
        )
    if prd.size and int(prd.max()) > NUM_CLASSES - 1:
        bad_preds = np.flatnonzero(np.bincount(prd, minlength=256)[NUM_CLASSES:]) + NUM_CLASSES
        raise UserError(f"{pred_name}: prediction holds class id(s) {_ids(bad_preds)}; train ids are 0..18")

    void = lab == 255
    valid = ~void & ~inv
    # Confusion matrix over V pixels in one bincount: every other pixel goes to an extra slot that is dropped.
    pair = lab.astype(np.uint16) * NUM_CLASSES + prd
    cm = np.bincount(np.where(valid, pair, _CM_OUTSIDE), minlength=_CM_OUTSIDE + 1)[:_CM_OUTSIDE]

    if sample_idx is None:
        s_lab, s_prd, s_conf, s_inv, s_void = lab, prd, conf, inv, void
    else:
        if sample_idx.size == 0 or sample_idx[-1] >= lab.size or sample_idx[0] < 0:
            raise UserError(f"{sample_name}: sample indices fall outside the {lab.size}-pixel image")
        s_void = void[sample_idx]
        if s_void.any():
            raise UserError(
                f"{sample_name}: the sample contains void pixels (wrong sampling file for this GT?)"
            )
        s_lab, s_prd, s_conf, s_inv = lab[sample_idx], prd[sample_idx], conf[sample_idx], inv[sample_idx]

    # One bincount over (level, category) pairs, category 0 = wrong V, 1 = correct V, 2 = I, 3 = void.
    category = (s_lab == s_prd).view(np.uint8)
    category = np.where(s_inv, np.uint8(2), category)
    category = np.where(s_void, np.uint8(3), category)
    key = s_conf.astype(np.intp) << 2
    key |= category
    both = np.bincount(key, minlength=4 * NUM_LEVELS).reshape(NUM_LEVELS, 4)
    num_void = int(label_counts[255])
    num_invalid = int(np.count_nonzero(inv & ~void))
    stats = ImageStatistics(
        cm=cm.astype(np.int64).reshape(NUM_CLASSES, NUM_CLASSES),
        correct=np.ascontiguousarray(both[:, 1]),
        wrong=np.ascontiguousarray(both[:, 0]),
        ood_pos=np.ascontiguousarray(both[:, 2]),
        valid=lab.size - num_void - num_invalid,
        invalid=num_invalid,
        void=num_void,
    )
    stats.scored_valid = int(stats.correct.sum() + stats.wrong.sum())
    stats.scored_invalid = int(stats.ood_pos.sum())
    return stats


def _ids(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in values[:5])
    return shown + (", ..." if values.size > 5 else "")


# ------------------------------------------------------------------------------------------------ one subset


@dataclass
class SubsetAccumulator:
    """Sum of the `ImageStatistics` of one subset, plus its image count."""

    subset: str
    images: int = 0
    totals: ImageStatistics = field(default_factory=ImageStatistics.zeros)

    def add(self, stats: ImageStatistics) -> None:
        self.totals += stats
        self.images += 1

    def metrics(self) -> dict[str, float | list[float]]:
        return subset_metrics(self.subset, self.totals)

    def counts(self, sampled: bool) -> dict[str, int]:
        t = self.totals
        out = {"images": self.images, "valid": t.valid, "invalid": t.invalid, "void": t.void}
        if sampled:
            out.update(sampled_valid=t.scored_valid, sampled_invalid=t.scored_invalid)
        return out


def subset_metrics(subset: str, totals: ImageStatistics) -> dict[str, float | list[float]]:
    """The official metrics of one subset (keys without the `<subset>_` prefix, official order, §4.7/§4.8).

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
    """Summary keys of §4.9: `<S>_hmean` per subset, then `semantic_hmean`, `ood_hmean`, `bravo_index`.

    metrics: the flat `<subset>_<metric>` dict. Scalars only (lists are skipped); keys containing `_ece_` or
    `_fpr95_` enter as 1 - value. subsets: which `<S>_hmean` to write, default every subset with a key, in the
    official order. Harmonic means follow scipy (0 if any value is 0, NaN if any is NaN or none).
    """
    from eomt_ood.metrics.histogram import hmean

    scalars = {
        key: (1.0 - value if ("_ece_" in key or "_fpr95_" in key) else value)
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
    """Everything a worker needs to score one GT image (small and picklable)."""

    subset: str
    label: MemberRef
    mask: MemberRef
    pred: MemberRef
    conf: MemberRef
    samples: MemberRef | None = None


def score_image(task: ImageTask) -> tuple[str, ImageStatistics]:
    """Read, check and count one image (runs in a worker process)."""
    label = read_label(task.label.read(), task.label.name)
    mask = read_mask(task.mask.read(), task.mask.name)
    pred = read_pred(task.pred.read(), task.pred.name)
    conf = read_conf(task.conf.read(), task.conf.name)
    for ref, array in ((task.mask, mask), (task.pred, pred), (task.conf, conf)):
        if array.shape != label.shape:
            raise UserError(
                f"{ref.name}: size {_size(array)} differs from the GT label {task.label.name} ({_size(label)})"
            )
    sample_idx = None
    if task.samples is not None:
        from eomt_ood.bravo.sampling import decode_sample_indices

        sample_idx = decode_sample_indices(task.samples.read(), task.samples.name)
    stats = image_statistics(
        label,
        mask,
        pred,
        conf,
        sample_idx,
        label_name=task.label.name,
        pred_name=task.pred.name,
        sample_name=task.samples.name if task.samples is not None else "sample",
    )
    return task.subset, stats


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def _stderr_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def score_submission(
    gt: str | Path,
    submission: str | Path,
    subsets: Sequence[str] | None = None,
    samples: str | Path | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    warn: Callable[[str], None] | None = _stderr_warning,
) -> dict[str, object]:
    """Score a raw BRAVO submission against a GT tree; returns the results dict (official keys, then `meta`).

    gt, submission: folders or tars (submission may be gzip/bz2/xz) in the BRAVO layout (`bravo.md` §2, §3.1).
    subsets: restrict to these subset names (default: every subset present in the GT). samples: the
    `bravo_SAMPLING.tar` to use the official per-image pixel sample (default: every pixel). workers: reading
    processes (default min(cpu count, 4); 0 or 1 = inline). progress: tqdm bar on stderr (None = only on a
    terminal). warn: receives one line per warning (unmatched files). Bad input raises `UserError`.
    """
    if subsets is not None:
        unknown = [s for s in subsets if s not in SUBSETS]
        if unknown:
            raise UserError(f"--subsets: unknown subset {unknown[0]!r}; valid names: {', '.join(SUBSETS)}")
    with (
        open_tree(gt, "ground truth") as gt_tree,
        open_tree(submission, "submission") as sub_tree,
        _maybe_open_samples(samples) as samples_tree,
    ):
        by_subset = match_gt(gt_tree.names, warn)
        if subsets is None:
            selected = [s for s in SUBSETS if by_subset[s]]
            if not selected:
                raise UserError(
                    f"{gt}: no BRAVO ground-truth images found (expected bravo_<split>/... files)"
                )
        else:
            selected = [s for s in SUBSETS if s in set(subsets)]
            for s in selected:
                if not by_subset[s]:
                    raise UserError(
                        f"subset {s}: requested with --subsets but the ground truth {gt} has no images of it"
                    )
        all_images = [image for s in SUBSETS for image in by_subset[s]]
        warn_unmatched(unmatched_submission_files(sub_tree.names, all_images), "submission", warn)
        tasks = [
            _make_task(image, gt_tree, sub_tree, samples_tree) for s in selected for image in by_subset[s]
        ]
        accumulators = {s: SubsetAccumulator(s) for s in selected}
        for subset, stats in _run_tasks(tasks, workers, progress):
            accumulators[subset].add(stats)

    metrics: dict[str, object] = {}
    for subset in selected:
        metrics.update((f"{subset}_{key}", value) for key, value in accumulators[subset].metrics().items())
    results: dict[str, object] = dict(metrics)
    results.update(summarise(metrics, selected))
    results["meta"] = scoring_meta(gt, submission, samples, accumulators)
    return results


class _NoTree:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


def _maybe_open_samples(samples: str | Path | None):
    if samples is None:
        return _NoTree()
    return open_tree(samples, "sampling file")


def _make_task(image: GtImage, gt_tree: Tree, sub_tree: Tree, samples_tree: Tree | None) -> ImageTask:
    if image.mask_name not in gt_tree:
        raise UserError(
            f"{image.mask_name}: mask file missing from the ground truth (its label {image.label_name} exists)"
        )
    for name in (image.pred_name, image.conf_name):
        if name not in sub_tree:
            raise UserError(f"{name}: missing from the submission {sub_tree.path}")
    samples_ref = None
    if samples_tree is not None:
        if image.samples_name not in samples_tree:
            raise UserError(f"{image.samples_name}: missing from the sampling file {samples_tree.path}")
        samples_ref = samples_tree.ref(image.samples_name)
    return ImageTask(
        subset=image.subset,
        label=gt_tree.ref(image.label_name),
        mask=gt_tree.ref(image.mask_name),
        pred=sub_tree.ref(image.pred_name),
        conf=sub_tree.ref(image.conf_name),
        samples=samples_ref,
    )


def _run_tasks(
    tasks: list[ImageTask], workers: int | None, progress: bool | None
) -> Iterable[tuple[str, ImageStatistics]]:
    """Yield (subset, statistics) per image, inline or from worker processes (at most 4 tasks per worker queued).

    Results arrive in any order; they are summed, so the totals do not depend on it.
    """
    from tqdm import tqdm

    workers = default_workers() if workers is None else workers
    disable = None if progress is None else not progress
    with tqdm(total=len(tasks), unit="img", file=sys.stderr, disable=disable, desc="scoring") as bar:
        if workers <= 1:
            for task in tasks:
                yield score_image(task)
                bar.update()
            return
        # forkserver: workers start clean (no inherited threads from tqdm or torch in the parent).
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        pending: set[Future] = set()
        queue = iter(tasks)
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as executor:
            try:
                for task in queue:
                    pending.add(executor.submit(score_image, task))
                    if len(pending) >= 4 * workers:
                        break
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
                        bar.update()
                        task = next(queue, None)
                        if task is not None:
                            pending.add(executor.submit(score_image, task))
            except BaseException:
                executor.shutdown(wait=True, cancel_futures=True)
                raise


def scoring_meta(gt, submission, samples, accumulators: dict[str, SubsetAccumulator]) -> dict[str, object]:
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
        "subsets": {s: acc.counts(sampled) for s, acc in accumulators.items()},
    }


def write_results(results: dict[str, object], out: str | Path) -> None:
    """Write the results as JSON (NaN as the bare token `NaN`, like Python's json), atomically."""
    import json

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out)
