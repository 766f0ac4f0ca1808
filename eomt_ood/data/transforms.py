"""Training augmentations for semantic masks: EoMT's (`TrainTransform`) and Mask2Former's (`ShortSideCropTransform`).

EoMT (docs/eomt.md §4.2), in the code's order:

1. colour jitter (Mask2Former/SSD style, on the uint8 image only);
2. horizontal flip, p = 0.5;
3. scale jitter: s ~ U[lo, hi), r = s * min(S/H, S/W), size (int(H r), int(W r)); image bilinear + antialias,
   masks nearest;
4. pad bottom/right with zeros to at least S x S;
5. random S x S crop, offsets uniform over all valid positions;
6. drop masks that became empty; if none remain, start again from the original sample with fresh randomness.

Mask2Former's Cityscapes semantic recipe (detectron2 `ResizeShortestEdge` "choice" + `RandomCrop_CategoryAreaConstraint`
+ `ColorAugSSDTransform` + `RandomFlip`, in that order), see `ShortSideCropTransform`.

Every random number comes from torch's global generator, drawn in a fixed order, so a seeded DataLoader worker
(which seeds torch per worker) reproduces the same crops, and an exactly resumed run repeats them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

Target = dict[str, torch.Tensor]


def _coin(p: float = 0.5) -> bool:
    return bool(torch.rand(()) < p)


def _uniform(lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand(()))


class TrainTransform:
    """`(image uint8 (3, H, W), {"masks": bool (K, H, W), "labels": int64 (K,)})` -> the same at (3, S, S).

    `img_size` is S. Defaults are the official values (brightness delta 32/255, contrast and saturation factors
    U[0.5, 1.5], hue delta 18/360, scale range [0.5, 2.0)); `color_jitter=False` turns step 1 off (tests).
    Keys of the target other than "masks" and "labels" are dropped. A sample without any mask is an error
    (the dataset never yields one); `max_tries` guards against looping forever on masks too small to survive.
    """

    def __init__(
        self,
        img_size: int,
        scale_range: tuple[float, float] = (0.5, 2.0),
        max_brightness_delta: float = 32 / 255,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        max_hue_delta: float = 18 / 360,
        color_jitter: bool = True,
        flip_probability: float = 0.5,
        max_tries: int = 1000,
    ):
        if img_size <= 0:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        self.img_size = int(img_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.max_brightness_delta = float(max_brightness_delta)
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.max_hue_delta = float(max_hue_delta)
        self.color_jitter_enabled = color_jitter
        self.flip_probability = flip_probability
        self.max_tries = max_tries

    def __repr__(self) -> str:
        return (
            f"TrainTransform(img_size={self.img_size}, scale_range={self.scale_range}, "
            f"color_jitter={self.color_jitter_enabled})"
        )

    # ---------------------------------------------------------------------------------------------- steps

    def color_jitter(self, image: torch.Tensor) -> torch.Tensor:
        """Step 1 on uint8 (3, H, W): brightness; then (contrast, saturation+hue) or (saturation+hue, contrast)."""
        if _coin():
            delta = self.max_brightness_delta
            image = F.adjust_brightness(image, _uniform(1 - delta, 1 + delta))
        if _coin():
            image = self._contrast(image)
            image = self._saturation_hue(image)
        else:
            image = self._saturation_hue(image)
            image = self._contrast(image)
        return image

    def _contrast(self, image: torch.Tensor) -> torch.Tensor:
        if _coin():
            image = F.adjust_contrast(image, _uniform(*self.contrast_range))
        return image

    def _saturation_hue(self, image: torch.Tensor) -> torch.Tensor:
        if _coin():
            image = F.adjust_saturation(image, _uniform(*self.saturation_range))
        if _coin():
            image = F.adjust_hue(image, _uniform(-self.max_hue_delta, self.max_hue_delta))
        return image

    def scaled_size(self, height: int, width: int) -> tuple[int, int]:
        """Step 3's random output size for an H x W input (one draw from the global generator)."""
        lo, hi = self.scale_range
        ratio = _uniform(lo, hi) * min(self.img_size / height, self.img_size / width)
        return int(height * ratio), int(width * ratio)

    def _augment_once(self, image: torch.Tensor, masks_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1-5 on uint8 (3, H, W) and uint8 (M, H, W) mask planes -> (3, S, S), uint8 (M, S, S)."""
        if self.color_jitter_enabled:
            image = self.color_jitter(image)
        if _coin(self.flip_probability):
            image, masks_u8 = image.flip(-1), masks_u8.flip(-1)

        new_h, new_w = self.scaled_size(*image.shape[-2:])
        image = F.resize(image, [new_h, new_w], interpolation=InterpolationMode.BILINEAR, antialias=True)
        masks_u8 = F.resize(masks_u8, [new_h, new_w], interpolation=InterpolationMode.NEAREST)

        size = self.img_size
        pad_h, pad_w = max(size - new_h, 0), max(size - new_w, 0)
        if pad_h or pad_w:
            # [left, top, right, bottom]: zeros at the bottom/right only, so the image stays top-left aligned
            image = F.pad(image, [0, 0, pad_w, pad_h], fill=0)
            masks_u8 = F.pad(masks_u8, [0, 0, pad_w, pad_h], fill=0)

        height, width = image.shape[-2:]
        top = int(torch.randint(0, height - size + 1, size=(1,)))
        left = int(torch.randint(0, width - size + 1, size=(1,)))
        image = image[:, top : top + size, left : left + size]
        masks_u8 = masks_u8[:, top : top + size, left : left + size]
        return image.contiguous(), masks_u8

    def _augment_with_ids(
        self, image: torch.Tensor, masks_u8: torch.Tensor, ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One augmentation attempt; `ids` (K, 1, 1) says `masks_u8` is one index map (None: one plane per mask)."""
        return self._augment_once(image, masks_u8)

    # ---------------------------------------------------------------------------------------------- call

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a uint8 (3, H, W) image, got {image.dtype} {tuple(image.shape)}")
        masks, labels = target["masks"], target["labels"]
        if masks.shape[0] == 0:
            raise ValueError("TrainTransform needs at least one mask")
        if tuple(masks.shape[-2:]) != tuple(image.shape[-2:]):
            raise ValueError(f"masks {tuple(masks.shape)} do not match image {tuple(image.shape)}")
        masks = masks.bool()
        # Nearest resizing, flipping, zero padding and cropping only move pixels, so disjoint masks (semantic
        # targets) can travel as one index map (0 = no mask, k = mask k-1) and be split again afterwards: the
        # same result at 1/K of the cost.
        disjoint = masks.shape[0] < 255 and bool((masks.sum(dim=0, dtype=torch.uint8) <= 1).all())
        if disjoint:
            ids = torch.arange(1, masks.shape[0] + 1, dtype=torch.uint8).view(-1, 1, 1)
            geometry = (masks * ids).sum(dim=0, keepdim=True, dtype=torch.uint8)
        else:
            ids, geometry = None, masks.to(torch.uint8)
        for _ in range(self.max_tries):
            out_image, out_geometry = self._augment_with_ids(image, geometry, ids)
            out_masks = out_geometry == ids if ids is not None else out_geometry.bool()
            keep = out_masks.flatten(1).any(dim=1)
            if keep.any():
                return out_image, {"masks": out_masks[keep], "labels": labels[keep]}
        raise RuntimeError(f"every mask was cropped away in {self.max_tries} tries; masks too small?")


def short_side_size(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """(H', W') with the short side `short_side`, the long side capped at `max_long_side` (both scaled down
    then), each rounded half up: detectron2's `ResizeShortestEdge.get_output_shape`."""
    scale = short_side / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > max_long_side:
        shrink = max_long_side / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


class ShortSideCropTransform(TrainTransform):
    """Mask2Former's semantic training augmentation: same inputs and outputs as `TrainTransform`, output
    (3, crop_h, crop_w).

    1. resize: short side drawn uniformly from `short_sides` (long side capped at `max_long_side`); image
       bilinear + antialias, masks nearest;
    2. crop `crop_size` (h, w) at a uniform position; when `single_category_max_area` < 1, up to 10 positions
       are tried until no single mask covers that fraction of the crop's labelled pixels or more (and at least
       two masks are present), else the last one is kept (detectron2's rule; Cityscapes uses 1.0, i.e. no
       constraint); an image smaller than the crop is padded bottom/right with zeros (pixels in no mask, i.e.
       ignored), as Mask2Former's size-divisibility padding does;
    3. colour jitter (the same jitter as `TrainTransform`, on the crop);
    4. horizontal flip, p = 0.5.

    The colour jitter is this package's SSD-style jitter (brightness, contrast, saturation, hue with the same
    ranges and order), not a byte-exact copy of detectron2's OpenCV-based `ColorAugSSDTransform`.
    """

    def __init__(
        self,
        short_sides: Sequence[int],
        crop_size: tuple[int, int],
        max_long_side: int = 4096,
        single_category_max_area: float = 1.0,
        color_jitter: bool = True,
        flip_probability: float = 0.5,
        max_tries: int = 1000,
    ):
        if not short_sides or min(short_sides) <= 0:
            raise ValueError(f"short_sides must be a non-empty list of positive sizes, got {short_sides}")
        if len(crop_size) != 2 or min(crop_size) <= 0:
            raise ValueError(f"crop_size must be two positive sizes (h, w), got {crop_size}")
        if not 0 < single_category_max_area <= 1:
            raise ValueError(f"single_category_max_area must be in (0, 1], got {single_category_max_area}")
        super().__init__(
            max(crop_size), color_jitter=color_jitter, flip_probability=flip_probability, max_tries=max_tries
        )
        self.short_sides = tuple(int(s) for s in short_sides)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.max_long_side = int(max_long_side)
        self.single_category_max_area = float(single_category_max_area)

    def __repr__(self) -> str:
        return (
            f"ShortSideCropTransform(short_sides={list(self.short_sides)}, crop_size={self.crop_size}, "
            f"max_long_side={self.max_long_side}, single_category_max_area={self.single_category_max_area}, "
            f"color_jitter={self.color_jitter_enabled})"
        )

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """Step 1's random output size for an H x W input (one draw from the global generator)."""
        short = self.short_sides[int(torch.randint(0, len(self.short_sides), size=(1,)))]
        return short_side_size(height, width, short, self.max_long_side)

    def crop_origin(self, geometry: torch.Tensor, ids: torch.Tensor | None) -> tuple[int, int]:
        """Step 2's (top, left) on the resized (M, H, W) uint8 geometry (an index map when `ids` is given)."""
        height, width = geometry.shape[-2:]
        crop_h, crop_w = min(self.crop_size[0], height), min(self.crop_size[1], width)
        tries = 1 if self.single_category_max_area >= 1.0 else 10
        top = left = 0
        for _ in range(tries):
            top = int(torch.randint(0, height - crop_h + 1, size=(1,)))
            left = int(torch.randint(0, width - crop_w + 1, size=(1,)))
            if tries == 1:
                break
            window = geometry[:, top : top + crop_h, left : left + crop_w]
            if ids is not None:  # an index map: 0 = no mask (ignored), k = mask k - 1
                counts = torch.bincount(window.flatten().long(), minlength=len(ids) + 1)[1:]
            else:
                counts = window.flatten(1).sum(dim=1)
            counts = counts[counts > 0]
            if len(counts) > 1 and int(counts.max()) < float(counts.sum()) * self.single_category_max_area:
                break
        return top, left

    def _augment_with_ids(
        self, image: torch.Tensor, masks_u8: torch.Tensor, ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new_h, new_w = self.resized_size(*image.shape[-2:])
        image = F.resize(image, [new_h, new_w], interpolation=InterpolationMode.BILINEAR, antialias=True)
        masks_u8 = F.resize(masks_u8, [new_h, new_w], interpolation=InterpolationMode.NEAREST)

        top, left = self.crop_origin(masks_u8, ids)
        crop_h, crop_w = self.crop_size
        image = image[:, top : top + crop_h, left : left + crop_w]
        masks_u8 = masks_u8[:, top : top + crop_h, left : left + crop_w]
        pad_h, pad_w = crop_h - image.shape[-2], crop_w - image.shape[-1]
        if pad_h or pad_w:
            image = F.pad(image, [0, 0, pad_w, pad_h], fill=0)
            masks_u8 = F.pad(masks_u8, [0, 0, pad_w, pad_h], fill=0)

        if self.color_jitter_enabled:
            image = self.color_jitter(image)
        if _coin(self.flip_probability):
            image, masks_u8 = image.flip(-1), masks_u8.flip(-1)
        return image.contiguous(), masks_u8.contiguous()
