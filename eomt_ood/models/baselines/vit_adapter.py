"""ViT-Adapter (Chen et al., ICLR 2023) on a timm ViT, feeding the Mask2Former head: plain PyTorch, CPU or GPU.

Structure follows github czczup/ViT-Adapter (segmentation backbone) and the EoMT authors' ViT-Adapter-L +
Mask2Former setting (tommiekerssies/ViT-Adapter: conv_inplane 64, 16 deformable heads, 4 points, deform_ratio
0.5, CFFN ratio 0.25, interactions after blocks [[0, 5], [6, 11], [12, 17], [18, 23]], 256-wide Mask2Former
head with 100 queries); the code is our own:

    c1..c4 = spatial_prior(image)                   # conv stem, strides 4, 8, 16, 32, projected to D
    c = [c2 | c3 | c4] + level embeddings          # multi-scale tokens
    x = ViT patch tokens (+ CLS/registers, untouched by the adapter)
    for each interaction i (a group of ViT blocks):
        x = x + gamma * MSDeformAttn(x -> c, 3 levels)          # injector: spatial priors into the ViT
        x = ViT blocks of group i
        c = c + MSDeformAttn(c -> x, 1 level); c = c + ConvFFN(c)  # extractor (+2 extra in the last group)
    c1 = ConvTranspose(c2) + c1; add the ViT outputs of groups 1..4 resized to strides 4, 8, 16, 32; BatchNorm
    -> four (B, D, S/4 .. S/32) maps -> Mask2Former pixel decoder + masked-attention decoder (transformers)

Deformable attention is `deform_attn.MSDeformAttn` (F.grid_sample, no compiled ops). BatchNorm is plain
`BatchNorm2d` (the original uses SyncBatchNorm; convert with `nn.SyncBatchNorm.convert_sync_batchnorm` or
Lightning's `sync_batchnorm=True` for multi-GPU training). Patch size must be 16 (the adapter's strides assume
a ViT at stride 16); DINOv2 backbones are built at patch 16 as in EoMT. Output interface: see mask2former.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from transformers import Mask2FormerConfig

from eomt_ood.models.backbones import create_backbone
from eomt_ood.models.baselines.deform_attn import MSDeformAttn, reference_points
from eomt_ood.models.baselines.mask2former import Mask2FormerHead, mask2former_config
from eomt_ood.models.catalog import register_model
from eomt_ood.models.eomt import IMAGENET_MEAN, IMAGENET_STD

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """Convolutional stem giving local spatial priors: image (B, 3, S, S) -> four (B, D, S/4 .. S/32) maps."""

    def __init__(self, inplanes: int, dim: int):
        super().__init__()
        self.stem = nn.Sequential(
            *_conv_bn_relu(3, inplanes, 2),
            *_conv_bn_relu(inplanes, inplanes, 1),
            *_conv_bn_relu(inplanes, inplanes, 1),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*_conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, dim, 1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c1 = self.stem(images)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)


class ConvFFN(nn.Module):
    """Linear -> depthwise 3x3 conv on each level's token grid -> GELU -> Linear, on multi-scale tokens (B, N, D)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        x = self.fc1(tokens)
        levels = []
        for level, (h, w) in zip(
            x.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes, strict=True
        ):
            grid = level.transpose(1, 2).reshape(x.shape[0], -1, h, w)
            levels.append(self.dwconv(grid).flatten(2).transpose(1, 2))
        return self.fc2(self.act(torch.cat(levels, dim=1)))


class Injector(nn.Module):
    """ViT tokens attend to the multi-scale spatial prior: x + gamma * MSDeformAttn(norm(x), norm(c)); gamma = 0
    at init so a pretrained ViT starts unperturbed."""

    def __init__(self, dim: int, num_heads: int, num_points: int, ratio: float, init_values: float):
        super().__init__()
        self.query_norm = LayerNorm(dim)
        self.feat_norm = LayerNorm(dim)
        self.attn = MSDeformAttn(dim, num_levels=3, num_heads=num_heads, num_points=num_points, ratio=ratio)
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor, refs: Tensor, c: Tensor, c_shapes: Sequence[tuple[int, int]]) -> Tensor:
        return x + self.gamma * self.attn(self.query_norm(x), refs, self.feat_norm(c), c_shapes)


