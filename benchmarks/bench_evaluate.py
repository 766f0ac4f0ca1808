"""Benchmark of `eomt-ood evaluate`: the whole command per image against the model's forward passes alone.

Prints one JSON object. For an EoMT-B-sized model with random weights (ViT-B: D 768, 12 blocks, 100 queries,
19 classes; input size S, default 512 on this CPU, 1024 on a GPU) and a BRAVO-layout set of N images of
S x 2S (two windows each, like Cityscapes-size images at S = 1024), in one process:

- ``forward_only_s_per_image``: the model's forward over the same windows, nothing else (the floor);
- ``evaluate_s_per_image``: `evaluate_bravo` end to end (reading, windowing, scores, PNG writing, scoring,
  histograms, HDF5 store, report) divided by N;
- ``overhead``: evaluate / forward - 1, everything included (target: at most 0.15);
- ``overhead_per_image``: the same without the run's fixed start-up (loading the model, starting the image
  reader process: ``startup_s``), which a run of thousands of images pays once.

Run: ``uv run --frozen python benchmarks/bench_evaluate.py [--images 9] [--img-size 512] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=9, help="images in the set (9 = one per subset)")
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--micro-batch", type=int, default=2)
    args = parser.parse_args()
    per_subset = max(1, args.images // 9)
    side = args.img_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_demo(tmp / "data", seed=0, per_subset=per_subset, size=(side, 2 * side))
        count = sum(1 for _ in (tmp / "data" / "images").rglob("*.*"))
        torch.manual_seed(0)
        model = create_model("eomt_base_patch16_1024", img_size=side, masked_attn_enabled=False)
        checkpoint = save_checkpoint(model, tmp / "eomt_base.safetensors")
        prepare_model(model, args.device)
        forward_s = forward_only(model, count, side, args.device, args.micro_batch)
        config = EvaluateConfig(
            out=tmp / "run",
            images_root=tmp / "data" / "images",
            gt=tmp / "data" / "gt",
            checkpoint=checkpoint,
            confidences=("msp",),
            device=args.device,
            micro_batch=args.micro_batch,
            workers=1,
        )
        start = time.perf_counter()
        try:
            results = evaluate_bravo(config, progress=False)
        except Exception as exc:  # random weights can leave a subset degenerate; the timing still stands
            print(f"note: {exc}", file=sys.stderr)
            results = json.loads((tmp / "run" / "results.json").read_text())
        evaluate_s = time.perf_counter() - start
    inference = results["meta"]["inference"]
    print(
        json.dumps(
            {
                "model": "eomt_base_patch16 (random weights)",
                "img_size": side,
                "image": f"{side}x{2 * side}",
                "images": count,
                "device": args.device,
                "threads": torch.get_num_threads(),
                "forward_only_s_per_image": round(forward_s / count, 4),
                "evaluate_s_per_image": round(evaluate_s / count, 4),
                "evaluate_inference_phase_s_per_image": round(inference["inference_seconds"] / count, 4),
                "startup_s": round(inference.get("startup_seconds", 0.0), 3),
                "overhead": round(evaluate_s / forward_s - 1, 4),
                "overhead_per_image": round(
                    (evaluate_s - inference.get("startup_seconds", 0.0)) / forward_s - 1, 4
                ),
                "target_overhead": 0.15,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
