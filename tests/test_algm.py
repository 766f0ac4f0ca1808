"""ALGM token merging: the merges against loop oracles, exact unmerging, the batch rule, and the EoMT hook."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from eomt_ood.errors import UserError
from eomt_ood.models import create_model
from eomt_ood.models.algm import (
    ALGMSettings,
    disable_token_merging,
    enable_token_merging,
    global_merge,
    local_merge,
    parse_token_merging,
    token_merging_settings,
    unmerge,
    window_token_ids,
)


def start(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial (sizes, positions) for tokens x (B, N, D)."""
    batch, num = x.shape[:2]
    return torch.ones(batch, num, 1), torch.arange(num).expand(batch, -1)


def window_similarity_oracle(x: torch.Tensor, grid: int, window: int) -> torch.Tensor:
    """(B, W) mean cosine similarity over the distinct ordered pairs of each window, with explicit loops."""
    cells = grid // window
    out = torch.zeros(x.shape[0], cells * cells)
    for b, wy, wx in itertools.product(range(x.shape[0]), range(cells), range(cells)):
        ids = [(wy * window + dy) * grid + wx * window + dx for dy in range(window) for dx in range(window)]
        pairs = [(i, j) for i in ids for j in ids if i != j]
        sims = [F.cosine_similarity(x[b, i], x[b, j], dim=0) for i, j in pairs]
        out[b, wy * cells + wx] = torch.stack(sims).mean()
    return out


def test_window_ids_are_row_major_2x2_blocks():
    ids = window_token_ids(4, 2)
    assert ids.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_local_merge_picks_windows_above_threshold_with_the_batch_minimum():
    torch.manual_seed(0)
    grid, dim = 4, 8
    x = torch.randn(2, grid * grid, dim)
    ids = window_token_ids(grid, 2)
    # Image 0: windows 0, 1, 3 hold near-copies of one vector each; image 1: only window 2.
    for b, window in [(0, 0), (0, 1), (0, 3), (1, 2)]:
        x[b, ids[window]] = torch.randn(dim) + 0.01 * torch.randn(4, dim)
    similarity = window_similarity_oracle(x, grid, 2)
    assert (similarity >= 0.9).sum(1).tolist() == [3, 1]
    sizes, positions = start(x)
    merged, new_sizes, new_positions, r = local_merge(x, sizes, positions, grid, 2, threshold=0.9)
    assert r == 1  # the smallest count of any image
    assert merged.shape == (2, 16 - 3, dim) and new_sizes.shape == (2, 13, 1)
    assert new_sizes[:, 0, 0].tolist() == [4.0, 4.0] and (new_sizes[:, 1:] == 1).all()
    best = similarity.argmax(1)  # each image merges its own most similar window
    for b in range(2):
        torch.testing.assert_close(merged[b, 0], x[b, ids[best[b]]].mean(0))
        assert set(torch.nonzero(new_positions[b] == 0).flatten().tolist()) == set(ids[best[b]].tolist())
    # The untouched tokens follow in their original order, unchanged.
    kept = [p for p in range(16) if p not in ids[best[0]].tolist()]
    assert torch.equal(merged[0, 1:], x[0, kept])


def test_global_merge_uses_each_images_adaptive_threshold_and_the_batch_minimum():
    torch.manual_seed(1)
    x = torch.randn(3, 10, 6)
    sizes, positions = start(x)
    merged, new_sizes, _, r = global_merge(x, sizes, positions, layer_number=5)
    counts = []
    for b in range(3):  # oracle: loops over the A tokens (even) and their best B partner (odd)
        best = [
            max(F.cosine_similarity(x[b, i], x[b, j], dim=0) for j in range(1, 10, 2))
            for i in range(0, 10, 2)
        ]
        best = torch.stack(best)
        limit = best.mean() + best.std() / 5
        counts.append(int((best >= limit).sum()))
    assert r == min(counts) > 0
    assert merged.shape == (3, 10 - r, 6) and new_sizes.sum(1).flatten().tolist() == [10.0] * 3
    assert global_merge(x, sizes, positions, 5, threshold=1.5)[3] == 0  # a fixed threshold nobody reaches


def test_merge_then_unmerge_returns_every_position_its_groups_mean():
    # One-hot position codes plus a shared part that makes windows similar: after both merges every original
    # position must get back the mean code of exactly the group it was merged into (sizes = group sizes).
    torch.manual_seed(2)
    grid = 4
    codes = torch.eye(grid * grid).expand(2, -1, -1).clone()
    x = torch.cat([codes, 3 * torch.randn(2, grid * grid, 4)], dim=-1)
    sizes, positions = start(x)
    x1, s1, p1, r_local = local_merge(x, sizes, positions, grid, 2, threshold=-1.0)
    x2, s2, p2, r_global = global_merge(x1, s1, p1, layer_number=2, threshold=-1.0)
    assert r_local == 4 and r_global == 2  # everything merged: 16 -> 4 -> 2 tokens
    restored = unmerge(x2, p2)
    assert restored.shape == x.shape
    for b in range(2):
        for token in range(x2.shape[1]):
            group = torch.nonzero(p2[b] == token).flatten()
            assert len(group) == int(s2[b, token, 0])
            expected = torch.zeros(grid * grid)
            expected[group] = 1 / len(group)
            for position in group:  # the code part identifies exactly the group's positions
                torch.testing.assert_close(restored[b, position, : grid * grid], expected)
    # Nothing merged: unmerging is the identity, bit for bit.
    same, _, kept, r = local_merge(x, sizes, positions, grid, 2, threshold=2.0)
    assert r == 0 and torch.equal(unmerge(same, kept), x)


