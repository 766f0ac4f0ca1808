"""Benchmark of BRAVO scoring: per-image speed against the official algorithm, and memory vs image count.

Prints one JSON object with one part per kind of synthetic maps (`make_images`): ``noise`` (errors and
confidence drawn pixel by pixel: the worst case for counting, the cheapest to decode), ``regions`` (errors in
blocks, a smooth confidence: the shape of a real model's maps), both written as `eomt-ood predict` writes PNGs
(Up filter, ISA-L deflate), and ``regions_pillow``: the region maps written by Pillow's PNG writer (libpng's
adaptive filters, zlib level 6), as most other tools write their submissions; those take longer to decode, and
the counting is the same. Each part holds

- ``per_image_ms``: mean time per 2048x1024 image of ``decode`` (reading and decoding its four PNGs),
  ``ours_statistics`` (what a `score` worker counts on the decoded arrays: `sparse_statistics`, one compiled
  pass over the pixels),
  ``official_statistics`` (a direct numpy transcription of the official per-image step on the same arrays:
  void filtering, confusion matrix, then per-histogram argsort + np.add.at into 65,536 float64 bins), and the
  same two including PNG reading/decoding (``ours_end_to_end`` = `score_image`, ``official_end_to_end``);
  ``speedup`` gives the ratios official / ours.
- ``floor``: `score_submission` on ``--workers`` processes against just reading and decoding the same files on
  as many processes (the I/O floor of scoring: the four PNGs of every image), scoring alone (``--bootstrap
  0``): ``ratio`` = score / decode-only over whole runs of ``--floor-images`` images, and ``per_image_ratio``
  (target: at most 1.3) = the same for the cost of one more image, from runs on N and 2N images (what a
  BRAVO-sized run of thousands of images pays; ``once_per_run_s`` is what remains of the N-image runs);
  ``per_image_cpu_ms`` / ``per_image_cpu_ratio``: the same per-image difference in CPU time of the benchmark
  and its workers together (on a shared machine the wall times move with other work, the CPU far less);
  ``score_with_intervals_s`` adds `score`'s default bootstrap intervals (B = 1,000), whose cost is per run
  (replicates x images of statistics), not per pixel.

and, for the noise maps,
- ``peak_rss_mb``: peak RSS of a child process running `score_submission` (workers=1) over 10 and over 100
  images of one subset (hard links to the same few files under distinct names), and their ratio, with intervals
  (``with_intervals``, `score`'s default) and without (``bootstrap_0``). Without, memory does not grow with the
  images; with, it grows by what the bootstrap reads at once, the per-image statistics of one subset (a BRAVO
  subset has at most about 650 images), never those of the whole run.

Run: ``uv run --frozen python benchmarks/bench_score.py [--images 4] [--repeats 3]``; about 2-3 minutes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine
import numpy as np
from PIL import Image

from eomt_ood.bravo.intervals import Settings
from eomt_ood.bravo.layout import MemberRef, read_conf, read_label, read_mask, read_pred
from eomt_ood.bravo.scoring import (
    GroundTruthRefs,
    ImageTask,
    image_statistics,
    score_image,
    score_submission,
    sparse_statistics,
)
from eomt_ood.confidence.levels import quantise_confidence
from eomt_ood.data.png import write_png
from eomt_ood.io import ProcessMap

HEIGHT, WIDTH = 1024, 2048
BASE = "bravo_synobjs/obj/{}"
SUFFIXES = ("_gt.png", "_mask.png", "_pred.png", "_conf.png")
KINDS = {
    "noise": ("noise", "eomt-ood"),
    "regions": ("regions", "eomt-ood"),
    "regions_pillow": ("regions", "pillow"),
}
"""Part name: (kind of maps, PNG writer)."""


def make_images(root: Path, count: int, seed: int = 0, kind: str = "noise", writer: str = "eomt-ood") -> None:
    """`count` synthetic synobjs images (GT under root/gt, raw submission under root/sub).

    kind "noise": 20 % of the predicted pixels wrong one by one and a confidence drawn per pixel (the worst
    case for counting and the cheapest PNGs to decode: nothing repeats). kind "regions": wrong predictions in
    16-pixel blocks and a smooth confidence (16x bilinear upsampling, as a model's low-resolution outputs are),
    the shape of a real model's maps. writer: "eomt-ood" (`write_png`) or "pillow" (`PIL.Image.save`).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    for i in range(count):
        cells = rng.integers(0, 19, size=(HEIGHT // 32, WIDTH // 32))
        label = cells.repeat(32, 0).repeat(32, 1).astype(np.uint8)
        label[-80:] = 255
        cy, cx, r = rng.integers(200, 800), rng.integers(300, 1700), rng.integers(60, 200)
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).astype(np.uint8) * 255
        pred = label.copy()
        if kind == "noise":
            wrong = rng.random(label.shape) < 0.2
            pred[wrong] = rng.integers(0, 19, size=int(wrong.sum()))
        else:
            wrong = (rng.random((HEIGHT // 16, WIDTH // 16)) < 0.2).repeat(16, 0).repeat(16, 1)
            pred[wrong] = (
                rng.integers(0, 19, size=(HEIGHT // 16, WIDTH // 16)).repeat(16, 0).repeat(16, 1)[wrong]
            )
        pred[label == 255] = 0
        if kind == "noise":
            score = np.where(pred == label, rng.beta(5, 2, label.shape), rng.beta(2, 3, label.shape))
        else:
            score = _upsample(rng.beta(5, 2, (HEIGHT // 16 + 1, WIDTH // 16 + 1)), 16)[:HEIGHT, :WIDTH]
        conf = quantise_confidence(score)
        base = BASE.format(i)
        for folder, suffix, array in (
            ("gt", "_gt", label),
            ("gt", "_mask", mask),
            ("sub", "_pred", pred),
            ("sub", "_conf", conf),
        ):
            path = root / folder / (base + suffix + ".png")
            if writer == "pillow":
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path, format="PNG")
            else:
                write_png(path, array)


def _upsample(low: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling by an integer factor (separable linear interpolation between the samples)."""
    weights = np.arange(factor) / factor
    rows = low[:-1, None, :] * (1 - weights)[None, :, None] + low[1:, None, :] * weights[None, :, None]
    rows = rows.reshape(-1, low.shape[1])
    out = rows[:, :-1, None] * (1 - weights) + rows[:, 1:, None] * weights
    return out.reshape(rows.shape[0], -1)


def link_tree(src: Path, dst: Path, distinct: int, count: int) -> None:
    """A tree of `count` images whose files are hard links to the `distinct` images of `src`."""
    for i in range(count):
        for folder, suffix in zip(("gt", "gt", "sub", "sub"), SUFFIXES, strict=True):
            target = dst / folder / (BASE.format(i) + suffix)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(src / folder / (BASE.format(i % distinct) + suffix), target)


def official_statistics(label, mask, pred, conf):
    """Direct numpy transcription of the official per-image accumulation (old format, every pixel).

    Returns the float64 histograms (correct/wrong over V pixels, OOD positives/negatives by doubt) and the cm.
    """
    levels = 65536
    gt = label.ravel()
    mask_valid = mask.ravel() == 0
    pred = pred.ravel()
    conf = conf.ravel()
    non_void = gt != 255
    gt_nv, pred_nv, valid_nv = gt[non_void], pred[non_void], mask_valid[non_void]
    y_true, y_pred = gt_nv[valid_nv].astype(int), pred_nv[valid_nv].astype(int)
    cm = np.bincount(19 * y_true + y_pred, minlength=19 * 19).reshape(19, 19)
    conf_nv = conf[non_void]
    right_valid = gt_nv[valid_nv] == pred_nv[valid_nv]
    conf_valid = conf_nv[valid_nv]
    gt_ood = ~valid_nv
    doubt = levels - 1 - conf_nv.astype(np.int64)
    hists = []
    for truth, score in ((right_valid, conf_valid), (gt_ood, doubt)):
        order = np.argsort(score)
        truth, score = truth[order], score[order]
        tp, fp = np.zeros(levels), np.zeros(levels)
        np.add.at(tp, score, truth)
        np.add.at(fp, score, ~truth)
        hists += [tp, fp]
    return cm, hists


def _task(root: Path, i: int) -> ImageTask:
    base = BASE.format(i)
    refs = [
        MemberRef(str(root / folder), base + suffix)
        for folder, suffix in zip(("gt", "gt", "sub", "sub"), SUFFIXES, strict=True)
    ]
    return ImageTask(GroundTruthRefs("synobjs", refs[0], refs[1]), refs[2], refs[3])


def _decode(task: ImageTask):
    return (
        read_label(task.gt.label.read(), task.gt.label.name),
        read_mask(task.gt.mask.read(), task.gt.mask.name),
        read_pred(task.pred.read(), task.pred.name),
        read_conf(task.conf.read(), task.conf.name),
    )


def _decode_only(task: ImageTask) -> int:
    return sum(array.ndim for array in _decode(task))


def floor(small: Path, large: Path, workers: int) -> dict[str, object]:
    """score_submission vs decoding the same files, both on `workers` processes, on the N images of `small` and
    the 2N of `large` (each timed twice, alternating, best kept): whole runs of N, and per image the difference
    of the two sizes over N, which cancels what a run does once (forking the workers, listing the trees, the
    final metrics)."""

    def tasks(root: Path) -> list[ImageTask]:
        return [_task(root, int(p.name[: -len("_gt.png")])) for p in sorted((root / "gt").rglob("*_gt.png"))]

    def decode_all(root: Path) -> None:
        with ProcessMap(workers) as pool:
            for _ in pool.map(_decode_only, tasks(root), ordered=False):
                pass

    def score_all(root: Path) -> None:
        score_submission(
            root / "gt", root / "sub", workers=workers, progress=False, warn=None, bootstrap=Settings(0)
        )

    def score_with_intervals(root: Path) -> None:
        score_submission(root / "gt", root / "sub", workers=workers, progress=False, warn=None)

    runs = {
        ("decode_only", small): decode_all,
        ("decode_only", large): decode_all,
        ("score", small): score_all,
        ("score", large): score_all,
        ("score_with_intervals", small): score_with_intervals,
    }
    best = {key: math.inf for key in runs}
    best_cpu = {key: math.inf for key in runs}
    for _ in range(2):
        for (name, root), fn in runs.items():
            start, start_cpu = time.perf_counter(), machine.cpu_seconds()
            fn(root)  # its pool is closed on return, so its workers' CPU is counted
            best[name, root] = min(best[name, root], time.perf_counter() - start)
            best_cpu[name, root] = min(best_cpu[name, root], machine.cpu_seconds() - start_cpu)
    n = len(tasks(small))
    per_image = {
        name: (best[name, large] - best[name, small]) / (len(tasks(large)) - n)
        for name in ("decode_only", "score")
    }
    per_image_cpu = {
        name: (best_cpu[name, large] - best_cpu[name, small]) / (len(tasks(large)) - n)
        for name in ("decode_only", "score")
    }
    return {
        "images": n,
        "images_large": len(tasks(large)),
        "workers": workers,
        "decode_only_s": round(best["decode_only", small], 3),
        "score_s": round(best["score", small], 3),
        "score_with_intervals_s": round(best["score_with_intervals", small], 3),
        "ratio": round(best["score", small] / best["decode_only", small], 3),
        "ratio_with_intervals": round(best["score_with_intervals", small] / best["decode_only", small], 3),
        "per_image_ms": {name: round(1000 * value, 2) for name, value in per_image.items()},
        "per_image_ratio": round(per_image["score"] / per_image["decode_only"], 3),
        "per_image_cpu_ms": {name: round(1000 * value, 2) for name, value in per_image_cpu.items()},
        "per_image_cpu_ratio": round(per_image_cpu["score"] / per_image_cpu["decode_only"], 3),
        "once_per_run_s": {name: round(best[name, small] - n * per_image[name], 3) for name in per_image},
        "target_ratio": 1.3,
    }


def _mean_ms(fn, items, repeats: int) -> float:
    best = []
    for item in items:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(item)
            times.append(time.perf_counter() - t0)
        best.append(min(times))
    return 1000.0 * float(np.mean(best))


def speed(root: Path, count: int, repeats: int) -> dict[str, object]:
    tasks = [_task(root, i) for i in range(count)]
    arrays = [_decode(t) for t in tasks]
    # The two implementations must count the same pixels (sanity check, not a timing).
    for label, mask, pred, conf in arrays:
        ours = image_statistics(label, mask, pred, conf)
        cm, (tp, fp, ood_tp, ood_fp) = official_statistics(label, mask, pred, conf)
        assert (
            np.array_equal(ours.cm, cm)
            and np.array_equal(ours.correct, tp)
            and np.array_equal(ours.wrong, fp)
        )
        assert np.array_equal(ours.ood_pos[::-1], ood_tp) and np.array_equal(ours.ood_neg[::-1], ood_fp)
    ms = {
        "decode": _mean_ms(_decode, tasks, repeats),
        "ours_statistics": _mean_ms(lambda a: sparse_statistics(*a[:3], [a[3]]), arrays, repeats),
        "official_statistics": _mean_ms(lambda a: official_statistics(*a), arrays, repeats),
        "ours_end_to_end": _mean_ms(score_image, tasks, repeats),
        "official_end_to_end": _mean_ms(lambda t: official_statistics(*_decode(t)), tasks, repeats),
    }
    return {
        "per_image_ms": {k: round(v, 2) for k, v in ms.items()},
        "speedup": {
            "statistics": round(ms["official_statistics"] / ms["ours_statistics"], 2),
            "end_to_end": round(ms["official_end_to_end"] / ms["ours_end_to_end"], 2),
        },
    }


def child_peak_rss_mb(root: Path, intervals: bool) -> float:
    """Peak RSS (MB) of a fresh process scoring the tree at `root` inline (workers=1), with the default
    bootstrap intervals or none (`machine.PEAK_RSS_AT_EXIT`)."""
    code = machine.PEAK_RSS_AT_EXIT + (
        "import sys\n"
        "from eomt_ood.bravo.intervals import Settings\n"
        "from eomt_ood.bravo.scoring import score_submission\n"
        "bootstrap = Settings() if sys.argv[2] == 'on' else Settings(0)\n"
        "score_submission(sys.argv[1] + '/gt', sys.argv[1] + '/sub', workers=1, progress=False, warn=None,\n"
        "                 bootstrap=bootstrap)\n"
    )
    argv = [sys.executable, "-c", code, str(root), "on" if intervals else "off"]
    return machine.peak_rss_mb(subprocess.run(argv, capture_output=True, text=True, check=True).stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="distinct 2048x1024 images to generate")
    parser.add_argument("--repeats", type=int, default=2, help="timing repeats per image (best is kept)")
    parser.add_argument("--memory-counts", type=int, nargs=2, default=(10, 100), metavar=("SMALL", "LARGE"))
    parser.add_argument("--workers", type=int, default=2, help="processes for the floor comparison")
    parser.add_argument("--floor-images", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        root = Path(tmp)
        report: dict[str, object] = {
            "image_size": f"{WIDTH}x{HEIGHT}",
            "distinct_images": args.images,
            "numpy": np.__version__,
            "numba": importlib.metadata.version("numba"),  # compiles the counting (eomt_ood.bravo.counting)
            **machine.describe(),
        }
        for kind, (maps, writer) in KINDS.items():
            make_images(root / kind, args.images, kind=maps, writer=writer)
            part = speed(root / kind, args.images, args.repeats)
            link_tree(root / kind, root / f"floor-{kind}", args.images, args.floor_images)
            link_tree(root / kind, root / f"floor2-{kind}", args.images, 2 * args.floor_images)
            part["floor"] = floor(root / f"floor-{kind}", root / f"floor2-{kind}", args.workers)
            report[kind] = part
        small, large = (str(c) for c in args.memory_counts)
        for count in args.memory_counts:
            link_tree(root / "noise", root / f"tree{count}", args.images, count)
        report["peak_rss_mb"] = {}
        for name, intervals in (("with_intervals", True), ("bootstrap_0", False)):
            rss = {
                str(c): round(child_peak_rss_mb(root / f"tree{c}", intervals), 1) for c in args.memory_counts
            }
            report["peak_rss_mb"][name] = {**rss, "ratio": round(rss[large] / rss[small], 3)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
