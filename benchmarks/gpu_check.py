"""One GPU check of EoMT at full speed. Prints one JSON object (progress on stderr).

Sections, each measured on its own (a failing section becomes {"error": ...} and the rest still run):
  versions       device, GPU(s), torch / CUDA / timm / lightning / transformers versions
  forward        EoMT-S/B/L at 1024 (random weights) on a 1024x2048 image = two 1024 windows in one batch:
                 images/s eager vs compiled, fp32 vs bf16 autocast, peak memory; EoMT-L against the paper's
                 25 FPS (the official model zoo's figure for Cityscapes EoMT-L 1024, H100, torch.compile)
  algm           EoMT-L bf16 eager with ALGM token merging on vs off: images/s and patch tokens left
  precision      bf16 vs fp32: max |logit difference| and per-pixel argmax agreement of the full windowed
                 prediction (target >= 99.9 %), for EoMT-L with random weights and the trained demo model
  evaluate       `evaluate` images/s on generated 1024x2048 images vs forward-only images/s of the same model
  train          50 training steps of EoMT-L at batch 4 with 16-mixed (Lightning + the training module): loss
                 falls, peak memory per GPU
  ddp            with two or more GPUs: 20 DDP steps vs single-device runs with the same global batch
`--device cpu --tiny` runs every section at toy sizes (one toy "large"; tests/test_gpu_check.py); there the
compiled rows use torch.compile's "eager" backend (dynamo's graph capture without inductor's C++ build, which
takes minutes on a CPU; tests/test_runtime.py covers inductor) and the DDP section runs two CPU processes
over gloo. A full run compiles S/B/L twice each; split it with --sections (e.g. "versions,forward", then the
rest) where one call has a time limit.

Needs only torch, timm, lightning, transformers, safetensors, h5py, Pillow, numpy, scipy and numba (the GPU
machine's set; run from the repository root, the package need not be installed). Never asserts on speed.

Precision tolerance (what `meets_tolerance` checks): bf16 / fp16 logits differ from fp32 by at most
`LOGIT_TOLERANCE` (5 %) of the largest fp32 logit magnitude, mask and class logits each, and the windowed
prediction's argmax agrees on at least 99.9 % of pixels (`meets_target`).

    python benchmarks/gpu_check.py --device cuda [--sections forward,algm,...] > gpu_check.json
    python benchmarks/gpu_check.py --device cpu --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, installed or not

PAPER_FPS_EOMT_L_1024 = 25.0
LOGIT_TOLERANCE = 0.05  # of the largest fp32 logit magnitude (docstring)
SECTIONS = ("versions", "forward", "algm", "precision", "evaluate", "train", "ddp")
SIZES = {
    "small": "eomt_small_patch16_1024",
    "base": "eomt_base_patch16_1024",
    "large": "eomt_large_patch16_1024",
}


@dataclass(frozen=True)
class Plan:
    """Sizes of every section: the real check, or toy sizes for `--tiny`."""

    image: tuple[int, int] = (1024, 2048)
    sizes: tuple[str, ...] = tuple(SIZES)
    overrides: dict[str, dict[str, Any]] = field(default_factory=lambda: {name: {} for name in SIZES})
    warmup: int = 3
    repeats: int = 10
    compile_backend: str = "inductor"
    evaluate_images: int = 16
    evaluate_workers: int = 2
    train_steps: int = 50
    train_batch: int = 4
    train_points: int = 12544
    ddp_steps: int = 20
    ddp_batch_per_rank: int = 2


TOY = dict(img_size=64, depth=4, num_heads=2, num_blocks=2, num_queries=8)
TINY = Plan(
    image=(64, 128),
    sizes=("large",),
    overrides={"large": dict(TOY, embed_dim=64, depth=6)},
    warmup=1,
    repeats=2,
    compile_backend="eager",
    evaluate_images=2,
    evaluate_workers=0,
    train_steps=6,
    train_batch=2,
    train_points=256,
    ddp_steps=3,
    ddp_batch_per_rank=1,
)


def log(message: str) -> None:
    print(f"[gpu_check] {message}", file=sys.stderr, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    """Peak allocated CUDA memory since the last reset, MiB; None on CPU (not measured there)."""
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def build(size: str, plan: Plan, device: torch.device, seed: int = 0, **extra) -> torch.nn.Module:
    """EoMT of `size` with random weights in inference mode (eager) on `device`."""
    from eomt_ood.inference.predict import prepare_model
    from eomt_ood.models.registry import create_model

    torch.manual_seed(seed)
    model = create_model(SIZES[size], **plan.overrides[size], **extra)
    return prepare_model(model, device, compile=False)


def window_batch(model, plan: Plan, device: torch.device) -> torch.Tensor:
    """The windows of one H x W image (here exactly W / H windows of side S) as a batch in [0, 1]."""
    side = int(model.img_size)
    height, width = plan.image
    generator = torch.Generator().manual_seed(1)
    return torch.rand(width // height, 3, side, side, generator=generator).to(device)


def time_forward(model, batch, device, dtype, plan: Plan) -> dict[str, Any]:
    """images/s (one image = the batch of its windows), first-call seconds (compilation), peak memory."""
    reset_peak(device)
    with torch.inference_mode(), autocast(device, dtype):
        start = time.perf_counter()
        model(batch)
        synchronize(device)
        first = time.perf_counter() - start
        for _ in range(plan.warmup - 1):
            model(batch)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(plan.repeats):
            model(batch)
        synchronize(device)
        seconds = (time.perf_counter() - start) / plan.repeats
    return {
        "images_per_s": round(1 / seconds, 3),
        "windows_per_s": round(batch.shape[0] / seconds, 3),
        "first_call_s": round(first, 3),
        "peak_memory_mib": peak_mib(device),
    }


# ------------------------------------------------------------------------------------------------- sections


def section_versions(device: torch.device, plan: Plan) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)  # without importing: transformers alone takes seconds to import
        except PackageNotFoundError:
            return None

    out: dict[str, Any] = {
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        **{
            name: installed(name)
            for name in ("timm", "lightning", "transformers", "h5py", "pillow", "eomt-ood")
        },
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cpu_threads": torch.get_num_threads(),
        "tiny": plan.image != Plan().image,
    }
    if device.type == "cuda":
        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        out["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        out["memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        out["cudnn"] = torch.backends.cudnn.version()
    return out


def section_forward(device: torch.device, plan: Plan) -> dict[str, Any]:
    low = torch.bfloat16
    out: dict[str, Any] = {
        "image": f"{plan.image[0]}x{plan.image[1]}",
        "compile_backend": plan.compile_backend,
    }
    for size in plan.sizes:
        log(f"forward {size}")
        model = build(size, plan, device)
        batch = window_batch(model, plan, device)
        compiled = torch.compile(model, backend=plan.compile_backend)
        rows = {
            "eager_fp32": time_forward(model, batch, device, None, plan),
            "eager_bf16": time_forward(model, batch, device, low, plan),
            "compiled_fp32": time_forward(compiled, batch, device, None, plan),
            "compiled_bf16": time_forward(compiled, batch, device, low, plan),
        }
        rows["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
        rows["windows_per_image"] = int(batch.shape[0])
        out[size] = rows
        del model, compiled
    if "large" not in out:
        return out
    rows = ("eager_fp32", "eager_bf16", "compiled_fp32", "compiled_bf16")
    best = max(out["large"][k]["windows_per_s"] for k in rows)
    out["large_vs_paper"] = {
        "paper_fps": PAPER_FPS_EOMT_L_1024,
        "best_windows_per_s": best,
        "ratio": round(best / PAPER_FPS_EOMT_L_1024, 3),
        "note": "the paper's FPS counts 1024x1024 forward passes (H100, torch.compile); windows_per_s is that unit",
    }
    return out


def section_algm(device: torch.device, plan: Plan) -> dict[str, Any]:
    from eomt_ood.models.algm import disable_token_merging, enable_token_merging, token_merging_settings

    model = build("large", plan, device)
    batch = window_batch(model, plan, device)
    off = time_forward(model, batch, device, torch.bfloat16, plan)
    enable_token_merging(model)
    on = time_forward(model, batch, device, torch.bfloat16, plan)
    on["patch_tokens_after_merges"] = model.last_merge_counts
    on["full_patch_grid"] = int(model.grid_size) ** 2
    settings = token_merging_settings(model)
    disable_token_merging(model)
    return {
        "model": "large, bf16, eager (random weights: how much merges depends on the weights)",
        "off": off,
        "algm": on,
        "settings": settings,
        "speedup": round(on["images_per_s"] / off["images_per_s"], 3),
    }


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 (H, W, 3) image of smooth random colour blobs (more like a photo than white noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, height // 64), max(2, width // 64), generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    image = image + 0.05 * torch.randn(1, 3, height, width, generator=generator)
    return (image[0].clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()


def compare_precisions(model, image: np.ndarray, device: torch.device) -> dict[str, Any]:
    """bf16 and fp16 autocast against fp32: logits on the image's windows, argmax of the windowed prediction."""
    from eomt_ood.inference.predict import predict_canvas

    with torch.inference_mode():
        batch = window_batch(model, Plan(image=image.shape[:2]), device)
        masks32, classes32 = (out[-1] for out in model(batch))
    labels32 = predict_canvas(model, image, device=device)[:-1].argmax(0)
    mask_scale, class_scale = masks32.abs().max().item(), classes32.abs().max().item()
    out: dict[str, Any] = {
        "mask_logits_abs_max": round(mask_scale, 4),
        "class_logits_abs_max": round(class_scale, 4),
    }
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with torch.inference_mode(), autocast(device, dtype):
            masks, classes = (out[-1].float() for out in model(batch))
        labels = predict_canvas(model, image, dtype=dtype, device=device)[:-1].argmax(0)
        agreement = (labels == labels32).float().mean().item()
        mask_diff = (masks - masks32).abs().max().item()
        class_diff = (classes - classes32).abs().max().item()
        out[name] = {
            "mask_logits_max_abs_diff": round(mask_diff, 4),
            "class_logits_max_abs_diff": round(class_diff, 4),
            "meets_tolerance": mask_diff <= LOGIT_TOLERANCE * mask_scale
            and class_diff <= LOGIT_TOLERANCE * class_scale,
            "argmax_agreement": round(agreement, 6),
            "meets_target": agreement >= 0.999,
        }
    out["target"] = 0.999
    out["logit_tolerance"] = f"{LOGIT_TOLERANCE:g} x the largest fp32 logit magnitude"
    return out


