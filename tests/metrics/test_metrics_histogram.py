"""Histogram metrics against scikit-learn / SciPy oracles, per-pixel transcriptions and docs/metrics.md §13 by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from eomt_ood.metrics import streaming
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
from eomt_ood.metrics.streaming import BinaryHistogram

TOL = 1e-12


def histograms(levels: np.ndarray, positive: np.ndarray, num_levels: int = NUM_LEVELS):
    pos = np.bincount(levels[positive], minlength=num_levels).astype(np.int64)
    neg = np.bincount(levels[~positive], minlength=num_levels).astype(np.int64)
    return pos, neg


def pixels(pos: np.ndarray, neg: np.ndarray):
    """Expand a histogram pair back into per-pixel (score, label) arrays for the scikit-learn oracle."""
    levels = np.arange(pos.shape[0])
    score = np.concatenate([np.repeat(levels, pos), np.repeat(levels, neg)])
    label = np.concatenate([np.ones(pos.sum(), bool), np.zeros(neg.sum(), bool)])
    return score, label


def sklearn_metrics(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    score, label = pixels(pos, neg)
    fpr, tpr, _ = roc_curve(label, score, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(label, score),
        "auprc": average_precision_score(label, score),
        "fpr95": fpr[np.argmax(tpr >= 0.95)],
    }


def assert_matches_sklearn(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    ours = curve_metrics(pos, neg)
    oracle = sklearn_metrics(pos, neg)
    assert set(ours) == {"auroc", "auprc", "fpr95"}
    for key in ours:
        assert isinstance(ours[key], float)
        assert ours[key] == pytest.approx(oracle[key], abs=TOL, rel=0), key
    return ours


def random_case(rng: np.random.Generator, n: int, num_used_levels: int, separation: float = 0.5):
    """n pixels on few distinct levels (many ties); positives lean towards higher levels."""
    used = np.sort(rng.choice(NUM_LEVELS, size=num_used_levels, replace=False))
    positive = rng.random(n) < 0.4
    shift = np.where(positive, separation, -separation)
    index = np.clip(
        np.round((rng.normal(size=n) + shift + 3) / 6 * (num_used_levels - 1)), 0, num_used_levels - 1
    )
    return histograms(used[index.astype(np.int64)], positive)


# -- docs/metrics.md §13 worked example, hand values ---------------------------------------------

SEMANTIC_LEVELS = np.array([60000, 60000, 50000, 40000, 40000, 30000, 20000, 10000, 5000, 1000])
SEMANTIC_CORRECT = np.array([1, 0, 1, 1, 1, 0, 1, 0, 1, 0], bool)
OOD_LEVELS = np.array([65535, 50000, 50000, 20000, 10000, 0])
OOD_INVALID = np.array([0, 0, 1, 1, 0, 1], bool)


def test_worked_example_semantic():
    correct, wrong = histograms(SEMANTIC_LEVELS, SEMANTIC_CORRECT)
    success = curve_metrics(correct, wrong)
    assert success["auroc"] == pytest.approx(31 / 48, abs=1e-15)
    assert success["auprc"] == pytest.approx(871 / 1260, abs=1e-15)
    assert success["fpr95"] == 0.75
    error = curve_metrics(wrong[::-1], correct[::-1])
    assert error["auprc"] == pytest.approx(2 / 3, abs=1e-15)
    # Every weight is 0.1 or 0.2 with the same relative float32 rounding, so both options give the exact value.
    assert ece(correct, wrong) == 16759 / 40960
    assert ece(correct, wrong, float32_weights=False) == pytest.approx(16759 / 40960, abs=1e-15)


def test_worked_example_ood():
    ood_pos, ood_neg = histograms(OOD_LEVELS, OOD_INVALID)
    ood = curve_metrics(ood_pos[::-1], ood_neg[::-1])
    assert ood["auroc"] == pytest.approx(13 / 18, abs=1e-15)
    assert ood["auprc"] == pytest.approx(34 / 45, abs=1e-15)
    assert ood["fpr95"] == pytest.approx(2 / 3, abs=1e-15)


def test_worked_example_hmean():
    assert hmean([0.5, 1.0]) == pytest.approx(2 / 3, abs=1e-15)
    assert hmean([0.5, 0.0]) == 0.0
    assert math.isnan(hmean([0.5, math.nan]))
    assert math.isnan(hmean([]))


# -- curve metrics against scikit-learn ----------------------------------------------------------------------


def spec_transcription(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    """docs/metrics.md §5 line by line: all 65536 levels, implicit (0, 0) start, precision 1 where tp + fp == 0."""
    tp = np.cumsum(pos[::-1])
    fp = np.cumsum(neg[::-1])
    tpr = np.concatenate(([0.0], tp / tp[-1]))
    fpr = np.concatenate(([0.0], fp / fp[-1]))
    auroc = np.trapezoid(tpr, fpr)
    with np.errstate(invalid="ignore"):
        precision = np.where(tp + fp == 0, 1.0, tp / (tp + fp))
    auprc = np.sum(np.diff(tpr) * precision)
    return {"auroc": auroc, "auprc": auprc, "fpr95": fpr[np.argmax(tpr >= 0.95)]}


@pytest.mark.parametrize("seed", range(3))
def test_matches_spec_transcription_over_all_levels(seed):
    rng = np.random.default_rng(100 + seed)
    pos, neg = random_case(rng, n=3000, num_used_levels=500)
    ours = curve_metrics(pos, neg)
    expected = spec_transcription(pos, neg)
    for key in ours:
        assert ours[key] == pytest.approx(expected[key], abs=TOL, rel=0), key


@pytest.mark.parametrize("seed", range(6))
def test_random_with_ties_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    pos, neg = random_case(rng, n=int(rng.integers(50, 3000)), num_used_levels=int(rng.integers(2, 200)))
    assert_matches_sklearn(pos, neg)


def test_dense_levels_matches_sklearn():
    rng = np.random.default_rng(7)
    pos, neg = random_case(rng, n=20000, num_used_levels=20000, separation=0.3)
    assert_matches_sklearn(pos, neg)


def test_large_counts_match_sklearn():
    # Few levels with big counts: the oracle still sees every pixel (about 2e6 of them).
    rng = np.random.default_rng(11)
    used = rng.choice(NUM_LEVELS, size=300, replace=False)
    pos = np.zeros(NUM_LEVELS, np.int64)
    neg = np.zeros(NUM_LEVELS, np.int64)
    # Positives lean to the upper half of the levels.
    pos[used] = rng.integers(0, 6000, size=300) * (used > NUM_LEVELS // 2) + rng.integers(0, 2000, size=300)
    neg[used] = rng.integers(0, 6000, size=300)
    assert_matches_sklearn(pos, neg)


def test_all_tied_scores():
    pos = np.zeros(NUM_LEVELS, np.int64)
    neg = np.zeros(NUM_LEVELS, np.int64)
    pos[1234], neg[1234] = 30, 70
    ours = assert_matches_sklearn(pos, neg)
    assert ours["auroc"] == 0.5
    assert ours["auprc"] == pytest.approx(0.3, abs=1e-15)
    assert ours["fpr95"] == 1.0


def test_perfect_and_inverted_separation():
    rng = np.random.default_rng(3)
    low = rng.integers(0, 1000, size=500)
    high = rng.integers(40000, 65536, size=300)
    separated = histograms(np.concatenate([low, high]), np.arange(800) >= 500)
    ours = assert_matches_sklearn(*separated)
    assert ours == {"auroc": 1.0, "auprc": 1.0, "fpr95": 0.0}
    inverted = histograms(np.concatenate([low, high]), np.arange(800) < 500)
    ours = assert_matches_sklearn(*inverted)
    assert ours["auroc"] == 0.0
    assert ours["fpr95"] == 1.0


def test_binary_scores():
    levels = np.array([0] * 40 + [65535] * 60)
    positive = np.zeros(100, bool)
    positive[[0, 1, 2, *range(40, 90)]] = True
    assert_matches_sklearn(*histograms(levels, positive))


def test_tiny():
    for pos_level, neg_level in [(5, 3), (3, 5), (4, 4)]:
        pos = np.zeros(NUM_LEVELS, np.int64)
        neg = np.zeros(NUM_LEVELS, np.int64)
        pos[pos_level] = 1
        neg[neg_level] = 1
        ours = assert_matches_sklearn(pos, neg)
        assert ours["auroc"] == {(5, 3): 1.0, (3, 5): 0.0, (4, 4): 0.5}[(pos_level, neg_level)]


def test_fpr95_exactly_095_counts_as_reached():
    # 20 positives: TPR 19/20 (0.95 in float64, as the literal) reached at level 10 with 1 negative accepted.
    pos = np.zeros(NUM_LEVELS, np.int64)
    neg = np.zeros(NUM_LEVELS, np.int64)
    pos[10], pos[2] = 19, 1
    neg[10], neg[5], neg[1] = 1, 2, 1
    assert curve_metrics(pos, neg)["fpr95"] == 0.25
    assert_matches_sklearn(pos, neg)


def test_other_level_counts_and_dtypes():
    rng = np.random.default_rng(5)
    levels = rng.integers(0, 256, size=1000)
    pos, neg = histograms(levels, rng.random(1000) < 0.5, num_levels=256)
    expected = sklearn_metrics(pos, neg)
    for dtype in (np.int64, np.int32, np.uint32):
        ours = curve_metrics(pos.astype(dtype), neg.astype(dtype))
        for key in ours:
            assert ours[key] == pytest.approx(expected[key], abs=TOL, rel=0)
    ours = curve_metrics(torch.from_numpy(pos), torch.from_numpy(neg))
    assert ours["auroc"] == pytest.approx(expected["auroc"], abs=TOL, rel=0)


@pytest.mark.parametrize("empty_side", ["pos", "neg", "both"])
def test_single_class_raises(empty_side):
    pos = np.zeros(NUM_LEVELS, np.int64)
    neg = np.zeros(NUM_LEVELS, np.int64)
    if empty_side not in ("pos", "both"):
        pos[100] = 3
    if empty_side not in ("neg", "both"):
        neg[200] = 2
    message = {"pos": "no positives", "neg": "no negatives", "both": "no positives and no negatives"}
    with pytest.raises(EmptyClassError, match=message[empty_side]):
        curve_metrics(pos, neg)
    with pytest.raises(EmptyClassError):
        curves(pos, neg)
    assert issubclass(EmptyClassError, ValueError)


def test_bad_inputs_raise():
    good = np.ones(10, np.int64)
    with pytest.raises(ValueError, match="differ in length"):
        curve_metrics(good, np.ones(11, np.int64))
    with pytest.raises(ValueError, match="integer"):
        curve_metrics(good.astype(float), good)
    with pytest.raises(ValueError, match="non-negative"):
        curve_metrics(good, -good)
    with pytest.raises(ValueError, match="1-D"):
        curve_metrics(good.reshape(2, 5), good.reshape(2, 5))


# -- curves --------------------------------------------------------------------------------------------------


def test_curves_match_sklearn_points():
    rng = np.random.default_rng(8)
    pos, neg = random_case(rng, n=2000, num_used_levels=150)
    ours = curves(pos, neg)
    score, label = pixels(pos, neg)
    fpr, tpr, thresholds = roc_curve(label, score, drop_intermediate=False)
    # scikit-learn also starts with the nothing-accepted point, at threshold +inf.
    np.testing.assert_allclose(ours["fpr"], fpr, rtol=0, atol=TOL)
    np.testing.assert_allclose(ours["tpr"], tpr, rtol=0, atol=TOL)
    np.testing.assert_array_equal(ours["threshold"][1:], thresholds[1:])
    assert ours["threshold"][0] == NUM_LEVELS
    assert ours["precision"][0] == 1.0 and ours["recall"][0] == 0.0
    # The step integral of the returned PR points is the AUPRC.
    auprc = np.sum(np.diff(ours["recall"]) * ours["precision"][1:])
    assert auprc == pytest.approx(curve_metrics(pos, neg)["auprc"], abs=TOL)

    few = curves(pos, neg, max_points=10)
    assert all(value.shape == (10,) for value in few.values())
    for key in ("fpr", "tpr", "threshold"):
        assert few[key][0] == ours[key][0] and few[key][-1] == ours[key][-1]
    assert np.all(np.diff(few["threshold"]) < 0)


# -- ECE -----------------------------------------------------------------------------------------------------


def ece_per_pixel(levels: np.ndarray, correct: np.ndarray, float32_weights: bool) -> float:
    """Direct transcription of docs/metrics.md §7 on pixels: bin the confidence (k + 0.5) / 65536 into
    [b/15, (b+1)/15)."""
    confidence = (levels + 0.5) / NUM_LEVELS
    bins = np.digitize(confidence, np.arange(1, 15) / 15)
    total = levels.size
    numerator = denominator = 0.0
    for b in range(15):
        inside = bins == b
        if not inside.any():
            continue
        gap = abs(confidence[inside].mean() - correct[inside].mean())
        if float32_weights:
            weight = float(np.float32(np.float32(inside.sum()) / np.float32(total)))
        else:
            weight = inside.sum() / total
        numerator += weight * gap
        denominator += weight
    return numerator / denominator


def test_level_bins_equal_confidence_bins():
    edges = level_bin_edges()
    expected = [
        0,
        4369,
        8738,
        13107,
        17476,
        21845,
        26214,
        30583,
        34953,
        39322,
        43691,
        48060,
        52429,
        56798,
        61167,
    ]
    np.testing.assert_array_equal(edges, [*expected, 65536])
    confidence = (np.arange(NUM_LEVELS) + 0.5) / NUM_LEVELS
    by_confidence = np.digitize(confidence, np.arange(1, 15) / 15)
    by_level = np.searchsorted(edges, np.arange(NUM_LEVELS), side="right") - 1
    np.testing.assert_array_equal(by_confidence, by_level)


@pytest.mark.parametrize("seed", range(4))
def test_ece_matches_per_pixel_transcription(seed):
    rng = np.random.default_rng(seed)
    n = 5000
    # Skewed confidences with some empty bins, accuracy loosely tied to confidence.
    levels = np.clip(rng.beta(5, 1.5, size=n) * NUM_LEVELS, 0, NUM_LEVELS - 1).astype(np.int64)
    is_correct = rng.random(n) < (levels / NUM_LEVELS) ** 1.5
    correct, wrong = histograms(levels, is_correct)
    for float32_weights in (True, False):
        expected = ece_per_pixel(levels, is_correct, float32_weights)
        assert ece(correct, wrong, float32_weights=float32_weights) == pytest.approx(
            expected, abs=1e-14, rel=0
        )


def test_ece_float32_and_float64_weights_differ_slightly():
    rng = np.random.default_rng(1)
    levels = rng.integers(0, NUM_LEVELS, size=9973)
    is_correct = rng.random(9973) < 0.7
    correct, wrong = histograms(levels, is_correct)
    as32 = ece(correct, wrong)
    as64 = ece(correct, wrong, float32_weights=False)
    assert as32 != as64
    assert abs(as32 - as64) < 3e-9


def test_ece_empty_raises_and_reliability():
    with pytest.raises(EmptyClassError):
        ece(np.zeros(NUM_LEVELS, np.int64), np.zeros(NUM_LEVELS, np.int64))
    correct, wrong = histograms(SEMANTIC_LEVELS, SEMANTIC_CORRECT)
    table = reliability(correct, wrong)
    assert table["count"].tolist() == [1, 1, 1, 0, 1, 0, 1, 0, 0, 2, 0, 1, 0, 2, 0]
    assert table["accuracy"][13] == 0.5 and table["accuracy"][11] == 1.0 and table["accuracy"][6] == 0.0
    assert table["confidence"][13] == (60000 + 0.5) / NUM_LEVELS
    assert np.isnan(table["accuracy"][3]) and np.isnan(table["confidence"][3])
    assert table["lower"][0] == 0.0 and table["upper"][-1] == 1.0
    filled = table["count"] > 0
    weight = table["count"][filled] / table["count"].sum()
    gap = np.abs(table["confidence"][filled] - table["accuracy"][filled])
    assert np.sum(weight * gap) == pytest.approx(ece(correct, wrong, float32_weights=False), abs=1e-15)


# -- hmean ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        [0.5, 1.0],
        [0.3],
        [0.2, 0.9, 0.75, 0.61],
        [0.5, 0.0],
        [0.0, 0.0],
        [0.5, math.nan],
        [math.nan, 0.0],
        [],
        [1.0, math.inf],
    ],
)
def test_hmean_matches_scipy(values):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = float(stats.hmean(np.asarray(values, dtype=np.float64)))
    ours = hmean(values)
    assert isinstance(ours, float)
    if math.isnan(expected):
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx(expected, rel=1e-15, abs=0)


def test_hmean_random_matches_scipy():
    rng = np.random.default_rng(0)
    values = rng.random(48)
    assert hmean(values) == pytest.approx(float(stats.hmean(values)), rel=1e-14)
    assert hmean(tuple(values)) == hmean(list(values))


def test_hmean_negative_raises():
    with pytest.raises(ValueError, match="non-negative"):
        hmean([0.5, -0.1])


# -- streaming metric ----------------------------------------------------------------------------------------


@pytest.fixture(params=["numpy", "torch"], autouse=False)
def binning_path(request, monkeypatch):
    """Run a streaming test with the numpy CPU fast path and with the torch path that GPUs use."""
    monkeypatch.setattr(streaming, "_NUMPY_ON_CPU", request.param == "numpy")
    return request.param


def test_binary_histograms_matches_masked_bincount():
    rng = np.random.default_rng(9)
    levels = rng.integers(0, NUM_LEVELS, size=(50, 60)).astype(np.uint16)
    target = rng.random((50, 60)) < 0.3
    pos, neg = binary_histograms(levels, target)
    np.testing.assert_array_equal(pos, np.bincount(levels[target], minlength=NUM_LEVELS))
    np.testing.assert_array_equal(neg, np.bincount(levels[~target], minlength=NUM_LEVELS))
    assert pos.dtype == np.int64 and neg.dtype == np.int64
    empty = binary_histograms(np.zeros(0, np.uint16), np.zeros(0, bool), num_levels=8)
    assert empty[0].shape == (8,) and empty[0].sum() == 0 == empty[1].sum()
    with pytest.raises(ValueError, match="levels must lie in"):
        binary_histograms(np.array([0, 8]), np.array([True, False]), num_levels=8)
    with pytest.raises(ValueError, match="bool"):
        binary_histograms(np.array([0, 1]), np.array([1, 0]), num_levels=8)


def random_batches(seed: int, count: int, num_levels: int = NUM_LEVELS):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        levels = torch.from_numpy(rng.integers(0, num_levels, size=shape))
        target = torch.from_numpy(rng.random(shape) < 0.3 + 0.4 * levels.numpy() / num_levels)
        yield levels, target


def test_streaming_equals_single_update(binning_path):
    batches = list(random_batches(0, 20))
    streamed = BinaryHistogram()
    for levels, target in batches:
        streamed.update(levels, target)
    whole = BinaryHistogram()
    whole.update(
        torch.cat([b[0].reshape(-1) for b in batches]), torch.cat([b[1].reshape(-1) for b in batches])
    )
    for mine, theirs in zip(streamed.counts(), whole.counts(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert streamed.compute() == whole.compute()

    levels = torch.cat([b[0].reshape(-1) for b in batches]).numpy()
    target = torch.cat([b[1].reshape(-1) for b in batches]).numpy()
    pos, neg = histograms(levels, target)
    np.testing.assert_array_equal(streamed.counts()[0], pos)
    np.testing.assert_array_equal(streamed.counts()[1], neg)
    expected = sklearn_metrics(pos, neg)
    for key, value in streamed.compute().items():
        assert value == pytest.approx(expected[key], abs=TOL, rel=0)


def test_update_counts_equals_update(binning_path):
    batches = list(random_batches(1, 5))
    by_pixels = BinaryHistogram()
    by_counts = BinaryHistogram()
    for levels, target in batches:
        by_pixels.update(levels, target)
        pos, neg = histograms(levels.numpy().ravel(), target.numpy().ravel())
        by_counts.update_counts(pos, neg if len(batches) % 2 else torch.from_numpy(neg))
    for mine, theirs in zip(by_pixels.counts(), by_counts.counts(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_merge_and_reset_and_constant_state(binning_path):
    batches = list(random_batches(2, 10, num_levels=1000))
    first, second, both = BinaryHistogram(1000), BinaryHistogram(1000), BinaryHistogram(1000)
    for i, (levels, target) in enumerate(batches):
        (first if i % 2 else second).update(levels, target)
        both.update(levels, target)
        assert first.pos.shape == (1000,) and first.pos.dtype == torch.int64
    first.merge_state(second)
    for mine, theirs in zip(first.counts(), both.counts(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert first.compute() == both.compute()
    both.reset()
    assert int(both.pos.sum()) == 0 and int(both.neg.sum()) == 0


def test_update_accepts_small_integer_dtypes(binning_path):
    rng = np.random.default_rng(4)
    levels = rng.integers(0, 256, size=(7, 9))
    target = rng.random((7, 9)) < 0.5
    reference = BinaryHistogram(256)
    reference.update(torch.from_numpy(levels), torch.from_numpy(target))
    for dtype in (torch.uint8, torch.int16, torch.int32, torch.uint16):
        metric = BinaryHistogram(256)
        metric.update(torch.from_numpy(levels).to(dtype), torch.from_numpy(target))
        np.testing.assert_array_equal(metric.counts()[0], reference.counts()[0])
        np.testing.assert_array_equal(metric.counts()[1], reference.counts()[1])
    for dtype in (np.uint8, np.uint16, np.int32):
        metric = BinaryHistogram(256)
        metric.update(levels.astype(dtype), target)
        np.testing.assert_array_equal(metric.counts()[0], reference.counts()[0])
        np.testing.assert_array_equal(metric.counts()[1], reference.counts()[1])


def test_update_rejects_bad_input(binning_path):
    metric = BinaryHistogram(100)
    target = torch.ones(3, dtype=torch.bool)
    with pytest.raises(ValueError, match="levels must lie in"):
        metric.update(torch.tensor([0, 5, 100]), target)
    with pytest.raises(ValueError, match="levels must lie in"):
        metric.update(torch.tensor([-1, 5, 10]), target)
    with pytest.raises(ValueError, match="integer"):
        metric.update(torch.tensor([0.0, 1.0, 2.0]), target)
    with pytest.raises(ValueError, match="bool"):
        metric.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.tensor([0, 1]), target)
    with pytest.raises(ValueError, match="100 levels"):
        metric.update_counts(np.zeros(99, np.int64), np.zeros(99, np.int64))
    assert int(metric.pos.sum()) == 0 and int(metric.neg.sum()) == 0


def test_compute_single_class_raises(binning_path):
    metric = BinaryHistogram(10)
    metric.update(torch.tensor([1, 2, 3]), torch.tensor([True, True, True]))
    with pytest.raises(EmptyClassError, match="no negatives"):
        metric.compute()
