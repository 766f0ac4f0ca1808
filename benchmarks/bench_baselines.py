"""Forward time per image of the Mask2Former baselines vs EoMT at the same input size; prints JSON.

Random weights, eval mode, masked attention off (as in inference), one S x S window per image; the time is
the model forward only (no windowing or scoring), median over repeats after warm-up.

    python benchmarks/bench_baselines.py                         # CPU: ViT-S / Swin-T sizes at 512
    python benchmarks/bench_baselines.py --device cuda --size large --img-size 1024 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch

MODELS = {
    "small": ["eomt_small_patch16_1024", "m2f_vit_adapter_small", "m2f_swin_tiny"],
    "large": ["eomt_large_patch16_1024", "m2f_vit_adapter_large", "m2f_swin_large"],
    "test": ["eomt_test", "m2f_vit_adapter_test", "m2f_swin_test"],
}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(
    name: str, img_size: int, batch: int, device: torch.device, dtype, warmup: int, repeats: int
) -> dict:
    from eomt_ood.models import create_model

    overrides = {"img_size": img_size}
    if name.startswith("eomt"):
        overrides["masked_attn_enabled"] = False
    model = create_model(name, **overrides).eval().to(device)
    images = torch.rand(batch, 3, img_size, img_size, device=device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            model(images)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    result = {
        "model": name,
        "img_size": img_size,
        "batch": batch,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "ms_per_image": round(1000 * statistics.median(times) / batch, 2),
        "ms_per_image_min": round(1000 * min(times) / batch, 2),
    }
    if device.type == "cuda":
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=sorted(MODELS), default="small")
    parser.add_argument("--models", nargs="*", help="registered names (default: the --size set)")
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    results = [
        bench(name, args.img_size, args.batch, device, PRECISIONS[args.precision], args.warmup, args.repeats)
        for name in (args.models or MODELS[args.size])
    ]
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": args.precision,
    }
    print(json.dumps({"env": env, "results": results}, indent=2))


if __name__ == "__main__":
    main()