def section_precision(device: torch.device, plan: Plan) -> dict[str, Any]:
    from eomt_ood.bravo.demo import DEMO_CHECKPOINT
    from eomt_ood.inference.predict import prepare_model
    from eomt_ood.models.registry import load_model

    out: dict[str, Any] = {}
    model = build("large", plan, device)
    out["large_random_weights"] = compare_precisions(model, smooth_image(*plan.image, seed=2), device)
    del model
    demo = prepare_model(load_model(DEMO_CHECKPOINT), device, compile=False)
    side = int(demo.img_size)
    out["demo_model_trained"] = compare_precisions(demo, smooth_image(side, 2 * side, seed=3), device)
    out["note"] = (
        "random weights leave many near-ties between classes; the trained demo model is the fair case"
    )
    return out


def run_evaluate(
    images_root: Path, checkpoint: Path, out: Path, device: torch.device, precision: str, workers: int
) -> dict:
    """`evaluate` on a BRAVO-layout folder through today's library entry point; the only place that calls it."""
    from eomt_ood.evaluate import EvaluateConfig, evaluate_bravo

    config = EvaluateConfig(
        out=out,
        images_root=images_root,
        checkpoint=checkpoint,
        device=str(device),
        precision=precision,
        workers=workers,
    )
    start = time.perf_counter()
    results = evaluate_bravo(config, progress=False)
    return {"seconds": time.perf_counter() - start, "inference": results["meta"].get("inference", {})}


