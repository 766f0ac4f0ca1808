"""The training augmentation of docs/eomt.md §4.2 (`TrainTransform`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from eomt_ood.data.cityscapes import masks_from_train_ids
from eomt_ood.data.labels import IGNORE, TRAIN_ID_COLORS
from eomt_ood.data.transforms import ShortSideCropTransform, TrainTransform, short_side_size


def _label_coloured_sample(height, width, block, seed=0):
    """Image whose colour is the Cityscapes colour of each pixel's trainId (blocks of `block` px), plus target."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 19, (-(-height // block), -(-width // block))).astype(np.uint8)
    ids = np.repeat(np.repeat(coarse, block, 0), block, 1)[:height, :width]
    ids[:block, :block] = IGNORE  # an ignored corner: black, in no mask
    palette = np.zeros((256, 3), np.uint8)
    palette[:19] = TRAIN_ID_COLORS
    image = torch.from_numpy(palette[ids].transpose(2, 0, 1).copy())
    return image, masks_from_train_ids(ids)


def _check_colour_encodes_label(image, target, tolerance=0):
    """Fraction of mask pixels whose colour is within `tolerance` of their class colour (None: nearest colour)."""
    colours = torch.from_numpy(TRAIN_ID_COLORS.astype(np.int16))
    matches, total = 0, 0
    for mask, label in zip(target["masks"], target["labels"], strict=True):
        pixels = image.permute(1, 2, 0)[mask].to(torch.int16)
        if tolerance is None:  # nearest class colour decides
            nearest = (pixels[:, None] - colours[None]).abs().sum(dim=2).argmin(dim=1)
            matches += int((nearest == label).sum())
        else:
            matches += int(((pixels - colours[label]).abs().max(dim=1).values <= tolerance).sum())
        total += pixels.shape[0]
    return matches / max(total, 1)


def test_output_shapes_types_and_label_alignment_without_resizing():
    # max(H, W) == S and scale 1: no resize, the 24 x 32 image is padded to 32 x 32 and cropped at (0, 0), so the
    # output must equal the padded (and possibly flipped) input exactly.
    image, target = _label_coloured_sample(24, 32, block=4)
    transform = TrainTransform(32, scale_range=(1.0, 1.0), color_jitter=False)
    flips_seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out, out_target = transform(image, target)
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
        assert out_target["masks"].shape == (len(out_target["labels"]), 32, 32)
        assert out_target["masks"].dtype == torch.bool and out_target["labels"].dtype == torch.int64
        flipped = torch.equal(out[:, :24], image.flip(-1))
        assert flipped or torch.equal(out[:, :24], image)
        flips_seen.add(flipped)
        source_masks = target["masks"].flip(-1) if flipped else target["masks"]
        assert torch.equal(out_target["masks"][:, :24], source_masks)
        assert torch.equal(out_target["labels"], target["labels"])
        # padding: image 0, no mask
        assert not out[:, 24:].any() and not out_target["masks"][:, 24:].any()
        assert _check_colour_encodes_label(out, out_target) == 1.0
    assert flips_seen == {True, False}


def test_colour_stays_aligned_with_masks_under_scale_jitter_and_crop():
    # upscaling (r = s * 40/48 in [1.25, 1.67)) keeps most block pixels unblended, so colour must match the mask
    # almost everywhere; a misaligned flip or crop would match ~1/19 of the pixels
    image, target = _label_coloured_sample(24, 48, block=6, seed=1)
    transform = TrainTransform(40, scale_range=(1.5, 2.0), color_jitter=False)
    for seed in range(10):
        torch.manual_seed(seed)
        out, out_target = transform(image, target)
        assert out.shape == (3, 40, 40)
        # bilinear blending only touches pixels near class boundaries
        assert _check_colour_encodes_label(out, out_target, tolerance=2) > 0.6
        assert _check_colour_encodes_label(out, out_target, tolerance=None) > 0.75
        # control: the same check on masks shifted by one block fails clearly
        shifted = {**out_target, "masks": out_target["masks"].roll(8, dims=2)}
        assert _check_colour_encodes_label(out, shifted, tolerance=None) < 0.4
        assert out_target["masks"].sum(0).max() <= 1
        assert out_target["masks"].flatten(1).any(1).all()  # empty masks were dropped


