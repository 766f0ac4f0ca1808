"""ALGM token merging on the bundled demo: OOD and segmentation metrics and speed, with and without. Prints JSON.

The demo model (`eomt_ood/assets/demo/eomt_demo.safetensors`) predicts the demo BRAVO set twice through the
library's own path, `predict_folder` (what `eomt-ood predict` runs) then `score_submission` (what `eomt-ood
score` runs; `evaluate` scores the same way): once plain, once with ALGM enabled on the loaded model. For each
run it reports the official metrics (AUPRC_OOD per OOD subset, mIoU per semantic subset, the harmonic means),
images/s of the whole predict step (forward, stitching, PNG writing) and of the forward passes alone, and the
patch tokens left after ALGM's local and global merges (mean over forwards; the full grid is G*G).

The model was trained without merging; the ALGM paper fine-tunes with it, so these are zero-shot numbers. Never
asserts: the numbers go side by side.

    OMP_NUM_THREADS=1 uv run --frozen python benchmarks/bench_algm.py [--device cpu] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from eomt_ood.bravo.demo import DEMO_CHECKPOINT, ensure_demo_data
from eomt_ood.bravo.scoring import score_submission
from eomt_ood.bravo.submission import predict_folder
from eomt_ood.data.images import find_images, read_image
from eomt_ood.data.resample import resize_image
from eomt_ood.inference.predict import prepare_model
from eomt_ood.inference.windows import crop_window, window_starts
from eomt_ood.models.algm import (
    ALGMSettings,
    disable_token_merging,
    enable_token_merging,
    token_merging_settings,
)
from eomt_ood.models.registry import load_model

METRIC_SUFFIXES = ("_auprc_ood", "_auroc_ood", "_fpr95_ood", "_miou_valid")
SUMMARY_KEYS = ("semantic_hmean", "ood_hmean", "bravo_index")


def window_batches(images_dir: Path, side: int) -> list[torch.Tensor]:
    """Every demo image's windows as one float batch (n, 3, S, S) in [0, 1], as `predict_canvas` forwards them."""
    batches = []
    for rel in find_images(images_dir):
        resized = torch.tensor(resize_image(read_image(images_dir / rel), side)).permute(2, 0, 1)
        starts = window_starts(max(resized.shape[-2:]), side)
        batches.append(torch.stack([crop_window(resized, s, side) for s in starts]).float().div_(255))
    return batches


def forward_only(
    model, batches: list[torch.Tensor], device: str
) -> tuple[float, list[list[tuple[int, int]]]]:
    """Seconds for one forward per image (windows batched), and each forward's merge counts."""
    counts = []
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(batch.to(device))
            counts.append(list(getattr(model, "last_merge_counts", [])) if model.token_merging else [])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, counts


def run(model, data: Path, out: Path, device: str, batches: list[torch.Tensor]) -> dict:
    """Metrics, predict images/s and merge counts of the model as it is configured now."""
    start = time.perf_counter()
    report = predict_folder(model, data / "images", out, "msp", device=device, progress=False, compile=False)
    pipeline_s = time.perf_counter() - start
    if report.failed:
        raise RuntimeError(f"demo images failed to read: {report.failed[:3]}")
    _, counts = forward_only(model, batches, device)
    results = score_submission(data / "gt", out, workers=0)
    row = {
        "metrics": {
            k: round(float(v), 4)
            for k, v in results.items()
            if isinstance(v, int | float) and (k.endswith(METRIC_SUFFIXES) or k in SUMMARY_KEYS)
        },
        "images_per_s_predict": round(len(batches) / pipeline_s, 3),
    }
    if model.token_merging is not None:
        per_block: dict[int, list[int]] = {}
        for forward in counts:
            for block, tokens in forward:
                per_block.setdefault(block, []).append(tokens)
        row["patch_tokens"] = {
            "full_grid": int(model.grid_size) ** 2,
            **{f"after_block_{b}": round(statistics.mean(t), 2) for b, t in sorted(per_block.items())},
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="forward-only timing repeats (median)")
    parser.add_argument("--local-threshold", type=float, default=ALGMSettings.local_threshold)
    args = parser.parse_args()

    data = ensure_demo_data()
    model = prepare_model(load_model(DEMO_CHECKPOINT), args.device, compile=False)
    batches = window_batches(data / "images", int(model.img_size))
    output: dict = {
        "model": str(DEMO_CHECKPOINT.name),
        "images": len(batches),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "note": "zero-shot ALGM (the demo model was trained without merging)",
    }
    variants = {
        "algm": ALGMSettings(local_threshold=args.local_threshold),
        "algm_proportional_attention": ALGMSettings(
            local_threshold=args.local_threshold, proportional_attention=True
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        output["off"] = run(model, data, Path(tmp) / "off", args.device, batches)
        off = output["off"]["metrics"]
        for name, settings in variants.items():
            enable_token_merging(model, settings)
            row = run(model, data, Path(tmp) / name, args.device, batches)
            row["token_merging"] = token_merging_settings(model)
            row["delta_vs_off"] = {k: round(v - off[k], 4) for k, v in row["metrics"].items() if k in off}
            output[name] = row
            disable_token_merging(model)
    # Forward timing interleaved (off, variants, off, ...) so a busy machine slows every variant alike.
    seconds: dict[str, list[float]] = {name: [] for name in ["off", *variants]}
    for _ in range(args.repeats):
        for name in seconds:
            if name == "off":
                disable_token_merging(model)
            else:
                enable_token_merging(model, variants[name])
            seconds[name].append(forward_only(model, batches, args.device)[0])
    for name, values in seconds.items():
        output[name]["images_per_s_forward"] = round(len(batches) / statistics.median(values), 3)
        output[name]["forward_speedup_vs_off"] = round(
            statistics.median(seconds["off"]) / statistics.median(values), 3
        )
    print(json.dumps(output, indent=2))


if __name__ == "__main__":
    main()