class Extractor(nn.Module):
    """Multi-scale tokens read the ViT tokens: c + MSDeformAttn(norm(c), norm(x)), then c + ConvFFN(norm(c))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_points: int,
        ratio: float,
        with_cffn: bool,
        cffn_ratio: float,
        drop_path: float,
    ):
        super().__init__()
        self.query_norm = LayerNorm(dim)
        self.feat_norm = LayerNorm(dim)
        self.attn = MSDeformAttn(dim, num_levels=1, num_heads=num_heads, num_points=num_points, ratio=ratio)
        self.ffn = ConvFFN(dim, int(dim * cffn_ratio)) if with_cffn else None
        self.ffn_norm = LayerNorm(dim) if with_cffn else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        c: Tensor,
        refs: Tensor,
        x: Tensor,
        x_shape: tuple[int, int],
        c_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        c = c + self.attn(self.query_norm(c), refs, self.feat_norm(x), [x_shape])
        if self.ffn is not None:
            c = c + self.drop_path(self.ffn(self.ffn_norm(c), c_shapes))
        return c


class InteractionBlock(nn.Module):
    """One injector before a group of ViT blocks, one extractor after it (plus `num_extra` more extractors)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_points: int,
        ratio: float,
        init_values: float,
        with_cffn: bool,
        cffn_ratio: float,
        drop_path: float,
        num_extra: int,
    ):
        super().__init__()
        self.injector = Injector(dim, num_heads, num_points, ratio, init_values)
        make_extractor = partial(Extractor, dim, num_heads, num_points, ratio, with_cffn, cffn_ratio)
        self.extractor = make_extractor(drop_path)
        # The extra extractors have no drop-path in ViT-Adapter's segmentation code.
        self.extra_extractors = nn.ModuleList([make_extractor(0.0) for _ in range(num_extra)])


