"""Multi-scale deformable attention (Deformable DETR, Zhu et al., ICLR 2021) in plain PyTorch.

No compiled ops: bilinear sampling is `F.grid_sample` (zero padding, align_corners=False), so it runs on CPU
and GPU alike and is differentiable w.r.t. values, sampling locations and weights. The module follows the
`MSDeformAttn` of ViT-Adapter (Chen et al., ICLR 2023, github czczup/ViT-Adapter), which adds a `ratio`
that shrinks the value width (value_proj D -> D*ratio, output_proj D*ratio -> D).

Conventions (as in Deformable DETR): sampling locations are normalised (x, y) in [0, 1] per level, where
(0, 0) is the top-left corner of the top-left pixel and pixel (i, j) has its centre at ((j + 0.5)/W, (i + 0.5)/H);
samples outside the map read zeros.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Weighted sum of bilinear samples from several feature levels.

    Args:
        value: (B, N_v, M, D_h) per-head values of all levels flattened row-major and concatenated,
            N_v = sum_l H_l * W_l.
        spatial_shapes: [(H_l, W_l)] for the L levels, in the order of `value`.
        sampling_locations: (B, N_q, M, L, P, 2) normalised (x, y) in [0, 1].
        attention_weights: (B, N_q, M, L, P), usually a softmax over L * P.

    Returns:
        (B, N_q, M * D_h): out[b, q, m] = sum_{l, p} w[b, q, m, l, p] * bilinear(value_l[b, :, m], loc[b, q, m, l, p]).
    """
    batch, _, heads, head_dim = value.shape
    num_queries = sampling_locations.shape[1]
    sizes = [h * w for h, w in spatial_shapes]
    if sum(sizes) != value.shape[1]:
        raise ValueError(
            f"value has {value.shape[1]} tokens but spatial_shapes {list(spatial_shapes)} sum to {sum(sizes)}"
        )
    # grid_sample wants coordinates in [-1, 1]; with align_corners=False, -1 is the outer edge of the first pixel.
    grids = 2 * sampling_locations - 1
    out = value.new_zeros(batch * heads, head_dim, num_queries)
    for level, (value_l, (height, width)) in enumerate(
        zip(value.split(sizes, dim=1), spatial_shapes, strict=True)
    ):
        # (B, H*W, M, D_h) -> (B*M, D_h, H, W)
        value_l = value_l.permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        # (B, N_q, M, P, 2) -> (B*M, N_q, P, 2)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        # (B, N_q, M, P) -> (B*M, 1, N_q, P); sum this level's points now so no (L*P)-wide tensor is kept.
        weights_l = (
            attention_weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, num_queries, -1)
        )
        out = out + (sampled * weights_l).sum(-1)
    return out.view(batch, heads * head_dim, num_queries).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: each query samples P points per head and level around its reference point.

    Args:
        dim: D, width of queries and of the input feature tokens (and of the output).
        num_levels: L feature levels in the input.
        num_heads: M heads; D * ratio must be divisible by M.
        num_points: P sampling points per head and level.
        ratio: value width D * ratio (ViT-Adapter uses 0.5 for its large models).
    """

    def __init__(
        self, dim: int, num_levels: int = 4, num_heads: int = 8, num_points: int = 4, ratio: float = 1.0
    ):
        super().__init__()
        value_dim = int(dim * ratio)
        if value_dim % num_heads != 0:
            raise ValueError(
                f"value width {value_dim} (dim {dim} x ratio {ratio}) is not divisible by {num_heads} heads"
            )
        self.dim = dim
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.value_dim = value_dim
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, value_dim)
        self.output_proj = nn.Linear(value_dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR init: zero offset weights, offset biases on a ring of M directions (point p at radius
        p + 1, in pixels of each level), uniform attention (zero weights/bias), Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        grid = directions.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        features: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        """query (B, N_q, D); reference_points (B or 1, N_q, L or 1, 2) normalised (x, y) in [0, 1];
        features (B, N_v, D) = the L levels flattened and concatenated -> (B, N_q, D).

        Offsets are in pixels of each level: location = reference + offset / (W_l, H_l).
        """
        batch, num_queries, _ = query.shape
        if len(spatial_shapes) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} levels, got spatial_shapes {list(spatial_shapes)}")
        value = self.value_proj(features).view(batch, features.shape[1], self.num_heads, -1)
        shape = (batch, num_queries, self.num_heads, self.num_levels, self.num_points)
        offsets = self.sampling_offsets(query).view(*shape, 2)
        weights = (
            self.attention_weights(query).view(batch, num_queries, self.num_heads, -1).softmax(-1).view(shape)
        )
        normaliser = torch.tensor([(w, h) for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = (
            reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        )
        return self.output_proj(multi_scale_deformable_attention(value, spatial_shapes, locations, weights))


def reference_points(
    spatial_shapes: Sequence[tuple[int, int]],
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Pixel centres of every level, normalised to [0, 1] and concatenated: (1, sum_l H_l W_l, 1, 2) as (x, y)."""
    points = []
    for height, width in spatial_shapes:
        ys = (torch.arange(height, dtype=dtype, device=device) + 0.5) / height
        xs = (torch.arange(width, dtype=dtype, device=device) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.flatten(), grid_y.flatten()], -1))
    return torch.cat(points)[None, :, None]
