"""Hugging Face DINOv2 folders as backbone weights: parity with transformers' own forward pass.

Oracle: transformers `Dinov2WithRegistersModel` / `Dinov2Model` with random weights, written by `save_pretrained`
(config.json + model.safetensors, the layout of facebook/dinov2-with-registers-large and facebook/dinov2-large)
and run by transformers itself. Our timm backbone loads the folder and must compute the same tokens. The
comparison is at the file's native grid: there neither side resamples its position embedding (HF interpolates
at run time without antialiasing, timm resamples once at load time with antialiasing, so they differ elsewhere).
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)

from eomt_ood.errors import UserError
from eomt_ood.models import create_model
from eomt_ood.models.backbones import create_backbone

# Tiny sizes: D 32, 2 blocks, 2 heads, patch 7 on 28 x 28 images -> a 4 x 4 grid.
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    # Every parameter random (LayerScale, norms and the mask token included), so no key can load wrongly unseen.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


def _hf_folder(tmp_path, registers: int, swiglu: bool = False, seed: int = 0):
    if registers:
        config = Dinov2WithRegistersConfig(**TINY, num_register_tokens=registers, use_swiglu_ffn=swiglu)
        model = Dinov2WithRegistersModel(config)
    else:
        model = Dinov2Model(Dinov2Config(**TINY, use_swiglu_ffn=swiglu))
    _randomise(model, seed)
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    return model.eval(), folder


def _timm_backbone(folder, registers: int, swiglu: bool = False):
    # The native grid: patch 7, 28 x 28, as in the HF config, so nothing is resampled at load time.
    if swiglu:
        # HF SwiGLU hidden width: (int(D * 4 * 2/3) + 7) // 8 * 8 = 88; timm's packed fc1 is 2 x 88 = D * 5.5.
        name, extra = "vit_giant_patch14_reg4_dinov2", dict(mlp_ratio=5.5)
    else:
        name, extra = "vit_small_patch14_reg4_dinov2", {}
    return create_backbone(
        name,
        img_size=28,
        patch_size=7,
        embed_dim=32,
        depth=2,
        num_heads=2,
        reg_tokens=registers,
        pretrained_backbone=folder,
        **extra,
    ).eval()


@pytest.mark.parametrize(
    ("registers", "swiglu"),
    [(4, False), (0, False), (2, True)],
    ids=["with-registers", "plain", "with-registers-swiglu"],
)
def test_hugging_face_dinov2_folder_gives_transformers_tokens(tmp_path, registers, swiglu):
    hf, folder = _hf_folder(tmp_path, registers, swiglu)
    ours = _timm_backbone(folder, registers, swiglu)
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(pixel_values=x).last_hidden_state  # (B, 1 + R + 16, D): CLS, registers, patches
        tokens = ours.forward_features(x)
    assert tokens.shape == expected.shape == (2, 1 + registers + 16, 32)
    cls, regs, patches = tokens[:, :1], tokens[:, 1 : 1 + registers], tokens[:, 1 + registers :]
    torch.testing.assert_close(cls, expected[:, :1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(regs, expected[:, 1 : 1 + registers], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(patches, expected[:, 1 + registers :], rtol=1e-4, atol=1e-5)
    # Not a coincidence of the random weights: another seed's folder gives other tokens.
    _, other = _hf_folder(tmp_path / "other", registers, swiglu, seed=5)
    with torch.no_grad():
        assert not torch.allclose(_timm_backbone(other, registers, swiglu).forward_features(x), tokens)


def test_classification_wrapper_folder_loads_without_its_head(tmp_path):
    model = Dinov2ForImageClassification(Dinov2Config(**TINY, num_labels=3))
    _randomise(model, 2)
    model.save_pretrained(tmp_path)  # keys dinov2.* and classifier.*
    ours = _timm_backbone(tmp_path, registers=0)
    x = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model.eval().dinov2(pixel_values=x).last_hidden_state
        torch.testing.assert_close(ours.forward_features(x), expected, rtol=1e-4, atol=1e-5)


def test_hugging_face_folder_is_resampled_like_a_timm_file(tmp_path):
    # At EoMT's patch 16 and another grid, the HF folder must give exactly what the same weights in timm's own
    # format give: the kernel and position resampling are timm's, whatever the file's layout.
    from safetensors.torch import save_file

    _, folder = _hf_folder(tmp_path, registers=2)
    native = _timm_backbone(folder, registers=2)
    timm_file = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in native.state_dict().items()}, str(timm_file))
    from_hf = create_model("eomt_test", depth=2, pretrained_backbone=folder).backbone.state_dict()
    from_timm = create_model("eomt_test", depth=2, pretrained_backbone=timm_file).backbone.state_dict()
    assert from_hf["patch_embed.proj.weight"].shape[-1] == 16 and from_hf["pos_embed"].shape[1] == 16
    assert from_hf.keys() == from_timm.keys()
    for key, value in from_timm.items():
        assert torch.equal(from_hf[key], value), key


def test_register_count_mismatch_says_what_to_change(tmp_path):
    _, folder = _hf_folder(tmp_path, registers=0)
    with pytest.raises(UserError, match=r"hf: the file has 0 register tokens, the backbone 2.*reg_tokens=0"):
        create_model("eomt_test", pretrained_backbone=folder)


@pytest.mark.parametrize("layout", ["timm", "meta"])
def test_plain_dinov2_files_load_into_a_register_free_model(tmp_path, layout):
    # Oracle: timm's own plain DINOv2 ViT, whose position embedding covers CLS (1 + G*G rows). Meta's release
    # files have the same keys plus a mask token.
    import timm
    from safetensors.torch import save_file

    plain = timm.create_model(
        "vit_small_patch14_dinov2", img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=2
    )
    _randomise(plain, 6)
    state = {k: v.detach().clone().contiguous() for k, v in plain.state_dict().items()}
    assert state["pos_embed"].shape[1] == 1 + 16
    path = tmp_path / "plain.safetensors"
    if layout == "meta":
        state["mask_token"] = torch.zeros(1, 32)
        path = tmp_path / "dinov2_vits14_pretrain.pth"
        torch.save(state, path)
    else:
        save_file(state, str(path))
    ours = _timm_backbone(path, registers=0)
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(
            ours.forward_features(x), plain.eval().forward_features(x), rtol=1e-4, atol=1e-5
        )


def test_a_file_that_breaks_the_converter_is_one_line_naming_it(tmp_path):
    """Key/value projections missing from block 0 (the converter's error did not name the file), and position
    embeddings of rank 1 (an IndexError traceback)."""
    _, folder = _hf_folder(tmp_path, registers=2)
    weights = load_file(folder / "model.safetensors")
    without_kv = {
        k: v for k, v in weights.items() if not re.search(r"layer\.0\.attention\.attention\.(key|value)", k)
    }
    save_file(without_kv, str(tmp_path / "kv.safetensors"))
    with pytest.raises(
        UserError, match=r"kv\.safetensors: block 0 has only \['query'\] of the query/key/value"
    ):
        create_model("eomt_test", pretrained_backbone=tmp_path / "kv.safetensors")
    flat = {**weights, "embeddings.position_embeddings": torch.zeros(5)}
    save_file(flat, str(tmp_path / "pos.safetensors"))
    with pytest.raises(UserError, match=r"pos\.safetensors: does not fit the model \(IndexError: "):
        create_model("eomt_test", pretrained_backbone=tmp_path / "pos.safetensors")
