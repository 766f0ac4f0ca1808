"""Mask2Former baselines (Swin via transformers, ViT-Adapter on timm ViTs) with the EoMT output interface."""