def section_evaluate(device: torch.device, plan: Plan, size: str = "large") -> dict[str, Any]:
    from eomt_ood.data.png import write_png
    from eomt_ood.inference.predict import resolve_runtime
    from eomt_ood.models.registry import save_checkpoint

    # What evaluate runs by default on this device: bf16 autocast and compiled on CUDA, fp32 eager on CPU.
    dtype, compiled = resolve_runtime(device)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    images = plan.evaluate_images
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images" / "bravo_synflare"
        for i in range(images):
            write_png(root / f"frame{i:03d}_leftImg8bit.png", smooth_image(*plan.image, seed=10 + i))
        model = build(size, plan, device)
        checkpoint = save_checkpoint(model, Path(tmp) / "model.safetensors")
        forward_model = torch.compile(model, backend=plan.compile_backend) if compiled else model
        forward = time_forward(forward_model, window_batch(model, plan, device), device, dtype, plan)
        del model, forward_model
        log("evaluate")
        result = run_evaluate(
            Path(tmp) / "images", checkpoint, Path(tmp) / "run", device, precision, plan.evaluate_workers
        )
    inference = result["inference"]
    forward_s = float(inference.get("model_seconds") or 0.0)
    return {
        "model": size,
        "image": f"{plan.image[0]}x{plan.image[1]}",
        "images": images,
        "precision": precision,
        "compiled": compiled,
        "evaluate_images_per_s": round(images / result["seconds"], 3),
        "evaluate_forward_images_per_s": round(images / forward_s, 3) if forward_s > 0 else None,
        "forward_only_images_per_s": forward["images_per_s"],
        "evaluate_inference": inference,
        "note": "evaluate's time includes loading, compiling at its first image, reading, the confidence maps, "
        "PNG writing, the store and the report; its model time is the forward, merge, upsampling, scores and "
        "quantisation per image (the model's device's share)",
    }


