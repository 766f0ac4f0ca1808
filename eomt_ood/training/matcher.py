"""Hungarian matching of predicted masks/classes to target segments (Mask2Former matcher, docs/training.md §4).

Per image, without gradients: cost = w_mask * pairwise BCE + w_class * (-softmax prob of the target class)
+ w_dice * pairwise dice, all mask terms on one shared set of uniform random points; clamp to [-1e10, 1e10],
NaN -> 0, then `scipy.optimize.linear_sum_assignment`. The algorithm follows Mask2Former (Cheng et al. 2022)
as packaged in transformers 4.56.1 (`Mask2FormerHungarianMatcher`); the random draws are made in the same
order and shapes, so with the same RNG state both pick the same points.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def sample_points(features: Tensor, points: Tensor) -> Tensor:
    """Bilinear values of `features` (N, C, H, W) at `points` (N, P, 2) in [0, 1]^2 (x, y) -> (N, C, P).

    `grid_sample` on 2u - 1 with align_corners=False: u = 0 and 1 are the outer edges of the first/last pixel.
    """
    grid = 2.0 * points.unsqueeze(2) - 1.0  # (N, P, 1, 2)
    return F.grid_sample(features, grid, mode="bilinear", align_corners=False).squeeze(3)


def pairwise_bce_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over points of BCE(x, t) for every (query, target) pair: logits (Q, P), targets (K, P) -> (Q, K).

    BCE(x, t) = t * BCE(x, 1) + (1 - t) * BCE(x, 0) is linear in t, so all pairs come from two matmuls.
    """
    num_points = logits.shape[1]
    loss_pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    loss_neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (loss_pos / num_points) @ targets.T + (loss_neg / num_points) @ (1 - targets).T


def pairwise_dice_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """1 - (2 sum sigmoid(x) t + 1) / (sum sigmoid(x) + sum t + 1): logits (Q, P), targets (K, P) -> (Q, K)."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


@torch.no_grad()
def match_image(
    mask_logits: Tensor,
    class_logits: Tensor,
    target_masks: Tensor,
    target_labels: Tensor,
    num_points: int = 12544,
    mask_weight: float = 5.0,
    class_weight: float = 2.0,
    dice_weight: float = 5.0,
) -> tuple[Tensor, Tensor]:
    """Optimal one-to-one assignment of queries to the targets of one image.

    mask_logits: (Q, h, w) logits; class_logits: (Q, C+1) logits (index C = no-object);
    target_masks: (K, H, W) bool/0-1 (any resolution; sampled at the same normalised points);
    target_labels: (K,) int64 in [0, C). Returns (query_idx, target_idx), int64 (min(Q, K),) each, sorted by
    query index (scipy's order). Draws one `torch.rand(1, num_points, 2)` from the global RNG.
    """
    probs = class_logits.softmax(-1)
    cost_class = -probs[:, target_labels]  # (Q, K)

    targets = target_masks.to(mask_logits)[:, None]  # (K, 1, H, W)
    preds = mask_logits[:, None]  # (Q, 1, h, w)
    points = torch.rand(1, num_points, 2, device=mask_logits.device)
    sampled_targets = sample_points(targets, points.repeat(targets.shape[0], 1, 1)).squeeze(1)  # (K, P)
    sampled_preds = sample_points(preds, points.repeat(preds.shape[0], 1, 1)).squeeze(1)  # (Q, P)

    cost_mask = pairwise_bce_cost(sampled_preds, sampled_targets)
    cost_dice = pairwise_dice_cost(sampled_preds, sampled_targets)
    cost = mask_weight * cost_mask + class_weight * cost_class + dice_weight * cost_dice
    # Infinite or NaN costs (overflowing fp16 logits) would make the assignment infeasible.
    cost = cost.float().clamp(-1e10, 1e10).nan_to_num(0.0)
    query_idx, target_idx = linear_sum_assignment(cost.cpu().numpy())
    return (
        torch.as_tensor(query_idx, dtype=torch.int64, device=mask_logits.device),
        torch.as_tensor(target_idx, dtype=torch.int64, device=mask_logits.device),
    )


@torch.no_grad()
def match_batch(
    mask_logits: Tensor,
    class_logits: Tensor,
    target_masks: list[Tensor],
    target_labels: list[Tensor],
    num_points: int = 12544,
    mask_weight: float = 5.0,
    class_weight: float = 2.0,
    dice_weight: float = 5.0,
) -> list[tuple[Tensor, Tensor]]:
    """`match_image` for each image b: mask_logits (B, Q, h, w), class_logits (B, Q, C+1), lists of B targets."""
    return [
        match_image(
            mask_logits[b],
            class_logits[b],
            target_masks[b],
            target_labels[b],
            num_points=num_points,
            mask_weight=mask_weight,
            class_weight=class_weight,
            dice_weight=dice_weight,
        )
        for b in range(mask_logits.shape[0])
    ]
