"""A small, deterministic BRAVO fixture: GT tree, raw submission tree and sampling tar (`bravo.md` §2, §3).

`make_fixture(out, seed)` writes

    out/gt/bravo_<split>/...            label + mask PNGs of 19 images covering all nine subsets
    out/submission/bravo_<split>/...    `_pred.png` (8-bit) + `_conf.png` (16-bit) per image
    out/bravo_SAMPLING.tar              the official sample of every image (here: all non-void pixels)

Images are 160x320 (51,200 pixels, under the 100,000 non-void pixels up to which the official old-format mode
uses every pixel), with void pixels, invalid regions (OOD objects for synobjs/SMIYC, invalid masks elsewhere),
SMIYC masks holding 0/1/255, tied confidence levels, the extreme levels 0 and 65535, confidences correlated with
correctness and OOD-ness but not perfectly, a class present nowhere (NaN IoU) and one only predicted (IoU 0).
The same seed gives byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eomt_ood.bravo.layout import IMAGE_SUFFIX, LABEL_SUFFIX, MASK_SUFFIX, SUBSET_SPLIT
from eomt_ood.bravo.sampling import official_sample_indices, write_sampling_tar
from eomt_ood.bravo.submission import write_raw_pair
from eomt_ood.confidence.levels import quantise_confidence
from eomt_ood.data.png import write_png
from eomt_ood.io import check_output

HEIGHT, WIDTH = 160, 320
CELL = 16  # labels are drawn on a coarse grid of 16x16-pixel cells, like blocky segments
ABSENT_CLASS = 16  # "train": in neither GT nor prediction -> NaN IoU
PREDICTED_ONLY_CLASS = 17  # "motorcycle": only ever predicted -> IoU 0
GT_CLASSES = np.array([c for c in range(19) if c not in (ABSENT_CLASS, PREDICTED_ONLY_CLASS)])
PRED_CLASSES = np.array([c for c in range(19) if c != ABSENT_CLASS])

# (subset, <base>) of every fixture image; the names follow the real layout (ACDC sequences, SMIYC .jpg names,
# a synobjs object folder with a space, Cityscapes city names).
FIXTURE_IMAGES: tuple[tuple[str, str], ...] = (
    *(
        (f"ACDC{cond}", f"bravo_ACDC/{cond}/test/GOPR0{475 + i}/GOPR0{475 + i}_frame_000{247 + j:03d}")
        for i, cond in enumerate(("fog", "night", "rain", "snow"))
        for j in range(2)
    ),
    ("SMIYC", "bravo_SMIYC/RoadAnomaly21/images/airplane0000"),
    ("SMIYC", "bravo_SMIYC/RoadAnomaly21/images/boat_trailer0004"),
    ("synobjs", "bravo_synobjs/armchair/1"),
    ("synobjs", "bravo_synobjs/polar bear/4"),
    ("synobjs", "bravo_synobjs/zebra/12"),
    ("synflare", "bravo_synflare/frankfurt/frankfurt_000000_000294"),
    ("synflare", "bravo_synflare/lindau/lindau_000001_000019"),
    ("synrain", "bravo_synrain/munster/munster_000000_000019"),
    ("synrain", "bravo_synrain/lindau/lindau_000000_000019"),
    ("outofcontext", "bravo_outofcontext/frankfurt/frankfurt_000001_000538"),
    ("outofcontext", "bravo_outofcontext/munster/munster_000005_000019"),
)


@dataclass(frozen=True)
class Fixture:
    root: Path
    gt: Path
    submission: Path
    samples: Path
    images: tuple[tuple[str, str], ...]  # (subset, <base>)


def make_fixture(out: str | Path, seed: int = 0) -> Fixture:
    """Write the fixture under `out` (see the module docstring); the same seed gives the same bytes."""
    root = Path(out)
    check_output(root, "--out", folder=True)
    gt_root, sub_root = root / "gt", root / "submission"
    rng = np.random.default_rng(seed)
    samples = []
    for subset, base in FIXTURE_IMAGES:
        split = SUBSET_SPLIT[subset][0]
        label, mask = _ground_truth(rng, split)
        pred, conf = _submission(rng, split, label, mask)
        write_png(gt_root / (base + LABEL_SUFFIX[split]), label)
        write_png(gt_root / (base + MASK_SUFFIX[split]), mask)
        write_raw_pair(sub_root, base + IMAGE_SUFFIX[split], pred, conf)
        samples.append((base, official_sample_indices(label != 255)))
    write_sampling_tar(root / "bravo_SAMPLING.tar", samples)
    return Fixture(root, gt_root, sub_root, root / "bravo_SAMPLING.tar", FIXTURE_IMAGES)


def _ellipse(rng: np.random.Generator, min_r: int, max_r: int) -> np.ndarray:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    cy, cx = rng.integers(20, HEIGHT - 20), rng.integers(30, WIDTH - 30)
    ry, rx = rng.integers(min_r, max_r + 1, size=2)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _ground_truth(rng: np.random.Generator, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(label uint8 with 255 = void, mask uint8 with non-zero = invalid) of one image."""
    if split == "SMIYC":
        label = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)  # the "fake" label only lists images and marks void
    else:
        cells = rng.choice(GT_CLASSES, size=(HEIGHT // CELL, WIDTH // CELL))
        label = np.kron(cells, np.ones((CELL, CELL), dtype=np.int64)).astype(np.uint8)
    # Void: a band at the bottom (ego vehicle) and a few random boxes.
    label[HEIGHT - int(rng.integers(4, 12)) :, :] = 255
    for _ in range(3):
        y, x = rng.integers(0, HEIGHT - 8), rng.integers(0, WIDTH - 8)
        label[y : y + int(rng.integers(3, 9)), x : x + int(rng.integers(3, 9))] = 255

    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    if split == "synobjs":
        mask[_ellipse(rng, 12, 30)] = 255  # the inpainted object
    elif split == "SMIYC":
        mask[_ellipse(rng, 10, 28)] = 1  # the anomaly
        # SMIYC's own void (255) counts as OOD positive except where the fake label is void too (§2.2).
        y0 = int(rng.integers(HEIGHT - 30, HEIGHT - 16))
        mask[y0:, : WIDTH // 2] = 255
    elif split == "outofcontext":
        mask[: int(rng.integers(20, 50)), :] = 1  # the replaced background
    else:
        for _ in range(int(rng.integers(2, 5))):  # raindrops, flare cores, unreadable ACDC regions
            mask[_ellipse(rng, 4, 14)] = int(rng.integers(1, 256))
    return label, mask


def _submission(
    rng: np.random.Generator, split: str, label: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(pred uint8 ids 0..18, conf uint16 levels) of one image: mostly right, confidence loosely informative."""
    pred = np.where(label == 255, rng.choice(PRED_CLASSES, size=label.shape), label).astype(np.uint8)
    if split == "SMIYC":
        pred[:] = (
            rng.choice(PRED_CLASSES, size=(HEIGHT // CELL, WIDTH // CELL)).repeat(CELL, 0).repeat(CELL, 1)
        )
        pred[rng.random(label.shape) < 0.3] = 0
    # Blocky errors (whole cells) and pixel noise.
    wrong_cells = rng.random((HEIGHT // CELL, WIDTH // CELL)) < 0.15
    wrong = np.kron(wrong_cells, np.ones((CELL, CELL), dtype=bool)) | (rng.random(label.shape) < 0.05)
    pred[wrong] = rng.choice(PRED_CLASSES, size=int(wrong.sum()))
    correct = pred == label

    # Confidence: higher for correct pixels, lower for invalid ones of OOD subsets; overlapping distributions.
    score = np.where(correct, rng.beta(5.0, 2.0, label.shape), rng.beta(2.0, 3.0, label.shape))
    if split in ("SMIYC", "synobjs"):
        score = np.where(mask != 0, rng.beta(2.0, 4.0, label.shape), score)
    conf = quantise_confidence(score)
    # Ties: a third of the pixels on a coarse grid of levels, plus the extreme levels.
    coarse = rng.random(label.shape) < 0.33
    conf[coarse] = (conf[coarse] // 2048) * 2048
    conf[rng.random(label.shape) < 0.01] = 65535
    conf[rng.random(label.shape) < 0.005] = 0
    return pred, conf
