"""Schedules against the spec's formulas and the official step table (docs/training.md §7, §5, §6)."""

from __future__ import annotations

import itertools
import math

import pytest

from eomt_ood.training.schedules import (
    annealing_windows,
    backbone_lr_factor,
    head_lr_factor,
    layer_lr_scale,
    mask_probabilities,
    mask_probability,
    rnd,
)


def test_rnd_rounds_half_up():
    assert rnd(2.5) == 3 and rnd(3.5) == 4 and rnd(-0.5) == 0 and rnd(1.49) == 1


def test_official_cityscapes_windows():
    # Table in docs/training.md §7: T = 19902, L2 = 4.
    windows = annealing_windows(19902, 4)
    assert [s for s, _ in windows] == [3317, 6634, 9951, 13268]
    assert [e for _, e in windows] == [6634, 9951, 13268, 16585]


@pytest.mark.parametrize("total", [19902, 19795, 90000, 737])
@pytest.mark.parametrize("blocks", [3, 4, 5])
def test_windows_follow_the_rule(total, blocks):
    w = total / 6
    expected = [
        (math.floor(w * (1 + 3 * k / (blocks - 1)) + 0.5), math.floor(w * (2 + 3 * k / (blocks - 1)) + 0.5))
        for k in range(blocks)
    ]
    got = annealing_windows(total, blocks)
    assert got == expected
    # Shape of the rule: first window starts at T/6, last one ends at 5T/6, earliest block first.
    assert got[0][0] == rnd(total / 6) and got[-1][1] == rnd(5 * total / 6)
    assert all(a[0] < b[0] for a, b in itertools.pairwise(got))


def test_windows_l2_3_and_5_hand_values():
    # T = 12000, W = 2000. L2 = 3: s = 2000 (1 + 1.5k), e = 2000 (2 + 1.5k).
    assert annealing_windows(12000, 3) == [(2000, 4000), (5000, 7000), (8000, 10000)]
    # L2 = 5: s = 2000 (1 + 0.75k), e = 2000 (2 + 0.75k).
    assert annealing_windows(12000, 5) == [
        (2000, 4000),
        (3500, 5500),
        (5000, 7000),
        (6500, 8500),
        (8000, 10000),
    ]
    # Half-up rounding where banker's rounding would differ: T = 9, L2 = 3: W = 1.5, s_0 = rnd(1.5) = 2.
    assert annealing_windows(9, 3)[0] == (2, 3)


def test_mask_probability_key_steps():
    s, e = 3317, 6634
    assert mask_probability(0, s, e) == 1.0
    assert mask_probability(s - 1, s, e) == 1.0
    assert mask_probability(s, s, e) == 1.0
    mid = s + (e - s) // 2
    assert mask_probability(mid, s, e) == pytest.approx((1 - (mid - s) / (e - s)) ** 0.9)
    assert mask_probability(e - 1, s, e) == pytest.approx((1 / (e - s)) ** 0.9)
    assert mask_probability(e, s, e) == 0.0
    probs = mask_probabilities(9951, annealing_windows(19902, 4))
    assert probs[:2] == [0.0, 0.0] and probs[2] == 1.0 and probs[3] == 1.0


def test_head_lr_factor():
    total = 19902
    assert head_lr_factor(0, total) == 0.0
    assert head_lr_factor(250, total) == 0.5
    assert head_lr_factor(500, total) == 1.0
    assert head_lr_factor(10000, total) == pytest.approx((1 - 9500 / 19402) ** 0.9)
    assert head_lr_factor(total, total) == 0.0
    assert head_lr_factor(total + 5, total) == 0.0  # clamped, never complex


def test_backbone_lr_factor():
    total = 19902
    assert backbone_lr_factor(0, total) == 0.0
    assert backbone_lr_factor(499, total) == 0.0
    assert backbone_lr_factor(500, total) == 0.0
    assert backbone_lr_factor(1000, total) == 0.5
    assert backbone_lr_factor(1499, total) == pytest.approx(0.999)
    assert backbone_lr_factor(1500, total) == 1.0
    assert backbone_lr_factor(10000, total) == pytest.approx((1 - 8500 / 18402) ** 0.9)


def test_scaled_schedules_for_short_runs():
    assert head_lr_factor(5, 100, warmup_steps=10) == 0.5
    assert backbone_lr_factor(9, 100, frozen_steps=10, warmup_steps=20) == 0.0
    assert backbone_lr_factor(20, 100, frozen_steps=10, warmup_steps=20) == 0.5


def test_layer_lr_scale():
    num_blocks, d = 24, 0.8
    assert layer_lr_scale("blocks.23.attn.qkv.weight", num_blocks, d) == 1.0
    assert layer_lr_scale("blocks.0.norm1.bias", num_blocks, d) == pytest.approx(0.8**23)
    assert 1e-4 * layer_lr_scale("blocks.0.mlp.fc1.weight", num_blocks, d) == pytest.approx(5.9e-7, rel=0.01)
    for name in ("patch_embed.proj.weight", "pos_embed", "cls_token", "reg_token"):
        assert layer_lr_scale(name, num_blocks, d) == pytest.approx(0.8**23)
    assert layer_lr_scale("norm.weight", num_blocks, d) == 1.0
