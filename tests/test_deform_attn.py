"""Multi-scale deformable attention: grid_sample implementation vs an explicit per-point bilinear reference and
vs the pure-PyTorch function and module of transformers (Mask2Former's pixel decoder)."""

from __future__ import annotations

import math

import pytest
import torch

from eomt_ood.models.baselines.deform_attn import (
    MSDeformAttn,
    multi_scale_deformable_attention,
    reference_points,
)

SHAPES = [(5, 7), (3, 4), (2, 2)]


def bilinear_reference(value, spatial_shapes, locations, weights):
    """Per point: Deformable DETR's bilinear rule written out. Pixel (i, j) has centre ((j+0.5)/W, (i+0.5)/H);
    corners outside the map contribute zero. Loops over every (batch, query, head, level, point)."""
    batch, num_queries, heads, _, points, _ = locations.shape
    head_dim = value.shape[-1]
    starts = [0]
    for h, w in spatial_shapes:
        starts.append(starts[-1] + h * w)
    rows = []
    for b in range(batch):
        for q in range(num_queries):
            for m in range(heads):
                acc = torch.zeros(head_dim, dtype=value.dtype)
                for level, (h, w) in enumerate(spatial_shapes):
                    level_value = value[b, starts[level] : starts[level + 1], m].reshape(h, w, head_dim)
                    for p in range(points):
                        x = locations[b, q, m, level, p, 0] * w - 0.5
                        y = locations[b, q, m, level, p, 1] * h - 0.5
                        x0, y0 = math.floor(float(x.detach())), math.floor(float(y.detach()))
                        fx, fy = x - x0, y - y0
                        sample = torch.zeros(head_dim, dtype=value.dtype)
                        for dx, dy, corner_weight in (
                            (0, 0, (1 - fx) * (1 - fy)),
                            (1, 0, fx * (1 - fy)),
                            (0, 1, (1 - fx) * fy),
                            (1, 1, fx * fy),
                        ):
                            xi, yi = x0 + dx, y0 + dy
                            if 0 <= xi < w and 0 <= yi < h:
                                sample = sample + corner_weight * level_value[yi, xi]
                        acc = acc + weights[b, q, m, level, p] * sample
                rows.append(acc)
    out = torch.stack(rows).view(batch, num_queries, heads, head_dim)
    return out.flatten(2)


def random_inputs(seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    batch, num_queries, heads, head_dim, points = 2, 4, 2, 3, 3
    levels = len(SHAPES)
    value = torch.randn(batch, sum(h * w for h, w in SHAPES), heads, head_dim, generator=g, dtype=dtype)
    # Some locations fall outside [0, 1] to exercise the zero padding, some exactly on borders.
    locations = torch.rand(batch, num_queries, heads, levels, points, 2, generator=g, dtype=dtype) * 1.4 - 0.2
    locations[0, 0, 0, 0, 0] = torch.tensor([0.0, 1.0], dtype=dtype)
    weights = torch.rand(batch, num_queries, heads, levels, points, generator=g, dtype=dtype)
    return value, locations, weights


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_per_point_bilinear_reference(seed):
    value, locations, weights = random_inputs(seed)
    ours = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    expected = bilinear_reference(value, SHAPES, locations, weights)
    assert ours.shape == (2, 4, 2 * 3)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


def test_gradients_match_reference():
    inputs = [t.clone().requires_grad_(True) for t in random_inputs(3)]
    cotangent = torch.randn(2, 4, 6, dtype=torch.float64)
    (multi_scale_deformable_attention(inputs[0], SHAPES, inputs[1], inputs[2]) * cotangent).sum().backward()
    ours = [t.grad.clone() for t in inputs]
    ref_inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    (bilinear_reference(ref_inputs[0], SHAPES, ref_inputs[1], ref_inputs[2]) * cotangent).sum().backward()
    for got, want in zip(ours, [t.grad for t in ref_inputs], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)


def test_pixel_centres_read_exact_values():
    # Sampling a level at its own reference points (pixel centres) with weight 1 returns the values unchanged.
    h, w = 3, 5
    value = torch.randn(1, h * w, 1, 4, dtype=torch.float64)
    centres = reference_points([(h, w)], dtype=torch.float64)  # (1, h*w, 1, 2)
    locations = centres[:, :, None, :, None, :]  # (1, h*w, 1, 1, 1, 2)
    weights = torch.ones(1, h * w, 1, 1, 1, dtype=torch.float64)
    out = multi_scale_deformable_attention(value, [(h, w)], locations, weights)
    torch.testing.assert_close(out, value.flatten(2))


def test_matches_transformers_function():
    mask2former = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
    value, locations, weights = random_inputs(4, dtype=torch.float32)
    ours = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    theirs = mask2former.multi_scale_deformable_attention(value, SHAPES, locations, weights)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_module_matches_transformers_module():
    # Same weights in our MSDeformAttn (ratio 1) and Mask2Former's pixel-decoder module: same outputs, which
    # checks the offset normalisation by (W_l, H_l), the softmax over L*P and the head layout.
    mask2former = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
    torch.manual_seed(0)
    dim, heads, points = 16, 2, 3
    ours = MSDeformAttn(dim, num_levels=len(SHAPES), num_heads=heads, num_points=points)
    theirs = mask2former.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(
        dim, heads, len(SHAPES), points
    )
    with torch.no_grad():
        for p in ours.parameters():  # random, non-default weights so offsets and attention are not trivial
            p.normal_(0, 0.3)
    theirs.load_state_dict(ours.state_dict())
    n = sum(h * w for h, w in SHAPES)
    features = torch.randn(2, n, dim)
    query = torch.randn(2, n, dim)
    refs = reference_points(SHAPES).expand(2, -1, len(SHAPES), -1)
    expected, _ = theirs(
        hidden_states=query,
        encoder_hidden_states=features,
        reference_points=refs,
        spatial_shapes_list=SHAPES,
    )
    torch.testing.assert_close(ours(query, refs, features, SHAPES), expected, rtol=1e-5, atol=1e-5)


def test_ratio_shrinks_value_width_and_init_is_uniform():
    attn = MSDeformAttn(32, num_levels=1, num_heads=4, num_points=2, ratio=0.5)
    assert attn.value_proj.weight.shape == (16, 32) and attn.output_proj.weight.shape == (32, 16)
    # Init: point p of head m sits (p + 1) pixels away along the head's direction; head 0 points along +x.
    bias = attn.sampling_offsets.bias.view(4, 1, 2, 2)
    torch.testing.assert_close(bias[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0]]))
    out = attn(torch.randn(1, 9, 32), reference_points([(3, 3)]), torch.randn(1, 9, 32), [(3, 3)])
    assert out.shape == (1, 9, 32)
