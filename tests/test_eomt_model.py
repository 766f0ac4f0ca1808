"""EoMT forward pass, token layout and masked attention on tiny models (docs/models.md §1)."""

from __future__ import annotations

import pytest
import torch

from eomt_ood.errors import UserError
from eomt_ood.models import EoMT, create_model, list_models
from eomt_ood.models.eomt import build_attn_mask, masked_block_forward, num_upscale_blocks


@pytest.fixture
def model() -> EoMT:
    torch.manual_seed(0)
    model = create_model("eomt_test").eval()
    # DINOv2 LayerScale starts at 1e-5, which would hide every effect of attention; make the blocks matter.
    for block in model.backbone.blocks:
        block.ls1.gamma.data.fill_(1.0)
        block.ls2.gamma.data.fill_(1.0)
    return model


def images(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_output_lists_masking_on_and_off(model):
    x = images()
    masks, classes = model(x)
    assert len(masks) == len(classes) == model.num_blocks + 1 == 3
    for m, c in zip(masks, classes, strict=True):
        assert m.shape == (2, 8, 16, 16)  # 4G x 4G with G = 4
        assert c.shape == (2, 8, 20)
    model.masked_attn_enabled = False
    masks, classes = model(x)
    assert len(masks) == len(classes) == 1
    assert masks[0].shape == (2, 8, 16, 16) and classes[0].shape == (2, 8, 20)


def test_attributes(model):
    assert (model.img_size, model.patch_size, model.grid_size) == (64, 16, 4)
    assert (model.num_classes, model.num_queries, model.num_blocks, model.num_prefix_tokens) == (19, 8, 2, 3)
    assert torch.equal(model.attn_mask_probs, torch.ones(2))
    assert model.config == {"name": "eomt_test", "kwargs": {}}
    assert "pixel_mean" not in model.state_dict()  # constants, not saved
    assert num_upscale_blocks(16) == 2 and num_upscale_blocks(14) == 1 and num_upscale_blocks(8) == 1


def test_queries_prepended_once_at_block_l_minus_l2(model):
    seen = []
    for block in model.backbone.blocks:
        block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    model.masked_attn_enabled = False
    model(images(1))
    lengths = [t.shape[1] for t in seen]
    assert lengths == [3 + 16, 3 + 16, 8 + 3 + 16, 8 + 3 + 16]
    # First masked block input: raw query embeddings at the front, then CLS + registers + patches.
    assert torch.equal(seen[2][0, :8], model.q.weight)


def test_masked_block_matches_timm_block_with_mask(model):
    # Oracle: timm's own Block forward, which accepts a boolean attention mask in the pinned timm version.
    block = model.backbone.blocks[-1]
    torch.nn.init.normal_(block.ls1.gamma)
    torch.nn.init.normal_(block.ls2.gamma)
    x = torch.randn(2, 27, 32)
    mask = torch.rand(2, 27, 27) > 0.3
    mask[:, :, 0] = True  # no empty softmax rows
    expected = block(x, attn_mask=mask[:, None])
    assert torch.allclose(masked_block_forward(block, x, mask), expected, atol=1e-5)
    full = torch.ones(2, 27, 27, dtype=torch.bool)
    assert torch.allclose(masked_block_forward(block, x, full), block(x), atol=1e-5)


def test_masking_changes_outputs_and_zero_probs_equal_masking_off(model):
    x = images()
    with torch.no_grad():
        masks_on, classes_on = model(x)  # P = 1: every query sees only patches inside its mask
        model.attn_mask_probs.zero_()
        masks_zero, classes_zero = model(x)  # P = 0: no query is masked
        model.masked_attn_enabled = False
        masks_off, classes_off = model(x)
    assert not torch.allclose(masks_on[-1], masks_zero[-1], atol=1e-4)
    assert not torch.allclose(classes_on[-1], classes_zero[-1], atol=1e-4)
    # Intermediate predictions before the first masked block do not depend on masking.
    assert torch.allclose(masks_on[0], masks_zero[0])
    assert torch.allclose(masks_zero[-1], masks_off[0], atol=1e-5)
    assert torch.allclose(classes_zero[-1], classes_off[0], atol=1e-5)


def test_build_attn_mask_hand_check_central_mean_and_strict_threshold():
    # 4x4 logits -> 1x1 grid: bilinear (align_corners=False) samples the cell centre = mean of the central 2x2.
    logits = torch.full((1, 2, 4, 4), -100.0)
    logits[0, 0, 1:3, 1:3] = torch.tensor([[1.0, -1.0], [0.5, -0.5]])  # mean exactly 0 -> masked (strict >)
    logits[0, 1, 1:3, 1:3] = torch.tensor([[1.0, -1.0], [0.5, -0.4]])  # mean 0.025 -> may attend
    logits[0, 0, 0, :] = 1000.0  # outside the central 2x2: ignored
    mask = build_attn_mask(logits, grid_size=1, num_prefix_tokens=2)
    q, p = 2, 2
    assert mask.shape == (1, q + p + 1, q + p + 1)
    assert mask[0, 0, q + p].item() is False
    assert mask[0, 1, q + p].item() is True
    expected = torch.ones(1, 5, 5, dtype=torch.bool)
    expected[0, 0, 4] = False
    assert torch.equal(mask, expected)  # query->query, query->prefix and all non-query rows stay True


def test_build_attn_mask_cells_on_larger_grid():
    logits = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    mask = build_attn_mask(logits, grid_size=2, num_prefix_tokens=1)
    central_mean = torch.stack(
        [
            logits[..., 4 * i + 1 : 4 * i + 3, 4 * j + 1 : 4 * j + 3].mean((-1, -2))
            for i in range(2)
            for j in range(2)
        ],
        dim=-1,
    )  # (2, 3, 4) in row-major cell order
    assert torch.equal(mask[:, :3, 4:], central_mean > 0)


def test_random_disabling_is_per_image_and_query_and_seeded():
    logits = torch.full((4, 64, 4, 4), -1.0)  # every query masked from every patch unless disabled
    torch.manual_seed(5)
    mask = build_attn_mask(logits, grid_size=2, num_prefix_tokens=1, keep_prob=0.5)
    rows = mask[:, :64, 65:]  # (4, 64, 4)
    # A row block is either untouched (all False) or disabled (all True).
    assert torch.equal(rows.all(-1), rows.any(-1))
    disabled = rows.all(-1)  # (B, Q)
    assert 0.25 < disabled.float().mean() < 0.75
    assert not torch.equal(disabled[0], disabled[1])  # drawn per image, not per batch
    torch.manual_seed(5)
    assert torch.equal(build_attn_mask(logits, 2, 1, keep_prob=0.5), mask)
    assert not build_attn_mask(logits, 2, 1, keep_prob=1.0)[:, :64, 65:].any()
    assert build_attn_mask(logits, 2, 1, keep_prob=0.0)[:, :64, 65:].all()


def test_annealing_redrawn_per_forward(model):
    model.attn_mask_probs.fill_(0.5)
    x = images()
    with torch.no_grad():
        torch.manual_seed(0)
        first = model(x)[0][-1]
        second = model(x)[0][-1]
        torch.manual_seed(0)
        again = model(x)[0][-1]
    assert not torch.allclose(first, second)
    assert torch.equal(first, again)


def test_deit3_and_swiglu_backbones_at_toy_size():
    toy = dict(img_size=32, embed_dim=16, depth=3, num_heads=2, num_queries=4, num_blocks=2)
    deit = create_model("eomt_deit3_large_patch16_512", **toy)
    assert deit.num_prefix_tokens == 1
    masks, classes = deit(torch.rand(1, 3, 32, 32))
    assert len(masks) == 3 and masks[-1].shape == (1, 4, 8, 8) and classes[-1].shape == (1, 4, 20)
    giant = create_model("eomt_giant_patch16_512", **{**toy, "embed_dim": 24})  # SwiGLU hidden must be even
    assert giant.backbone.blocks[0].mlp.fc2.in_features * 2 == giant.backbone.blocks[0].mlp.fc1.out_features
    masks, _ = giant(torch.rand(1, 3, 32, 32))
    assert len(masks) == 3 and masks[-1].shape == (1, 4, 8, 8)


def test_registry_names_and_unknown_name():
    names = list_models()
    for name in ["eomt_small_patch16_1024", "eomt_base_patch16_1024", "eomt_large_patch16_1024"]:
        assert name in names
    assert "eomt_giant_patch16_1024" in names and "eomt_test" in names
    with pytest.raises(UserError, match="eomt_large_patch16_1024"):
        create_model("eomt_huge")


def test_overrides_recorded_and_l2_defaults():
    model = create_model("eomt_large_patch16_1024", img_size=32, embed_dim=16, depth=5, num_heads=2)
    assert model.num_blocks == 4 and model.num_queries == 100 and model.num_classes == 19
    assert model.config == {
        "name": "eomt_large_patch16_1024",
        "kwargs": {"img_size": 32, "embed_dim": 16, "depth": 5, "num_heads": 2},
    }
    assert (
        create_model("eomt_small_patch16_1024", img_size=32, embed_dim=16, depth=4, num_heads=2).num_blocks
        == 3
    )


def test_missing_pretrained_backbone_names_timm_weights(tmp_path):
    with pytest.raises(UserError, match=r"vit_small_patch14_reg4_dinov2\.lvd142m"):
        create_model("eomt_test", pretrained_backbone=tmp_path / "missing.safetensors")


def _pinv_kernel_resample(kernel: torch.Tensor, new: int) -> torch.Tensor:
    """FlexiViT resize as described in docs/models.md §2: new = pinv(M^T) @ old, M's columns = resized one-hots."""
    old = kernel.shape[-1]
    basis = torch.eye(old * old).reshape(old * old, 1, old, old)
    resized = torch.nn.functional.interpolate(basis, size=(new, new), mode="bicubic", antialias=True)
    m = resized.reshape(old * old, new * new).T  # (new^2, old^2), column i = resize of one-hot i
    flat = kernel.reshape(-1, old * old).double()
    return (torch.linalg.pinv(m.T.double()) @ flat.T).T.reshape(*kernel.shape[:2], new, new).float()


def test_pretrained_backbone_timm_and_original_dinov2_formats(tmp_path):
    import timm
    from safetensors.torch import save_file

    # A toy DINOv2 at its native patch 14 with a 5x5 grid; EoMT builds it at patch 16 with a 4x4 grid.
    torch.manual_seed(4)
    native = timm.create_model(
        "vit_small_patch14_reg4_dinov2", img_size=70, embed_dim=32, depth=4, num_heads=2, reg_tokens=2
    )
    timm_state = {k: v.detach().clone() for k, v in native.state_dict().items()}
    timm_path = tmp_path / "model.safetensors"
    save_file(timm_state, str(timm_path))
    model = create_model("eomt_test", pretrained_backbone=timm_path)
    loaded = model.backbone.state_dict()
    assert model.config == {"name": "eomt_test", "kwargs": {}}  # the path is not part of the architecture
    assert torch.equal(loaded["blocks.2.attn.qkv.weight"], timm_state["blocks.2.attn.qkv.weight"])
    assert torch.equal(loaded["reg_token"], timm_state["reg_token"])
    expected_kernel = _pinv_kernel_resample(timm_state["patch_embed.proj.weight"], 16)
    torch.testing.assert_close(loaded["patch_embed.proj.weight"], expected_kernel, atol=1e-4, rtol=1e-3)
    grid = timm_state["pos_embed"].reshape(1, 5, 5, 32).permute(0, 3, 1, 2)
    expected_pos = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", antialias=True)
    torch.testing.assert_close(loaded["pos_embed"], expected_pos.permute(0, 2, 3, 1).reshape(1, 16, 32))

    # Original DINOv2 layout: the CLS position embedding sits in pos_embed[:, 0], registers are separate.
    pos0 = torch.randn(1, 1, 32)
    original = {k: v for k, v in timm_state.items() if k not in ("cls_token", "reg_token", "pos_embed")}
    original |= {
        "cls_token": timm_state["cls_token"] - pos0,
        "pos_embed": torch.cat([pos0, timm_state["pos_embed"]], dim=1),
        "register_tokens": timm_state["reg_token"],
        "mask_token": torch.zeros(1, 32),
    }
    original_path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(original, original_path)
    again = create_model("eomt_test", pretrained_backbone=original_path).backbone.state_dict()
    for key, value in loaded.items():
        torch.testing.assert_close(again[key], value, msg=key)


def test_pretrained_backbone_of_wrong_size_is_a_user_error(tmp_path):
    import timm

    wrong = timm.create_model(
        "vit_small_patch14_reg4_dinov2", img_size=70, embed_dim=48, depth=4, num_heads=2
    )
    path = tmp_path / "wrong.pth"
    torch.save(wrong.state_dict(), path)
    with pytest.raises(
        UserError, match=r"wrong\.pth: cls_token has shape \(1, 1, 48\), backbone \S+ expects \(1, 1, 32\)"
    ):
        create_model("eomt_test", pretrained_backbone=path)


def _toy_eva() -> EoMT:
    torch.manual_seed(6)
    return create_model(
        "eomt_eva02_large_patch16_512",
        img_size=64,
        embed_dim=32,
        depth=4,
        num_heads=2,
        num_queries=8,
        num_blocks=2,
    ).eval()


def test_eva02_rope_rotates_patches_only():
    model = _toy_eva()
    vit = model.backbone
    assert model.uses_rope and model.num_prefix_tokens == 1
    # The query blocks leave [queries | CLS] unrotated; the earlier blocks keep timm's own CLS-only prefix.
    assert [b.attn.num_prefix_tokens for b in vit.blocks] == [1, 1, 9, 9]
    x = images(2)
    model.masked_attn_enabled = False
    with torch.no_grad():
        masks, classes = model(x)
        # Queries carry no position: permuting them permutes the outputs (a rotated query would break this).
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
        model.q.weight.data = model.q.weight.data[perm]
        masks_p, classes_p = model(x)
        torch.testing.assert_close(masks_p[0], masks[0][:, perm], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(classes_p[0], classes[0][:, perm], atol=1e-5, rtol=1e-5)
        # Patches are rotated: dropping RoPE changes the outputs.
        rope, vit.rope = vit.rope, None
        assert not torch.allclose(model(x)[0][0], masks_p[0], atol=1e-4)
        vit.rope = rope


def test_eva02_masking_paths_and_timm_prefix():
    model = _toy_eva()
    x = images(2)
    seen = []
    model.backbone.blocks[2].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        masks_on, _ = model(x)
        model.attn_mask_probs.zero_()
        masks_zero, _ = model(x)
        model.masked_attn_enabled = False
        masks_off, _ = model(x)
        # Before the queries enter, the tokens are exactly timm's own Eva pipeline.
        vit = model.backbone
        tokens, rope = vit._pos_embed(vit.patch_embed((x - model.pixel_mean) / model.pixel_std))
        for block in vit.blocks[:2]:
            tokens = block(tokens, rope=rope)
    assert len(masks_on) == 3 and masks_on[-1].shape == (2, 8, 16, 16)
    assert not torch.allclose(masks_on[-1], masks_zero[-1], atol=1e-4)
    torch.testing.assert_close(masks_zero[-1], masks_off[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen[-1][:, 8:], tokens)


def test_eva02_pretrained_backbone_loads_with_timm_eva_filter(tmp_path):
    import timm

    native = timm.create_model("eva02_large_patch14_224", img_size=56, embed_dim=32, depth=4, num_heads=2)
    state = {k: v.detach().clone() for k, v in native.state_dict().items()}
    path = tmp_path / "eva02.pth"
    torch.save(state, path)
    model = create_model(
        "eomt_eva02_large_patch16_512",
        img_size=64,
        embed_dim=32,
        depth=4,
        num_heads=2,
        num_queries=8,
        num_blocks=2,
        pretrained_backbone=path,
    )
    loaded = model.backbone.state_dict()
    assert torch.equal(loaded["blocks.3.attn.q_proj.weight"], state["blocks.3.attn.q_proj.weight"])
    # timm's default EVA-02 keeps its last LayerNorm as fc_norm (after pooling); EoMT applies it to the tokens.
    assert torch.equal(loaded["norm.weight"], state["fc_norm.weight"])
    assert loaded["patch_embed.proj.weight"].shape[-1] == 16
