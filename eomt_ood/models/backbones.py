"""timm ViT backbones for EoMT (docs/models.md §2): creation at patch 16 and loading local pretrained weights.

DINOv2 models are named `...patch14...` but EoMT builds them with patch size 16 at the target resolution. Their
pretrained weights (timm format, Meta's original DINOv2 format or a Hugging Face DINOv2 folder) are adapted
with timm's own
`checkpoint_filter_fn`: FlexiViT pseudo-inverse resampling of the 14x14 kernel to 16x16 and bicubic antialiased
resampling of the 37x37 position embedding to the new grid. Nothing is downloaded: the file must be local.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.eva import Eva
from timm.models.eva import checkpoint_filter_fn as timm_eva_filter
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as timm_vit_filter

from eomt_ood.errors import UserError
from eomt_ood.models.checkpoints import (
    CheckpointMismatch,
    dinov3_to_timm,
    fitting,
    is_hf_dinov3,
    load_strict,
    read_state_dict,
)

# Where each backbone's pretrained weights come from (for the error message when the local file is missing).
PRETRAINED_TAGS = {
    "vit_small_patch14_reg4_dinov2": "vit_small_patch14_reg4_dinov2.lvd142m",
    "vit_base_patch14_reg4_dinov2": "vit_base_patch14_reg4_dinov2.lvd142m",
    "vit_large_patch14_reg4_dinov2": "vit_large_patch14_reg4_dinov2.lvd142m",
    "vit_giant_patch14_reg4_dinov2": "vit_giant_patch14_reg4_dinov2.lvd142m",
    "deit3_large_patch16_384": "deit3_large_patch16_384.fb_in22k_ft_in1k",
    "eva02_large_patch14_224": "eva02_large_patch14_224.mim_m38m",
    "vit_small_patch16_dinov3_qkvb": "vit_small_patch16_dinov3_qkvb.lvd1689m",
    "vit_base_patch16_dinov3_qkvb": "vit_base_patch16_dinov3_qkvb.lvd1689m",
    "vit_large_patch16_dinov3_qkvb": "vit_large_patch16_dinov3_qkvb.lvd1689m",
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
    pretrained_backbone: optional local weights (a file or a Hugging Face folder; timm, Meta DINOv2 or
    transformers DINOv2 format, see `load_pretrained_backbone`) adapted to this size.
    """
    backbone = timm.create_model(
        name, pretrained=False, img_size=img_size, patch_size=patch_size, num_classes=0, **timm_kwargs
    )
    if not isinstance(backbone, VisionTransformer | Eva):
        raise ValueError(f"{name} is a {type(backbone).__name__}; EoMT needs a timm VisionTransformer or Eva")
    if pretrained_backbone is not None:
        load_pretrained_backbone(backbone, pretrained_backbone, name)
    return backbone