def test_padding_region_is_zero_and_masked_out():
    # scale fixed to 0.5: r = 0.5 * min(32/32, 32/64) = 0.25 -> 8 x 16, padded to 32 x 32, crop offset (0, 0)
    image, target = _label_coloured_sample(32, 64, block=8, seed=2)
    image = image.clamp(min=1)  # padding zeros must be distinguishable from black content
    transform = TrainTransform(32, scale_range=(0.5, 0.5), color_jitter=False)
    torch.manual_seed(0)
    out, out_target = transform(image, target)
    assert out[:, :8, :16].min() >= 1
    assert not out[:, 8:].any() and not out[:, :, 16:].any()
    assert not out_target["masks"][:, 8:].any() and not out_target["masks"][:, :, 16:].any()
    # the masks at 8 x 16 are a nearest subsampling of the originals (flipped or not)
    for flip in (False, True):
        source = target["masks"].flip(-1) if flip else target["masks"]
        expected = F.resize(source.to(torch.uint8), [8, 16], interpolation=F.InterpolationMode.NEAREST).bool()
        keep = expected.flatten(1).any(1)
        if torch.equal(out_target["masks"][:, :8, :16], expected[keep]):
            break
    else:
        pytest.fail("masks are not the nearest-resized originals")


def test_scaled_size_covers_the_scale_range():
    transform = TrainTransform(64)
    torch.manual_seed(0)
    sizes = np.array([transform.scaled_size(128, 256) for _ in range(4000)])
    # r = s * min(64/128, 64/256) = s / 4 with s in [0.5, 2): heights 16..63, widths 32..127
    assert sizes[:, 0].min() >= 16 and sizes[:, 0].max() <= 63
    assert sizes[:, 1].min() >= 32 and sizes[:, 1].max() <= 127
    assert sizes[:, 0].min() <= 17 and sizes[:, 0].max() >= 62  # the whole range is used
    # aspect ratio is kept (up to int truncation) and s is uniform: the mean width is ~ 256 * 1.25 / 4 = 80
    assert np.all(np.abs(sizes[:, 1] - 2 * sizes[:, 0]) <= 2)
    assert abs(sizes[:, 1].mean() - 80) < 2


def test_colour_jitter_follows_the_spec_draw_by_draw():
    transform = TrainTransform(16)
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    orders = set()
    for seed in range(16):
        torch.manual_seed(seed)
        got = transform.color_jitter(image)
        # oracle: the spec's sequence of independent draws, replayed by hand
        torch.manual_seed(seed)
        expected = image
        if torch.rand(()) < 0.5:
            expected = F.adjust_brightness(expected, float(1 - 32 / 255 + 64 / 255 * torch.rand(())))
        contrast_first = bool(torch.rand(()) < 0.5)
        orders.add(contrast_first)
        steps = ["contrast", "saturation", "hue"] if contrast_first else ["saturation", "hue", "contrast"]
        for step in steps:
            if torch.rand(()) < 0.5:
                if step == "contrast":
                    expected = F.adjust_contrast(expected, float(0.5 + torch.rand(())))
                elif step == "saturation":
                    expected = F.adjust_saturation(expected, float(0.5 + torch.rand(())))
                else:
                    expected = F.adjust_hue(expected, float(-18 / 360 + 36 / 360 * torch.rand(())))
        assert torch.equal(got, expected), seed
    assert orders == {True, False}


def test_deterministic_under_manual_seed_and_random_otherwise():
    image, target = _label_coloured_sample(40, 80, block=10, seed=3)
    transform = TrainTransform(32)
    torch.manual_seed(5)
    a_img, a_t = transform(image, target)
    torch.manual_seed(5)
    b_img, b_t = transform(image, target)
    assert torch.equal(a_img, b_img) and torch.equal(a_t["masks"], b_t["masks"])
    c_img, _ = transform(image, target)
    assert not torch.equal(a_img, c_img)