# -------------------------------------------------------------------------------------------------- training


class SyntheticScenes(torch.utils.data.Dataset):
    """`count` blocky scenes of side S: each a few rectangles of random classes on a background class."""

    def __init__(self, count: int, side: int, num_classes: int = 19, seed: int = 0):
        self.items = []
        generator = torch.Generator().manual_seed(seed)
        for _ in range(count):
            labels = torch.full((side, side), int(torch.randint(num_classes, (1,), generator=generator)))
            for _ in range(4):
                y0, x0 = (int(v) for v in torch.randint(0, side // 2, (2,), generator=generator))
                h, w = (int(v) for v in torch.randint(side // 8, side // 2, (2,), generator=generator))
                labels[y0 : y0 + h, x0 : x0 + w] = int(torch.randint(num_classes, (1,), generator=generator))
            palette = torch.randint(0, 256, (num_classes, 3), generator=generator, dtype=torch.uint8)
            image = palette[labels].permute(2, 0, 1).contiguous()
            classes = labels.unique()
            self.items.append((image, {"masks": labels[None] == classes[:, None, None], "labels": classes}))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def collate(batch):
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]


def section_train(device: torch.device, plan: Plan, size: str = "large") -> dict[str, Any]:
    import lightning as L

    from eomt_ood.models.registry import create_model
    from eomt_ood.training.config import LossConfig, OptimConfig, ScheduleConfig
    from eomt_ood.training.module import EoMTTrainingModule

    torch.manual_seed(0)
    model = create_model(SIZES[size], **plan.overrides[size])
    module = EoMTTrainingModule(
        model,
        LossConfig(num_points=plan.train_points),
        OptimConfig(),
        ScheduleConfig(head_warmup_steps=5, backbone_warmup_steps=10),  # short warm-ups for a 50-step run
        total_steps=plan.train_steps,
    )
    data = SyntheticScenes(2 * plan.train_batch, int(model.img_size))
    loader = torch.utils.data.DataLoader(data, batch_size=plan.train_batch, shuffle=True, collate_fn=collate)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    precision = "16-mixed" if device.type == "cuda" else "bf16-mixed"
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=precision,  # type: ignore[arg-type]
        max_steps=plan.train_steps,
        gradient_clip_val=OptimConfig().grad_clip,
        gradient_clip_algorithm="norm",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Record()],
    )
    reset_peak(device)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - start
    head, tail = losses[: max(1, len(losses) // 10)], losses[-max(1, len(losses) // 10) :]
    return {
        "model": size,
        "steps": len(losses),
        "batch": plan.train_batch,
        "precision": precision,
        "compiled": False,
        "loss_first": round(statistics.mean(head), 4),
        "loss_last": round(statistics.mean(tail), 4),
        "loss_falls": statistics.mean(tail) < statistics.mean(head),
        "losses": [round(v, 4) for v in losses],
        "steps_per_s": round(len(losses) / seconds, 3),
        "peak_memory_mib_per_gpu": peak_mib(device),
    }


# ------------------------------------------------------------------------------------------------------ DDP


def ddp_worker(rank: int, world: int, port: int, args: dict[str, Any], result: str) -> None:
    """`steps` optimiser steps of the same model on a global batch split over `world` processes.

    Every process draws the loss's random points from its own seed, so runs agree to sampling noise, not bits.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from eomt_ood.models.registry import create_model
    from eomt_ood.training.config import OptimConfig
    from eomt_ood.training.loss import MaskClassificationLoss
    from eomt_ood.training.optim import param_groups

    os.dup2(2, 1)  # gloo / NCCL log to stdout, which carries only the JSON
    cuda = args["device"] == "cuda"
    if not cuda:
        # A forked CPU worker inherits the parent's OpenMP state; its thread team then waits forever at the
        # first parallel region (seen in create_model's init). One thread per rank, as DDP on CPU runs anyway.
        torch.set_num_threads(1)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.manual_seed(0)
        model = create_model(args["model"], **args["overrides"]).to(device).train()
        network = DistributedDataParallel(model, device_ids=[rank] if cuda else None)
        criterion = MaskClassificationLoss(int(model.num_classes), num_points=args["points"])
        optimizer = torch.optim.AdamW(param_groups(model, OptimConfig(lr=1e-4, weight_decay=0.05, llrd=0.8)))
        scaler = torch.amp.GradScaler("cuda", enabled=cuda)
        data = SyntheticScenes(args["global_batch"], int(model.img_size))
        per_rank = args["global_batch"] // world
        images, targets = collate([data[i] for i in range(rank * per_rank, (rank + 1) * per_rank)])
        images = images.to(device).float().div(255)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses = []
        for step in range(args["steps"]):
            torch.manual_seed(args["sampling_seed"] * 1000 + step * 16 + rank)
            with autocast(device, torch.float16 if cuda else None):
                masks, classes = network(images)
                loss = criterion(
                    masks, classes, [t["masks"] for t in targets], [t["labels"] for t in targets]
                )
            scaler.scale(loss["loss"]).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            mean = loss["loss"].detach().float().clone()
            dist.all_reduce(mean)
            losses.append(mean.item() / world)
        if rank == 0:
            Path(result).write_text(json.dumps(losses))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_ddp(world: int, args: dict[str, Any]) -> list[float]:
    """Losses of `ddp_worker` on `world` processes (1: in this process). CUDA spawns fresh processes; CPU
    forks, which spares each worker re-importing everything."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        result = str(Path(tmp) / "losses.json")
        worker_args = (world, free_port(), args, result)
        if world == 1:
            stdout = os.dup(1)
            try:
                ddp_worker(0, *worker_args)
            finally:
                os.dup2(stdout, 1)
                os.close(stdout)
        else:
            method = "spawn" if args["device"] == "cuda" else "fork"
            mp.start_processes(ddp_worker, args=worker_args, nprocs=world, join=True, start_method=method)
        return json.loads(Path(result).read_text())


def section_ddp(device: torch.device, plan: Plan, size: str = "large") -> dict[str, Any]:
    if device.type == "cuda":
        world = torch.cuda.device_count()
        if world < 2:
            return {"skipped": f"{world} GPU visible; the DDP comparison needs two or more"}
    else:
        world = 2  # CPU processes over gloo: the same code path, for the tiny test
    args = {
        "device": device.type,
        "model": SIZES[size],
        "overrides": plan.overrides[size],
        "points": plan.train_points,
        "global_batch": plan.ddp_batch_per_rank * world,
        "steps": plan.ddp_steps,
        "sampling_seed": 1,
    }
    log(f"ddp: {world} processes")
    ddp = run_ddp(world, args)
    log("ddp: single-device references")
    single = run_ddp(1, args)
    single_b = run_ddp(1, {**args, "sampling_seed": 2})

    def relative(a: list[float], b: list[float]) -> float:
        return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True))

    noise = relative(single_b, single)
    tolerance = max(3 * noise, 1e-3)
    difference = relative(ddp, single)
    return {
        "processes": world,
        "global_batch": args["global_batch"],
        "steps": plan.ddp_steps,
        "losses_ddp": [round(v, 5) for v in ddp],
        "losses_single": [round(v, 5) for v in single],
        "max_relative_difference": round(difference, 6),
        "sampling_noise": round(noise, 6),
        "tolerance": round(tolerance, 6),
        "tolerance_rule": "3 x the largest relative gap between two single-device runs that differ only in the "
        "loss's random point sampling (at least 1e-3)",
        "equal_within_tolerance": difference <= tolerance,
    }


# --------------------------------------------------------------------------------------------------- driver


RUNNERS: dict[str, Callable[[torch.device, Plan], dict[str, Any]]] = {
    "versions": section_versions,
    "forward": section_forward,
    "algm": section_algm,
    "precision": section_precision,
    "evaluate": section_evaluate,
    "train": section_train,
    "ddp": section_ddp,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: every code path in seconds")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {SECTIONS}")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    plan = TINY if args.tiny else Plan()
    torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls on GPUs that have it, as training uses
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; available: {', '.join(SECTIONS)}")
    # Libraries print to stdout (Lightning, gloo); keep it for the JSON alone and send everything else to stderr.
    sys.stdout.flush()
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    out: dict[str, Any] = {}
    for name in sections:
        log(name)
        start = time.perf_counter()
        try:
            out[name] = RUNNERS[name](device, plan)
        except Exception as exc:  # one broken section must not hide the others' numbers
            out[name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "where": traceback.format_exc().splitlines()[-3:],
            }
        out[name]["section_s"] = round(time.perf_counter() - start, 1)
    sys.stdout.flush()
    json_out.write(json.dumps(out, indent=2) + "\n")
    json_out.close()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
