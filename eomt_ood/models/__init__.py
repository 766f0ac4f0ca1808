"""Segmentation models: EoMT on timm ViTs, its registry and checkpoint loading."""

from eomt_ood.models.eomt import EoMT
from eomt_ood.models.registry import create_model, list_models, register_model

__all__ = ["EoMT", "create_model", "list_models", "register_model"]
