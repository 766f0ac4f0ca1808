"""EoMT: a plain timm ViT that segments by prepending learned queries to its last blocks.

Follows the official tue-mps/eomt DINOv2 code path (Kerssies et al., CVPR 2025) and docs/eomt.md §1:

    x = patch_embed(normalise(img)); x = [CLS | registers | patches + pos_embed]
    for block i:  at i == L - L2 prepend the Q queries once; in the last L2 blocks (masking enabled) predict
                  masks from final_norm(x) and let each query attend only to patches inside its own mask
    predict(final_norm(x))

Token order in the last L2 blocks is [Q queries | CLS | R registers | G*G patches]. Only query->patch attention
is ever masked. With masking disabled (inference) the forward is the plain timm ViT plus one `predict`.
Optional ALGM token merging (`models/algm.py`, off by default) shrinks the patch tokens in the blocks before the
queries and restores the full grid before them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from eomt_ood.models.algm import ALGMSettings, TokenMerger

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ScaleBlock(nn.Module):
    """2x upsampling of a (B, D, H, W) map to (B, D, 2H, 2W): ConvTranspose2d -> GELU -> depthwise 3x3 -> LayerNorm2d."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)
        self.norm = LayerNorm2d(dim)  # eps 1e-6, LayerNorm over channels at each pixel

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv2(self.act(self.conv1(x))))


def num_upscale_blocks(patch_size: int) -> int:
    """Number of 2x ScaleBlocks: 2 for patch 16 (masks at stride 4), 1 for patch 14 (stride 7)."""
    return max(1, math.floor(math.log2(patch_size)) - 2)