def from_hugging_face_dinov2(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers DINOv2 state dict (`Dinov2Model` / `Dinov2WithRegistersModel`, also inside their
    `*ForImageClassification` or `*Backbone` wrappers) -> timm ViT keys at the file's own grid and patch size.

    Pure. HF adds a position embedding to CLS and patches (1, 1 + G*G, D) and none to registers; timm's DINOv2
    ViTs (`no_embed_class`) add one to patches only. Adding HF's CLS position to `cls_token` makes the two
    compute the same tokens, as timm does for Meta's register files. q/k/v are stacked into timm's fused qkv
    ([q; k; v] rows); SwiGLU `weights_in` / `weights_out` become timm's packed `fc1` / `fc2`.
    """
    renames = [
        (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
        (r"encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
        (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
        (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
        (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
        (r"encoder\.layer\.(\d+)\.mlp\.weights_in\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
        (r"encoder\.layer\.(\d+)\.mlp\.weights_out\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
        (r"layernorm\.(weight|bias)", r"norm.\1"),
    ]
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    sd = {_strip_hf_prefix(k): v for k, v in state_dict.items()}
    for key, value in sd.items():
        if key in ("embeddings.mask_token", "embeddings.cls_token", "embeddings.position_embeddings"):
            continue  # mask_token: masked-image pre-training only; the other two are combined below
        if key.startswith("classifier."):
            continue  # ImageNet head of *ForImageClassification; the backbone has no classifier
        if key == "embeddings.register_tokens":
            if value.shape[1] > 0:
                out["reg_token"] = value
            continue
        split = re.fullmatch(
            r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)", key
        )
        if split:
            qkv.setdefault((split[1], split[3]), {})[split[2]] = value
            continue
        for pattern, replacement in renames:
            if re.fullmatch(pattern, key):
                key = re.sub(pattern, replacement, key)
                break
        out[key] = value  # unknown keys pass through so strict loading names them
    pos = sd["embeddings.position_embeddings"]  # (1, 1 + G*G, D)
    out["cls_token"] = sd["embeddings.cls_token"] + pos[:, :1]
    out["pos_embed"] = pos[:, 1:]
    for (block, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise CheckpointMismatch(
                f"block {block} has only {sorted(parts)} of the query/key/value projections"
            )
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


_HF_PREFIXES = ("dinov2_with_registers.", "dinov2.")


def _strip_hf_prefix(key: str) -> str:
    for prefix in _HF_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def is_hugging_face_dinov2(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for transformers DINOv2 keys (`embeddings.cls_token` + `encoder.layer.N...`)."""
    keys = {_strip_hf_prefix(k) for k in state_dict}
    return "embeddings.cls_token" in keys and "embeddings.position_embeddings" in keys


def load_pretrained_backbone(backbone: VisionTransformer | Eva, path: str | Path, name: str = "") -> None:
    """Load local pretrained ViT weights into `backbone` in place, resampling patch kernel and pos-embed.

    path: a weights file or a Hugging Face folder (config.json + model.safetensors). Accepts timm-format files
    (`model.safetensors` / `pytorch_model.bin` of a timm hub repo), Meta's original DINOv2 files (keys
    `mask_token`, `register_tokens`, `w12`/`w3` for SwiGLU), transformers DINOv2 folders or files
    (`facebook/dinov2-*`, `facebook/dinov2-with-registers-*`), timm EVA-02 files (via timm's Eva filter), and
    DINOv3 as timm, Meta (.pth) or Hugging Face (facebook/dinov3-*) files. Plain (register-free) DINOv2 files of
    Meta or timm load into a model built with reg_tokens=0. Classifier heads are dropped. The patch kernel
    (e.g. 14 -> 16) and the position embedding (e.g. 37 x 37 -> 64 x 64) are then resampled by timm's own filter
    (FlexiViT pseudo-inverse; bicubic, antialiased).
    """
    tag = PRETRAINED_TAGS.get(name, name or "the matching timm model")
    hint = (
        f"download the timm weights '{tag}' (hub repo timm/{tag}, file model.safetensors) on a machine with "
        f"network and place them at {path}"
    )
    state_dict, _ = read_state_dict(path, missing_hint=hint)
    with fitting(path):  # a file that breaks a converter's assumption is one line naming it
        if is_hf_dinov3(state_dict):  # Hugging Face DINOv3ViTModel (facebook/dinov3-*): timm names first
            state_dict = dinov3_to_timm(state_dict)
        elif is_hugging_face_dinov2(state_dict):
            if isinstance(backbone, Eva):
                raise UserError(f"{path}: a Hugging Face DINOv2 file does not fit the EVA-02 backbone {name}")
            state_dict = from_hugging_face_dinov2(state_dict)
            _check_prefix_tokens(state_dict, backbone, path)
        elif isinstance(backbone, VisionTransformer):
            state_dict = fold_class_position(state_dict, backbone)
        timm_filter: Any = timm_eva_filter if isinstance(backbone, Eva) else timm_vit_filter
        state_dict = timm_filter(state_dict, backbone)
        if "dinov3" in name:
            # timm's plain DINOv3 files drop the q/v biases, which are all zero in those distilled models; the
            # qkvb backbone EoMT fine-tunes (as the official code does through Hugging Face) starts them at zero.
            for key, param in backbone.named_parameters():
                if key.endswith(("attn.q_bias", "attn.v_bias")) and key not in state_dict:
                    state_dict[key] = torch.zeros_like(param)
        if isinstance(backbone, Eva) and "norm.weight" not in state_dict and "fc_norm.weight" in state_dict:
            # timm's default EVA-02 applies its last LayerNorm after average pooling (fc_norm); EoMT builds it with
            # use_fc_norm=False and needs that LayerNorm on the tokens as its final_norm: same parameters.
            state_dict["norm.weight"] = state_dict.pop("fc_norm.weight")
            state_dict["norm.bias"] = state_dict.pop("fc_norm.bias")
        # The backbone is built with num_classes=0; classifier weights of ImageNet checkpoints have no home.
        state_dict = {
            k: v for k, v in state_dict.items() if not k.startswith(("head.", "fc_norm.", "head_drop."))
        }
        load_strict(backbone, state_dict, f"backbone {name or type(backbone).__name__}")
    # Official DINOv3 EoMT checkpoints are deltas to these weights (models/checkpoints.py adds them).
    setattr(backbone, "pretrained_weights", str(path))  # noqa: B010


def fold_class_position(
    state_dict: dict[str, torch.Tensor], backbone: VisionTransformer
) -> dict[str, torch.Tensor]:
    """Plain DINOv2 files (Meta's `dinov2_vit*14_pretrain.pth`, timm's `vit_*_patch14_dinov2`) into a backbone
    that embeds positions on patches only (`no_embed_class`, the reg4 family built with reg_tokens=0).

    Their pos_embed (1, 1 + G*G, D) also covers CLS; adding that row to `cls_token` gives CLS the same input,
    the rest is the patch grid. Pure; other files (registers, already patch-only) come back unchanged. Meta's
    register files are folded the same way by timm's own filter.
    """
    pos = state_dict.get("pos_embed")
    if (
        pos is None
        or "cls_token" not in state_dict
        or "register_tokens" in state_dict
        or not getattr(backbone, "no_embed_class", False)
    ):
        return state_dict
    patches = pos.shape[1] - 1
    if patches < 1 or math.isqrt(patches) ** 2 != patches:
        return state_dict
    out = dict(state_dict)
    out["cls_token"] = state_dict["cls_token"] + pos[:, :1]
    out["pos_embed"] = pos[:, 1:]
    return out


def _check_prefix_tokens(
    state_dict: dict[str, torch.Tensor], backbone: VisionTransformer, path: str | Path
) -> None:
    # A plain DINOv2 file (no registers) into a register model, or the reverse, would otherwise fail with a
    # "missing reg_token" line that does not say what to change.
    theirs = int(state_dict["reg_token"].shape[1]) if "reg_token" in state_dict else 0
    ours = int(backbone.num_reg_tokens)
    if theirs != ours:
        raise UserError(
            f"{path}: the file has {theirs} register tokens, the backbone {ours}; build the model with "
            f"reg_tokens={theirs} (e.g. --set model.overrides.reg_tokens={theirs})"
        )
