"""Training configuration: frozen dataclasses, loaded with `eomt_ood.config.load_config(TrainConfig, yaml, sets)`.

Defaults are the official Cityscapes EoMT-L 1024 recipe (docs/training.md); `configs/*.yaml` spell every value out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from eomt_ood.config import at_least, must


def _positive(x: float) -> bool:
    return x > 0


def _fraction(x: float) -> bool:
    return 0 <= x <= 1


@dataclass(frozen=True)
class ModelConfig:
    """name: a registered model; overrides: its keyword overrides (e.g. num_classes, depth for tiny models);
    pretrained_backbone: local backbone weights, a file or a Hugging Face DINOv2 folder (null = random init);
    checkpoint: start from EoMT weights instead (fine-tuning), a file or a Hugging Face folder."""

    name: str = "eomt_large_patch16_1024"
    overrides: dict[str, Any] = field(default_factory=dict)
    pretrained_backbone: Path | None = None
    checkpoint: Path | None = None


@dataclass(frozen=True)
class DataConfig:
    """root: a Cityscapes layout (leftImg8bit/, gtFine/); batch_size is per device (effective batch =
    batch_size x devices x nodes x accumulate_grad_batches; the recipes use 16). val_max_images limits
    validation (null = all).

    augmentation "eomt" (`data.transforms.TrainTransform`): scale jitter `scale_range` relative to fitting the
    image into S x S, S x S crops (S = the model's img_size). "mask2former" (`ShortSideCropTransform`): short
    side drawn from `short_sides` (long side capped at `max_long_side`), `crop_size` (h, w) crops with
    `single_category_max_area`, then colour jitter and flip.
    """

    root: Path = Path("data/cityscapes")
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = at_least(1, 4)
    num_workers: int = at_least(0, 4)
    augmentation: Literal["eomt", "mask2former"] = "eomt"
    scale_range: tuple[float, float] = must(
        (0.5, 2.0), lambda r: 0 < r[0] <= r[1], "[low, high] with 0 < low <= high"
    )
    short_sides: tuple[int, ...] = ()
    max_long_side: int = at_least(1, 4096)
    crop_size: tuple[int, int] | None = None
    single_category_max_area: float = must(1.0, lambda x: 0 < x <= 1, "in (0, 1]")
    color_jitter: bool = True
    val_max_images: int | None = at_least(1, None)
    val_micro_batch: int = at_least(1, 4)


@dataclass(frozen=True)
class LossConfig:
    """Mask2Former loss (docs/training.md §4): point counts, importance sampling, weights (also the matching costs)."""

    num_points: int = at_least(1, 12544)
    oversample_ratio: float = at_least(1, 3.0)  # candidates per sampled point (Mask2Former: 3)
    importance_sample_ratio: float = must(0.75, _fraction, "in [0, 1]")
    mask_weight: float = at_least(0, 5.0)
    dice_weight: float = at_least(0, 5.0)
    class_weight: float = at_least(0, 2.0)
    no_object_weight: float = at_least(0, 0.1)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW; per-parameter lr and weight decay as in `training/optim.py`.

    llrd: layer-wise lr decay over the backbone's ViT blocks (1.0 = off; needed for backbones without blocks).
    backbone_lr_multiplier: every backbone parameter's lr x this (Mask2Former: 0.1).
    weight_decay_norm / weight_decay_embed: decay of normalisation-layer parameters / of embeddings and position
    tables; null = weight_decay (EoMT decays everything, Mask2Former uses 0.0 for both).
    grad_clip: the global L2 norm of all gradients is clipped to this (0 = off).
    """

    lr: float = must(1e-4, _positive, "positive")
    weight_decay: float = at_least(0, 0.05)
    betas: tuple[float, float] = must(
        (0.9, 0.999), lambda b: all(0 <= x < 1 for x in b), "two numbers in [0, 1)"
    )
    eps: float = must(1e-8, _positive, "positive")
    llrd: float = must(0.8, lambda x: 0 < x <= 1, "in (0, 1]")
    backbone_lr_multiplier: float = at_least(0, 1.0)
    weight_decay_norm: float | None = at_least(0, None)
    weight_decay_embed: float | None = at_least(0, None)
    grad_clip: float = at_least(0, 0.01)


@dataclass(frozen=True)
class ScheduleConfig:
    """Two-stage warm-up + poly (docs/training.md §6) and mask annealing (docs/training.md §7), in optimizer steps.

    Heads warm up linearly over head_warmup_steps; the backbone has lr 0 for head_warmup_steps, then warms up
    over backbone_warmup_steps. mask_annealing: derive the windows from the run's real T (else keep P_k = 1).
    """

    head_warmup_steps: int = at_least(0, 500)
    backbone_warmup_steps: int = at_least(0, 1000)
    poly_power: float = at_least(0, 0.9)
    mask_annealing: bool = True


@dataclass(frozen=True)
class TrainerConfig:
    """Lightning Trainer settings. max_steps (when set) overrides epochs. precision: "16-mixed" (recipe, GPU),
    "bf16-mixed" or "32-true" (CPU). compile: torch.compile the model; null = on where training runs on CUDA
    (the official recipe compiles), off on CPU. sync_batchnorm: BatchNorm statistics over all processes
    (ViT-Adapter's spatial prior module; no effect on one device). checkpoint_every_n_steps: how often the latest
    state is saved (plus once at the end). keep_checkpoints: "last_and_best" keeps the latest `step=N.ckpt` and
    the one with the highest val/miou (`best-step=N.ckpt`); "all" keeps every periodic one (an EoMT-L checkpoint
    with its Adam moments is about 3.8 GB: 20 of them for the Cityscapes recipe). val_every_n_epochs: 0 turns
    validation off (and with it the best checkpoint)."""

    epochs: int = at_least(1, 107)
    max_steps: int | None = at_least(1, None)
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = at_least(1, 1)
    strategy: str = "auto"
    precision: str = "16-mixed"
    sync_batchnorm: bool = False
    accumulate_grad_batches: int = at_least(1, 1)
    seed: int = 0
    float32_matmul_precision: Literal["highest", "high", "medium"] = "medium"
    compile: bool | None = None
    log_every_n_steps: int = at_least(1, 50)
    val_every_n_epochs: int = at_least(0, 1)
    checkpoint_every_n_steps: int = at_least(1, 1000)
    keep_checkpoints: Literal["last_and_best", "all"] = "last_and_best"
    progress_bar: bool = True


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def check_paths(config: TrainConfig, out_dir: str | Path, resume: str | Path | None = None) -> None:
    """The output folder and the files and folders a config names, checked before torch is even imported: a
    `UserError` naming the option or key. `resume`: a checkpoint path, "auto" or None."""
    from eomt_ood.errors import UserError
    from eomt_ood.io import check_output

    check_output(out_dir, "--out", [config.data.root], folder=True)
    # A weights file or a Hugging Face folder; what a folder holds is checked with the model code (`check_config`).
    if config.model.checkpoint is not None and not Path(config.model.checkpoint).exists():
        raise UserError(f"model.checkpoint: {config.model.checkpoint} not found")
    if not Path(config.data.root).exists():
        raise UserError(f"data.root: {config.data.root}: folder not found")
    if resume is not None and str(resume) != "auto" and not Path(resume).is_file():
        kind = "a folder, not a checkpoint file" if Path(resume).is_dir() else "checkpoint not found"
        raise UserError(f"--resume {resume}: {kind}")
    earlier = sorted((Path(out_dir) / "checkpoints").glob("step=*.ckpt"))
    if resume is None and earlier:
        # A fresh start would write its own checkpoints among these and remove them as superseded.
        raise UserError(
            f"--out: {out_dir} holds a training run ({earlier[-1].relative_to(out_dir)}); continue it with "
            "--resume auto, or choose another --out"
        )
