"""Mask2Former (Cheng et al., CVPR 2022) baselines through transformers, with the EoMT output interface.

`Mask2FormerSwin` is transformers' `Mask2FormerModel` (Swin backbone, multi-scale deformable pixel decoder,
masked-attention transformer decoder) plus its class head, holding them under the same attribute names as
`Mask2FormerForUniversalSegmentation` so that a Hugging Face checkpoint (e.g.
facebook/mask2former-swin-large-cityscapes-semantic) loads strictly without renaming. `Mask2FormerHead` is the
same pixel decoder + transformer decoder + class head on any four feature maps (strides 4, 8, 16, 32); the
ViT-Adapter baseline feeds it.

Interface (shared with EoMT): `model(images)` with images (B, 3, S, S) float RGB in [0, 1] returns
`(mask_logits, class_logits)`: lists of (B, Q, S/4, S/4) and (B, Q, C + 1) (no-object last). In training mode
the lists hold every decoder prediction (the one from the raw queries, then one per decoder layer: L_dec
entries, 10 for the standard 9-layer decoder), the earlier ones for deep supervision; in eval mode only the
final one, to keep windowed inference light. Higher logits = more likely.

Normalisation: ImageNet mean/std on [0, 1] inputs, identical to Detectron2's PIXEL_MEAN/PIXEL_STD
(123.675, 116.28, 103.53) / (58.395, 57.12, 57.375) on 0-255 RGB used by the original Mask2Former recipe.

Sizes: windowed inference runs S x S windows with S = `img_size` (1024 for the registered large models, as
EoMT). The original Mask2Former Cityscapes semantic recipe trains on 512 x 1024 crops and tests on the whole
1024 x 2048 image in one pass: `m2f_swin_large` does the same (`whole_image_inference`); the windows of
docs/models.md §3 stay available to the other Swin sizes and to the ViT-Adapter.
`masked_attn_enabled` exists for interface compatibility only: Mask2Former's masked cross-attention is part
of its decoder and always on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn
from transformers import Mask2FormerConfig, SwinConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerForUniversalSegmentation,
    Mask2FormerPixelDecoder,
    Mask2FormerPreTrainedModel,
    Mask2FormerTransformerModule,
)

from eomt_ood.errors import UserError
from eomt_ood.models.catalog import register_model
from eomt_ood.models.checkpoints import load_checkpoint
from eomt_ood.models.eomt import IMAGENET_MEAN, IMAGENET_STD


def swin_config(
    embed_dim: int = 192,
    depths: Sequence[int] = (2, 2, 18, 2),
    num_heads: Sequence[int] = (6, 12, 24, 48),
    window_size: int = 12,
    drop_path_rate: float = 0.3,
) -> SwinConfig:
    """A transformers Swin backbone config returning the four stages (strides 4, 8, 16, 32); defaults: Swin-L
    (IN21k, 384, window 12), as in Mask2Former's Cityscapes Swin-L config. Built locally, nothing downloaded."""
    return SwinConfig(
        image_size=384,
        patch_size=4,
        num_channels=3,
        embed_dim=embed_dim,
        depths=list(depths),
        num_heads=list(num_heads),
        window_size=window_size,
        mlp_ratio=4.0,
        drop_path_rate=drop_path_rate,
        use_absolute_embeddings=False,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


def mask2former_config(
    num_classes: int,
    num_queries: int = 100,
    backbone_config: SwinConfig | None = None,
    hidden_dim: int = 256,
    decoder_layers: int = 10,
    encoder_layers: int = 6,
    num_attention_heads: int = 8,
    dim_feedforward: int = 2048,
    encoder_feedforward_dim: int = 1024,
) -> Mask2FormerConfig:
    """Mask2Former head settings; defaults are the standard 256-wide head (6 deformable encoder layers in the
    pixel decoder, `decoder_layers - 1` = 9 masked-attention decoder layers, 8 heads). Width `hidden_dim` is used
    for the pixel decoder (`feature_size`), the mask features and the transformer decoder, as in Mask2Former."""
    return Mask2FormerConfig(
        backbone_config=backbone_config if backbone_config is not None else swin_config(),
        use_pretrained_backbone=False,
        num_labels=num_classes,
        num_queries=num_queries,
        feature_size=hidden_dim,
        mask_feature_size=hidden_dim,
        hidden_dim=hidden_dim,
        decoder_layers=decoder_layers,
        encoder_layers=encoder_layers,
        num_attention_heads=num_attention_heads,
        dim_feedforward=dim_feedforward,
        encoder_feedforward_dim=encoder_feedforward_dim,
        dropout=0.0,  # transformers also uses it as decoder layer-drop; Mask2Former has none
    )


def init_like_transformers(module: nn.Module, config: Mask2FormerConfig) -> None:
    """Initialise Mask2Former parts built outside a `Mask2FormerPreTrainedModel` exactly as transformers would
    (Deformable-DETR offsets, Xavier decoder layers, zero level embedding, N(0, init_std) linear layers)."""
    holder = SimpleNamespace(config=config)
    module.apply(lambda m: Mask2FormerPreTrainedModel._init_weights(holder, m))


def decode(
    transformer_module: Mask2FormerTransformerModule,
    class_predictor: nn.Linear,
    multi_scale_features: Sequence[Tensor],
    mask_features: Tensor,
    all_layers: bool,
) -> tuple[list[Tensor], list[Tensor]]:
    """Masked-attention decoder on the pixel decoder's outputs -> (mask logits (B, Q, h, w), class logits
    (B, Q, C + 1)) for every decoder prediction (`all_layers`) or the final one only."""
    out = transformer_module(multi_scale_features=list(multi_scale_features), mask_features=mask_features)
    masks = list(out.masks_queries_logits)
    queries = list(out.intermediate_hidden_states)  # (Q, B, D) each, already layer-normed
    if not all_layers:
        masks, queries = masks[-1:], queries[-1:]
    return masks, [class_predictor(q.transpose(0, 1)) for q in queries]


class Mask2FormerHead(nn.Module):
    """Mask2Former pixel decoder + transformer decoder + class head on four maps of strides 4, 8, 16, 32.

    Args:
        in_channels: channels of the four input maps, finest first.
        config: a `Mask2FormerConfig` (see `mask2former_config`); its backbone part is ignored.

    forward(features: 4 maps (B, in_channels[i], S/4/2^i, S/4/2^i), all_layers) -> (mask logits list of
    (B, Q, S/4, S/4), class logits list of (B, Q, C + 1)).
    """

    def __init__(self, in_channels: Sequence[int], config: Mask2FormerConfig):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(
                f"Mask2FormerHead needs 4 feature maps (strides 4..32), got {len(in_channels)} channels"
            )
        self.pixel_decoder = Mask2FormerPixelDecoder(config, feature_channels=list(in_channels))
        self.transformer_module = Mask2FormerTransformerModule(in_features=config.feature_size, config=config)
        self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)
        init_like_transformers(self, config)

    def forward(self, features: Sequence[Tensor], all_layers: bool) -> tuple[list[Tensor], list[Tensor]]:
        pixels = self.pixel_decoder(list(features))
        return decode(
            self.transformer_module,
            self.class_predictor,
            pixels.multi_scale_features,
            pixels.mask_features,
            all_layers,
        )


