"""Test oracle: an independent, per-pixel transcription of the official BRAVO evaluator
(docs/formats.md §1-§3, docs/metrics.md).

It follows the official *old-format* algorithm (raw `_pred.png` / `_conf.png`, 100,000-pixel sampling with the
legacy seed-1 RNG only for images with more than 100,000 non-void pixels) and, with `samples`, the production
algorithm (histograms on the pixels of a given per-image sample). Curves come from scikit-learn on per-pixel
arrays, summaries from `scipy.stats.hmean`. Nothing is imported from `eomt_ood`: even the file names and
suffixes are written out here again from the spec.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

ORDER = [
    "ACDCfog",
    "ACDCrain",
    "ACDCnight",
    "ACDCsnow",
    "synrain",
    "SMIYC",
    "synobjs",
    "synflare",
    "outofcontext",
]
# subset -> (folder prefix, label suffix, mask suffix, pred suffix, conf suffix)
LAYOUT = {
    **{
        f"ACDC{c}": (
            f"bravo_ACDC/{c}/",
            "_gt_labelTrainIds.png",
            "_gt_invIds.png",
            "_rgb_anon_pred.png",
            "_rgb_anon_conf.png",
        )
        for c in ("fog", "rain", "night", "snow")
    },
    "SMIYC": ("bravo_SMIYC/", "_labels_semantic_fake.png", "_labels_semantic.png", "_pred.png", "_conf.png"),
    "synobjs": ("bravo_synobjs/", "_gt.png", "_mask.png", "_pred.png", "_conf.png"),
    **{
        s: (
            f"bravo_{s}/",
            "_gt_labelTrainIds.png",
            "_gt_invIds.png",
            "_leftImg8bit_pred.png",
            "_leftImg8bit_conf.png",
        )
        for s in ("synrain", "synflare", "outofcontext")
    },
}
SEMANTIC = [s for s in ORDER if s != "SMIYC"]
OOD = ["SMIYC", "synobjs"]
SAMPLES_PER_IMG = 100_000


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img)


def _bases(gt_root: Path, subset: str) -> list[str]:
    prefix, label_suffix = LAYOUT[subset][:2]
    found = []
    for path in sorted(gt_root.rglob("*" + label_suffix)):
        rel = path.relative_to(gt_root).as_posix()
        if rel.startswith(prefix):
            found.append(rel[: -len(label_suffix)])
    return found


def _ece(correct: np.ndarray, conf: np.ndarray) -> float:
    """ECE per pixel: 15 equal bins of c = (k + 0.5) / 65536, float32 weights (official numpy 1.x rule)."""
    c = (conf.astype(np.float64) + 0.5) / 65536
    bins = np.minimum(np.floor(c * 15).astype(np.int64), 14)
    n = c.size
    weights, gaps = [], []
    for b in range(15):
        sel = bins == b
        count = int(sel.sum())
        if count == 0:
            continue
        weights.append(np.float32(np.float32(count) / np.float32(n)))
        gaps.append(abs(c[sel].mean() - correct[sel].mean()))
    w = np.array(weights, dtype=np.float64)
    return float(np.sum(w * np.array(gaps)) / np.sum(w))


def _curves(positive: np.ndarray, score: np.ndarray) -> tuple[float, float, float]:
    positive = positive.astype(bool)
    score = score.astype(np.int64)
    auroc = roc_auc_score(positive, score)
    fpr, tpr, _ = roc_curve(positive, score, drop_intermediate=False)
    fpr95 = fpr[np.argmax(tpr >= 0.95)]
    auprc = average_precision_score(positive, score)
    return float(auroc), float(auprc), float(fpr95)


def official_results(
    gt_root: Path,
    sub_root: Path,
    subsets: list[str] | None = None,
    samples: dict[str, np.ndarray] | None = None,
) -> dict[str, object]:
    """The official result keys for a GT folder and a raw submission folder.

    samples: optional {<base>: sorted flat indices}; then the production rule applies (semantic histograms on
    V pixels of the sample, OOD on I and V pixels of the sample); else the old-format rule.
    """
    gt_root, sub_root = Path(gt_root), Path(sub_root)
    subsets = subsets or [s for s in ORDER if _bases(gt_root, s)]
    results: dict[str, object] = {}
    for subset in [s for s in ORDER if s in subsets]:
        _, label_suffix, mask_suffix, pred_suffix, conf_suffix = LAYOUT[subset]
        cm = np.zeros((19, 19))
        sem_right, sem_conf, ood_truth, ood_conf = [], [], [], []
        for base in _bases(gt_root, subset):
            gt = _read(gt_root / (base + label_suffix)).ravel()
            mask_valid = _read(gt_root / (base + mask_suffix)).ravel() == 0
            pred = _read(sub_root / (base + pred_suffix)).ravel()
            conf = _read(sub_root / (base + conf_suffix)).ravel().astype(np.int64)
            non_void = gt != 255
            gt_nv, pred_nv, valid_nv = gt[non_void], pred[non_void], mask_valid[non_void]
            np.add.at(cm, (gt_nv[valid_nv].astype(int), pred_nv[valid_nv].astype(int)), 1)
            if samples is None:
                all_idx = np.arange(gt_nv.size)
                rng = np.random.RandomState(1)
                if gt_nv.size > SAMPLES_PER_IMG:
                    all_idx = rng.choice(all_idx, SAMPLES_PER_IMG, replace=False)
                valid_idx = np.nonzero(valid_nv)[0]
                if valid_idx.size > SAMPLES_PER_IMG:
                    valid_idx = rng.choice(valid_idx, SAMPLES_PER_IMG, replace=False)
                conf_nv = conf[non_void]
                sem_right.append(gt_nv[valid_idx] == pred_nv[valid_idx])
                sem_conf.append(conf_nv[valid_idx])
                ood_truth.append(~valid_nv[all_idx])
                ood_conf.append(conf_nv[all_idx])
            else:
                idx = samples[base]
                g, p, v, c = gt[idx], pred[idx], mask_valid[idx], conf[idx]
                sem_right.append((g == p)[v])
                sem_conf.append(c[v])
                ood_truth.append(~v)
                ood_conf.append(c)
        if subset in SEMANTIC:
            right, conf = np.concatenate(sem_right), np.concatenate(sem_conf)
            with np.errstate(invalid="ignore"):
                iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
            auroc, auprc_success, fpr95 = _curves(right, conf)
            _, auprc_error, _ = _curves(~right, -conf)
            results[f"{subset}_miou_valid"] = float(np.nanmean(iou))
            results[f"{subset}_iou_valid"] = iou.tolist()
            results[f"{subset}_ece_valid"] = _ece(right, conf)
            results[f"{subset}_auroc_valid"] = auroc
            results[f"{subset}_auprc_success_valid"] = auprc_success
            results[f"{subset}_auprc_error_valid"] = auprc_error
            results[f"{subset}_fpr95_valid"] = fpr95
        if subset in OOD:
            truth, conf = np.concatenate(ood_truth), np.concatenate(ood_conf)
            auroc, auprc, fpr95 = _curves(truth, 65535 - conf)
            results[f"{subset}_auroc_ood"] = auroc
            results[f"{subset}_auprc_ood"] = auprc
            results[f"{subset}_fpr95_ood"] = fpr95
    scalars = {
        k: (1.0 - v if "_ece_" in k or "_fpr95_" in k else v) for k, v in results.items() if np.isscalar(v)
    }
    summary: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for subset in [s for s in ORDER if s in subsets]:
            summary[f"{subset}_hmean"] = float(
                stats.hmean([v for k, v in scalars.items() if k.startswith(subset + "_")])
            )
        semantic = float(stats.hmean([v for k, v in scalars.items() if k.endswith("_valid")]))
        ood = float(stats.hmean([v for k, v in scalars.items() if k.endswith("_ood")]))
        summary["semantic_hmean"] = semantic
        summary["ood_hmean"] = ood
        summary["bravo_index"] = float(stats.hmean([semantic, ood]))
    results.update(summary)
    return results


def assert_results_equal(ours: dict, expected: dict, tol: float = 1e-9) -> None:
    """Same keys in the same order (ignoring `meta`), every value within `tol`, NaN exactly where NaN."""
    got = {k: v for k, v in ours.items() if k != "meta"}
    assert list(got) == list(expected)
    for key, value in expected.items():
        a = np.asarray(got[key], dtype=np.float64)
        b = np.asarray(value, dtype=np.float64)
        assert a.shape == b.shape, key
        assert np.array_equal(np.isnan(a), np.isnan(b)), key
        assert np.allclose(a, b, rtol=0, atol=tol, equal_nan=True), (key, got[key], value)
