"""Segmentation models: EoMT on timm ViTs, its registry and checkpoint loading.

The Mask2Former baselines (`eomt_ood.models.baselines`, which import transformers) register themselves the first
time the registry is asked for a name it does not know, so building an EoMT never pays for importing them.
"""

from eomt_ood.models.checkpoints import load_checkpoint
from eomt_ood.models.eomt import EoMT
from eomt_ood.models.registry import (
    build_model,
    create_model,
    list_models,
    load_model,
    register_model,
    save_checkpoint,
)

__all__ = [
    "EoMT",
    "build_model",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_model",
    "register_model",
    "save_checkpoint",
]
