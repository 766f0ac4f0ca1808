"""Benchmark of the bootstrap intervals (`eomt_ood.metrics.bootstrap`): time, memory, storage, coarsening error.

Prints one JSON object:

- ``realistic_image``: one 2048x1024 image with smooth logits (19 classes, MSP confidence, errors where the
  MSP is low, an OOD object), scored by `image_statistics`: its non-empty levels (per histogram, and stored:
  the levels where any is non-zero) and its stored bytes (raw arrays of `ImageSetStatistics.encode`, and in a
  statistics file of `eomt_ood.store`'s format, gzip + shuffle), next to the dense int64 histograms it
  replaces; ``three_tables_hdf5_bytes``: the same image as three separate sparse tables (the alternative
  format), for the record.
- ``bravo_set``: a synthetic statistics set of BRAVO's size (3,893 images over the nine subsets, in BRAVO's
  proportions, 2 MP each) drawn per level from per-image logit-normal confidence models tuned to the realistic
  image's distinct-level counts; its non-empty levels and bytes per image (written as a statistics file, the
  format `evaluate` stores and `compare` / `regress` read).
- ``bootstrap_b1000``: seconds for B = 1000 with the default level bins (``target_s``: 30), each run in a fresh
  child process: ``in_memory`` (every subset decoded from the file before the timing, ``load_s``: the
  replicates alone; default BLAS threads, and ``..._blas_1_thread``), ``from_file``
  (`ScoreStatistics.from_store` + `run_replicates` one subset after another, each read from the file, the
  point values checked against the official ones, all inside the timing) and ``from_file_workers`` (the same
  with the subsets side by side in a pool of min(CPUs, 8) worker processes, each reading its own subset: how
  `evaluate`, `score`, `compare` and `regress` run it), with each child's peak RSS (and the largest worker's,
  ``worker_peak_rss_mb``).
  The machine's load average is printed too: the cores are shared.
- ``bounds_moved``: on a smaller set of the same generator (``--fraction`` of each subset, distinct images),
  for each ``--bins`` value, the largest |coarse bound - lossless bound| over every key and both bounds
  (B = 1000, same draws), with the bias shift (the default) and without (``target``: 1e-3); mIoU, ECE and
  FPR95 must not move at all.

Run: ``uv run --frozen python benchmarks/bench_bootstrap.py [--fraction 0.125] [--bins 256 1024 4096]``; about
15-20 minutes on 2 busy cores, most of it generating the set and the lossless reference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace

import h5py
import machine
import numpy as np
from scipy import special

from eomt_ood.bravo import intervals as iv
from eomt_ood.bravo.layout import OOD_SUBSETS, SEMANTIC_SUBSETS
from eomt_ood.io import default_workers
from eomt_ood.metrics import bootstrap as bs
from eomt_ood.metrics.image_stats import COLUMNS, ImageSetStatistics, sparse_levels
from eomt_ood.store import ImageRecord, StoreWriter

HEIGHT, WIDTH = 1024, 2048
LEVELS = 65536
# Images per subset: BRAVO's counts (ACDC and SMIYC inferred from the 3,901-image submission tree).
BRAVO_IMAGES = {
    "ACDCfog": 500,
    "ACDCrain": 500,
    "ACDCnight": 500,
    "ACDCsnow": 500,
    "synrain": 500,
    "SMIYC": 100,
    "synobjs": 656,
    "synflare": 308,
    "outofcontext": 329,
}
# Invalid-pixel fraction per image: Beta(a, b) (OOD objects / anomalies; raindrops, flares elsewhere).
INVALID = {"SMIYC": (2.0, 12.0), "synobjs": (2.0, 40.0), "outofcontext": (3.0, 12.0)}
DEFAULT_INVALID = (1.0, 150.0)


# ------------------------------------------------------------------------------------------------ data


def realistic_image(seed: int = 0):
    """(label, mask, pred, conf) of one 2 MP image with smooth 19-class logits and MSP confidence."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(seed)
    low = rng.normal(size=(19, HEIGHT // 64, WIDTH // 64)) * 12.0
    logits = np.stack([zoom(channel, 64, order=1) for channel in low])
    logits += rng.normal(size=logits.shape) * 0.3
    prob = special.softmax(logits, axis=0)
    pred = prob.argmax(axis=0).astype(np.uint8)
    msp = prob.max(axis=0)
    conf = np.minimum(np.floor(msp * LEVELS), LEVELS - 1).astype(np.uint16)
    label = pred.copy()
    wrong = rng.random(label.shape) < (1.0 - msp) * 0.8  # errors where the model doubts
    label[wrong] = rng.integers(0, 19, int(wrong.sum()))
    label[-80:] = 255  # ego vehicle
    mask = np.zeros(label.shape, np.uint8)
    mask[300:500, 800:1100] = 255  # an OOD object
    return label, mask, pred, conf


_LOGIT_EDGES = special.logit(np.arange(1, LEVELS) / LEVELS)  # level k covers conf [k/L, (k+1)/L)


def _level_probs(mean: np.ndarray, sd: float) -> np.ndarray:
    """(len(mean), 65536) probabilities per level of a logit-normal(mean, sd) confidence."""
    cdf = special.ndtr((_LOGIT_EDGES[None, :] - mean[:, None]) / sd)
    zeros, ones = np.zeros((mean.size, 1)), np.ones((mean.size, 1))
    return np.diff(np.concatenate([zeros, cdf, ones], axis=1), axis=1)


def synthetic_subset(rng: np.random.Generator, subset: str, n: int) -> ImageSetStatistics:
    """n images of one subset: per-image difficulty, error rate and invalid fraction; Poisson level counts."""
    cms, rows = [], []
    for image in _synthetic_images(rng, subset, n):
        cms.append(image.cm)
        levels, counts = sparse_levels(np.stack([image.correct, image.wrong, image.ood_pos], axis=1))
        rows.append((levels, counts.astype(np.int32)))
    return ImageSetStatistics.from_rows(cms, rows)


def _synthetic_images(rng: np.random.Generator, subset: str, n: int) -> Iterator[SimpleNamespace]:
    """Yields the images one by one (dense rows of 16 images at a time in memory)."""
    a, b = INVALID.get(subset, DEFAULT_INVALID)
    ood_mean = (
        1.5 if subset in OOD_SUBSETS else 4.0
    )  # OOD objects get low confidence; other invalid pixels not
    off_diagonal = ~np.eye(19, dtype=bool)
    for start in range(0, n, 16):
        m = min(16, n - start)
        pixels = HEIGHT * WIDTH * (1.0 - rng.uniform(0.03, 0.10, m))  # non-void
        invalid = pixels * rng.beta(a, b, m)
        error = rng.beta(2.0, 16.0, m)
        shift = rng.normal(0.0, 0.7, m)  # image difficulty: all confidences move together
        valid = pixels - invalid
        correct = rng.poisson((valid * (1 - error))[:, None] * _level_probs(5.0 + shift, 2.0))
        wrong = rng.poisson((valid * error)[:, None] * _level_probs(1.0 + shift, 1.5))
        ood_pos = rng.poisson(invalid[:, None] * _level_probs(ood_mean + shift, 1.5))
        for i in range(m):
            cm = np.zeros((19, 19), np.int64)
            cm[np.diag_indices(19)] = rng.multinomial(int(correct[i].sum()), rng.dirichlet(np.ones(19)))
            cm[off_diagonal] = rng.multinomial(int(wrong[i].sum()), np.full(19 * 18, 1.0 / (19 * 18)))
            yield SimpleNamespace(cm=cm, correct=correct[i], wrong=wrong[i], ood_pos=ood_pos[i])


def synthetic_set(sizes: Mapping[str, int], seed: int) -> dict[str, ImageSetStatistics]:
    rng = np.random.default_rng(seed)
    return {subset: synthetic_subset(rng, subset, n) for subset, n in sizes.items()}


def _nnz_per_image(stats: Mapping[str, ImageSetStatistics]) -> dict[str, float]:
    total = sum(s.n_images for s in stats.values())
    out = {
        name: round(sum(int(np.count_nonzero(s.counts[:, j])) for s in stats.values()) / total, 1)
        for j, name in enumerate(COLUMNS)
    }
    out["stored"] = round(sum(s.levels.size for s in stats.values()) / total, 1)
    return out


# ------------------------------------------------------------------------------------------------ storage


def write_statistics(path: Path, stats: Mapping[str, ImageSetStatistics]) -> None:
    """A statistics file (`eomt_ood.store` format, score "msp", no previews) of every image of `stats`."""
    with StoreWriter(path, model="synthetic", confidences=["msp"], kind="statistics") as store:
        for subset, s in stats.items():
            for i in range(s.n_images):
                record = ImageRecord(f"bravo_{subset}/{i:05d}.png", subset, 0, 0, previews={}, cm=s.cm[i])
                record.pixels = (0, 0, 0)
                record.sparse["msp"] = s.row(i)
                store.add(record)


def three_tables_bytes(image, tmp: Path) -> int:
    """HDF5 bytes (gzip + shuffle) of one image stored as three separate sparse tables (the alternative)."""
    path = tmp / "three.h5"
    with h5py.File(path, "w") as f:
        for name in COLUMNS:
            hist = getattr(image, name)
            levels = np.flatnonzero(hist)
            for part, array in (
                ("levels", levels.astype(np.uint16)),
                ("counts", hist[levels].astype(np.uint32)),
            ):
                f.create_dataset(
                    f"{name}_{part}", data=array, compression="gzip", compression_opts=4, shuffle=True
                )
    return path.stat().st_size


def storage(stats: Mapping[str, ImageSetStatistics], tmp: Path) -> dict[str, float]:
    n = sum(s.n_images for s in stats.values())
    path = tmp / "storage.h5"
    write_statistics(path, stats)
    return {
        "images": n,
        "raw_bytes_per_image": round(sum(s.nbytes for s in stats.values()) / n),
        "hdf5_gzip_shuffle_bytes_per_image": round(path.stat().st_size / n),
        "dense_int64_bytes_per_image": 3 * LEVELS * 8 + 19 * 19 * 8,
    }


# ------------------------------------------------------------------------------------------------ runs


def child(path: str, mode: str) -> None:
    """Child process: time B = 1000, print {seconds, load_s, peak_rss_mb} as JSON."""
    block = json.loads(Path(path).with_suffix(".json").read_text())
    settings = iv.Settings(1000)
    t0 = time.perf_counter()
    stats = iv.ScoreStatistics.from_store(path, "msp")
    if mode == "in_memory":
        loaded = {subset: stats.subset(subset) for subset in stats.keys}
        stats = iv.ScoreStatistics(stats.source, stats.keys, loaded.__getitem__, "msp")
    load = time.perf_counter() - t0
    workers = default_workers(8) if mode == "from_file_workers" else 0
    with iv.interval_pool(workers) as pool:  # forked here, before the timing (as a command's pool is)
        t0 = time.perf_counter()
        reps = iv.run_replicates(stats, block, settings, map_fn=pool.map)
        iv.interval_table(reps, settings.level)
        seconds = time.perf_counter() - t0
    out = {
        "seconds": round(seconds, 2),
        "load_s": round(load, 2),
        "peak_rss_mb": round(machine.own_peak_rss_mb()),
    }
    if workers:
        # Each worker's peak (forked from this process while it was small, so ru_maxrss is the worker's own).
        out.update(
            workers=workers,
            worker_peak_rss_mb=round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        )
    print(json.dumps(out))


def run_child(path: Path, mode: str, threads: str | None = None) -> dict[str, float]:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = threads
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(path), mode],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bounds_moved(stats: Mapping[str, ImageSetStatistics], bins: list[int]) -> dict[str, object]:
    """Largest move of any interval bound, coarse (with and without the shift) vs lossless, same draws."""
    draws = bs.draw_subsets({k: s.n_images for k, s in stats.items()}, 1000, bs.DEFAULT_SEED)
    t0 = time.perf_counter()
    full = bs.bootstrap(stats, SEMANTIC_SUBSETS, OOD_SUBSETS, draws=draws, max_bins=None)
    lossless_s = time.perf_counter() - t0
    reference = bs.percentile_intervals(full)
    out: dict[str, object] = {
        "images": sum(s.n_images for s in stats.values()),
        "lossless_bins_median": int(np.median(list(full.bins.values()))),
        "lossless_s": round(lossless_s, 1),
        "target": 1e-3,
    }
    for max_bins in bins:
        row: dict[str, object] = {}
        for label, shift in (("shifted", True), ("unshifted", False)):
            t0 = time.perf_counter()
            coarse = bs.bootstrap(
                stats, SEMANTIC_SUBSETS, OOD_SUBSETS, draws=draws, max_bins=max_bins, shift=shift
            )
            seconds = time.perf_counter() - t0
            moved = {
                key: max(abs(iv.low - reference[key].low), abs(iv.high - reference[key].high))
                for key, iv in bs.percentile_intervals(coarse).items()
            }
            worst = max(moved, key=moved.get)
            exact = [k for k in moved if any(p in k for p in ("_miou_", "_ece_", "_fpr95_"))]
            row[label] = {
                "max_abs": float(f"{moved[worst]:.3g}"),
                "worst_key": worst,
                "median_abs": float(f"{np.median(list(moved.values())):.3g}"),
                "max_abs_miou_ece_fpr95": float(f"{max(moved[k] for k in exact):.3g}"),
                "seconds": round(seconds, 1),
            }
        row["bins_median"] = int(np.median(list(coarse.bins.values())))
        out[f"max_bins_{max_bins}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.125, help="subset share for the bounds check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bins", type=int, nargs="+", default=[256, bs.DEFAULT_MAX_BINS, 4096])
    parser.add_argument("--child", nargs=2, metavar=("H5", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from eomt_ood.bravo.scoring import image_statistics

    report: dict[str, object] = {
        "numpy": np.__version__,
        **machine.describe(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "max_bins": bs.DEFAULT_MAX_BINS,
        "load_average_at_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-bootstrap-") as tmp:
        tmp_path = Path(tmp)
        image = image_statistics(*realistic_image())
        one = {"synobjs": ImageSetStatistics.from_images([image])}
        report["realistic_image"] = {
            "nonempty_levels": _nnz_per_image(one),
            **storage(one, tmp_path),
            "three_tables_hdf5_bytes": three_tables_bytes(image, tmp_path),
        }

        t0 = time.perf_counter()
        full = synthetic_set(BRAVO_IMAGES, args.seed)
        generate_s = time.perf_counter() - t0
        report["bravo_set"] = {
            "nonempty_levels_per_image": _nnz_per_image(full),
            "generate_s": round(generate_s, 1),
            **storage(full, tmp_path),
        }
        path = tmp_path / "bravo.h5"
        write_statistics(path, full)
        # The official values the statistics must reproduce (what a results file would hold).
        point = bs.bootstrap(full, SEMANTIC_SUBSETS, OOD_SUBSETS, replicates=1).point
        path.with_suffix(".json").write_text(json.dumps(point))
        del full
        report["bootstrap_b1000"] = {
            "target_s": 30,
            "in_memory": run_child(path, "in_memory"),
            "in_memory_blas_1_thread": run_child(path, "in_memory", threads="1"),
            "from_file": run_child(path, "from_file"),
            "from_file_workers": run_child(path, "from_file_workers"),
        }
    small = {k: max(12, round(n * args.fraction)) for k, n in BRAVO_IMAGES.items()}
    report["bounds_moved"] = bounds_moved(synthetic_set(small, args.seed + 1), args.bins)
    report["load_average_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
