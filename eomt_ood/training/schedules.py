"""Step schedules of the EoMT recipe: mask annealing (docs/training.md §7) and two-stage warm-up + poly LR
(docs/training.md §6).

All functions take the 0-based optimizer step t (the number of optimizer steps already taken) and are pure, so
a resumed run recomputes exactly the values of an uninterrupted one from t alone.
"""

from __future__ import annotations

import math


def rnd(x: float) -> int:
    """Round half up, floor(x + 0.5): the rule the official step counts follow (not banker's `round`)."""
    return math.floor(x + 0.5)


def annealing_windows(total_steps: int, num_masked_blocks: int) -> list[tuple[int, int]]:
    """Annealing windows [s_k, e_k) for masked blocks k = 0..L2-1 (k = 0 is block L - L2), docs/training.md §7.

    W = T/6, s_k = rnd(W (1 + 3k/(L2-1))), e_k = rnd(W (2 + 3k/(L2-1))): full masking for the first T/6, the
    windows staggered earliest block first, no masking in the last T/6. With one masked block (L2 = 1, no
    official config) the fraction 3k/(L2-1) is taken as 0, i.e. the window [T/6, 2T/6).
    """
    if total_steps <= 0 or num_masked_blocks <= 0:
        raise ValueError(
            f"need total_steps > 0 and num_masked_blocks > 0, got {total_steps}, {num_masked_blocks}"
        )
    width = total_steps / 6
    windows = []
    for k in range(num_masked_blocks):
        frac = 3 * k / (num_masked_blocks - 1) if num_masked_blocks > 1 else 0.0
        windows.append((rnd(width * (1 + frac)), rnd(width * (2 + frac))))
    return windows


def mask_probability(step: int, start: int, end: int, power: float = 0.9) -> float:
    """P_k(t): 1 before `start`, (1 - (t - start)/(end - start))**power inside [start, end), 0 from `end` on."""
    if step < start:
        return 1.0
    if step >= end:
        return 0.0
    return (1.0 - (step - start) / (end - start)) ** power


def mask_probabilities(step: int, windows: list[tuple[int, int]], power: float = 0.9) -> list[float]:
    """[P_k(t) for each window]; the forward pass of optimizer step t uses these."""
    return [mask_probability(step, s, e, power) for s, e in windows]


def _poly(step: int, start: int, total_steps: int, power: float) -> float:
    # Clamped at 0 so steps at or past T (a resumed run with a shorter T) never give a complex power.
    remaining = 1.0 - (step - start) / max(1, total_steps - start)
    return max(0.0, remaining) ** power


def head_lr_factor(step: int, total_steps: int, warmup_steps: int = 500, power: float = 0.9) -> float:
    """Multiplier of a head group's base lr: t/warmup for t < warmup, then poly(power) decay to 0 at T."""
    if step < warmup_steps:
        return step / warmup_steps
    return _poly(step, warmup_steps, total_steps, power)


def backbone_lr_factor(
    step: int,
    total_steps: int,
    frozen_steps: int = 500,
    warmup_steps: int = 1000,
    power: float = 0.9,
) -> float:
    """Multiplier of a backbone group's base lr: 0 for t < frozen, linear over `warmup_steps`, then poly."""
    if step < frozen_steps:
        return 0.0
    if step < frozen_steps + warmup_steps:
        return (step - frozen_steps) / warmup_steps
    return _poly(step, frozen_steps + warmup_steps, total_steps, power)


def layer_lr_scale(param_name: str, num_blocks: int, decay: float) -> float:
    """LLRD factor of a backbone (timm ViT) parameter, docs/training.md §5.

    `blocks.b.*` -> decay**(L-1-b); patch_embed / pos_embed / cls_token / reg_token (everything before the
    blocks) -> decay**(L-1), like block 0; the final `norm.*` (and anything after the blocks) -> 1.
    """
    parts = param_name.split(".")
    if parts[0] == "blocks":
        return decay ** (num_blocks - 1 - int(parts[1]))
    if parts[0] in ("patch_embed", "pos_embed", "cls_token", "reg_token", "norm_pre"):
        return decay ** (num_blocks - 1)
    return 1.0