def build_attn_mask(
    mask_logits: Tensor,
    grid_size: int,
    num_prefix_tokens: int,
    keep_prob: float | Tensor = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Boolean self-attention mask for one masked block (True = may attend).

    mask_logits: (B, Q, H, W) predicted before the block; grid_size G; num_prefix_tokens P (CLS + registers).
    Returns (B, N, N) with N = Q + P + G*G. Query rows may attend to patch columns only where the bilinearly
    downsampled (align_corners=False, no antialias) logit is strictly > 0; every other entry is True. Each
    (image, query) row block is then switched off (all True) independently with probability 1 - keep_prob,
    i.e. where a uniform draw exceeds keep_prob (docs/eomt.md §1.4).
    """
    batch, num_queries = mask_logits.shape[:2]
    num_tokens = num_queries + num_prefix_tokens + grid_size * grid_size
    with torch.no_grad():
        down = F.interpolate(mask_logits.detach(), size=(grid_size, grid_size), mode="bilinear")
        mask = torch.ones(batch, num_tokens, num_tokens, dtype=torch.bool, device=mask_logits.device)
        query_to_patch = down.flatten(2) > 0  # (B, Q, G*G)
        if float(keep_prob) < 1:
            u = torch.rand(batch, num_queries, device=mask_logits.device, generator=generator)
            query_to_patch |= (u > keep_prob)[..., None]
        mask[:, :num_queries, num_queries + num_prefix_tokens :] = query_to_patch
    return mask


def masked_block_forward(block: Any, x: Tensor, attn_mask: Tensor) -> Tensor:
    """One timm ViT `Block` on x (B, N, D) with a boolean attn_mask (B, N, N), re-run by hand with SDPA.

    Same computation as `block(x)` (pre-norm, qkv rows [q; k; v], LayerScale, drop-path) except for the mask;
    written out so it does not depend on a timm version whose Block accepts a mask.
    """
    attn = block.attn
    batch, num_tokens, _ = x.shape
    h = block.norm1(x)
    qkv = attn.qkv(h).reshape(batch, num_tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    h = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask[:, None], dropout_p=attn.attn_drop.p if attn.training else 0.0
    )
    h = h.transpose(1, 2).reshape(batch, num_tokens, attn.num_heads * attn.head_dim)
    h = attn.proj_drop(attn.proj(attn.norm(h)))
    x = x + block.drop_path1(block.ls1(h))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


class EoMT(nn.Module):
    """Encoder-only Mask Transformer on a timm `VisionTransformer` (DINOv2 with registers, DeiT-III, ...) or
    a timm `Eva` (EVA-02: RoPE is applied to the G*G patch tokens only; queries, CLS and registers stay unrotated).

    Args:
        backbone: timm ViT/Eva built for a square S x S input with `dynamic_img_size=False`, `num_classes=0`.
        num_classes: C; class logits have C + 1 entries, the last is "no object".
        num_queries: Q learned queries, prepended at block L - L2.
        num_blocks: L2, the number of final blocks that see the queries (and may be masked).
        masked_attn_enabled: masked attention + intermediate predictions (training); off for inference.

    Input: images (B, 3, S, S) float RGB in [0, 1]; normalised inside with ImageNet mean/std.
    Output: (mask_logits, class_logits), lists of (B, Q, 2^n_up G, 2^n_up G) (= (B, Q, S/4, S/4) for patch 16)
    and (B, Q, C + 1). With masking enabled L2 + 1 entries (predictions at the inputs of blocks L-L2..L-1, then
    the final one); disabled: the final one only. Higher logits = more likely.
    """

    attn_mask_probs: Tensor
    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(
        self,
        backbone: VisionTransformer | Eva,
        num_classes: int,
        num_queries: int = 100,
        num_blocks: int = 4,
        masked_attn_enabled: bool = True,
    ):
        super().__init__()
        img_size, patch_size = backbone.patch_embed.img_size, backbone.patch_embed.patch_size
        if img_size[0] != img_size[1] or patch_size[0] != patch_size[1]:
            raise ValueError(
                f"EoMT needs a square input and patch, got img_size {img_size}, patch {patch_size}"
            )
        if getattr(backbone, "dynamic_img_size", False):
            raise ValueError("EoMT needs a backbone with dynamic_img_size=False (fixed S x S input)")
        if not 1 <= num_blocks <= len(backbone.blocks):
            raise ValueError(f"num_blocks {num_blocks} must be in 1..{len(backbone.blocks)}")
        self.backbone = backbone
        self.uses_rope = isinstance(backbone, Eva)
        if self.uses_rope:
            if getattr(backbone, "rope_mixed", False):
                raise ValueError(
                    "EoMT supports Eva backbones with one shared RoPE, not per-depth (mixed) RoPE"
                )
            # timm's EvaAttention leaves its first `num_prefix_tokens` tokens unrotated and rotates the rest; in
            # the query blocks the sequence is [queries | CLS | registers | patches], so that count is Q + P.
            blocks: Any = backbone.blocks
            for block in blocks[len(blocks) - num_blocks :]:
                block.attn.num_prefix_tokens = num_queries + backbone.num_prefix_tokens
        self.img_size = int(img_size[0])
        self.patch_size = int(patch_size[0])
        self.grid_size = self.img_size // self.patch_size
        self.num_prefix_tokens = int(backbone.num_prefix_tokens)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.num_blocks = num_blocks
        self.masked_attn_enabled = masked_attn_enabled
        # Filled by the registry (name + construction kwargs) so a saved file can be rebuilt.
        self.config: dict | None = None
        # ALGM token merging at inference (`models.algm.enable_token_merging`); None = off, the plain forward.
        self.token_merging: ALGMSettings | None = None
        self.last_merge_counts: list[
            tuple[int, int]
        ] = []  # (block, patch tokens) after each merge, last forward

        dim = backbone.embed_dim
        self.q = nn.Embedding(num_queries, dim)
        self.class_head = nn.Linear(dim, num_classes + 1)
        self.mask_head = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim)
        )
        self.upscale = nn.Sequential(*[ScaleBlock(dim) for _ in range(num_upscale_blocks(self.patch_size))])
        # P_k for masked block k (index 0 = block L - L2); annealed to 0 by training, saved in checkpoints.
        self.register_buffer("attn_mask_probs", torch.ones(num_blocks))
        # Constants, not saved: the official file stores them but they never change.
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def predict(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Heads on normalised tokens z (B, Q + P + G*G, D) -> mask logits (B, Q, 4G, 4G), class logits (B, Q, C+1)."""
        queries = z[:, : self.num_queries]
        class_logits = self.class_head(queries)
        mask_embed = self.mask_head(queries)
        patches = z[:, self.num_queries + self.num_prefix_tokens :]
        pixels = self.upscale(patches.transpose(1, 2).reshape(z.shape[0], -1, self.grid_size, self.grid_size))
        mask_logits = torch.einsum("bqd,bdhw->bqhw", mask_embed, pixels)
        return mask_logits, class_logits

    def _attn_mask(self, mask_logits: Tensor, k: int) -> Tensor | None:
        keep_prob = float(self.attn_mask_probs[k])
        if keep_prob == 0:
            # Every query's mask is switched off: the mask would be all True, so skip building it.
            return None
        return build_attn_mask(mask_logits, self.grid_size, self.num_prefix_tokens, keep_prob)

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """images (B, 3, S, S) in [0, 1] -> (list of mask logits (B, Q, 4G, 4G), list of class logits (B, Q, C+1))."""
        backbone: Any = self.backbone
        x = (images - self.pixel_mean) / self.pixel_std
        x = backbone.patch_embed(x)
        rope = None
        if self.uses_rope:
            x, rope = backbone._pos_embed(x)  # Eva applies its patch dropout inside
        else:
            # pos-embed added to the patches, then [CLS | registers | patches]
            x = backbone.patch_drop(backbone._pos_embed(x))
        x = backbone.norm_pre(x)

        first_query_block = len(backbone.blocks) - self.num_blocks
        merger = None
        if self.token_merging is not None:
            merger = TokenMerger(self.token_merging, self.grid_size, self.num_prefix_tokens)
        mask_logits_per_block: list[Tensor] = []
        class_logits_per_block: list[Tensor] = []
        for i, block in enumerate(backbone.blocks):
            if i == first_query_block:
                if merger is not None:  # the query blocks predict masks from the full patch grid
                    x = merger.unmerge(x)
                    self.last_merge_counts = merger.counts
                queries = self.q.weight[None].expand(x.shape[0], -1, -1).to(x.dtype)
                x = torch.cat([queries, x], dim=1)
            attn_mask = None
            if self.masked_attn_enabled and i >= first_query_block:
                mask_logits, class_logits = self.predict(backbone.norm(x))
                mask_logits_per_block.append(mask_logits)
                class_logits_per_block.append(class_logits)
                attn_mask = self._attn_mask(mask_logits, i - first_query_block)
            # The unmasked case uses timm's own block forward, so inference costs about a plain ViT forward.
            if self.uses_rope:  # timm's EvaBlock takes the mask itself
                x = block(x, rope=rope, attn_mask=None if attn_mask is None else attn_mask[:, None])
            elif merger is not None and merger.handles(i):  # only before the query blocks
                x = merger.block_forward(block, x, i)
            elif attn_mask is None:
                x = block(x)
            else:
                x = masked_block_forward(block, x, attn_mask)

        mask_logits, class_logits = self.predict(backbone.norm(x))
        mask_logits_per_block.append(mask_logits)
        class_logits_per_block.append(class_logits)
        return mask_logits_per_block, class_logits_per_block