def test_index_map_shortcut_equals_per_mask_geometry():
    image, target = _label_coloured_sample(40, 80, block=10, seed=4)
    transform = TrainTransform(32)
    for seed in range(5):
        torch.manual_seed(seed)
        out, out_target = transform(image, target)
        torch.manual_seed(seed)
        ref_img, ref_masks = transform._augment_once(image, target["masks"].to(torch.uint8))
        keep = ref_masks.bool().flatten(1).any(1)
        assert torch.equal(out, ref_img)
        assert torch.equal(out_target["masks"], ref_masks[keep].bool())
        assert torch.equal(out_target["labels"], target["labels"][keep])


def test_overlapping_masks_are_transformed_per_mask():
    image = torch.full((3, 16, 16), 100, dtype=torch.uint8)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, :, :10] = True
    masks[1, :, 6:] = True  # overlaps mask 0 in columns 6..9
    transform = TrainTransform(16, scale_range=(1.0, 1.0), color_jitter=False)
    torch.manual_seed(0)
    _, out = transform(image, {"masks": masks, "labels": torch.tensor([3, 4])})
    assert out["labels"].tolist() == [3, 4]
    assert torch.equal(out["masks"], masks) or torch.equal(out["masks"], masks.flip(-1))


def test_reruns_from_the_original_when_every_mask_is_cropped_away(monkeypatch):
    # one 2 x 2 mask in a 64 x 64 image, crop 16: most single tries lose it
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 30:32, 40:42] = True
    masks[1, 0, 0] = True  # a 1-pixel mask that usually disappears
    target = {"masks": masks, "labels": torch.tensor([5, 7])}
    transform = TrainTransform(16, color_jitter=False)
    inputs_seen = []
    original = transform._augment_once

    def recording(img, geometry):
        inputs_seen.append(geometry.clone())
        return original(img, geometry)

    monkeypatch.setattr(transform, "_augment_once", recording)
    label_sets = set()
    torch.manual_seed(0)
    for _ in range(30):
        before = len(inputs_seen)
        out_img, out = transform(image, target)
        assert out_img.shape == (3, 16, 16)
        assert len(out["labels"]) >= 1 and out["masks"].flatten(1).any(1).all()
        label_sets.add(tuple(out["labels"].tolist()))
        # every retry starts from the same, untouched original
        assert all(torch.equal(g, inputs_seen[before]) for g in inputs_seen[before:])
    assert len(inputs_seen) > 30  # some samples needed more than one try
    assert (5,) in label_sets  # the lost 1-pixel mask was dropped, the other kept


