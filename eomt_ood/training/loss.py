"""Mask-classification loss of EoMT (the Mask2Former loss, docs/training.md §4), with deep supervision.

For each prediction set: Hungarian matching per image (`matcher.match_batch`), then on the matched pairs of
the whole batch a point-sampled sigmoid BCE and dice loss (importance sampling: oversample 3x uniformly, keep
the 75 % most uncertain points, i.e. smallest |logit|, fill up with fresh uniform points), both divided by
num_masks = max(1, mean over processes of the number of target masks), and a weighted cross-entropy over all
queries (unmatched ones are no-object, weight 0.1). Set loss = 5 * mask + 5 * dice + 2 * ce; the total is the
unweighted sum over the sets. Follows Mask2Former (Cheng et al. 2022) as in transformers 4.56.1
(`Mask2FormerLoss`); the random draws happen in the same order and shapes (per set: matching of every image,
then the importance sampling), so the same RNG state gives the same points.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from eomt_ood.training.matcher import match_batch, sample_points


def uncertain_points(
    logits: Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> Tensor:
    """Point coordinates (N, num_points, 2) in [0, 1]^2 for mask logits (N, 1, h, w), no gradients.

    Draws `int(num_points * oversample_ratio)` uniform points, keeps the `int(importance_sample_ratio *
    num_points)` with the highest uncertainty -|logit|, and appends the rest as fresh uniform points.
    """
    num_masks = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    candidates = torch.rand(num_masks, num_candidates, 2, device=logits.device)
    uncertainty = -sample_points(logits, candidates)[:, 0].abs()  # (N, num_candidates)
    keep = uncertainty.topk(num_uncertain, dim=1).indices  # (N, num_uncertain)
    points = torch.gather(candidates, 1, keep[..., None].expand(-1, -1, 2))
    if num_random > 0:
        extra = torch.rand(num_masks, num_random, 2, device=logits.device)
        points = torch.cat([points, extra], dim=1)
    return points


def average_num_masks(target_labels: list[Tensor], device: torch.device) -> Tensor:
    """max(1, sum over processes of the number of target masks / world size), a float scalar tensor."""
    total = torch.tensor(float(sum(len(labels) for labels in target_labels)), device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        world_size = dist.get_world_size()
    return torch.clamp(total / world_size, min=1.0)


class MaskClassificationLoss(nn.Module):
    """Deeply supervised Mask2Former loss for EoMT (docs/training.md §4).

    Args: num_classes C (no-object is index C); num_points for matching and for the mask losses;
    oversample_ratio / importance_sample_ratio for the importance sampling; mask/dice/class weights used both in
    the matching cost and in the loss; no_object_weight for the cross-entropy weight of class C.
    """

    def __init__(
        self,
        num_classes: int,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        class_weight: float = 2.0,
        no_object_weight: float = 0.1,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.class_weight = class_weight
        class_weights = torch.ones(num_classes + 1)
        class_weights[num_classes] = no_object_weight
        # Not persistent: rebuilt from the config, and official checkpoints drop `criterion.empty_weight` anyway.
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(
        self,
        mask_logits_list: list[Tensor],
        class_logits_list: list[Tensor],
        target_masks: list[Tensor],
        target_labels: list[Tensor],
    ) -> dict[str, Tensor]:
        """Loss over all prediction sets.

        mask_logits_list: per set (B, Q, h, w) logits; class_logits_list: per set (B, Q, C+1) logits;
        target_masks: B tensors (K_b, H, W) bool; target_labels: B tensors (K_b,) int64 in [0, C).
        Returns {"loss": weighted total (scalar), and per set i: "mask_i", "dice_i", "ce_i" (unweighted)}.
        """
        if len(mask_logits_list) != len(class_logits_list):
            raise ValueError("mask and class prediction lists differ in length")
        num_masks = average_num_masks(target_labels, mask_logits_list[0].device)
        out: dict[str, Tensor] = {}
        total = mask_logits_list[0].new_zeros((), dtype=torch.float32)
        for i, (mask_logits, class_logits) in enumerate(
            zip(mask_logits_list, class_logits_list, strict=True)
        ):
            loss_mask, loss_dice, loss_ce = self.set_losses(
                mask_logits, class_logits, target_masks, target_labels, num_masks
            )
            out[f"mask_{i}"], out[f"dice_{i}"], out[f"ce_{i}"] = loss_mask, loss_dice, loss_ce
            total = (
                total
                + self.mask_weight * loss_mask
                + self.dice_weight * loss_dice
                + self.class_weight * loss_ce
            )
        out["loss"] = total
        return out

    def set_losses(
        self,
        mask_logits: Tensor,
        class_logits: Tensor,
        target_masks: list[Tensor],
        target_labels: list[Tensor],
        num_masks: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(loss_mask, loss_dice, loss_ce), unweighted, for one prediction set (shapes as in `forward`)."""
        matches = match_batch(
            mask_logits,
            class_logits,
            target_masks,
            target_labels,
            num_points=self.num_points,
            mask_weight=self.mask_weight,
            class_weight=self.class_weight,
            dice_weight=self.dice_weight,
        )
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)])
        query_idx = torch.cat([q for q, _ in matches])

        # Mask losses on matched pairs only.
        pred = mask_logits[batch_idx, query_idx][:, None]  # (M, 1, h, w)
        target = torch.cat([target_masks[b][t] for b, (_, t) in enumerate(matches)]).to(pred)[:, None]
        with torch.no_grad():
            points = uncertain_points(
                pred, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            point_targets = sample_points(target, points).squeeze(1)  # (M, P)
        point_logits = sample_points(pred, points).squeeze(1)  # (M, P)
        loss_mask = (
            F.binary_cross_entropy_with_logits(point_logits, point_targets, reduction="none").mean(1).sum()
            / num_masks
        )
        probs = point_logits.sigmoid()
        dice = 1 - (2 * (probs * point_targets).sum(-1) + 1) / (probs.sum(-1) + point_targets.sum(-1) + 1)
        loss_dice = dice.sum() / num_masks

        # Classification over all queries; unmatched queries must predict no-object (index C).
        batch_size, num_queries, _ = class_logits.shape
        class_targets = torch.full(
            (batch_size, num_queries), self.num_classes, dtype=torch.int64, device=class_logits.device
        )
        class_targets[batch_idx, query_idx] = torch.cat(
            [target_labels[b][t] for b, (_, t) in enumerate(matches)]
        ).to(class_logits.device)
        loss_ce = F.cross_entropy(
            class_logits.transpose(1, 2), class_targets, weight=self.class_weights.to(class_logits.dtype)
        )
        return loss_mask, loss_dice, loss_ce
