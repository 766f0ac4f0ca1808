"""ALGM token merging for EoMT at inference: fewer patch tokens in the early blocks, the full grid again for the
query blocks.

Follows ALGM (Norouzi, Orlova, de Geus, Dubbelman, "Adaptive Local-then-Global Token Merging for Efficient
Semantic Segmentation with Plain Vision Transformers", CVPR 2024) and its reference code
(github.com/tue-mps/algm-segmenter, `algm/algm/local_merge.py`, `global_merge.py`, `patch/algm_segmenter_patch.py`);
the code here is written anew. Both merges act on the residual stream between a block's attention and its MLP,
on the patch tokens only (CLS and registers are never merged):

1. Local, in `local_block`: the G x G patches are cut into non-overlapping `window` x `window` windows; a window's
   similarity is the mean cosine similarity over its distinct token pairs. Every window at or above
   `local_threshold` (0.88 in the reference) may become one token; the count is per image, and the batch merges
   the r windows with the highest similarity where r is the smallest count of any image.
2. Global, in `global_block`: ToMe-style bipartite matching. Tokens alternate into sets A (even) and B (odd);
   each A token's best cosine match in B gives a score s. An A token is merged into its match when s is at least
   mean(s) + std(s) / l of its image, l the 1-based number of the block (the reference's adaptive threshold);
   again the batch merges the r highest-scoring A tokens, r the smallest count of any image.
3. Unmerge, before the first query block: every patch position gets back a copy of the token that holds it, so
   the query blocks, the mask head and the upscaler see the full G x G grid and masks keep full resolution.

Merged tokens are size-weighted means of their members. The reference passes token sizes to its attention but
does not use them there, so proportional attention (ToMe's log(size) added to the attention logits of every key,
which makes a merged group of identical tokens attend and be attended exactly like the group) is an option, off by
default. Differences from the reference: the
global threshold uses each image's own mean and std (the reference averages them over the batch; equal for a
batch of one), and the A/B alternation runs over patch tokens only (the reference includes the CLS token and
protects it). RoPE backbones are not supported: a merged token has no single position to rotate by.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eomt_ood.errors import UserError

TOKEN_MERGING_METHODS = ("none", "algm")


@dataclass(frozen=True)
class ALGMSettings:
    """Where and how much to merge. Blocks are 0-based indices into the backbone's blocks.

    local_block: block whose attention output is merged locally (the reference's layer 1, i.e. index 0).
    global_block: block for the global merge; None = halfway to the first query block (index 4 for a 12-block
        ViT with L2 = 3, the reference's layer 5). Both must come before the first query block.
    local_threshold: minimum mean cosine similarity of a window's tokens (reference 0.88; above 1 merges nothing).
    window: side of the local windows (reference 2); the patch grid must be a multiple of it.
    global_threshold: None = adaptive per image (mean + std / (global_block + 1)); a number fixes it.
    proportional_attention: add log(token size) to the attention logits of merged keys, in every block from the
        first merge to the query blocks (ToMe); the reference does not.
    """

    local_block: int = 0
    global_block: int | None = None
    local_threshold: float = 0.88
    window: int = 2
    global_threshold: float | None = None
    proportional_attention: bool = False

    def resolved(self, num_blocks_before_queries: int, grid_size: int) -> ALGMSettings:
        """These settings with `global_block` filled in, checked against a backbone (ValueError if they do not fit)."""
        global_block = self.global_block
        if global_block is None:
            global_block = max(self.local_block + 1, num_blocks_before_queries // 2)
        if not 0 <= self.local_block < global_block < num_blocks_before_queries:
            raise ValueError(
                f"ALGM needs 0 <= local_block ({self.local_block}) < global_block ({global_block}) < the first "
                f"query block ({num_blocks_before_queries})"
            )
        if self.window < 2 or grid_size % self.window:
            raise ValueError(f"ALGM window {self.window} must be >= 2 and divide the patch grid {grid_size}")
        return replace(self, global_block=global_block)


def parse_token_merging(name: str) -> ALGMSettings | None:
    """ "none" -> None, "algm" -> the default `ALGMSettings`; anything else is a `UserError`."""
    if name not in TOKEN_MERGING_METHODS:
        raise UserError(
            f"--token-merging: unknown method {name!r}; available: {', '.join(TOKEN_MERGING_METHODS)}"
        )
    return ALGMSettings() if name == "algm" else None


def enable_token_merging(model: nn.Module, settings: ALGMSettings | None = None) -> ALGMSettings:
    """Turn ALGM on for an EoMT model (in place); returns the resolved settings. `disable_token_merging` undoes it.

    A model that is not a plain-ViT EoMT (RoPE backbones, other families) is a `UserError`.
    """
    settings = settings or ALGMSettings()
    if not hasattr(model, "token_merging") or not hasattr(model, "grid_size"):
        raise UserError(f"--token-merging: ALGM works on EoMT models only, not {type(model).__name__}")
    if getattr(model, "uses_rope", False):
        raise UserError("--token-merging: ALGM is not supported on RoPE backbones (EVA-02, DINOv3)")
    backbone: Any = getattr(model, "backbone")  # noqa: B009 (typed as Module)
    first_query_block = len(backbone.blocks) - int(getattr(model, "num_blocks"))  # noqa: B009
    try:
        resolved = settings.resolved(first_query_block, int(getattr(model, "grid_size")))  # noqa: B009
    except ValueError as exc:
        raise UserError(f"--token-merging: {exc}") from None
    setattr(model, "token_merging", resolved)  # noqa: B010
    return resolved


def disable_token_merging(model: nn.Module) -> None:
    """Turn token merging off: the forward is the plain one again."""
    setattr(model, "token_merging", None)  # noqa: B010


def token_merging_settings(model: nn.Module) -> dict[str, Any] | None:
    """What a run should record: {"method": "algm", local_block, global_block, ...} or None when merging is off."""
    settings = getattr(model, "token_merging", None)
    return None if settings is None else {"method": "algm", **asdict(settings)}


# ------------------------------------------------------------------------------------- the merges, pure functions
# Every merge keeps `positions` (B, N0) long: for each original patch position, the index of the current token
# that holds it; and `sizes` (B, T, 1): how many original patches each current token stands for.


def window_token_ids(grid_size: int, window: int, device: torch.device | None = None) -> Tensor:
    """(W, window^2) row-major patch indices of each window, windows in row-major order, W = (G / window)^2."""
    cells = grid_size // window
    ids = torch.arange(grid_size * grid_size, device=device).view(cells, window, cells, window)
    return ids.permute(0, 2, 1, 3).reshape(cells * cells, window * window)


def local_merge(
    x: Tensor, sizes: Tensor, positions: Tensor, grid_size: int, window: int, threshold: float
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Merge similar windows of the full patch grid x (B, G*G, D) into one token each.

    Returns (x', sizes', positions', r) with x' (B, r + (W - r) window^2, D): the r merged windows first (most
    similar first), then the untouched tokens in their original order. r = 0 returns the inputs unchanged.
    """
    batch, num_tokens, dim = x.shape
    if num_tokens != grid_size * grid_size:
        raise ValueError(f"local merge needs the full {grid_size}x{grid_size} grid, got {num_tokens} tokens")
    ids = window_token_ids(grid_size, window, x.device)  # (W, k)
    num_windows, k = ids.shape
    with torch.no_grad():
        unit = F.normalize(x[:, ids].float(), dim=-1)  # (B, W, k, D)
        pair_sims = unit @ unit.transpose(-1, -2)  # (B, W, k, k)
        off_diagonal = 1 - torch.eye(k, device=x.device)
        similarity = (pair_sims * off_diagonal).sum((-1, -2)) / (k * (k - 1))  # (B, W)
        r = int((similarity >= threshold).sum(1).min())
    if r == 0:
        return x, sizes, positions, 0
    with torch.no_grad():
        chosen = similarity.topk(r, dim=1).indices  # (B, r)
        keep = torch.ones(batch, num_windows, dtype=torch.bool, device=x.device)
        keep.scatter_(1, chosen, False)
        all_ids = ids.expand(batch, -1, -1)
        merged_ids = all_ids.gather(1, chosen[..., None].expand(-1, -1, k))  # (B, r, k)
        kept_ids = all_ids[keep].view(batch, -1).sort(dim=1).values  # (B, (W - r) k)
        # old token index -> new index: a merged window's tokens all go to its slot, kept ones follow in order
        new_index = torch.empty(batch, num_tokens, dtype=torch.long, device=x.device)
        slots = torch.arange(r, device=x.device).repeat_interleave(k).expand(batch, -1)
        new_index.scatter_(1, merged_ids.reshape(batch, -1), slots)
        kept_slots = r + torch.arange(kept_ids.shape[1], device=x.device)
        new_index.scatter_(1, kept_ids, kept_slots.expand(batch, -1))
    flat = merged_ids.reshape(batch, -1, 1)
    member_sizes = sizes.gather(1, flat).view(batch, r, k, 1)
    members = x.gather(1, flat.expand(-1, -1, dim)).view(batch, r, k, dim)
    merged_sizes = member_sizes.sum(2)
    merged = (members * member_sizes).sum(2) / merged_sizes
    out = torch.cat([merged, x.gather(1, kept_ids[..., None].expand(-1, -1, dim))], dim=1)
    out_sizes = torch.cat([merged_sizes, sizes.gather(1, kept_ids[..., None])], dim=1)
    return out, out_sizes, new_index.gather(1, positions), r


def global_merge(
    x: Tensor, sizes: Tensor, positions: Tensor, layer_number: int, threshold: float | None = None
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Bipartite (ToMe-style) merge of tokens x (B, T, D): A = even, B = odd tokens; A tokens go into their match.

    threshold None: per image mean(s) + std(s) / layer_number over the A tokens' best-match scores s.
    Returns (x', sizes', positions', r) with x' (B, T - r, D): the unmerged A tokens in order, then all B tokens.
    """
    batch, _, dim = x.shape
    a, b = x[:, 0::2], x[:, 1::2]
    size_a, size_b = sizes[:, 0::2], sizes[:, 1::2]
    num_a = a.shape[1]
    if num_a == 0 or b.shape[1] == 0:
        return x, sizes, positions, 0
    with torch.no_grad():
        scores = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).transpose(-1, -2)
        best, match = scores.max(dim=-1)  # (B, Ta)
        if threshold is None:
            limit = best.mean(1, keepdim=True) + best.std(1, keepdim=True).nan_to_num(0.0) / layer_number
        else:
            limit = torch.full_like(best[:, :1], threshold)
        r = int((best >= limit).sum(1).min())
    if r == 0:
        return x, sizes, positions, 0
    with torch.no_grad():
        order = best.argsort(dim=1, descending=True)
        src = order[:, :r]  # (B, r) A tokens that merge
        kept = order[:, r:].sort(dim=1).values  # (B, Ta - r) A tokens that stay, in order
        dst = match.gather(1, src)  # (B, r) their B partners
        offset = num_a - r
        new_a = torch.empty(batch, num_a, dtype=torch.long, device=x.device)
        new_a.scatter_(1, kept, torch.arange(offset, device=x.device).expand(batch, -1))
        new_a.scatter_(1, src, offset + dst)
        new_index = torch.empty(batch, x.shape[1], dtype=torch.long, device=x.device)
        new_index[:, 0::2] = new_a
        new_index[:, 1::2] = offset + torch.arange(b.shape[1], device=x.device)
    src_sizes = size_a.gather(1, src[..., None])
    merged_sizes = size_b.scatter_add(1, dst[..., None], src_sizes)
    weighted = (b * size_b).scatter_add(
        1, dst[..., None].expand(-1, -1, dim), a.gather(1, src[..., None].expand(-1, -1, dim)) * src_sizes
    )
    out = torch.cat([a.gather(1, kept[..., None].expand(-1, -1, dim)), weighted / merged_sizes], dim=1)
    out_sizes = torch.cat([size_a.gather(1, kept[..., None]), merged_sizes], dim=1)
    return out, out_sizes, new_index.gather(1, positions), r


def unmerge(x: Tensor, positions: Tensor) -> Tensor:
    """Merged tokens x (B, T, D) -> (B, N0, D): each original position gets a copy of the token holding it."""
    return x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1]))


# -------------------------------------------------------------------------------------- one forward's merging


def attention_with_key_bias(attn: Any, x: Tensor, bias: Tensor) -> Tensor:
    """A timm ViT `Attention` on x (B, T, D) with a float bias (B, T) added to every query's logit for each key."""
    batch, num_tokens, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, num_tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    h = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None, None, :].to(q.dtype))
    h = h.transpose(1, 2).reshape(batch, num_tokens, attn.num_heads * attn.head_dim)
    return attn.proj_drop(attn.proj(attn.norm(h)))


class TokenMerger:
    """The merging state of one EoMT forward: which blocks merge, and where every original patch went.

    Tokens are [prefix (CLS, registers) | patches]; only the patches are merged. `counts` records the number of
    patch tokens after each merge as (block, tokens), for benchmarks and tests.
    """

    def __init__(self, settings: ALGMSettings, grid_size: int, num_prefix_tokens: int):
        if settings.global_block is None:
            raise ValueError("ALGMSettings must be resolved (enable_token_merging) before a forward")
        self.settings = settings
        self.grid_size = grid_size
        self.num_prefix_tokens = num_prefix_tokens
        self.positions: Tensor | None = None
        self.sizes: Tensor | None = None
        self.counts: list[tuple[int, int]] = []
        self.finished = False

    def handles(self, block_index: int) -> bool:
        """Whether block `block_index` must run through `block_forward` (it merges, or sees merged tokens with
        proportional attention). False from the unmerge on."""
        if self.finished:
            return False
        merging = block_index in (self.settings.local_block, self.settings.global_block)
        return merging or (self.settings.proportional_attention and self.sizes is not None)

    def _merge(self, x: Tensor, block_index: int) -> Tensor:
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        if self.positions is None or self.sizes is None:
            batch, num_patches = patches.shape[:2]
            self.positions = torch.arange(num_patches, device=x.device).expand(batch, -1)
            self.sizes = torch.ones(batch, num_patches, 1, dtype=patches.dtype, device=x.device)
        s = self.settings
        if block_index == s.local_block:
            patches, self.sizes, self.positions, _ = local_merge(
                patches, self.sizes, self.positions, self.grid_size, s.window, s.local_threshold
            )
        else:
            assert s.global_block is not None
            patches, self.sizes, self.positions, _ = global_merge(
                patches, self.sizes, self.positions, s.global_block + 1, s.global_threshold
            )
        self.counts.append((block_index, int(patches.shape[1])))
        return torch.cat([prefix, patches], dim=1)

    def block_forward(self, block: Any, x: Tensor, block_index: int) -> Tensor:
        """A timm ViT block, merging between its attention and its MLP (where ALGM merges) when it is a merge
        block, with log-size key bias in its attention when proportional attention is on."""
        h = block.norm1(x)
        if self.settings.proportional_attention and self.sizes is not None:
            log_sizes = self.sizes[..., 0].log()
            bias = torch.cat([log_sizes.new_zeros(x.shape[0], self.num_prefix_tokens), log_sizes], dim=1)
            h = attention_with_key_bias(block.attn, h, bias)
        else:
            h = block.attn(h)
        x = x + block.drop_path1(block.ls1(h))
        if block_index in (self.settings.local_block, self.settings.global_block):
            x = self._merge(x, block_index)
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

    def unmerge(self, x: Tensor) -> Tensor:
        """[prefix | merged patches] -> [prefix | G*G patches]; unchanged when nothing was merged yet."""
        self.finished = True
        if self.positions is None:
            return x
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        return torch.cat([prefix, unmerge(patches, self.positions)], dim=1)
