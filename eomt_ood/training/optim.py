"""AdamW parameter groups for every trainable model: one code path, driven by `OptimConfig`.

Each parameter tensor gets its own group with a base learning rate and a weight decay:

    lr = optim.lr                                                        outside the backbone
    lr = optim.lr * backbone_lr_multiplier * llrd ** (L - 1 - b)         inside the backbone

where b is the ViT block the parameter belongs to (`schedules.layer_lr_scale`: stem parameters count as block
0, the final norm as block L - 1) and L the number of blocks. Layer-wise decay needs numbered ViT blocks
(`backbone.blocks.N`); a backbone without them (Swin) takes `llrd: 1.0` and only the multiplier, which is how
Mask2Former trains its Swin / ResNet backbones (lr x 0.1). EoMT uses llrd 0.8 and multiplier 1.

Where the backbone is: `model.backbone_prefix` (a dotted module path) when the model declares one, else
`backbone`. Mask2Former-Swin keeps the Hugging Face layout (`model.pixel_level_module.encoder`), EoMT and the
ViT-Adapter baseline hold their ViT as `backbone` (the ViT-Adapter's adapter is not backbone: base rate).

Weight decay: `weight_decay` everywhere, except parameters of normalisation layers (`weight_decay_norm`) and of
embeddings (`weight_decay_embed`: `nn.Embedding` weights such as Mask2Former's learned queries, and Swin's
relative-position tables / absolute position embeddings). Either None means `weight_decay`. These are the rules of
Mask2Former's `build_optimizer` (facebookresearch/Mask2Former train_net.py, with detectron2's
SOLVER.WEIGHT_DECAY_NORM and Mask2Former's SOLVER.WEIGHT_DECAY_EMBED, both 0.0 in its recipes); the official EoMT
recipe decays every parameter (both None).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from eomt_ood.errors import UserError
from eomt_ood.training.config import OptimConfig
from eomt_ood.training.schedules import layer_lr_scale

# Normalisation layers whose parameters take `weight_decay_norm` (the module types Mask2Former lists).
NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
# Parameter names that are position tables (Swin); Mask2Former never decays them.
POSITION_TABLES = ("relative_position_bias_table", "absolute_pos_embed")


def backbone_prefix(model: nn.Module) -> str:
    """The dotted path of the model's backbone module (`model.backbone_prefix`, default "backbone")."""
    return str(getattr(model, "backbone_prefix", "backbone"))


def backbone_depth(backbone: nn.Module) -> int | None:
    """L, the number of numbered ViT blocks (`backbone.blocks`), or None for a backbone without them."""
    blocks = getattr(backbone, "blocks", None)
    return len(blocks) if isinstance(blocks, nn.Sequential | nn.ModuleList) else None


def _decay_of(module: nn.Module, param_name: str, optim: OptimConfig) -> float:
    if isinstance(module, NORM_TYPES):
        return optim.weight_decay if optim.weight_decay_norm is None else optim.weight_decay_norm
    if isinstance(module, nn.Embedding) or param_name in POSITION_TABLES:
        return optim.weight_decay if optim.weight_decay_embed is None else optim.weight_decay_embed
    return optim.weight_decay


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """One AdamW group per trainable parameter tensor, in `named_parameters` order.

    Each group: {"params": [p], "name": full parameter name, "lr": base lr (before any schedule),
    "weight_decay", "backbone": bool}. The "backbone" flag selects the backbone warm-up schedule
    (`schedules.backbone_lr_factor`). A shared parameter appears once (under its first name).

    Raises UserError when `optim.llrd` != 1 but the backbone has no numbered ViT blocks.
    """
    prefix = backbone_prefix(model)
    try:
        backbone = model.get_submodule(prefix)
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no backbone module at {prefix!r}") from None
    depth = backbone_depth(backbone)
    if depth is None and optim.llrd != 1.0:
        raise UserError(
            f"optim.llrd: {optim.llrd} needs a ViT backbone with numbered blocks, but the backbone of "
            f"{type(model).__name__} ({prefix}: {type(backbone).__name__}) has none; set optim.llrd: 1.0 and "
            "scale it with optim.backbone_lr_multiplier"
        )
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{param_name}" if module_name else param_name
            in_backbone = name.startswith(prefix + ".")
            scale = 1.0
            if in_backbone:
                scale = optim.backbone_lr_multiplier
                if depth is not None:
                    scale *= layer_lr_scale(name[len(prefix) + 1 :], depth, optim.llrd)
            groups.append(
                {
                    "params": [param],
                    "name": name,
                    "lr": optim.lr * scale,
                    "weight_decay": _decay_of(module, param_name, optim),
                    "backbone": in_backbone,
                }
            )
    return groups