def tiny_eomt():
    torch.manual_seed(0)
    model = create_model("eomt_test").eval()  # S 64, G 4, 4 blocks, L2 2: blocks 0 and 1 come before queries
    model.masked_attn_enabled = False
    for block in model.backbone.blocks:  # LayerScale at 1e-5 would make every block nearly the identity
        block.ls1.gamma.data.fill_(1.0)
        block.ls2.gamma.data.fill_(1.0)
    return model


def plain_forward(model, images):
    """The forward without merging, written out: timm's embedding, the blocks with queries inserted, heads."""
    vit = model.backbone
    x = vit.norm_pre(
        vit.patch_drop(vit._pos_embed(vit.patch_embed((images - model.pixel_mean) / model.pixel_std)))
    )
    for i, block in enumerate(vit.blocks):
        if i == len(vit.blocks) - model.num_blocks:
            x = torch.cat([model.q.weight[None].expand(x.shape[0], -1, -1), x], dim=1)
        x = block(x)
    return model.predict(vit.norm(x))


def test_off_by_default_and_bit_identical_to_the_plain_forward():
    model = tiny_eomt()
    assert model.token_merging is None and token_merging_settings(model) is None
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        masks, classes = model(x)
        expected = plain_forward(model, x)
    assert torch.equal(masks[-1], expected[0]) and torch.equal(classes[-1], expected[1])


def test_thresholds_that_merge_nothing_give_the_unmerged_outputs():
    model = tiny_eomt()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        plain = model(x)
        enable_token_merging(model, ALGMSettings(local_threshold=2.0, global_threshold=2.0))
        merged = model(x)
    assert model.last_merge_counts == [(0, 16), (1, 16)]
    assert torch.equal(merged[0][-1], plain[0][-1]) and torch.equal(merged[1][-1], plain[1][-1])


def window_images() -> torch.Tensor:
    """Two 64 px images of random pixels in which some 32 px windows (2 x 2 patches) are one flat colour."""
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 64, 64, generator=g)
    for b, window in [(0, 0), (1, 1), (1, 3)]:
        row, col = divmod(window, 2)
        images[b, :, 32 * row : 32 * row + 32, 32 * col : 32 * col + 32] = torch.rand(3, 1, 1, generator=g)
    return images


def test_merging_identical_tokens_is_exact_with_proportional_attention():
    # Without position embeddings the 4 patches of a flat window are identical tokens. Merging them into one
    # token of size 4 and attending with log-size bias is the same computation, so outputs must not move;
    # without the bias they do. Image 0 allows one window, image 1 two: the batch merges one (the batch rule).
    model = tiny_eomt()
    model.backbone.pos_embed.data.zero_()
    x = window_images()
    settings = ALGMSettings(local_threshold=0.9999, global_threshold=2.0)
    with torch.no_grad():
        plain = model(x)
        enable_token_merging(model, ALGMSettings(**{**settings.__dict__, "proportional_attention": True}))
        exact = model(x)
        assert model.last_merge_counts == [(0, 13), (1, 13)]
        enable_token_merging(model, settings)
        approximate = model(x)
    assert plain[0][-1].abs().mean() > 0.1
    torch.testing.assert_close(exact[0][-1], plain[0][-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(exact[1][-1], plain[1][-1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(approximate[0][-1], plain[0][-1], atol=1e-3)


def test_default_settings_on_the_tiny_model_and_what_a_run_records():
    model = tiny_eomt()
    resolved = enable_token_merging(model)
    assert (resolved.local_block, resolved.global_block) == (0, 1)  # global: halfway to the query blocks
    assert token_merging_settings(model) == {
        "method": "algm",
        "local_block": 0,
        "global_block": 1,
        "local_threshold": 0.88,
        "window": 2,
        "global_threshold": None,
        "proportional_attention": False,
    }
    with torch.no_grad():
        masks, _ = model(torch.rand(2, 3, 64, 64))
    assert masks[-1].shape == (2, 8, 16, 16)  # full-resolution masks after unmerging
    (local, after_local), (glob, after_global) = model.last_merge_counts
    assert (local, glob) == (0, 1) and 16 >= after_local >= after_global >= 1
    disable_token_merging(model)
    assert token_merging_settings(model) is None
    # 12 blocks with L2 = 3 (EoMT-S): the reference's layers 1 and 5.
    small = create_model("eomt_small_patch16_1024", img_size=64, embed_dim=32, depth=12, num_heads=2)
    assert enable_token_merging(small).global_block == 4


def test_bad_settings_and_models_are_user_errors():
    assert parse_token_merging("none") is None and parse_token_merging("algm") == ALGMSettings()
    with pytest.raises(UserError, match="unknown method 'tome'"):
        parse_token_merging("tome")
    with pytest.raises(UserError, match="first query block"):
        enable_token_merging(tiny_eomt(), ALGMSettings(global_block=2))
    with pytest.raises(UserError, match="divide the patch grid"):
        enable_token_merging(tiny_eomt(), ALGMSettings(window=3))
    eva = create_model(
        "eomt_eva02_large_patch16_512", img_size=64, embed_dim=32, depth=4, num_heads=2, num_blocks=2
    )
    with pytest.raises(UserError, match="RoPE"):
        enable_token_merging(eva)
    with pytest.raises(UserError, match="EoMT models only"):
        enable_token_merging(torch.nn.Linear(2, 2))
