"""Lightning module for EoMT and Mask2Former training: loss, optimiser and schedules only (spec §2, §4.3-4.5).

Parameter groups (LLRD / backbone multiplier / weight-decay rules) come from `training/optim.py`.

Data loading, callbacks, loggers and resuming live in `training/run.py`; validation scoring uses the windowed
inference of `inference/predict.py`.

Randomness: before every training batch the global RNGs (torch CPU/CUDA, numpy, python) are re-seeded from
(seed, rank, optimizer step, micro-batch index), and validation runs inside a saved/restored RNG state. The
random attention-mask disabling and the point sampling of a step are thus a pure function of the step, so a
run resumed from a step checkpoint draws exactly what an uninterrupted run draws, on any number of processes.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from eomt_ood.training.config import LossConfig, OptimConfig, ScheduleConfig
from eomt_ood.training.loss import MaskClassificationLoss
from eomt_ood.training.optim import param_groups
from eomt_ood.training.schedules import (
    annealing_windows,
    backbone_lr_factor,
    head_lr_factor,
    mask_probabilities,
)


def step_seed(seed: int, rank: int, step: int, micro_batch: int) -> int:
    """A 63-bit seed that depends on all four integers (SplitMix64-style mixing of their combination)."""
    x = (seed * 1_000_003 + rank) * 1_000_033 + step
    x = x * 1_009 + micro_batch
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) >> 1


def seed_everything_from(seed: int) -> None:
    """Seed torch (all devices), numpy's and python's global generators from one integer."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global generator is what third-party code draws from)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class EoMTTrainingModule(L.LightningModule):
    """Trains an EoMT model (`models.eomt.EoMT`) with the official recipe.

    Batches are (images uint8 (B, 3, S, S), list of B targets {"masks": bool (K, S, S), "labels": int64 (K,)}).
    `total_steps` T (optimizer steps of the whole run) defaults to the trainer's estimated stepping batches; the
    annealing windows and the poly schedules are derived from it. Validation batches are (list of uint8
    (3, H, W) images, list of targets) at full resolution and are scored with windowed inference (spec §5).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossConfig,
        optim: OptimConfig,
        schedule: ScheduleConfig,
        seed: int = 0,
        total_steps: int | None = None,
        val_micro_batch: int = 4,
    ):
        super().__init__()
        self.model = model
        self.optim_config = optim
        self.schedule_config = schedule
        self.seed = seed
        self._total_steps = total_steps
        self.val_micro_batch = val_micro_batch
        self.criterion = MaskClassificationLoss(
            model.num_classes,
            num_points=loss.num_points,
            oversample_ratio=loss.oversample_ratio,
            importance_sample_ratio=loss.importance_sample_ratio,
            mask_weight=loss.mask_weight,
            dice_weight=loss.dice_weight,
            class_weight=loss.class_weight,
            no_object_weight=loss.no_object_weight,
        )
        self._micro_batch_key: tuple[int, int] = (-1, 0)
        self._rng_outside_validation: dict[str, Any] | None = None
        from eomt_ood.metrics import ConfusionMatrix

        self.val_metric = ConfusionMatrix(num_classes=int(model.num_classes), ignore_index=255)

    # ------------------------------------------------------------------------------------------ schedules

    @property
    def total_steps(self) -> int:
        if self._total_steps is None:
            self._total_steps = int(self.trainer.estimated_stepping_batches)
        return self._total_steps

    def annealing_windows(self) -> list[tuple[int, int]]:
        return annealing_windows(self.total_steps, int(self.model.num_blocks))

    def update_mask_probabilities(self, step: int) -> None:
        """Set the model's P_k to P_k(step) (spec §2); stays at 1 when annealing is off."""
        if not self.schedule_config.mask_annealing:
            return
        probs = mask_probabilities(step, self.annealing_windows(), self.schedule_config.poly_power)
        buffer = self.model.attn_mask_probs
        buffer.copy_(torch.tensor(probs, dtype=buffer.dtype, device=buffer.device))

    def lr_lambdas(self, groups: list[dict[str, Any]]) -> list[Any]:
        s, total = self.schedule_config, self.total_steps

        def heads(step: int) -> float:
            return head_lr_factor(step, total, s.head_warmup_steps, s.poly_power)

        def backbone(step: int) -> float:
            return backbone_lr_factor(step, total, s.head_warmup_steps, s.backbone_warmup_steps, s.poly_power)

        return [backbone if g["backbone"] else heads for g in groups]

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim_config
        groups = param_groups(self.model, o)
        optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_lambdas(groups))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------------- training

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        step = int(self.global_step)
        # Micro-batch index within the current optimizer step (gradient accumulation); 0 right after a resume.
        last_step, count = self._micro_batch_key
        micro = count + 1 if last_step == step else 0
        self._micro_batch_key = (step, micro)
        seed_everything_from(step_seed(self.seed, int(self.global_rank), step, micro))
        # The forward of optimizer step t uses P_k(t); recomputed from t so a resume needs no extra state.
        self.update_mask_probabilities(step)

    def training_step(self, batch: tuple[Tensor, list[dict[str, Tensor]]], batch_idx: int) -> Tensor:
        images, targets = batch
        mask_logits, class_logits = self.model(images.float().div(255))
        losses = self.criterion(
            mask_logits, class_logits, [t["masks"] for t in targets], [t["labels"] for t in targets]
        )
        batch_size = images.shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=batch_size)
        last = len(mask_logits) - 1
        for key in ("mask", "dice", "ce"):
            self.log(f"train/{key}", losses[f"{key}_{last}"], batch_size=batch_size)
        return losses["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Logged after the step so the values are those the next forward uses.
        optimizer = self.optimizers()
        groups = optimizer.param_groups if not isinstance(optimizer, list) else optimizer[0].param_groups
        heads = next(g["lr"] for g in groups if not g["backbone"])
        last_block = next((g["lr"] for g in reversed(groups) if g["backbone"]), 0.0)
        self.log("lr/heads", heads)
        self.log("lr/backbone_max", last_block)
        if self.schedule_config.mask_annealing:
            probs = mask_probabilities(
                int(self.global_step), self.annealing_windows(), self.schedule_config.poly_power
            )
            for k, p in enumerate(probs):
                self.log(f"mask_prob/{k}", p)

    # ----------------------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        # Validation draws random numbers (stochastic masking); keep them out of the training stream.
        self._rng_outside_validation = rng_state()
        self.val_metric.reset()

    def validation_step(self, batch: tuple[list[Tensor], list[dict[str, Tensor]]], batch_idx: int) -> None:
        from eomt_ood.data.cityscapes import semantic_target
        from eomt_ood.inference.predict import predict_image

        images, targets = batch
        for image, target in zip(images, targets, strict=True):
            # Windowed inference at full resolution with the model as it is (current P_k), as the recipe does.
            outputs = predict_image(
                self.model, image.cpu().numpy(), micro_batch=self.val_micro_batch, device=self.device
            )
            truth = semantic_target(target, image.shape[-2:]).to(self.device)
            self.val_metric.update(outputs.prediction, truth.long())

    def on_validation_epoch_end(self) -> None:
        result = self.val_metric.compute()
        self.log("val/miou", float(result["miou"]), prog_bar=True, sync_dist=False)
        if self._rng_outside_validation is not None:
            set_rng_state(self._rng_outside_validation)
            self._rng_outside_validation = None
