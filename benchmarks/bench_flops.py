"""Counted FLOPs of the Table E recipes and the training wall-clock they imply, as JSON (no GPU needed).

For each recipe: the forward FLOPs of one training crop and of one 1024 x 1024 evaluation window, counted with
`torch.utils.flop_counter.FlopCounterMode` on a full-size model (random weights) on CPU. Then an ESTIMATE of the
training wall-clock on `--gpus` GPUs, labelled as such:

    train FLOPs  = 3 x forward FLOPs per crop x crops (backward ~ 2 x forward) x optimizer steps x batch
    throughput   = sustained FLOP/s of that architecture on one H100, calibrated from the EoMT paper's measured
                   inference FPS (Table 5, H100, torch.compile): FPS x forward FLOPs per Cityscapes image
    hours        = train FLOPs / (throughput x gpus)  (+ the same for validation)

It ignores the loss and Hungarian matching, data loading, DDP communication, and EoMT's masked attention in the
first part of training (slower than its unmasked FPS). Deformable attention (`grid_sample`) is not counted by
FlopCounterMode; the calibration absorbs that for the ViT-Adapter, as long as the same counter is used for both.
Measured training step times replace all of this: `benchmarks/bench_train.py --config ... --device cuda`.

    python benchmarks/bench_flops.py            # ~5 minutes and ~8 GB RAM on CPU (three full-size models)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eomt_ood.config import load_config  # noqa: E402
from eomt_ood.training.config import TrainConfig  # noqa: E402
from eomt_ood.training.run import StepSampler  # noqa: E402

RECIPES = {
    "eomt": "configs/eomt_large_cityscapes_1024.yaml",
    "vit_adapter": "configs/m2f_vit_adapter_large_cityscapes_1024.yaml",
    "swin": "configs/m2f_swin_large_cityscapes.yaml",
}
# EoMT paper Table 5 (Cityscapes val, one H100, torch.compile): images per second and the input of one image.
# EoMT and ViT-Adapter: two 1024 x 1024 windows per 1024 x 2048 image; Mask2Former Swin-L: one 1024 x 2048 pass.
PAPER_FPS = {"eomt": 25.0, "vit_adapter": 7.0, "swin": 14.0}
CITYSCAPES = {"train_images": 2975, "val_images": 500}


def forward_flops(model: torch.nn.Module, size: tuple[int, int]) -> float:
    """FLOPs (2 per multiply-add) of one forward pass of a (1, 3, H, W) input, in eval mode.

    Attention runs as plain matmuls (the math SDPA backend): the CPU's fused attention kernel is not counted by
    FlopCounterMode, and a GPU's flash kernel does the same multiply-adds.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(torch.rand(1, 3, *size))
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES))
    parser.add_argument("--gpus", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    from eomt_ood.models import create_model

    out = {
        "gpus": args.gpus,
        "estimate": "FLOP-counted, FPS-calibrated; not a measured training time",
        "recipes": {},
    }
    for recipe in args.recipes:
        start = time.perf_counter()
        config = load_config(TrainConfig, ROOT / RECIPES[recipe], ["model.pretrained_backbone=null"])
        kwargs = {"masked_attn_enabled": False} if recipe == "eomt" else {}
        model = create_model(config.model.name, **config.model.overrides, **kwargs).eval()
        side = int(model.img_size)
        crop = (
            tuple(config.data.crop_size or (side, side))
            if config.data.augmentation == "mask2former"
            else (side, side)
        )
        crop_flops = forward_flops(model, crop)
        window_flops = crop_flops if crop == (side, side) else forward_flops(model, (side, side))
        image_flops = forward_flops(model, (1024, 2048)) if recipe == "swin" else 2 * window_flops
        del model
        t, d = config.trainer, config.data
        batch = d.batch_size * t.devices * t.num_nodes * t.accumulate_grad_batches
        if t.max_steps is not None:
            steps = t.max_steps
        else:
            sampler = StepSampler(
                CITYSCAPES["train_images"], d.batch_size, seed=0, world_size=t.devices * t.num_nodes
            )
            steps = sampler.steps_per_epoch * t.epochs
        epochs = steps * batch / CITYSCAPES["train_images"]
        validations = epochs // max(1, t.val_every_n_epochs) if t.val_every_n_epochs > 0 else 0
        train_flops = 3 * crop_flops * batch * steps
        val_flops = validations * CITYSCAPES["val_images"] * image_flops
        sustained = PAPER_FPS[recipe] * image_flops  # FLOP/s of one H100 on this architecture
        out["recipes"][recipe] = {
            "model": config.model.name,
            "train_crop": list(crop),
            "forward_tflop_per_crop": crop_flops / 1e12,
            "forward_tflop_per_cityscapes_image": image_flops / 1e12,
            "optimizer_steps": steps,
            "effective_batch": batch,
            "validations": int(validations),
            "train_eflop": train_flops / 1e18,
            "paper_fps_h100": PAPER_FPS[recipe],
            "calibrated_tflops_per_h100": sustained / 1e12,
            "estimated_train_hours": train_flops / (sustained * args.gpus) / 3600,
            "estimated_validation_hours": val_flops / (sustained * args.gpus) / 3600,
            "seconds_to_count": time.perf_counter() - start,
        }
        print(json.dumps({recipe: out["recipes"][recipe]}), file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
