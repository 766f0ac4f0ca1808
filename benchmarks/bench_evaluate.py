"""Benchmark of `eomt-ood evaluate` against the model's forward passes alone (the floor), in one run. Prints JSON.

For a model with random weights (default `eomt_test` at input side S = 1024: a near-free forward, so that what
is measured is the pipeline around it) on a generated BRAVO-layout set of 1024 x 2048 images (two windows each,
Cityscapes size), per image:

- ``forward_s``: the model's forward over the image's windows, nothing else;
- ``evaluate_s``: `evaluate_bravo` end to end (reading, windows, merge, upsampling, scores, argmax,
  quantisation, statistics, PNGs, records, store, results, report) without its one-time start-up;
- ``beyond_forward_s``: the difference (target: 0.3 s with one score, 0.5 s with four, on 2 CPU cores);
- ``startup_s``: from the call to the first image being predicted (model load, worker start);
- ``store_bytes``: predictions.h5 bytes per image, beyond what the file holds once per run (the pooled histograms
  of every subset and score, which a 9-image run would otherwise spread over 9 images); ``store_run_bytes``: that
  once-per-run part; ``bravo_run_gb``: the file of a whole BRAVO run of 3,900 such images (target: under 5 GB).

With ``--commands``, the same is measured as whole `eomt-ood evaluate` processes on N and 2N images: their
difference divided by N is the per-image cost with start-up cancelled; start-up is what remains of the N run.

Run: ``uv run python benchmarks/bench_evaluate.py [--images 9] [--scores msp] [--commands] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from eomt_ood.bravo.pipeline import EvaluateConfig, evaluate_bravo
from eomt_ood.data.demo import write_demo
from eomt_ood.inference.predict import prepare_model
from eomt_ood.inference.windows import window_starts
from eomt_ood.models import create_model, save_checkpoint

FOUR_SCORES = "msp,max_score,rba,energy"


def forward_only(model: torch.nn.Module, count: int, side: int, device: str, micro_batch: int) -> float:
    """Seconds for the forward passes of `count` images of side x 2 side (two windows each)."""
    windows = len(window_starts(2 * side, side)) * count
    batch = torch.rand(min(micro_batch, windows), 3, side, side, device=device)
    with torch.inference_mode():
        model(batch[:1])  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for first in range(0, windows, micro_batch):
            model(batch[: min(micro_batch, windows - first)])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return time.perf_counter() - start


def in_process(data: Path, checkpoint: Path, out: Path, scores: str, args: argparse.Namespace) -> dict:
    """One `evaluate_bravo` call: its seconds, its recorded start-up, and the store's size."""
    config = EvaluateConfig(
        out=out,
        images_root=data / "images",
        gt=data / "gt",
        checkpoint=checkpoint,
        confidences=tuple(scores.split(",")),
        device=args.device,
        precision=args.precision,
        micro_batch=args.micro_batch,
        workers=args.workers,
    )
    start = time.perf_counter()
    try:
        results = evaluate_bravo(config, progress=False)
    except Exception as exc:  # random weights can leave a subset degenerate; the timing still stands
        print(f"note: {exc}", file=sys.stderr)
        results = json.loads((out / "results.json").read_text())
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "startup": results["meta"]["inference"].get("startup_seconds", 0.0),
        **store_size(out / "predictions.h5"),
    }


def store_size(path: Path) -> dict:
    """The store's bytes: the whole file, and the part it holds once per run (pooled histograms)."""
    import h5py

    sizes: list[int] = []

    def add(_: str, item: object) -> None:
        if isinstance(item, h5py.Dataset):
            sizes.append(item.id.get_storage_size())

    with h5py.File(path, "r") as store:
        for group in ("histograms", "level_histograms"):
            if group in store:
                store[group].visititems(add)
    per_run = sum(sizes)
    return {"store_bytes": path.stat().st_size, "store_run_bytes": per_run}


def command(data: Path, checkpoint: Path, out: Path, scores: str, args: argparse.Namespace) -> float:
    """Wall seconds of a whole `eomt-ood evaluate` process."""
    argv = [sys.executable, "-m", "eomt_ood.cli", "evaluate", "--root", str(data / "images"), "--gt"]
    argv += [str(data / "gt"), "--checkpoint", str(checkpoint), "--out", str(out), "--confidence", scores]
    argv += ["--device", args.device, "--precision", args.precision, "--workers", str(args.workers)]
    start = time.perf_counter()
    subprocess.run(argv, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=9, help="images in the set (9 = one per subset)")
    parser.add_argument("--model", default="eomt_test", help="registered model, built with random weights")
    parser.add_argument("--img-size", type=int, default=1024)
    parser.add_argument("--scores", default="msp", help=f"comma-separated scores, e.g. {FOUR_SCORES}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--commands", action="store_true", help="also time whole CLI runs on N and 2N images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    side = args.img_size
    per_subset = max(1, args.images // 9)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_demo(tmp / "data", seed=0, per_subset=per_subset, size=(side, 2 * side))
        count = sum(1 for _ in (tmp / "data" / "images").rglob("*.*"))
        torch.manual_seed(0)
        model = create_model(args.model, img_size=side)
        checkpoint = save_checkpoint(model, tmp / "model.safetensors")
        prepare_model(model, args.device)
        forward_s = forward_only(model, count, side, args.device, args.micro_batch) / count
        run = in_process(tmp / "data", checkpoint, tmp / "run", args.scores, args)
        evaluate_s = (run["seconds"] - run["startup"]) / count
        per_image_bytes = (run["store_bytes"] - run["store_run_bytes"]) / count
        report = {
            "model": f"{args.model} (random weights), img_size {side}",
            "image": f"{side}x{2 * side}",
            "images": count,
            "scores": args.scores.split(","),
            "device": args.device,
            "torch_threads": args.threads,
            "workers": args.workers,
            "cpus": os.cpu_count(),
            "in_process": {
                "forward_s": round(forward_s, 4),
                "evaluate_s": round(evaluate_s, 4),
                "beyond_forward_s": round(evaluate_s - forward_s, 4),
                "startup_s": round(run["startup"], 3),
                "store_bytes": round(per_image_bytes),
                "store_run_bytes": run["store_run_bytes"],
                "bravo_run_gb": round((run["store_run_bytes"] + 3900 * per_image_bytes) / 1e9, 2),
            },
            "targets": {
                "beyond_forward_s": 0.3 if len(args.scores.split(",")) == 1 else 0.5,
                "startup_s": 3.0,
                "bravo_run_gb": 5.0,
            },
        }
        if args.commands:
            write_demo(tmp / "double", seed=1, per_subset=2 * per_subset, size=(side, 2 * side))
            single = command(tmp / "data", checkpoint, tmp / "cmd1", args.scores, args)
            double = command(tmp / "double", checkpoint, tmp / "cmd2", args.scores, args)
            per_image = (double - single) / count
            report["commands"] = {
                "seconds_n": round(single, 2),
                "seconds_2n": round(double, 2),
                "per_image_s": round(per_image, 4),
                "beyond_forward_s": round(per_image - forward_s, 4),
                "startup_s": round(single - count * per_image, 2),
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
