"""timm ViT backbones for EoMT (docs/eomt.md §1.1): creation at patch 16 and loading local pretrained weights.

DINOv2 models are named `...patch14...` but EoMT builds them with patch size 16 at the target resolution. Their
pretrained weights (timm format or the original DINOv2 format) are adapted with timm's own
`checkpoint_filter_fn`: FlexiViT pseudo-inverse resampling of the 14x14 kernel to 16x16 and bicubic antialiased
resampling of the 37x37 position embedding to the new grid. Nothing is downloaded: the file must be local.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from timm.models.eva import Eva
from timm.models.eva import checkpoint_filter_fn as timm_eva_filter
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as timm_vit_filter

from eomt_ood.errors import UserError
from eomt_ood.models.checkpoints import read_state_dict

# Where each backbone's pretrained weights come from (for the error message when the local file is missing).
PRETRAINED_TAGS = {
    "vit_small_patch14_reg4_dinov2": "vit_small_patch14_reg4_dinov2.lvd142m",
    "vit_base_patch14_reg4_dinov2": "vit_base_patch14_reg4_dinov2.lvd142m",
    "vit_large_patch14_reg4_dinov2": "vit_large_patch14_reg4_dinov2.lvd142m",
    "vit_giant_patch14_reg4_dinov2": "vit_giant_patch14_reg4_dinov2.lvd142m",
    "deit3_large_patch16_384": "deit3_large_patch16_384.fb_in22k_ft_in1k",
    "eva02_large_patch14_224": "eva02_large_patch14_224.mim_m38m",
}


def create_backbone(
    name: str,
    img_size: int,
    patch_size: int = 16,
    pretrained_backbone: str | Path | None = None,
    **timm_kwargs,
) -> VisionTransformer | Eva:
    """timm ViT / Eva `name` for S x S inputs (S = img_size) at `patch_size`, without classifier head.

    timm_kwargs override the architecture (embed_dim, depth, num_heads, reg_tokens, ...), e.g. for toy models.
    pretrained_backbone: optional local weights file (timm or original DINOv2 format) adapted to this size.
    """
    backbone = timm.create_model(
        name, pretrained=False, img_size=img_size, patch_size=patch_size, num_classes=0, **timm_kwargs
    )
    if not isinstance(backbone, VisionTransformer | Eva):
        raise ValueError(f"{name} is a {type(backbone).__name__}; EoMT needs a timm VisionTransformer or Eva")
    if pretrained_backbone is not None:
        load_pretrained_backbone(backbone, pretrained_backbone, name)
    return backbone


def load_pretrained_backbone(backbone: VisionTransformer | Eva, path: str | Path, name: str = "") -> None:
    """Load local pretrained ViT weights into `backbone` in place, resampling patch kernel and pos-embed.

    path: a weights file or a folder holding one. Accepts timm-format files (`model.safetensors` /
    `pytorch_model.bin` of a timm hub repo), Meta's original DINOv2 files (keys `mask_token`,
    `register_tokens`, `w12`/`w3` for SwiGLU) and timm EVA-02 files (via timm's Eva filter).
    Classifier heads are dropped. The patch kernel (e.g. 14 -> 16) and the position embedding (e.g. 37 x 37 ->
    64 x 64) are then resampled by timm's own filter (FlexiViT pseudo-inverse; bicubic, antialiased).
    """
    tag = PRETRAINED_TAGS.get(name, name or "the matching timm model")
    hint = (
        f"download the timm weights '{tag}' (hub repo timm/{tag}, file model.safetensors) on a machine with "
        f"network and place them at {path}"
    )
    state_dict, _ = read_state_dict(path, missing_hint=hint)
    timm_filter: Any = timm_eva_filter if isinstance(backbone, Eva) else timm_vit_filter
    state_dict = timm_filter(state_dict, backbone)
    if isinstance(backbone, Eva) and "norm.weight" not in state_dict and "fc_norm.weight" in state_dict:
        # timm's default EVA-02 applies its last LayerNorm after average pooling (fc_norm); EoMT builds it with
        # use_fc_norm=False and needs that LayerNorm on the tokens as its final_norm: same parameters.
        state_dict["norm.weight"] = state_dict.pop("fc_norm.weight")
        state_dict["norm.bias"] = state_dict.pop("fc_norm.bias")
    # The backbone is built with num_classes=0; classifier weights of ImageNet checkpoints have no home.
    state_dict = {
        k: v for k, v in state_dict.items() if not k.startswith(("head.", "fc_norm.", "head_drop."))
    }
    try:
        backbone.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise UserError(f"{path}: does not fit backbone {name or type(backbone).__name__}: {detail}") from exc
