"""Parity with the transformers EoMT port (the oracle), through every checkpoint format we accept.

A tiny `EomtForUniversalSegmentation` with random weights (LayerScale, norms and tokens randomised too, so a
wrong mapping cannot hide behind an identity init) is saved in its own format, in the official `network.*`
layout (inverse mapping written here, independently of eomt_ood), in the older HF key generation and as a
Lightning-style .ckpt; each file loaded into our `eomt_test` must reproduce the HF logits.
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from eomt_ood.models import create_model
from eomt_ood.models.checkpoints import load_checkpoint

transformers = pytest.importorskip("transformers")

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def make_hf(num_register_tokens: int = 2, use_swiglu_ffn: bool = False, hidden_size: int = 32):
    torch.manual_seed(0)
    config = transformers.EomtConfig(
        hidden_size=hidden_size,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_blocks=2,
        num_queries=8,
        image_size=64,
        patch_size=16,
        num_register_tokens=num_register_tokens,
        num_labels=19,
        use_swiglu_ffn=use_swiglu_ffn,
    )
    hf = transformers.EomtForUniversalSegmentation(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "lambda1" in name or name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
            else:
                param.add_(0.1 * torch.randn_like(param))
        hf.attn_mask_probs.zero_()  # else HF builds masks in eval mode (docs/eomt.md §3.4)
    return hf


def hf_logits(hf, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = hf(pixel_values=(x - MEAN) / STD)  # HF normalises in its image processor; we do it inside
    return out.masks_queries_logits, out.class_queries_logits


def our_logits(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        masks, classes = model(x)
    return masks[-1], classes[-1]


def to_official(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF keys -> official tue-mps/eomt `network.*` keys (docs/eomt.md §3.1/§3.3), written independently."""
    bb = "network.encoder.backbone."
    out: dict[str, torch.Tensor] = {
        "network.encoder.pixel_mean": MEAN.clone(),
        "network.encoder.pixel_std": STD.clone(),
    }
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    simple = {
        "embeddings.cls_token": bb + "cls_token",
        "embeddings.register_tokens": bb + "reg_token",
        "embeddings.patch_embeddings.projection.weight": bb + "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": bb + "patch_embed.proj.bias",
        "layernorm.weight": bb + "norm.weight",
        "layernorm.bias": bb + "norm.bias",
        "query.weight": "network.q.weight",
        "class_predictor.weight": "network.class_head.weight",
        "class_predictor.bias": "network.class_head.bias",
        "attn_mask_probs": "network.attn_mask_probs",
        "criterion.empty_weight": "criterion.empty_weight",
    }
    for key, value in hf_state.items():
        if key in simple:
            out[simple[key]] = value
        elif key == "embeddings.position_embeddings.weight":
            out[bb + "pos_embed"] = value[None]
        elif m := re.fullmatch(r"layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)", key):
            qkv.setdefault(f"{bb}blocks.{m[1]}.attn.qkv.{m[3]}", {})[m[2]] = value
        elif m := re.fullmatch(r"layers\.(\d+)\.(.*)", key):
            rest = (
                m[2]
                .replace("attention.out_proj", "attn.proj")
                .replace("layer_scale1.lambda1", "ls1.gamma")
                .replace("layer_scale2.lambda1", "ls2.gamma")
                .replace("mlp.weights_in", "mlp.fc1")
                .replace("mlp.weights_out", "mlp.fc2")
            )
            out[f"{bb}blocks.{m[1]}.{rest}"] = value
        elif m := re.fullmatch(r"mask_head\.fc([123])\.(weight|bias)", key):
            out[f"network.mask_head.{2 * (int(m[1]) - 1)}.{m[2]}"] = value
        elif m := re.fullmatch(r"upscale_block\.block\.(\d+)\.(conv1|conv2|layernorm2d)\.(weight|bias)", key):
            out[f"network.upscale.{m[1]}.{m[2].replace('layernorm2d', 'norm')}.{m[3]}"] = value
        else:
            raise AssertionError(f"unmapped HF key {key}")
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def to_older_hf(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Current HF keys -> the early port generation (`model.` prefix, `model.encoder.layers`, `proj_out`)."""
    out = {}
    for key, value in hf_state.items():
        if key in ("attn_mask_probs", "criterion.empty_weight"):
            continue
        if key.startswith("class_predictor."):
            out[key] = value
            continue
        if key.startswith(("layers.", "query.")):
            key = "encoder." + key
        out["model." + key.replace("attention.out_proj", "attention.proj_out")] = value
    return out


@pytest.fixture(scope="module")
def hf_and_input():
    hf = make_hf()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    return hf, x, hf_logits(hf, x)


def assert_parity(model, x, expected):
    masks, classes = our_logits(model, x)
    assert masks.shape == expected[0].shape and classes.shape == expected[1].shape
    assert expected[0].abs().mean() > 0.1  # the comparison is not between near-zero tensors
    torch.testing.assert_close(masks, expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(classes, expected[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_hf_file_loads_and_matches(tmp_path, hf_and_input, suffix):
    hf, x, expected = hf_and_input
    path = tmp_path / f"model{suffix}"
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    model = create_model("eomt_test", checkpoint=path).eval()
    assert torch.equal(model.attn_mask_probs, torch.zeros(2))
    for masked in (False, True):  # P = 0: masking on must not change anything
        model.masked_attn_enabled = masked
        assert_parity(model, x, expected)


def test_official_layout_matches(tmp_path, hf_and_input):
    hf, x, expected = hf_and_input
    path = tmp_path / "pytorch_model.bin"
    torch.save(to_official(hf.state_dict()), path)
    model = create_model("eomt_test", checkpoint=path, masked_attn_enabled=False).eval()
    assert_parity(model, x, expected)


def test_lightning_ckpt_with_compile_prefix_matches(tmp_path, hf_and_input):
    hf, x, expected = hf_and_input
    official = to_official(hf.state_dict())
    wrapped = {k.replace("network.", "network._orig_mod.", 1): v for k, v in official.items()}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": wrapped, "global_step": 3, "epoch": 1}, path)
    model = create_model("eomt_test", masked_attn_enabled=False).eval()
    load_checkpoint(model, path)
    assert_parity(model, x, expected)


def test_older_hf_generation_matches(tmp_path, hf_and_input):
    hf, x, expected = hf_and_input
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in to_older_hf(hf.state_dict()).items()}, str(path))
    model = create_model("eomt_test", masked_attn_enabled=False).eval()
    model.attn_mask_probs.fill_(0.7)
    load_checkpoint(model, path)
    assert torch.equal(model.attn_mask_probs, torch.zeros(2))  # absent in old files -> annealed (zeros)
    assert_parity(model, x, expected)


def test_masked_attention_matches_hf_with_full_masking(hf_and_input):
    # With P = 1 in eval mode HF builds the same query->patch masks (no random disabling): an oracle for
    # build_attn_mask + the masked block (HF uses an additive -1e9 mask, we a boolean one).
    hf, x, _ = hf_and_input
    model = create_model("eomt_test").eval()
    load_checkpoint_from_state(model, hf.state_dict())
    with torch.no_grad():
        hf.attn_mask_probs.fill_(1.0)
        try:
            expected = hf_logits(hf, x)
        finally:
            hf.attn_mask_probs.zero_()
    model.attn_mask_probs.fill_(1.0)
    assert_parity(model, x, expected)
    unmasked = hf_logits(hf, x)
    assert not torch.allclose(expected[0], unmasked[0], atol=1e-3)  # masking did change the outputs


def load_checkpoint_from_state(model, state):
    from eomt_ood.models.checkpoints import load_state_dict_into

    load_state_dict_into(model, state)


@pytest.mark.parametrize("registers", [0, 4])
def test_register_counts_and_swiglu(tmp_path, registers):
    hf = make_hf(num_register_tokens=registers, use_swiglu_ffn=True, hidden_size=48)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    expected = hf_logits(hf, x)
    path = tmp_path / "swiglu.safetensors"
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(path))
    # timm SwiGLUPacked: fc1 D -> 2H with H = 128 here (HF: int(4 * 48 * 2 / 3) rounded to 8 = 128)
    model = create_model(
        "eomt_giant_patch16_512",
        checkpoint=path,
        img_size=64,
        embed_dim=48,
        depth=4,
        num_heads=2,
        reg_tokens=registers,
        num_queries=8,
        num_blocks=2,
        mlp_ratio=256 / 48,
        masked_attn_enabled=False,
    ).eval()
    assert model.num_prefix_tokens == 1 + registers
    assert_parity(model, x, expected)


@pytest.mark.parametrize("safe", [True, False])
def test_hugging_face_folder_rebuilds_from_config_json(tmp_path, hf_and_input, safe):
    from eomt_ood.models.registry import load_model

    hf, x, expected = hf_and_input
    hf.save_pretrained(
        tmp_path, safe_serialization=safe
    )  # config.json + model.safetensors / pytorch_model.bin
    model = load_model(tmp_path, masked_attn_enabled=False).eval()
    assert (model.num_queries, model.num_classes, model.num_blocks, model.num_prefix_tokens) == (8, 19, 2, 3)
    assert model.backbone.blocks[0].attn.num_heads == 2  # from config.json: no shape tells the head count
    assert_parity(model, x, expected)
    assert_parity(
        create_model("eomt_test", checkpoint=tmp_path, masked_attn_enabled=False).eval(), x, expected
    )


def test_hugging_face_swiglu_folder_rebuilds(tmp_path):
    from eomt_ood.models.registry import load_model

    hf = make_hf(num_register_tokens=1, use_swiglu_ffn=True, hidden_size=40)
    hf.save_pretrained(tmp_path)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    model = load_model(tmp_path, masked_attn_enabled=False).eval()
    assert_parity(model, x, hf_logits(hf, x))
