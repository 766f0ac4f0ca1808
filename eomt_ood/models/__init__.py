"""Segmentation models: EoMT on timm ViTs, its registry and checkpoint loading."""

from eomt_ood.models import baselines  # noqa: F401  (registers the m2f_* Mask2Former baselines)
from eomt_ood.models.checkpoints import load_checkpoint
from eomt_ood.models.eomt import EoMT
from eomt_ood.models.registry import create_model, list_models, load_model, register_model, save_checkpoint

__all__ = [
    "EoMT",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_model",
    "register_model",
    "save_checkpoint",
]
