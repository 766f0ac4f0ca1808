"""Confusion matrix and IoU against scikit-learn and a hand-checked example (docs/metrics.md §6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics
import torch

from eomt_ood.metrics import streaming
from eomt_ood.metrics.segmentation import confusion_matrix, iou_per_class, mean_iou
from eomt_ood.metrics.streaming import ConfusionMatrix


def sklearn_cm(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    return sklearn.metrics.confusion_matrix(gt.ravel(), pred.ravel(), labels=np.arange(num_classes))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.uint16])
def test_confusion_matrix_matches_sklearn(dtype):
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 19, size=(37, 53)).astype(dtype)
    # Mostly right, so the diagonal dominates as in real data.
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 19, size=gt.shape)).astype(dtype)
    cm = confusion_matrix(gt, pred)
    assert cm.dtype == np.int64 and cm.shape == (19, 19)
    np.testing.assert_array_equal(cm, sklearn_cm(gt, pred, 19))


def test_hand_checked_example():
    # Class 2 is only predicted (IoU 0); class 3 is in neither GT nor pred (NaN).
    gt = np.array([0, 0, 0, 1, 1, 1], np.uint8)
    pred = np.array([0, 0, 1, 1, 1, 2], np.uint8)
    cm = confusion_matrix(gt, pred, num_classes=4)
    np.testing.assert_array_equal(cm, [[2, 1, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    iou = iou_per_class(cm)
    assert iou[0] == 2 / 3 and iou[1] == 1 / 2 and iou[2] == 0.0 and math.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx(7 / 18, abs=1e-15)
    # scikit-learn's jaccard_score is IoU per class; it gives 0 where we give NaN.
    expected = sklearn.metrics.jaccard_score(gt, pred, labels=[0, 1, 2], average=None)
    np.testing.assert_allclose(iou[:3], expected, rtol=0, atol=1e-15)


def test_iou_matches_sklearn_jaccard():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 19, size=4000)
    pred = np.where(rng.random(4000) < 0.6, gt, rng.integers(0, 19, size=4000))
    iou = iou_per_class(confusion_matrix(gt, pred))
    expected = sklearn.metrics.jaccard_score(gt, pred, labels=np.arange(19), average=None)
    np.testing.assert_allclose(iou, expected, rtol=0, atol=1e-15)
    assert mean_iou(confusion_matrix(gt, pred)) == pytest.approx(expected.mean(), abs=1e-15)


def test_empty_and_bad_inputs():
    empty = confusion_matrix(np.zeros(0, np.uint8), np.zeros(0, np.uint8))
    assert empty.sum() == 0
    assert np.isnan(iou_per_class(empty)).all()
    assert math.isnan(mean_iou(empty))
    with pytest.raises(ValueError, match="gt: class ids must lie in 0..18"):
        confusion_matrix(np.array([0, 19]), np.array([0, 1]))
    with pytest.raises(ValueError, match="pred: class ids must lie in 0..18"):
        confusion_matrix(np.array([0, 1], np.uint8), np.array([0, 255], np.uint8))
    with pytest.raises(ValueError, match="pred: class ids"):
        confusion_matrix(np.array([0, 1]), np.array([0, -1]))
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.array([0.0]), np.array([0]))


@pytest.fixture(params=["numpy", "torch"])
def counting_path(request, monkeypatch):
    """Run a streaming test with the numpy CPU fast path and with the torch path that GPUs use."""
    monkeypatch.setattr(streaming, "_NUMPY_ON_CPU", request.param == "numpy")
    return request.param


def test_metric_ignore_index_and_streaming(counting_path):
    rng = np.random.default_rng(2)
    metric = ConfusionMatrix(num_classes=5)
    all_gt, all_pred = [], []
    for _ in range(6):
        target = rng.integers(0, 5, size=(8, 11))
        target[rng.random(target.shape) < 0.2] = 255
        # Pred on ignored pixels is out of range on purpose: it must not be looked at.
        pred = np.where(
            target == 255, 77, np.where(rng.random(target.shape) < 0.5, target, rng.integers(0, 5))
        )
        metric.update(torch.from_numpy(pred), torch.from_numpy(target).to(torch.uint8))
        scored = target != 255
        all_gt.append(target[scored])
        all_pred.append(pred[scored])
    gt, pred = np.concatenate(all_gt), np.concatenate(all_pred)
    np.testing.assert_array_equal(metric.cm.numpy(), sklearn_cm(gt, pred, 5))
    result = metric.compute()
    np.testing.assert_array_equal(np.array(result["iou"]), iou_per_class(sklearn_cm(gt, pred, 5)))
    assert result["miou"] == mean_iou(sklearn_cm(gt, pred, 5))

    other = ConfusionMatrix(num_classes=5)
    other.update_counts(confusion_matrix(gt, pred, 5))
    other.update_counts(torch.from_numpy(confusion_matrix(gt, pred, 5)))
    np.testing.assert_array_equal(other.cm.numpy(), 2 * metric.cm.numpy())
    metric.merge_state(other)
    np.testing.assert_array_equal(metric.cm.numpy(), 3 * sklearn_cm(gt, pred, 5))
    metric.reset()
    assert int(metric.cm.sum()) == 0 and metric.cm.shape == (5, 5)


def test_metric_nan_class(counting_path):
    metric = ConfusionMatrix(num_classes=3, ignore_index=255)
    metric.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 255]))
    result = metric.compute()
    assert result["iou"][0] == 2 / 3 and result["iou"][1] == 0.0 and math.isnan(result["iou"][2])
    assert result["miou"] == pytest.approx(1 / 3, abs=1e-15)


def test_metric_rejects_out_of_range(counting_path):
    metric = ConfusionMatrix(num_classes=19)
    with pytest.raises(ValueError, match="target: class ids must lie in 0..18 \\(or 255\\)"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0, 19]))
    with pytest.raises(ValueError, match="pred: class ids must lie in 0..18"):
        metric.update(torch.tensor([0, 19]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="pred: class ids"):
        metric.update(torch.tensor([-1, 0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        metric.update(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="matrix"):
        metric.update_counts(np.zeros((3, 3), np.int64))
    assert int(metric.cm.sum()) == 0
    # No ignore index: 255 is an ordinary (out-of-range) label.
    strict = ConfusionMatrix(num_classes=19, ignore_index=None)
    with pytest.raises(ValueError, match="target"):
        strict.update(torch.tensor([0]), torch.tensor([255]))


def test_metric_fully_ignored_batch_and_strided_input(counting_path):
    metric = ConfusionMatrix(num_classes=3)
    metric.update(torch.tensor([[9, 9], [9, 9]]), torch.full((2, 2), 255, dtype=torch.uint8))
    assert int(metric.cm.sum()) == 0
    target = torch.tensor([[0, 1, 2, 255], [2, 2, 1, 0]])
    pred = torch.tensor([[0, 1, 1, 0], [2, 0, 1, 0]])
    # Transposed (non-contiguous) views count the same pixels.
    metric.update(pred.t(), target.t())
    expected = sklearn_cm(np.array([0, 1, 2, 2, 2, 1, 0]), np.array([0, 1, 1, 2, 0, 1, 0]), 3)
    np.testing.assert_array_equal(metric.cm.numpy(), expected)
