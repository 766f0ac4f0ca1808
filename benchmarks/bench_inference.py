"""Inference speed and memory of windowed EoMT: ours vs the transformers port vs a plain timm ViT. Prints JSON.

ViT-S (EoMT-S, Q = 100, C = 19) with random weights at S x S (default 512), on an S x 2S image (two windows,
no resize), fp32, masked attention off. Timed per image (median of --repeats after one warm-up):
  ours_pipeline   predict_maps: windows, forward, upsample + score, stitch, resize, argmax, msp confidence
  ours_forward    our EoMT forward of the two windows only
  hf_forward      transformers EomtForUniversalSegmentation forward of the same windows, same weights
  hf_pipeline     EomtImageProcessor (split) + forward + post_process_semantic_segmentation
  timm_forward    the same timm ViT backbone's forward_features (no queries, no heads)
With --baselines, the Mask2Former baselines of the same size class as this EoMT-S (ViT-Adapter-S, Swin-T) go
through the same `predict_maps` pipeline on the same image: <name>_pipeline and its ratio to ours_pipeline.
(The paper reports EoMT about 4x faster than ViT-Adapter + Mask2Former with ViT-L on a GPU; for the large
models' forward passes side by side use `bench_baselines.py --size large --device cuda`.)
Peak memory (after one warm-up call): on CUDA `max_memory_allocated`; on CPU each measurement runs in a fresh
subprocess that resets the kernel's peak-RSS mark (/proc/self/clear_refs) and reports VmHWM (the whole
process: libraries and weights included) and its rise over the RSS just before the measured call. The size
check runs the pipeline on 1024x2048 and 1024x4096 images with the same micro-batch (so forward memory is equal and only
size-dependent memory differs). Never asserts on time.

    uv run --frozen python benchmarks/bench_inference.py [--device cuda] [--img-size 512] [--repeats 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine
import numpy as np
import torch

CASES = ("ours_pipeline", "ours_forward", "hf_forward", "hf_pipeline", "timm_forward")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_models(img_size: int, device: str, which: str = "both"):
    """(ours, hf, same_weights): EoMT-S with random weights in both implementations, weights shared if possible.

    which: "both", "ours" or "hf"; the model not asked for is None (memory children build only what they run).
    """
    from safetensors.torch import save_file
    from transformers import EomtConfig, EomtForUniversalSegmentation

    from eomt_ood.inference.predict import prepare_model
    from eomt_ood.models.registry import create_model

    torch.manual_seed(0)
    config = EomtConfig(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        image_size=img_size,
        patch_size=16,
        num_blocks=3,
        num_queries=100,
        num_register_tokens=4,
        num_labels=19,
    )
    if which == "ours":
        return (
            prepare_model(create_model("eomt_small_patch16_1024", img_size=img_size), device, compile=False),
            None,
            False,
        )
    hf = EomtForUniversalSegmentation(config).eval()
    hf.attn_mask_probs.zero_()  # annealed: the port then runs without masks, like ours at inference
    if which == "hf":
        return None, hf.to(device), False
    same_weights = True
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hf.safetensors"
        save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(path))
        try:
            ours = create_model("eomt_small_patch16_1024", checkpoint=path, img_size=img_size)
        except Exception:  # the HF loader is optional for timing; report that the weights differ
            ours, same_weights = create_model("eomt_small_patch16_1024", img_size=img_size), False
    return prepare_model(ours, device, compile=False), hf.to(device), same_weights


def make_runner(case: str, ours, hf, image: np.ndarray, device: str, micro_batch: int):
    """A no-argument callable that processes `image` once the way `case` says."""
    from eomt_ood.inference.predict import predict_maps
    from eomt_ood.inference.windows import crop_window, window_starts

    side = ours.img_size if ours is not None else hf.config.image_size
    if case == "ours_pipeline":
        return lambda: predict_maps(ours, image, ("msp",), micro_batch=micro_batch, device=device)
    if case == "hf_pipeline":
        from transformers import EomtImageProcessor

        processor = EomtImageProcessor(
            size={"shortest_edge": side, "longest_edge": None}, do_split_image=True
        )

        def hf_pipeline():
            inputs = processor(images=[image], return_tensors="pt")
            with torch.inference_mode():
                out = hf(pixel_values=inputs["pixel_values"].to(device))
            out.patch_offsets = inputs["patch_offsets"]
            return processor.post_process_semantic_segmentation(out, target_sizes=[image.shape[:2]])

        return hf_pipeline
    tensor = torch.tensor(image).permute(2, 0, 1)
    starts = window_starts(max(tensor.shape[-2:]), side)
    windows = torch.stack([crop_window(tensor, s, side) for s in starts]).to(device).float() / 255
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    normalised = (windows - mean) / std

    def forward():
        with torch.inference_mode():
            if case == "ours_forward":
                return ours(windows)
            if case == "hf_forward":
                return hf(pixel_values=normalised)
            if case == "timm_forward":
                return ours.backbone.forward_features(normalised)
            raise ValueError(case)

    return forward


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_case(run, device: str, repeats: int) -> float:
    run()  # warm-up: allocator pools, kernels, lazy imports
    times = []
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        run()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def measure_memory_here(cases: list[str], height: int, width: int, args) -> dict:
    """{case: peak memory of one call} on a height x width image, in this process, each after a warm-up call."""
    which = {case.split("_")[0] for case in cases}
    ours, hf, _ = build_models(
        args.img_size, args.device, "hf" if which == {"hf"} else "ours" if "hf" not in which else "both"
    )
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    result = {}
    for case in cases:
        run = make_runner(case, ours, hf, image, args.device, args.micro_batch)
        run()  # warm-up: lazy initialisation and first-call allocations are not what we measure
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated() / 2**20
            run()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
        elif reset_peak_rss():
            before = rss_mib()
            run()
            peak = machine.own_peak_rss_mb()
        else:
            result[case] = None  # no way to reset the peak-RSS mark here
            continue
        result[case] = {"peak_mib": round(peak, 1), "rise_mib": round(peak - before, 1)}
        del run
    return result


def measure_memory(case: str, height: int, width: int, args) -> dict | None:
    if args.device.startswith("cuda"):
        return measure_memory_here([case], height, width, args)[case]
    # CPU: a fresh process per measurement; freed memory stays in the allocator, so a shared process would
    # under-report every case after the first.
    command = [sys.executable, __file__, "--child", case, "--height", str(height)]
    command += [
        "--width",
        str(width),
        "--img-size",
        str(args.img_size),
        "--micro-batch",
        str(args.micro_batch),
    ]
    command += ["--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])[case]


BASELINES = ("m2f_vit_adapter_small", "m2f_swin_tiny")  # the size class of EoMT-S


def time_baselines(image: np.ndarray, args, ours_seconds: float) -> dict:
    """Seconds per image of each baseline through the same windowed pipeline, and the ratio to ours."""
    from eomt_ood.inference.predict import predict_maps, prepare_model
    from eomt_ood.models import create_model

    out = {}
    for name in BASELINES:
        torch.manual_seed(0)
        model = prepare_model(create_model(name, img_size=args.img_size), args.device, compile=False)
        seconds = time_case(
            lambda model=model: predict_maps(
                model, image, ("msp",), micro_batch=args.micro_batch, device=args.device
            ),
            args.device,
            args.repeats,
        )
        out[f"{name}_pipeline"] = {
            "seconds_per_image": round(seconds, 4),
            "ratio_over_ours_pipeline": round(seconds / ours_seconds, 3),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        }
        del model
        gc.collect()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--baselines",
        nargs="?",
        const="small",
        choices=("small", "large"),
        help="also time the M2F baselines",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # comma-separated cases, run in a subprocess
    parser.add_argument("--height", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure_memory_here(args.child.split(","), args.height, args.width, args)))
        return

    side = args.img_size
    ours, hf, same_weights = build_models(side, args.device)
    image = np.random.default_rng(0).integers(0, 256, (side, 2 * side, 3), dtype=np.uint8)
    seconds = {
        case: time_case(
            make_runner(case, ours, hf, image, args.device, args.micro_batch), args.device, args.repeats
        )
        for case in CASES
    }
    result = {
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "model": "eomt_small_patch16 (ViT-S, Q=100, C=19), random weights",
        "img_size": side,
        "image": [side, 2 * side],
        "windows": 2,
        "micro_batch": args.micro_batch,
        "precision": "fp32",
        "same_weights_ours_hf": same_weights,
        "seconds_per_image": {case: round(value, 4) for case, value in seconds.items()},
        "ratio_ours_forward_over_timm": round(seconds["ours_forward"] / seconds["timm_forward"], 3),
        "ratio_ours_pipeline_over_timm": round(seconds["ours_pipeline"] / seconds["timm_forward"], 3),
        "ratio_hf_forward_over_ours_forward": round(seconds["hf_forward"] / seconds["ours_forward"], 3),
        "ratio_hf_pipeline_over_ours_pipeline": round(seconds["hf_pipeline"] / seconds["ours_pipeline"], 3),
    }
    if args.baselines:
        result["baselines"] = time_baselines(image, args, seconds["ours_pipeline"])
    if not args.skip_memory:
        unit = "cuda max_memory_allocated" if args.device.startswith("cuda") else "process peak RSS (VmHWM)"
        result["memory_unit"] = f"MiB, {unit}; rise = peak minus the level just before the call"
        result["memory_two_windows"] = {case: measure_memory(case, side, 2 * side, args) for case in CASES}
        small = measure_memory("ours_pipeline", 1024, 2048, args)
        large = measure_memory("ours_pipeline", 1024, 4096, args)
        result["memory_pipeline_by_image_size"] = {"1024x2048": small, "1024x4096": large}
        if small and large:
            result["memory_pipeline_by_image_size"] |= {
                "peak_ratio_4096_over_2048": round(large["peak_mib"] / small["peak_mib"], 3),
                "rise_ratio_4096_over_2048": round(large["rise_mib"] / max(small["rise_mib"], 1e-9), 3),
            }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
