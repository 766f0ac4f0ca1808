"""The bundled demo: a small BRAVO-layout set with ground truth, made deterministically from synthetic streets.

Every BRAVO subset type gets its own kind of shift, applied to procedural street scenes (`data.streets`):

- ACDC fog / night / rain / snow: weather renderings; pixels whose content cannot be made out any more (dense
  fog far away, near-black shadows at night, heavy streaks or flakes) are invalid, like ACDC's invalid masks.
- synrain: raindrops on the lens that refract a flipped, blurred view; the drops are invalid.
- synflare: a lens flare (glare, halo, ghosts); its brightest area is invalid.
- outofcontext: the background above the horizon is replaced by a real photograph; that region is invalid.
- synobjs and SMIYC RoadAnomaly21: unseen objects pasted onto the road, cut from the real photographs that
  scikit-image ships (astronaut, cat, coffee, rocket, a horse silhouette filled with photo texture, the
  scikit-image logo cut from its white background). They are the OOD positives. SMIYC inputs are JPEGs and its masks use 0 / 1 / 255.

`write_demo(out_dir)` writes `out_dir/images/bravo_*/...` (the input tree) and `out_dir/gt/bravo_*/...` (the
official ground-truth layout, docs/formats.md §1.2). The same seed gives byte-identical files.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from eomt_ood.data.png import write_png
from eomt_ood.data.streets import Scene, render_scene_layers

VOID = 255


@dataclass(frozen=True)
class DemoImage:
    """One demo image: input path, GT label/mask paths (relative), and the arrays."""

    image_rel: str
    label_rel: str
    mask_rel: str
    rgb: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) uint8 train ids, 255 void
    mask: np.ndarray  # (H, W) uint8, 0 valid, non-zero invalid (SMIYC: 0/1/255)


# ----------------------------------------------------------------------------------------------- shift renderings


def _horizon_row(label: np.ndarray) -> int:
    """The lowest row that still holds sky, or a third of the height when there is no sky."""
    rows = np.flatnonzero((label == 10).any(axis=1))
    return int(rows.max()) if rows.size else label.shape[0] // 3


def render_fog(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Koschmieder fog on the scene's depth: I = J t + A (1 - t), t = exp(-depth / visibility).

    Invalid where the transmission t < 0.1 (content washed out), except sky, which stays recognisable as sky.
    """
    visibility = rng.uniform(6.0, 14.0)  # in camera heights, like the scene's depth
    t = np.exp(-np.nan_to_num(scene.depth.astype(np.float64), posinf=1e6) / visibility)[..., None]
    airlight = rng.uniform(0.75, 0.9) * 255
    out = scene.rgb.astype(np.float64) * t + airlight * (1 - t)
    invalid = (t[..., 0] < 0.1) & (scene.train_ids != 10)
    return _u8(out), invalid