def test_input_checks():
    transform = TrainTransform(8)
    with pytest.raises(ValueError, match="at least one mask"):
        transform(
            torch.zeros(3, 4, 4, dtype=torch.uint8), {"masks": torch.zeros(0, 4, 4), "labels": torch.zeros(0)}
        )
    with pytest.raises(ValueError, match="uint8"):
        transform(torch.zeros(3, 4, 4), {"masks": torch.ones(1, 4, 4), "labels": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="cropped away"):
        tiny = torch.zeros(1, 64, 64, dtype=torch.bool)
        tiny[0, 63, 63] = True
        TrainTransform(4, scale_range=(2.0, 2.0), color_jitter=False, max_tries=3)(
            torch.zeros(3, 64, 64, dtype=torch.uint8),
            {"masks": torch.zeros(1, 64, 64, dtype=torch.bool), "labels": torch.zeros(1)},
        )


# ------------------------------------------------------------------------ Mask2Former's augmentation


def _d2_output_shape(height, width, short_edge, max_size):
    """detectron2's ResizeShortestEdge.get_output_shape, transcribed."""
    size = short_edge * 1.0
    scale = size / min(height, width)
    new_h, new_w = (size, scale * width) if height < width else (scale * height, size)
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def test_short_side_size_is_detectron2s():
    sides = [int(x * 0.1 * 1024) for x in range(5, 21)]  # the Cityscapes recipe's MIN_SIZE_TRAIN
    assert sides[:3] == [512, 614, 716] and sides[-1] == 2048 and len(sides) == 16
    for height, width in [(1024, 2048), (2048, 1024), (1000, 1999), (333, 777), (512, 512)]:
        for side in sides:
            for cap in (4096, 3000, 1500):
                assert short_side_size(height, width, side, cap) == _d2_output_shape(height, width, side, cap)


def test_short_side_crop_replays_draw_by_draw():
    # Oracle: the documented order (resize by a drawn short side, crop, colour jitter, flip), replayed by hand
    # from the same seed with independent calls.
    image, target = _label_coloured_sample(48, 96, block=6, seed=5)
    transform = ShortSideCropTransform([48, 56, 64], crop_size=(40, 72), color_jitter=True)
    sides_seen, flips_seen = set(), set()
    for seed in range(20):
        torch.manual_seed(seed)
        got, got_target = transform(image, target)
        torch.manual_seed(seed)
        side = [48, 56, 64][int(torch.randint(0, 3, size=(1,)))]
        sides_seen.add(side)
        height, width = side, 2 * side
        img = F.resize(image, [height, width], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
        masks = F.resize(
            target["masks"].to(torch.uint8), [height, width], interpolation=F.InterpolationMode.NEAREST
        ).bool()
        top = int(torch.randint(0, height - 40 + 1, size=(1,)))
        left = int(torch.randint(0, width - 72 + 1, size=(1,)))
        img, masks = img[:, top : top + 40, left : left + 72], masks[:, top : top + 40, left : left + 72]
        img = transform.color_jitter(img)
        flip = bool(torch.rand(()) < 0.5)
        flips_seen.add(flip)
        if flip:
            img, masks = img.flip(-1), masks.flip(-1)
        keep = masks.flatten(1).any(1)
        assert got.shape == (3, 40, 72)
        assert torch.equal(got, img), seed
        assert torch.equal(got_target["masks"], masks[keep]), seed
        assert torch.equal(got_target["labels"], target["labels"][keep]), seed
    assert sides_seen == {48, 56, 64} and flips_seen == {True, False}


def test_short_side_crop_pads_a_small_image():
    image, target = _label_coloured_sample(32, 64, block=8, seed=6)
    image = image.clamp(min=1)
    transform = ShortSideCropTransform([32], crop_size=(48, 96), color_jitter=False, flip_probability=0.0)
    torch.manual_seed(0)
    out, out_target = transform(image, target)
    assert out.shape == (3, 48, 96)
    assert torch.equal(out[:, :32, :64], image)  # no resize (short side already 32), crop at (0, 0)
    assert not out[:, 32:].any() and not out[:, :, 64:].any()
    assert not out_target["masks"][:, 32:].any() and not out_target["masks"][:, :, 64:].any()


def test_single_category_max_area_rejects_one_class_crops():
    # Top half one class, bottom half four; a half-height crop in the top half is one category only.
    ids = np.zeros((64, 64), np.uint8)
    ids[32:, :16], ids[32:, 16:32], ids[32:, 32:48], ids[32:, 48:] = 1, 2, 3, 4
    from eomt_ood.data.labels import TRAIN_ID_COLORS

    image = torch.from_numpy(TRAIN_ID_COLORS[ids].transpose(2, 0, 1).copy())
    target = masks_from_train_ids(ids)

    def dominated(max_area: float) -> float:
        transform = ShortSideCropTransform(
            [64], (32, 64), single_category_max_area=max_area, color_jitter=False
        )
        torch.manual_seed(0)
        shares = []
        for _ in range(200):
            _, out = transform(image, target)
            counts = out["masks"].flatten(1).sum(1).float()
            shares.append(float(counts.max() / counts.sum()))
        return float(np.mean(np.array(shares) >= 0.75))

    unconstrained, constrained = dominated(1.0), dominated(0.75)
    # Class 0 covers >= 75 % of the crop for 9 of the 33 crop offsets; ten tries all failing: (9/33)^10 ~ 2e-6.
    assert 0.15 < unconstrained < 0.4
    assert constrained == 0.0


def test_short_side_crop_checks_its_arguments():
    with pytest.raises(ValueError, match="short_sides"):
        ShortSideCropTransform([], (8, 8))
    with pytest.raises(ValueError, match="crop_size"):
        ShortSideCropTransform([8], (0, 8))
    with pytest.raises(ValueError, match="single_category_max_area"):
        ShortSideCropTransform([8], (8, 8), single_category_max_area=0.0)
