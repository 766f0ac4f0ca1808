"""The three Cityscapes recipes of Table E, scaled down by `--set` overrides to tiny models on CPU.

Only sizes, devices and step counts change; optimiser rules (LLRD, backbone multiplier, weight-decay rules,
clipping), schedules, loss weights and the augmentation type stay as the recipe files say, so a test that trains
with these overrides runs the recipe's code paths.
"""

from __future__ import annotations

from pathlib import Path

from eomt_ood.config import load_config
from eomt_ood.training.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = {
    "eomt": CONFIGS / "eomt_large_cityscapes_1024.yaml",
    "vit_adapter": CONFIGS / "m2f_vit_adapter_large_cityscapes_1024.yaml",
    "swin": CONFIGS / "m2f_swin_large_cityscapes.yaml",
}
TINY_MODELS = {"eomt": "eomt_test", "vit_adapter": "m2f_vit_adapter_test", "swin": "m2f_swin_test"}

# Devices and sizes for a CPU run on 64 x 128 synthetic street scenes (tests/test_train_run.write_scenes).
_COMMON = (
    "model.pretrained_backbone=null",
    "data.batch_size=2",
    "data.num_workers=0",
    "loss.num_points=256",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.strategy=auto",
    "trainer.precision=32-true",
    "trainer.float32_matmul_precision=highest",
    "trainer.val_every_n_epochs=0",
    "trainer.log_every_n_steps=1",
    "trainer.progress_bar=false",
)
_PER_RECIPE = {
    # EoMT's scale jitter is relative to fitting the image into S x S: 2.0 gives the scenes' native size.
    "eomt": (
        "data.scale_range=[1.0, 2.0]",
        "schedule.head_warmup_steps=2",
        "schedule.backbone_warmup_steps=4",
    ),
    "vit_adapter": (
        "data.scale_range=[1.0, 2.0]",
        "schedule.head_warmup_steps=2",
        "schedule.backbone_warmup_steps=4",
    ),
    # Short sides around the scenes' 64 px and a 64 x 128 crop, the 512 x 1024 crop of 1024 x 2048 scaled by 1/8.
    "swin": (
        "data.short_sides=[64, 72, 80, 96]",
        "data.crop_size=[64, 128]",
        "model.overrides.drop_path_rate=0.3",
    ),
}


def tiny_sets(recipe: str, root: Path, max_steps: int, lr: float | None = None) -> list[str]:
    """`--set` overrides that scale `recipe` down to its tiny model on `root` for `max_steps` steps."""
    sets = [
        f"model.name={TINY_MODELS[recipe]}",
        f"data.root={root}",
        f"trainer.max_steps={max_steps}",
        f"trainer.checkpoint_every_n_steps={max_steps}",
        *_COMMON,
        *_PER_RECIPE[recipe],
    ]
    if lr is not None:
        sets.append(f"optim.lr={lr}")
    return sets


def tiny_config(recipe: str, root: Path, max_steps: int, *extra: str, lr: float | None = None) -> TrainConfig:
    return load_config(TrainConfig, RECIPES[recipe], [*tiny_sets(recipe, root, max_steps, lr), *extra])