def render_night(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Night: gamma-darkened, blue-tinted, with a few street-light pools. Invalid where nearly black."""
    rgb, label = scene.rgb, scene.train_ids
    height, width = label.shape
    linear = (rgb.astype(np.float64) / 255.0) ** 2.2 * rng.uniform(0.015, 0.03)
    yy, xx = np.mgrid[0:height, 0:width]
    light = np.zeros((height, width))
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.uniform(0.4, 0.9) * height, rng.uniform(0, 1) * width
        radius = rng.uniform(0.08, 0.2) * width
        light += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    linear = linear * (1 + 6 * light[..., None] * np.array([1.0, 0.85, 0.55]))
    linear *= np.array([0.8, 0.9, 1.2])
    out = 255 * np.clip(linear, 0, 1) ** (1 / 2.2)
    luminance = out @ np.array([0.299, 0.587, 0.114])
    invalid = (luminance < 10) & (label != 10)
    return _u8(out), invalid


def _streaks(
    shape: tuple[int, int], rng: np.random.Generator, count: int, length: float, slant: float
) -> np.ndarray:
    """A (H, W) alpha map of thin slanted streaks (rain) drawn as anti-aliased line samples."""
    height, width = shape
    alpha = np.zeros(shape)
    starts_y = rng.uniform(-0.2, 1.0, count) * height
    starts_x = rng.uniform(-0.1, 1.1, count) * width
    lengths = rng.uniform(0.5, 1.0, count) * length * height
    steps = np.linspace(0, 1, 24)[None, :]
    ys = (starts_y[:, None] + steps * lengths[:, None]).round().astype(int)
    xs = (starts_x[:, None] + steps * lengths[:, None] * slant).round().astype(int)
    keep = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    np.add.at(alpha, (ys[keep], xs[keep]), 0.35)
    return np.clip(alpha, 0, 1)


def render_rain(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rain: darker, lower contrast, streaks. Invalid where streaks pile up densely (blurred alpha > 0.25)."""
    rgb, label = scene.rgb, scene.train_ids
    height, width = label.shape
    base = rgb.astype(np.float64) * 0.75 + 20
    alpha = _streaks(
        (height, width), rng, count=int(height * width / 120), length=0.12, slant=rng.uniform(-0.3, 0.3)
    )
    out = base * (1 - alpha[..., None]) + 210 * alpha[..., None]
    dense = (
        np.asarray(Image.fromarray(_u8(alpha * 255)).filter(ImageFilter.BoxBlur(3)), dtype=np.float64) / 255
    )
    return _u8(out), dense > 0.25


def render_snow(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Snow: whitened ground, haze, and flakes of a few pixels. Invalid under the larger flakes."""
    rgb, label = scene.rgb, scene.train_ids
    height, width = label.shape
    out = rgb.astype(np.float64)
    ground = np.isin(label, (0, 1, 9, 8))[..., None]
    out = np.where(ground, out * 0.45 + 0.55 * 235, out * 0.8 + 0.2 * 220)
    yy, xx = np.mgrid[0:height, 0:width]
    flakes = np.zeros((height, width))
    count = int(height * width / 400)
    cy, cx = rng.uniform(0, height, count), rng.uniform(0, width, count)
    radius = rng.uniform(0.6, 3.2, count)
    big = np.zeros((height, width), bool)
    for y, x, r in zip(cy, cx, radius, strict=True):
        y0, y1, x0, x1 = (
            int(max(y - r - 1, 0)),
            int(min(y + r + 2, height)),
            int(max(x - r - 1, 0)),
            int(min(x + r + 2, width)),
        )
        d2 = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2
        flakes[y0:y1, x0:x1] = np.maximum(flakes[y0:y1, x0:x1], np.clip(1.2 - d2 / r**2, 0, 1))
        if r > 2.4:
            big[y0:y1, x0:x1] |= d2 <= r**2
    out = out * (1 - flakes[..., None]) + 250 * flakes[..., None]
    return _u8(out), big


def render_lens_rain(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Raindrops on the lens: each drop shows a blurred, upside-down view of its surroundings. Drops are invalid."""
    rgb, label = scene.rgb, scene.train_ids
    height, width = label.shape
    out = rgb.astype(np.float64)
    blurred = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(2.5)), dtype=np.float64)
    yy, xx = np.mgrid[0:height, 0:width]
    invalid = np.zeros((height, width), bool)
    for _ in range(int(rng.integers(6, 12))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.03, 0.09) * height, rng.uniform(0.02, 0.05) * width
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        src_y = np.clip((2 * cy - yy) * 1.0 - 3 * ry, 0, height - 1).astype(int)  # flipped, shifted up
        src_x = np.clip(2 * cx - xx, 0, width - 1).astype(int)
        refracted = blurred[src_y, src_x] * 0.9 + 20
        out[inside] = refracted[inside]
        invalid |= inside
    return _u8(out), invalid


