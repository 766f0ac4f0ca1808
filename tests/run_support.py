"""Tiny synthetic run folders built through the real pipeline's per-image and gathering steps (`build_run`),
for the fixtures in conftest.py and the tests that build a variant of their own."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCORES = ("msp", "rba")

# (subset, height, width, input path, GT label suffix, GT mask suffix); None suffixes: no ground truth.
_PLAN = [
    ("synobjs", 64, 128, "bravo_synobjs/bear/0.png", "_gt.png", "_mask.png"),
    ("synobjs", 600, 1200, "bravo_synobjs/bear/1.png", "_gt.png", "_mask.png"),
    ("synobjs", 48, 96, "bravo_synobjs/cat/2.png", "_gt.png", "_mask.png"),
    ("ACDCfog", 64, 128, "bravo_ACDC/fog/test/a/3_rgb_anon.png", "_gt_labelTrainIds.png", "_gt_invIds.png"),
    ("ACDCfog", 40, 80, "bravo_ACDC/fog/test/a/4_rgb_anon.png", "_gt_labelTrainIds.png", "_gt_invIds.png"),
    ("synrain", 32, 64, "bravo_synrain/x/5_leftImg8bit.png", None, None),
]


def synthetic_maps(rng: np.random.Generator, height: int, width: int, ood: bool, scores=SCORES):
    """Stripes of classes, a void band, an invalid box (OOD subsets) with lower confidence, a photo in the
    label colours with a bright object on the box: (gt, invalid, pred, {score: levels}, rgb)."""
    from eomt_ood.data.labels import TRAIN_ID_COLORS

    gt = ((np.arange(width)[None, :] * 19) // width).repeat(height, 0).astype(np.uint8)
    gt[: max(1, height // 10)] = 255
    invalid = np.zeros((height, width), np.uint8)
    if ood:
        invalid[height // 3 : height // 2, width // 4 : width // 2] = 1
    pred = gt.copy()
    flip = rng.random((height, width)) < 0.2
    pred[flip] = rng.integers(0, 19, int(flip.sum()))
    pred[gt == 255] = rng.integers(0, 19, int((gt == 255).sum()))
    levels = {}
    for s, score in enumerate(scores):
        base = rng.normal(0.8 - 0.05 * s, 0.12, (height, width)) - 0.35 * invalid - 0.2 * (pred != gt)
        levels[score] = np.clip(np.floor(np.clip(base, 0, 1) * 65536), 0, 65535).astype(np.uint16)
    photo = 0.6 * TRAIN_ID_COLORS[np.minimum(gt, 18)] + rng.normal(0, 12, (height, width, 3))
    photo[invalid != 0] = (250, 240, 60)
    return gt, invalid, pred, levels, np.clip(photo, 0, 255).astype(np.uint8)


def build_run(folder: Path, seed: int = 0, scores=SCORES, name: str = "run") -> Path:
    """A small finished run: `folder/images` (inputs), `folder/gt`, and the run folder `folder/<name>` (returned),
    made by the pipeline's own `finish_image` (PNGs, statistics, records) and `gather_run` (store, results,
    report) from synthetic maps: synobjs (3 images; one 600x1200 so previews are downsampled), ACDCfog (2 images,
    no invalid pixels), synrain (1 image without GT)."""
    from eomt_ood.bravo.layout import MemberRef
    from eomt_ood.bravo.rundir import RunDir
    from eomt_ood.bravo.scoring import GroundTruthRefs
    from eomt_ood.config import to_dict
    from eomt_ood.data.png import write_png
    from eomt_ood.data.resample import photo_preview, preview_shape
    from eomt_ood.evaluate import EvaluateConfig, FinishTask, finish_image, gather_run

    rng = np.random.default_rng(seed)
    images, gt_root, run = folder / "images", folder / "gt", folder / name
    config = EvaluateConfig(
        out=run, images_root=images, gt=gt_root, model="eomt_test", confidences=tuple(scores)
    )
    RunDir(run).write_config(to_dict(config))
    for subset, height, width, rel, label_suffix, mask_suffix in _PLAN:
        gt, invalid, pred, levels, rgb = synthetic_maps(rng, height, width, subset == "synobjs", scores)
        write_png(images / rel, rgb)
        refs = None
        if label_suffix is not None:
            base = rel.rsplit("_rgb_anon.png", 1)[0] if subset.startswith("ACDC") else rel[: -len(".png")]
            write_png(gt_root / (base + label_suffix), gt)
            write_png(gt_root / (base + mask_suffix), invalid * 255)
            refs = GroundTruthRefs(
                subset,
                MemberRef(str(gt_root), base + label_suffix),
                MemberRef(str(gt_root), base + mask_suffix),
            )
        shape = preview_shape(height, width)
        top2_class = rng.integers(0, 19, (2, *shape), dtype=np.uint8)
        top2_score = np.sort(rng.random((2, *shape)), axis=0)[::-1].astype(np.float16)
        photo = photo_preview(rgb)
        task = FinishTask(
            str(run), rel, subset, tuple(scores), pred, levels, (top2_class, top2_score), photo, refs
        )
        finish_image(task)
    gather_run(config)
    return run
