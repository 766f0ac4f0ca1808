"""ImageNet Swin weights (timm, original Microsoft, Hugging Face) into Mask2Former-Swin's backbone, checked
against timm's and transformers' own forward passes on the same weights."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import SwinBackbone, SwinConfig, SwinForImageClassification

from eomt_ood.errors import UserError
from eomt_ood.models import create_model

# A tiny Swin with two blocks per stage, so shifted windows are exercised. HF's SwinBackbone always partitions
# windows while timm stops shifting once a stage is no larger than the window, so the input (256) keeps every
# stage larger than the window (4): 64, 32, 16, 8.
SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4)
SIDE = 256


def timm_swin() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "swin_large_patch4_window12_384", pretrained=False, img_size=SIDE, num_classes=7, **SWIN
    ).eval()


def our_features(model, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(model.model.pixel_level_module.encoder(x).feature_maps)


def layer_normed(feature: torch.Tensor) -> torch.Tensor:
    """The backbone's fresh output norms (weight 1, bias 0) applied to a (B, C, H, W) map."""
    return F.layer_norm(feature.permute(0, 2, 3, 1), feature.shape[1:2]).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def reference():
    """timm's Swin, its weights file, and its four stage outputs on one input."""
    model = timm_swin()
    x = torch.rand(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stages = model.forward_intermediates(x, indices=4, norm=False, intermediates_only=True)
    return model, x, [layer_normed(s) for s in stages]


def test_timm_file_gives_timms_stage_outputs(reference, tmp_path):
    model, x, expected = reference
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    ours = create_model("m2f_swin_test", pretrained_backbone=path, **SWIN).eval()
    for got, want in zip(our_features(ours, x), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # The backbone only: the Mask2Former head keeps its own initialisation (not in the file).
    assert "pretrained_backbone" not in ours.config["kwargs"]


def test_original_layout_loads_the_same(reference, tmp_path):
    # The Microsoft release (and timm < 0.9): patch merging at the end of stage i, under a "model" key, as .pth.
    model, x, expected = reference
    state = {}
    for key, value in model.state_dict().items():
        if ".downsample." in key:
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.downsample", f"layers.{stage - 1}.downsample")
        state[key.replace("head.fc.", "head.")] = value
    assert any(k.startswith("layers.0.downsample.") for k in state)
    path = tmp_path / "swin_large_patch4_window12_384_22k.pth"
    torch.save({"model": state}, path)
    ours = create_model("m2f_swin_test", pretrained_backbone=path, **SWIN).eval()
    for got, want in zip(our_features(ours, x), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_hugging_face_folder_matches_transformers_own_loading(tmp_path):
    # The layout of microsoft/swin-large-patch4-window12-384-in22k: a SwinForImageClassification folder.
    config = SwinConfig(image_size=384, patch_size=4, num_labels=7, use_absolute_embeddings=False, **SWIN)
    torch.manual_seed(2)
    SwinForImageClassification(config).save_pretrained(tmp_path)
    oracle = SwinBackbone.from_pretrained(
        tmp_path, out_features=["stage1", "stage2", "stage3", "stage4"]
    ).eval()
    ours = create_model("m2f_swin_test", pretrained_backbone=tmp_path, **SWIN).eval()
    x = torch.rand(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = oracle(x).feature_maps
    for got, want in zip(our_features(ours, x), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_bad_weights_are_user_errors(reference, tmp_path):
    model, _, _ = reference
    with pytest.raises(
        UserError, match=r"missing\.safetensors: weights file not found; download .*timm/swin_large"
    ):
        create_model("m2f_swin_test", pretrained_backbone=tmp_path / "missing.safetensors", **SWIN)
    path = tmp_path / "swin.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(
        UserError, match=r"relative_position_bias_table has shape .*another Swin size or window"
    ):
        create_model("m2f_swin_test", pretrained_backbone=path, **{**SWIN, "window_size": 8})
    with pytest.raises(UserError, match=r"does not fit this Swin backbone: \d+ missing"):
        create_model("m2f_swin_test", pretrained_backbone=path, **{**SWIN, "depths": (2, 2, 4, 2)})
    vit = tmp_path / "vit.safetensors"
    save_file({"cls_token": torch.zeros(1, 1, 8)}, str(vit))
    with pytest.raises(UserError, match="not a Swin checkpoint"):
        create_model("m2f_swin_test", pretrained_backbone=vit)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: folder has none of model.safetensors, pytorch_model.bin"):
        create_model("m2f_swin_test", pretrained_backbone=tmp_path / "empty")