class ViTAdapter(nn.Module):
    """Spatial prior module + injector/extractor interactions around a timm ViT -> four maps of width D.

    The ViT is not held here (it is the model's `backbone`, so layer-wise LR decay sees `backbone.blocks.N`);
    it is passed to `forward`.

    Args:
        dim: D, the ViT width.
        interaction_indexes: [[first, last], ...] ViT block ranges, one per interaction (4 groups).
        conv_inplane, num_heads, num_points, deform_ratio, with_cffn, cffn_ratio, init_values, drop_path_rate,
        num_extra_extractors, add_vit_feature: ViT-Adapter hyper-parameters (see module docstring).

    forward(normalised images (B, 3, S, S), vit) -> [f1 (B, D, S/4, S/4), f2 (S/8), f3 (S/16), f4 (S/32)],
    for a timm `VisionTransformer` at patch 16 (any number of prefix tokens).
    """

    def __init__(
        self,
        dim: int,
        interaction_indexes: Sequence[Sequence[int]],
        conv_inplane: int = 64,
        num_heads: int = 16,
        num_points: int = 4,
        deform_ratio: float = 0.5,
        with_cffn: bool = True,
        cffn_ratio: float = 0.25,
        init_values: float = 0.0,
        drop_path_rate: float = 0.0,
        num_extra_extractors: int = 2,
        add_vit_feature: bool = True,
    ):
        super().__init__()
        if len(interaction_indexes) != 4:
            raise ValueError(f"ViT-Adapter uses 4 interactions, got {len(interaction_indexes)} block ranges")
        self.interaction_indexes = [list(map(int, r)) for r in interaction_indexes]
        self.add_vit_feature = add_vit_feature
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(conv_inplane, dim)
        self.interactions = nn.ModuleList(
            [
                InteractionBlock(
                    dim,
                    num_heads,
                    num_points,
                    deform_ratio,
                    init_values,
                    with_cffn,
                    cffn_ratio,
                    drop_path_rate,
                    num_extra_extractors if i == 3 else 0,
                )
                for i in range(4)
            ]
        )
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norms = nn.ModuleList([nn.BatchNorm2d(dim) for _ in range(4)])
        self._init_weights()

    def _init_weights(self) -> None:
        # As ViT-Adapter: truncated-normal linears, He-normal (fan-out) convs, then Deformable-DETR init.
        for module in [self.spm, self.interactions, self.up]:
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                    nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, images: Tensor, vit: VisionTransformer) -> list[Tensor]:
        batch, _, height, width = images.shape
        g_h, g_w = height // 16, width // 16
        c_shapes = [(2 * g_h, 2 * g_w), (g_h, g_w), (g_h // 2, g_w // 2)]
        refs_x = reference_points([(g_h, g_w)], images.device, images.dtype)  # injector queries: ViT grid
        refs_c = reference_points(c_shapes, images.device, images.dtype)  # extractor queries: the 3 levels

        c1, c2, c3, c4 = self.spm(images)
        c = torch.cat(
            [level.flatten(2).transpose(1, 2) + self.level_embed[i] for i, level in enumerate((c2, c3, c4))],
            dim=1,
        )

        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
        prefix = vit.num_prefix_tokens
        vit_maps = []
        for block_range, interaction in zip(self.interaction_indexes, self.interactions, strict=True):
            patches = interaction.injector(x[:, prefix:], refs_x, c, c_shapes)
            x = torch.cat([x[:, :prefix], patches], dim=1)
            for block in vit.blocks[block_range[0] : block_range[1] + 1]:
                x = block(x)
            patches = x[:, prefix:]
            c = interaction.extractor(c, refs_c, patches, (g_h, g_w), c_shapes)
            for extractor in interaction.extra_extractors:
                c = extractor(c, refs_c, patches, (g_h, g_w), c_shapes)
            vit_maps.append(patches.transpose(1, 2).reshape(batch, -1, g_h, g_w))

        c2, c3, c4 = (
            level.transpose(1, 2).reshape(batch, -1, h, w)
            for level, (h, w) in zip(c.split([h * w for h, w in c_shapes], dim=1), c_shapes, strict=True)
        )
        c1 = self.up(c2) + c1
        features = [c1, c2, c3, c4]
        if self.add_vit_feature:
            for i, vit_map in enumerate(vit_maps):  # group i's output goes to stride 4 * 2^i
                size = features[i].shape[-2:]
                if vit_map.shape[-2:] != size:
                    vit_map = F.interpolate(vit_map, size=size, mode="bilinear", align_corners=False)
                features[i] = features[i] + vit_map
        return [norm(f) for norm, f in zip(self.norms, features, strict=True)]


class ViTAdapterMask2Former(nn.Module):
    """ViT-Adapter features -> Mask2Former head, with the EoMT interface (see mask2former.py).

    Args:
        backbone: timm `VisionTransformer` at patch 16 for S x S inputs; its final norm is replaced by Identity
            (the adapter never reads it, and a parameter without gradient upsets DDP), as in ViT-Adapter.
        adapter: `ViTAdapter` of the same width.
        head_config: `Mask2FormerConfig` for the head (num_labels = C, num_queries = Q, widths).
        masked_attn_enabled: kept for the interface; no effect (Mask2Former's decoder always masks).

    forward(images (B, 3, S, S) in [0, 1]) -> (list of (B, Q, S/4, S/4), list of (B, Q, C + 1)); every
    decoder prediction in training mode, the final one in eval mode.
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        adapter: ViTAdapter,
        head_config: Mask2FormerConfig,
        masked_attn_enabled: bool = True,
    ):
        super().__init__()
        img_size, patch = backbone.patch_embed.img_size, backbone.patch_embed.patch_size
        if img_size[0] != img_size[1]:
            raise ValueError(f"ViTAdapterMask2Former needs a square input, got {img_size}")
        if tuple(patch) != (16, 16):
            raise ValueError(f"ViT-Adapter needs a patch-16 ViT (stride 16), got patch {tuple(patch)}")
        backbone.norm = nn.Identity()
        self.backbone = backbone
        self.adapter = adapter
        self.head = Mask2FormerHead([backbone.embed_dim] * 4, head_config)
        self.img_size = int(img_size[0])
        self.num_classes = head_config.num_labels
        self.num_queries = head_config.num_queries
        self.masked_attn_enabled = masked_attn_enabled
        self.config: dict | None = None  # filled by the registry (name + kwargs)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        features = self.adapter((images - self.pixel_mean) / self.pixel_std, self.backbone)
        return self.head(features, all_layers=self.training)

    def checkpoint_filter_fn(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Our own saved state dicts need no renaming (no foreign ViT-Adapter checkpoint format is supported)."""
        return {k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}


# ---- registered architectures -------------------------------------------------------------------------------


def _create_m2f_vit_adapter(
    backbone: str,
    *,
    img_size: int = 1024,
    num_classes: int = 19,
    num_queries: int = 100,
    interaction_indexes: Sequence[Sequence[int]] | None = None,
    conv_inplane: int = 64,
    deform_num_heads: int = 16,
    n_points: int = 4,
    deform_ratio: float = 0.5,
    with_cffn: bool = True,
    cffn_ratio: float = 0.25,
    init_values: float = 0.0,
    drop_path_rate: float = 0.0,
    num_extra_extractors: int = 2,
    add_vit_feature: bool = True,
    hidden_dim: int = 256,
    decoder_layers: int = 10,
    encoder_layers: int = 6,
    decoder_heads: int = 8,
    dim_feedforward: int = 2048,
    encoder_feedforward_dim: int = 1024,
    masked_attn_enabled: bool = True,
    pretrained_backbone: str | Path | None = None,
    **timm_kwargs,
) -> ViTAdapterMask2Former:
    vit = create_backbone(
        backbone,
        img_size=img_size,
        patch_size=16,
        pretrained_backbone=pretrained_backbone,
        drop_path_rate=drop_path_rate,
        **timm_kwargs,
    )
    if interaction_indexes is None:  # four equal groups of blocks, as ViT-Adapter's configs
        step = len(vit.blocks) // 4
        interaction_indexes = [[i * step, (i + 1) * step - 1] for i in range(4)]
    adapter = ViTAdapter(
        vit.embed_dim,
        interaction_indexes,
        conv_inplane=conv_inplane,
        num_heads=deform_num_heads,
        num_points=n_points,
        deform_ratio=deform_ratio,
        with_cffn=with_cffn,
        cffn_ratio=cffn_ratio,
        init_values=init_values,
        drop_path_rate=drop_path_rate,
        num_extra_extractors=num_extra_extractors,
        add_vit_feature=add_vit_feature,
    )
    head = mask2former_config(
        num_classes,
        num_queries,
        hidden_dim=hidden_dim,
        decoder_layers=decoder_layers,
        encoder_layers=encoder_layers,
        num_attention_heads=decoder_heads,
        dim_feedforward=dim_feedforward,
        encoder_feedforward_dim=encoder_feedforward_dim,
    )
    return ViTAdapterMask2Former(vit, adapter, head, masked_attn_enabled=masked_attn_enabled)


@register_model
def m2f_vit_adapter_large(**kwargs) -> ViTAdapterMask2Former:
    """ViT-Adapter-L (DINOv2 ViT-L with 4 registers at patch 16) + Mask2Former, S 1024, Q 100, C 19: the paper's
    reimplemented baseline (deformable heads 16, deform_ratio 0.5, interactions after blocks 5, 11, 17, 23)."""
    return _create_m2f_vit_adapter("vit_large_patch14_reg4_dinov2", **kwargs)


@register_model
def m2f_vit_adapter_small(**kwargs) -> ViTAdapterMask2Former:
    """ViT-Adapter-S (DINOv2 ViT-S reg4, patch 16; 6 deformable heads, deform_ratio 1.0) + Mask2Former."""
    defaults = dict(deform_num_heads=6, deform_ratio=1.0)
    return _create_m2f_vit_adapter("vit_small_patch14_reg4_dinov2", **{**defaults, **kwargs})


@register_model
def m2f_vit_adapter_test(**kwargs) -> ViTAdapterMask2Former:
    """Tiny ViT-Adapter + Mask2Former for tests: S 64, ViT D 32 x 4 blocks (2 registers), head width 32, Q 8."""
    defaults = dict(
        img_size=64,
        num_queries=8,
        embed_dim=32,
        depth=4,
        num_heads=2,
        reg_tokens=2,
        conv_inplane=8,
        deform_num_heads=2,
        n_points=2,
        hidden_dim=32,
        decoder_layers=3,
        encoder_layers=1,
        decoder_heads=2,
        dim_feedforward=64,
        encoder_feedforward_dim=64,
    )
    return _create_m2f_vit_adapter("vit_small_patch14_reg4_dinov2", **{**defaults, **kwargs})
