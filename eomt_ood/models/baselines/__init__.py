"""Mask2Former baselines with the EoMT output interface: Swin via transformers, ViT-Adapter on timm ViTs.

Importing this package registers m2f_swin_{large,tiny,test} and m2f_vit_adapter_{large,small,test}.
"""

from eomt_ood.models.baselines.mask2former import Mask2FormerHead, Mask2FormerSwin, load_hf_checkpoint
from eomt_ood.models.baselines.vit_adapter import ViTAdapter, ViTAdapterMask2Former

__all__ = ["Mask2FormerHead", "Mask2FormerSwin", "ViTAdapter", "ViTAdapterMask2Former", "load_hf_checkpoint"]