def render_flare(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A lens flare: glare around a bright source, a halo ring and ghosts. Invalid where the flare saturates."""
    rgb, label = scene.rgb, scene.train_ids
    height, width = label.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    sy, sx = rng.uniform(0.05, 0.35) * height, rng.uniform(0.15, 0.85) * width
    dist = np.hypot(yy - sy, xx - sx) / width
    glare = np.exp(-dist / rng.uniform(0.05, 0.08))
    halo = 0.35 * np.exp(-((dist - rng.uniform(0.18, 0.25)) ** 2) / 0.0004)
    ghosts = np.zeros_like(dist)
    for step in (0.6, 1.3, 1.7):
        gy, gx = height / 2 + (height / 2 - sy) * step, width / 2 + (width / 2 - sx) * step
        ghosts += 0.3 * (np.hypot(yy - gy, xx - gx) < rng.uniform(0.02, 0.05) * width)
    flare = glare + halo + ghosts
    tint = np.array([1.0, 0.92, 0.75])
    out = rgb.astype(np.float64) + 255 * flare[..., None] * tint
    return _u8(out), glare > 0.5


def render_out_of_context(
    scene: Scene, rng: np.random.Generator, photo: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Replace the background (sky, buildings and vegetation above the horizon band) with a photograph."""
    rgb, label = scene.rgb, scene.train_ids
    height, width = label.shape
    background = np.isin(label, (10, 2, 8))
    background[int(height * 0.62) :] = False
    resized = np.asarray(Image.fromarray(photo).resize((width, height), Image.Resampling.BILINEAR))
    out = np.where(background[..., None], resized, rgb)
    return out.astype(np.uint8), background


# ------------------------------------------------------------------------------------------------ OOD objects


def object_sources() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Cut-outs from scikit-image's bundled photographs: {name: (rgb (h, w, 3) uint8, alpha (h, w) bool)}.

    The masks are simple shapes inside each photo (an ellipse around the subject), the horse silhouette that
    scikit-image ships filled with a photograph's texture, and the logo without its white background (its alpha
    channel is fully opaque, so it cannot serve as the mask).
    """
    from skimage import data as skdata

    def ellipse(img: np.ndarray, box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
        top, left, bottom, right = (int(v * s) for v, s in zip(box, img.shape[:2] * 2, strict=True))
        crop = img[top:bottom, left:right, :3]
        h, w = crop.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        return crop, ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 <= 1

    horse = ~skdata.horse()  # True on the horse
    rocket_texture = np.asarray(Image.fromarray(skdata.rocket()).resize(horse.shape[::-1]))
    logo = skdata.logo()
    return {
        "astronaut": ellipse(skdata.astronaut(), (0.05, 0.2, 0.75, 0.8)),
        "cat": ellipse(skdata.chelsea(), (0.05, 0.25, 0.95, 0.75)),
        "coffee cup": ellipse(skdata.coffee(), (0.05, 0.1, 0.8, 0.75)),
        "rocket": ellipse(skdata.rocket(), (0.0, 0.35, 1.0, 0.65)),
        "horse": (rocket_texture, horse),
        "logo": (logo[..., :3], np.abs(logo[..., :3].astype(np.int16) - 255).sum(-1) > 30),
    }


def paste_object(
    scene: Scene, source: tuple[np.ndarray, np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paste a cut-out on the road (scaled with the perspective of its foot row); returns (image, object mask)."""
    rgb, label = scene.rgb, scene.train_ids
    height, width = label.shape
    photo, alpha = source
    road_rows = np.flatnonzero((label == 0).sum(axis=1) > width * 0.05)
    horizon = int(scene.horizon)
    if road_rows.size:
        foot = int(rng.uniform(road_rows.min() + 0.3 * (road_rows.max() - road_rows.min()), road_rows.max()))
    else:
        foot = int(height * 0.85)
    size = max(8, int((foot - horizon) / max(height - horizon, 1) * height * rng.uniform(0.35, 0.55)))
    scale = size / max(alpha.shape)
    h, w = max(2, int(alpha.shape[0] * scale)), max(2, int(alpha.shape[1] * scale))
    obj = np.asarray(Image.fromarray(photo).resize((w, h), Image.Resampling.BILINEAR))
    obj_alpha = (
        np.asarray(Image.fromarray(alpha.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 0
    )
    road_cols = np.flatnonzero(label[min(foot, height - 1)] == 0)
    centre = int(rng.choice(road_cols)) if road_cols.size else width // 2
    top, left = max(0, foot - h), int(np.clip(centre - w // 2, 0, max(width - w, 0)))
    region = (slice(top, top + h), slice(left, left + w))
    patch_alpha = obj_alpha[: min(h, height - top), : min(w, width - left)]
    mask = np.zeros((height, width), bool)
    mask[region][: patch_alpha.shape[0], : patch_alpha.shape[1]] = patch_alpha
    out = rgb.copy()
    out[mask] = obj[: patch_alpha.shape[0], : patch_alpha.shape[1]][patch_alpha]
    return out, mask


# --------------------------------------------------------------------------------------------------- the set


def _u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


ACDC_CONDITIONS: dict[str, Callable] = {
    "fog": render_fog,
    "night": render_night,
    "rain": render_rain,
    "snow": render_snow,
}
CITIES = ("frankfurt", "lindau", "munster")


def demo_images(seed: int = 0, per_subset: int = 6, size: tuple[int, int] = (256, 512)) -> list[DemoImage]:
    """All demo images of every subset, generated deterministically from `seed`."""
    rng = np.random.default_rng(seed)
    height, width = size
    objects = object_sources()
    object_names = sorted(objects)
    photos = [objects["astronaut"][0], _skimage_photo("hubble_deep_field"), _skimage_photo("coffee")]
    images: list[DemoImage] = []

    def scene() -> Scene:
        return render_scene_layers(rng, height, width)

    for condition, render in ACDC_CONDITIONS.items():
        for i in range(per_subset):
            street = scene()
            shifted, invalid = render(street, rng)
            seq = f"GOPR{475 + i:04d}"
            base = f"bravo_ACDC/{condition}/test/{seq}/{seq}_frame_{247 + i:06d}"
            images.append(
                DemoImage(
                    f"{base}_rgb_anon.png",
                    f"{base}_gt_labelTrainIds.png",
                    f"{base}_gt_invIds.png",
                    shifted,
                    street.train_ids,
                    invalid.astype(np.uint8),
                )
            )
    cityscapes_like: dict[str, Callable | None] = {
        "synrain": render_lens_rain,
        "synflare": render_flare,
        "outofcontext": None,
    }
    for split, shift in cityscapes_like.items():
        for i in range(per_subset):
            street = scene()
            if shift is None:
                shifted, invalid = render_out_of_context(street, rng, photos[i % len(photos)])
            else:
                shifted, invalid = shift(street, rng)
            city = CITIES[i % len(CITIES)]
            base = f"bravo_{split}/{city}/{city}_{i:06d}_{19 + i:06d}"
            images.append(
                DemoImage(
                    f"{base}_leftImg8bit.png",
                    f"{base}_gt_labelTrainIds.png",
                    f"{base}_gt_invIds.png",
                    shifted,
                    street.train_ids,
                    invalid.astype(np.uint8),
                )
            )
    for i in range(per_subset):
        street = scene()
        name = object_names[i % len(object_names)]
        shifted, mask = paste_object(street, objects[name], rng)
        base = f"bravo_synobjs/{name}/{i // len(object_names) + 1}"
        images.append(
            DemoImage(
                f"{base}.png",
                f"{base}_gt.png",
                f"{base}_mask.png",
                shifted,
                street.train_ids,
                mask.astype(np.uint8),
            )
        )
    for i in range(per_subset):
        street = scene()
        label = street.train_ids
        name = object_names[(i + 3) % len(object_names)]
        shifted, mask = paste_object(street, objects[name], rng)
        fake = np.where(label == VOID, VOID, 0).astype(np.uint8)
        smiyc_mask = np.where(label == VOID, VOID, mask.astype(np.uint8))
        base = f"bravo_SMIYC/RoadAnomaly21/images/{name.replace(' ', '')}{i:04d}"
        images.append(
            DemoImage(
                f"{base}.jpg",
                f"{base}_labels_semantic_fake.png",
                f"{base}_labels_semantic.png",
                shifted,
                fake,
                smiyc_mask.astype(np.uint8),
            )
        )
    return images


def _skimage_photo(name: str) -> np.ndarray:
    from skimage import data as skdata

    return getattr(skdata, name)()[..., :3]


def write_demo(
    out_dir: str | Path, seed: int = 0, per_subset: int = 6, size: tuple[int, int] = (256, 512)
) -> Path:
    """Write the demo set: `out_dir/images/...` (inputs) and `out_dir/gt/...` (official GT layout)."""
    out_dir = Path(out_dir)
    for item in demo_images(seed=seed, per_subset=per_subset, size=size):
        image_path = out_dir / "images" / item.image_rel
        if item.image_rel.endswith(".jpg"):
            image_path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.fromarray(item.rgb).save(buf, format="JPEG", quality=92)
            image_path.write_bytes(buf.getvalue())
        else:
            write_png(image_path, item.rgb)
        write_png(out_dir / "gt" / item.label_rel, item.label)
        write_png(out_dir / "gt" / item.mask_rel, item.mask)
    return out_dir
