"""Training-step throughput and peak memory of a recipe (forward + loss + backward + clip + AdamW step).

Prints one JSON object. Uses the config's model, loss, optimiser (parameter groups included) and precision on
random images of the recipe's training crop size with random blob targets (K per image); pretrained weights are
not needed (random init has the same cost). `projected_run_hours` multiplies the measured step time by the
recipe's optimizer steps (trainer.max_steps, else epochs x steps per epoch for `--train-images` images at the
recipe's effective batch): the wall-clock of the whole run on `trainer.devices` such devices, assuming each
device does one measured step per optimizer step (data-parallel, one device's batch measured) and ignoring data
loading, validation and communication.

    python benchmarks/bench_train.py                                   # tiny config on CPU
    python benchmarks/bench_train.py --config configs/eomt_large_cityscapes_1024.yaml --device cuda
    python benchmarks/bench_train.py --config configs/m2f_swin_large_cityscapes.yaml --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eomt_ood.config import load_config  # noqa: E402
from eomt_ood.training.config import TrainConfig  # noqa: E402
from eomt_ood.training.module import EoMTTrainingModule  # noqa: E402
from eomt_ood.training.optim import param_groups  # noqa: E402
from eomt_ood.training.run import StepSampler  # noqa: E402


def random_targets(
    batch: int, size: tuple[int, int], num_masks: int, gen: torch.Generator
) -> list[dict[str, torch.Tensor]]:
    """Per image `num_masks` disjoint blob masks (a coarse random label map, nearest-upsampled)."""
    targets = []
    for _ in range(batch):
        coarse = torch.randint(0, num_masks, (1, 1, 16, 16), generator=gen).float()
        ids = F.interpolate(coarse, size=size, mode="nearest")[0, 0].long()
        labels = ids.unique()
        targets.append({"masks": ids[None] == labels[:, None, None], "labels": labels})
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "eomt_test_synthetic.yaml"))
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's per-device batch")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--num-masks", type=int, default=10, help="target masks per image")
    parser.add_argument("--precision", default=None, help="override: 32-true, 16-mixed, bf16-mixed")
    parser.add_argument("--train-images", type=int, default=2975, help="dataset size for epoch-based recipes")
    args = parser.parse_args()

    config = load_config(TrainConfig, args.config, [*args.sets, "model.pretrained_backbone=null"])
    device = torch.device(args.device)
    precision = args.precision or config.trainer.precision
    torch.set_float32_matmul_precision(config.trainer.float32_matmul_precision)
    torch.manual_seed(0)

    from eomt_ood.models import create_model

    model = create_model(config.model.name, **config.model.overrides).to(device).train()
    module = EoMTTrainingModule(model, config.loss, config.optim, config.schedule, total_steps=1000)
    module.to(device)
    o = config.optim
    optimizer = torch.optim.AdamW(
        param_groups(model, o),
        betas=o.betas,
        eps=o.eps,
        weight_decay=o.weight_decay,
    )
    amp_dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    batch = args.batch_size or config.data.batch_size
    square = (int(model.img_size), int(model.img_size))
    size = tuple(config.data.crop_size or square) if config.data.augmentation == "mask2former" else square
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, generator=gen).to(device)
    targets = [
        {k: v.to(device) for k, v in t.items()} for t in random_targets(batch, size, args.num_masks, gen)
    ]

    def step() -> float:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            mask_logits, class_logits = model(images.float().div(255))
            loss = module.criterion(
                mask_logits, class_logits, [t["masks"] for t in targets], [t["labels"] for t in targets]
            )["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    t = config.trainer
    devices = t.devices if isinstance(t.devices, int) else 1
    if t.max_steps is not None:
        run_steps = t.max_steps
    else:
        world = devices * t.num_nodes
        sampler = StepSampler(
            args.train_images, batch, seed=0, world_size=world, accumulate=t.accumulate_grad_batches
        )
        run_steps = sampler.steps_per_epoch * t.epochs
    seconds_per_step = seconds / args.steps
    result = {
        "config": str(args.config),
        "model": config.model.name,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "precision": precision,
        "batch_size": batch,
        "input_size": list(size),
        "num_points": config.loss.num_points,
        "steps": args.steps,
        "seconds_per_step": seconds_per_step,
        "run_steps": run_steps,
        "run_devices": devices * t.num_nodes,
        "projected_run_hours": seconds_per_step * t.accumulate_grad_batches * run_steps / 3600,
        "images_per_s": batch * args.steps / seconds,
        "loss_last": losses[-1],
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
