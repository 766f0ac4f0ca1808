"""Matcher and loss against the transformers Mask2Former implementation (the recipe's reference, docs/training.md §4).

Oracle choice: both implementations draw their random points with `torch.rand` in the same order and shapes
(per prediction set: one (1, N, 2) draw per image for matching, then (M, 3N, 2) candidates and (M, N/4, 2)
fresh points for the M matched masks). Seeding the global RNG identically before each call therefore gives
both the same points, so any difference in the assignment or the loss values is a real formula difference.
Logits are random and targets are random blobs at 4x the logit resolution, as in training.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.mask2former.configuration_mask2former import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerHungarianMatcher,
    Mask2FormerLoss,
)

from eomt_ood.training.loss import MaskClassificationLoss, average_num_masks, uncertain_points
from eomt_ood.training.matcher import match_batch, sample_points

NUM_CLASSES = 5
NUM_POINTS = 256


def _inputs(seed: int, batch: int = 2, queries: int = 7, logit_size: int = 8, num_sets: int = 1):
    gen = torch.Generator().manual_seed(seed)
    sets = []
    for _ in range(num_sets):
        masks = torch.randn(batch, queries, logit_size, logit_size, generator=gen) * 3
        classes = torch.randn(batch, queries, NUM_CLASSES + 1, generator=gen)
        sets.append((masks, classes))
    target_masks, target_labels = [], []
    for b in range(batch):
        k = 2 + b  # different K per image
        blobs = torch.rand(k, 4, 4, generator=gen) > 0.5
        masks = blobs.repeat_interleave(logit_size, 1).repeat_interleave(logit_size, 2)  # (k, 4h, 4w)
        target_masks.append(masks)
        target_labels.append(torch.randperm(NUM_CLASSES, generator=gen)[:k])
    return sets, target_masks, target_labels


def _oracle_loss() -> Mask2FormerLoss:
    config = Mask2FormerConfig(
        num_labels=NUM_CLASSES,
        train_num_points=NUM_POINTS,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
        class_weight=2.0,
        mask_weight=5.0,
        dice_weight=5.0,
        no_object_weight=0.1,
    )
    return Mask2FormerLoss(config, weight_dict={})


def test_sample_points_corners_and_centres():
    # align_corners=False: u = (j + 0.5) / W hits pixel centre j exactly.
    feat = torch.arange(16.0).reshape(1, 1, 4, 4)
    pts = torch.tensor([[[0.125, 0.125], [0.875, 0.125], [0.375, 0.625]]])  # (x, y)
    assert torch.equal(sample_points(feat, pts), torch.tensor([[[0.0, 3.0, 9.0]]]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matching_equals_transformers(seed):
    (sets, target_masks, target_labels) = _inputs(seed)
    masks, classes = sets[0]
    oracle = Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=NUM_POINTS)
    torch.manual_seed(100 + seed)
    expected = oracle(masks, classes, [m.float() for m in target_masks], target_labels)
    torch.manual_seed(100 + seed)
    got = match_batch(masks, classes, target_masks, target_labels, num_points=NUM_POINTS)
    for (eq, et), (gq, gt) in zip(expected, got, strict=True):
        assert torch.equal(eq, gq) and torch.equal(et, gt)
        assert len(gq) == len(gt)


@pytest.mark.parametrize("seed", [0, 3])
def test_loss_equals_transformers_deep_supervision(seed):
    sets, target_masks, target_labels = _inputs(seed, num_sets=3)
    ours = MaskClassificationLoss(NUM_CLASSES, num_points=NUM_POINTS)
    oracle = _oracle_loss()

    torch.manual_seed(7 + seed)
    got = ours([m for m, _ in sets], [c for _, c in sets], target_masks, target_labels)

    torch.manual_seed(7 + seed)
    float_targets = [m.float() for m in target_masks]
    expected_total = torch.zeros(())
    for i, (masks, classes) in enumerate(sets):
        # One oracle call per set keeps the RNG order of the official per-set loop (match, then sample).
        parts = oracle(masks, classes, float_targets, target_labels)
        assert torch.allclose(got[f"mask_{i}"], parts["loss_mask"], rtol=1e-6, atol=1e-7)
        assert torch.allclose(got[f"dice_{i}"], parts["loss_dice"], rtol=1e-6, atol=1e-7)
        assert torch.allclose(got[f"ce_{i}"], parts["loss_cross_entropy"], rtol=1e-6, atol=1e-7)
        expected_total += 5 * parts["loss_mask"] + 5 * parts["loss_dice"] + 2 * parts["loss_cross_entropy"]
    assert torch.allclose(got["loss"], expected_total, rtol=1e-6)


def test_loss_gradients_flow_and_are_finite():
    sets, target_masks, target_labels = _inputs(5, num_sets=2)
    leaves = [(m.clone().requires_grad_(), c.clone().requires_grad_()) for m, c in sets]
    out = MaskClassificationLoss(NUM_CLASSES, num_points=NUM_POINTS)(
        [m for m, _ in leaves], [c for _, c in leaves], target_masks, target_labels
    )
    out["loss"].backward()
    for m, c in leaves:
        assert torch.isfinite(m.grad).all() and m.grad.abs().sum() > 0
        assert torch.isfinite(c.grad).all() and c.grad.abs().sum() > 0


def test_image_without_targets_is_all_no_object():
    sets, target_masks, target_labels = _inputs(6)
    target_masks[0] = target_masks[0][:0]
    target_labels[0] = target_labels[0][:0]
    masks, classes = sets[0]
    torch.manual_seed(0)
    got = MaskClassificationLoss(NUM_CLASSES, num_points=NUM_POINTS)(
        [masks], [classes], target_masks, target_labels
    )
    torch.manual_seed(0)
    expected = _oracle_loss()(masks, classes, [m.float() for m in target_masks], target_labels)
    assert torch.allclose(got["ce_0"], expected["loss_cross_entropy"], rtol=1e-6)
    assert torch.allclose(got["mask_0"], expected["loss_mask"], rtol=1e-6)


def test_uncertain_points_keep_the_most_uncertain():
    # Independent re-computation: replay the candidate draw and check that the 300 kept points are exactly the
    # 300 candidates of smallest |logit| (ties aside), and that the last 100 are fresh draws.
    xs = torch.linspace(0, 1, 64)
    logits = (20 * (xs - 0.5).abs()).expand(64, 64)[None, None].contiguous()
    torch.manual_seed(0)
    pts = uncertain_points(logits, num_points=400, oversample_ratio=3.0, importance_sample_ratio=0.75)
    torch.manual_seed(0)
    candidates = torch.rand(1, 1200, 2)
    fresh = torch.rand(1, 100, 2)
    assert pts.shape == (1, 400, 2)
    cand_abs = sample_points(logits, candidates)[0, 0].abs()
    kept_abs = sample_points(logits, pts[:, :300])[0, 0].abs()
    threshold = cand_abs.sort().values[299]
    assert kept_abs.max() <= threshold
    assert torch.equal(pts[:, 300:], fresh)


def test_average_num_masks_single_process():
    labels = [torch.arange(3), torch.arange(0)]
    assert average_num_masks(labels, torch.device("cpu")).item() == 3.0
    assert average_num_masks([torch.arange(0)], torch.device("cpu")).item() == 1.0