class Mask2FormerSwin(nn.Module):
    """Mask2Former with a Swin backbone (transformers), keys identical to `Mask2FormerForUniversalSegmentation`
    minus its loss module (`criterion.*`).

    Args:
        config: `Mask2FormerConfig` with a Swin `backbone_config`.
        img_size: S, the square window side for windowed inference (Swin itself accepts any size), and the short
            side images are resized to.
        masked_attn_enabled: kept for the interface; no effect (see module docstring).
        whole_image_inference: predict the resized image in one pass instead of S x S windows (Mask2Former's own
            Cityscapes evaluation: the whole 1024 x 2048 image).
    """

    # Where the Swin backbone lives (the Hugging Face layout); training reads it for the backbone lr multiplier.
    backbone_prefix = "model.pixel_level_module.encoder"

    def __init__(
        self,
        config: Mask2FormerConfig,
        img_size: int = 1024,
        masked_attn_enabled: bool = True,
        whole_image_inference: bool = False,
    ):
        super().__init__()
        universal = Mask2FormerForUniversalSegmentation(config)  # builds and initialises the parts as HF does
        self.model = universal.model
        self.class_predictor = universal.class_predictor
        self.img_size = img_size
        self.num_classes = config.num_labels
        self.num_queries = config.num_queries
        self.masked_attn_enabled = masked_attn_enabled
        self.whole_image_inference = whole_image_inference
        self.config: dict | None = None  # filled by the registry (name + kwargs)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def hf_config(self) -> Mask2FormerConfig:
        return self.model.config

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """images (B, 3, S, S) in [0, 1] -> (list of (B, Q, S/4, S/4), list of (B, Q, C + 1)); all decoder
        predictions in training mode, the final one in eval mode."""
        pixels = self.model.pixel_level_module(pixel_values=(images - self.pixel_mean) / self.pixel_std)
        return decode(
            self.model.transformer_module,
            self.class_predictor,
            pixels.decoder_hidden_states,
            pixels.decoder_last_hidden_state,
            all_layers=self.training,
        )

    def check_hf_config(self, config_path: Path) -> None:
        """`load_checkpoint` calls this for a config.json beside the weights (see `check_hf_config`)."""
        check_hf_config(config_path, self)

    def checkpoint_filter_fn(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Any supported state dict (Hugging Face or ours) -> our keys (see module-level `checkpoint_filter_fn`)."""
        return checkpoint_filter_fn(state_dict, self)


# ---- Hugging Face checkpoints -------------------------------------------------------------------------------


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: Mask2FormerSwin) -> dict[str, Tensor]:
    """A `Mask2FormerForUniversalSegmentation` state dict -> ours: drop the loss module's buffers
    (`criterion.empty_weight`); everything else keeps its name."""
    return {k: v for k, v in state_dict.items() if not k.startswith("criterion.")}


def check_hf_config(config_path: Path, model: Mask2FormerSwin) -> None:
    """Raise UserError naming `config_path` and the first field where the Hugging Face config.json disagrees
    with the architecture of `model`."""
    try:
        theirs = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{config_path}: cannot read ({type(exc).__name__})") from None
    if theirs.get("model_type") != "mask2former":
        raise UserError(f"{config_path}: model_type {theirs.get('model_type')!r}, expected 'mask2former'")
    ours = model.hf_config
    checks = {
        "num_labels": (len(theirs.get("id2label", {})) or theirs.get("num_labels"), ours.num_labels),
        "num_queries": (theirs.get("num_queries"), ours.num_queries),
        "hidden_dim": (theirs.get("hidden_dim"), ours.hidden_dim),
        "decoder_layers": (theirs.get("decoder_layers"), ours.decoder_layers),
    }
    backbone = theirs.get("backbone_config") or {}
    for key in ("embed_dim", "depths", "num_heads", "window_size"):
        checks[f"backbone_config.{key}"] = (backbone.get(key), getattr(ours.backbone_config, key))
    for key, (their_value, our_value) in checks.items():
        if their_value is not None and their_value != our_value:
            raise UserError(f"{config_path}: {key} is {their_value}, but this model has {our_value}")


def load_hf_checkpoint(model: Mask2FormerSwin, path: str | Path) -> None:
    """Load a Hugging Face Mask2Former checkpoint strictly into `model`.

    path: a folder with config.json and model.safetensors or pytorch_model.bin (the layout of
    facebook/mask2former-swin-large-cityscapes-semantic), or one of those weight files, or a file saved by
    `save_checkpoint`. A config.json next to the weights is checked against the model first. This is
    `checkpoints.load_checkpoint`, which every model's weights go through.
    """
    load_checkpoint(model, path)


# ---- registered architectures -------------------------------------------------------------------------------


def _create_m2f_swin(
    *,
    img_size: int = 1024,
    num_classes: int = 19,
    num_queries: int = 100,
    embed_dim: int = 192,
    depths: Sequence[int] = (2, 2, 18, 2),
    num_heads: Sequence[int] = (6, 12, 24, 48),
    window_size: int = 12,
    drop_path_rate: float = 0.3,
    hidden_dim: int = 256,
    decoder_layers: int = 10,
    encoder_layers: int = 6,
    decoder_heads: int = 8,
    dim_feedforward: int = 2048,
    encoder_feedforward_dim: int = 1024,
    masked_attn_enabled: bool = True,
    whole_image_inference: bool = False,
    pretrained_backbone: str | Path | None = None,
) -> Mask2FormerSwin:
    backbone = swin_config(embed_dim, depths, num_heads, window_size, drop_path_rate)
    config = mask2former_config(
        num_classes,
        num_queries,
        backbone,
        hidden_dim=hidden_dim,
        decoder_layers=decoder_layers,
        encoder_layers=encoder_layers,
        num_attention_heads=decoder_heads,
        dim_feedforward=dim_feedforward,
        encoder_feedforward_dim=encoder_feedforward_dim,
    )
    model = Mask2FormerSwin(
        config,
        img_size=img_size,
        masked_attn_enabled=masked_attn_enabled,
        whole_image_inference=whole_image_inference,
    )
    if pretrained_backbone is not None:
        from eomt_ood.models.baselines.swin_weights import load_swin_backbone

        load_swin_backbone(model.model.pixel_level_module.encoder, pretrained_backbone)
    return model


@register_model
def m2f_swin_large(**kwargs) -> Mask2FormerSwin:
    """Mask2Former Swin-L (IN21k, window 12) for Cityscapes semantic: Q 100, C 19, S 1024 windows; the layout of
    facebook/mask2former-swin-large-cityscapes-semantic (load it with checkpoint=<folder or weight file>).
    pretrained_backbone=<timm / original / Hugging Face Swin-L file or folder> starts from ImageNet weights.
    Predicts whole images (Mask2Former's Cityscapes protocol: 1024 x 2048 in one pass), not S x S windows."""
    return _create_m2f_swin(**{"whole_image_inference": True, **kwargs})


@register_model
def m2f_swin_tiny(**kwargs) -> Mask2FormerSwin:
    """Mask2Former Swin-T (window 7, drop-path 0.3), same head; for CPU-sized comparisons."""
    defaults = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)
    return _create_m2f_swin(**{**defaults, **kwargs})


@register_model
def m2f_swin_test(**kwargs) -> Mask2FormerSwin:
    """Tiny Mask2Former for tests: S 64, Swin D 16, one block per stage, head width 32, 2 decoder layers, Q 8."""
    defaults = dict(
        img_size=64,
        num_queries=8,
        embed_dim=16,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 2, 2),
        window_size=4,
        drop_path_rate=0.0,
        hidden_dim=32,
        decoder_layers=3,
        encoder_layers=1,
        decoder_heads=2,
        dim_feedforward=64,
        encoder_feedforward_dim=64,
    )
    return _create_m2f_swin(**{**defaults, **kwargs})
