"""Model registry, the builder: named architectures are tiny functions that only set defaults (timm style).

Every named model can be built at toy size by overriding kwargs (img_size, embed_dim, depth, num_heads,
reg_tokens, num_queries, num_classes, num_blocks, ...). `create_model` records the name and the overrides in
`model.config`; `save_checkpoint` writes them into the weights file and `load_model` rebuilds the same
architecture from it. Reading files and converting foreign key layouts is `models/checkpoints.py`'s job; this
module only decides which registered model a file describes.

EoMT names follow docs/models.md §2 (paper Table A); defaults are the Cityscapes semantic setting
(C = 19, Q = 100).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from eomt_ood.errors import UserError
from eomt_ood.io import atomic_path, write_text_atomic
from eomt_ood.models.backbones import create_backbone
from eomt_ood.models.catalog import MODELS as _MODELS
from eomt_ood.models.catalog import register_model
from eomt_ood.models.checkpoints import (
    FORMAT_TAG,
    fitting,
    hf_config_to_kwargs,
    infer_config,
    load_checkpoint,
    load_state_dict_into,
    read_state_dict,
    recorded_model,
    resolve_weights_file,
    suggest_model_name,
)
from eomt_ood.models.eomt import EoMT

__all__ = ["create_model", "list_models", "load_model", "model_config", "register_model", "save_checkpoint"]


def _register_baselines() -> None:
    """Import the Mask2Former baselines, which register themselves (transformers is only imported then)."""
    import eomt_ood.models.baselines  # noqa: F401


def _is_registered(name: str) -> bool:
    """Whether `name` is a registered model (the baselines register themselves when first needed)."""
    if name not in _MODELS:
        _register_baselines()
    return name in _MODELS


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    _register_baselines()
    return sorted(_MODELS)


def create_model(name: str, checkpoint: str | Path | None = None, **overrides) -> nn.Module:
    """Build registered model `name` with keyword overrides; load `checkpoint` (any supported format) strictly.

    `pretrained_backbone=<path>` loads local timm/DINOv2 backbone weights and is not recorded in the config
    (a saved checkpoint holds the weights). Unknown names are a `UserError` that lists the available ones.
    """
    if not _is_registered(name):
        raise UserError(f"model: unknown name {name!r}; available: {', '.join(list_models())}")
    model = _MODELS[name](**overrides)
    recorded = {"name": name, "kwargs": {k: v for k, v in overrides.items() if k != "pretrained_backbone"}}
    existing = getattr(model, "config", None)
    if existing is None or isinstance(existing, dict):
        setattr(model, "config", recorded)  # noqa: B010 (nn.Module typing would reject a dict attribute)
    else:  # e.g. a transformers model whose `config` is its own PretrainedConfig
        setattr(model, "registry_config", recorded)  # noqa: B010
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, built=(recorded["name"], recorded["kwargs"]))
    return model


def model_config(model: nn.Module) -> dict:
    """The {"name", "kwargs"} record `create_model` attached to `model`."""
    for attr in ("registry_config", "config"):
        record = getattr(model, attr, None)
        if isinstance(record, dict) and "name" in record:
            return record
    raise ValueError(f"{type(model).__name__} was not built by create_model; it has no registry config")


# ------------------------------------------------------------------------------------ saving and rebuilding
def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Write the model's state dict as safetensors with {"format", "name", "config"} metadata (+ a .json beside).

    The model must come from `create_model` (it carries its name and construction kwargs). Written atomically.
    """
    from safetensors.torch import save_file

    path = Path(path)
    config = model_config(model)
    config_json = json.dumps(config, sort_keys=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(
            tensors, str(tmp), metadata={"format": FORMAT_TAG, "name": config["name"], "config": config_json}
        )
    write_text_atomic(path.with_suffix(".json"), json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def load_model(path: str | Path, **overrides) -> nn.Module:
    """Rebuild a model from a file (or folder) and load it; `overrides` (e.g. masked_attn_enabled=False) win.

    The architecture comes from, in order: our safetensors metadata (`save_checkpoint`); a Hugging Face
    `config.json` beside the weights (model_type "eomt"); the tensor shapes, when they match a registered
    DINOv2 size (official `pytorch_model.bin`).
    """
    path = resolve_weights_file(path)
    state_dict, metadata = read_state_dict(path)
    hf_config_path = path.parent / "config.json"
    recorded = recorded_model(metadata, path)
    if recorded is not None:
        name, kwargs = recorded
    elif hf_config_path.is_file() and _is_eomt_hf_config(hf_config_path):
        with fitting(hf_config_path):
            name, kwargs = hf_config_to_kwargs(json.loads(hf_config_path.read_text()))
    else:
        with fitting(path):
            inferred = infer_config(state_dict)
        name = suggest_model_name(inferred)
        if name is None:
            raise UserError(
                f"{path}: no eomt_ood metadata and no registered size with embed dim {inferred['embed_dim']} and "
                f"{inferred['depth']} blocks; build it with create_model(name, checkpoint=..., **overrides)"
            )
        kwargs = {k: inferred[k] for k in ("img_size", "num_queries", "num_classes")}
        if inferred["num_blocks"] is not None:
            kwargs["num_blocks"] = inferred["num_blocks"]
    if not _is_registered(name):
        raise UserError(f"{path}: records the model {name!r}, which this version does not know")
    with fitting(path):  # recorded kwargs from another version of the package may not build
        model = create_model(name, **{**kwargs, **overrides})
        load_state_dict_into(model, state_dict)
    return model


def build_model(name: str | None, checkpoint: str | Path | None) -> nn.Module:
    """The model a command was given: `create_model(name, checkpoint=checkpoint)` when it names one, else
    `load_model(checkpoint)` (the architecture from the file). Naming neither is a `UserError`."""
    if name is not None:
        return create_model(name, checkpoint=checkpoint)
    if checkpoint is None:
        raise UserError("--model or --checkpoint is needed")
    return load_model(checkpoint)


def _is_eomt_hf_config(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("model_type") == "eomt"
    except (OSError, ValueError, AttributeError):
        return False


# ------------------------------------------------------------------------------------------ architectures
def _create_eomt(
    backbone: str,
    *,
    img_size: int,
    num_blocks: int,
    patch_size: int = 16,
    num_classes: int = 19,
    num_queries: int = 100,
    masked_attn_enabled: bool = True,
    pretrained_backbone: str | Path | None = None,
    **timm_kwargs,
) -> EoMT:
    vit = create_backbone(
        backbone,
        img_size=img_size,
        patch_size=patch_size,
        pretrained_backbone=pretrained_backbone,
        **timm_kwargs,
    )
    return EoMT(
        vit,
        num_classes,
        num_queries=num_queries,
        num_blocks=num_blocks,
        masked_attn_enabled=masked_attn_enabled,
    )


def _defaults(defaults: dict, overrides: dict) -> dict:
    return {**defaults, **overrides}


# DINOv2 with 4 registers (the released EoMT models); L2 = 3 / 3 / 4 / 5 for S / B / L / g.
@register_model
def eomt_small_patch16_1024(**kwargs) -> EoMT:
    return _create_eomt(
        "vit_small_patch14_reg4_dinov2", **_defaults(dict(img_size=1024, num_blocks=3), kwargs)
    )


@register_model
def eomt_base_patch16_1024(**kwargs) -> EoMT:
    return _create_eomt(
        "vit_base_patch14_reg4_dinov2", **_defaults(dict(img_size=1024, num_blocks=3), kwargs)
    )


@register_model
def eomt_large_patch16_1024(**kwargs) -> EoMT:
    """The official Cityscapes model (84.2 mIoU): ViT-L DINOv2, L2 = 4, Q = 100, C = 19, S = 1024."""
    return _create_eomt(
        "vit_large_patch14_reg4_dinov2", **_defaults(dict(img_size=1024, num_blocks=4), kwargs)
    )


@register_model
def eomt_giant_patch16_1024(**kwargs) -> EoMT:
    return _create_eomt(
        "vit_giant_patch14_reg4_dinov2", **_defaults(dict(img_size=1024, num_blocks=5), kwargs)
    )


# 512 px variants (the official ADE20K semantic models are these with num_classes=150).
@register_model
def eomt_small_patch16_512(**kwargs) -> EoMT:
    return _create_eomt(
        "vit_small_patch14_reg4_dinov2", **_defaults(dict(img_size=512, num_blocks=3), kwargs)
    )


@register_model
def eomt_base_patch16_512(**kwargs) -> EoMT:
    return _create_eomt("vit_base_patch14_reg4_dinov2", **_defaults(dict(img_size=512, num_blocks=3), kwargs))


@register_model
def eomt_large_patch16_512(**kwargs) -> EoMT:
    return _create_eomt(
        "vit_large_patch14_reg4_dinov2", **_defaults(dict(img_size=512, num_blocks=4), kwargs)
    )


@register_model
def eomt_giant_patch16_512(**kwargs) -> EoMT:
    return _create_eomt(
        "vit_giant_patch14_reg4_dinov2", **_defaults(dict(img_size=512, num_blocks=5), kwargs)
    )


# DeiT-III ViT-L (paper Table A pre-training ablation): native patch 16, CLS only (P = 1), no registers.
@register_model
def eomt_deit3_large_patch16_1024(**kwargs) -> EoMT:
    return _create_eomt("deit3_large_patch16_384", **_defaults(dict(img_size=1024, num_blocks=4), kwargs))


@register_model
def eomt_deit3_large_patch16_512(**kwargs) -> EoMT:
    return _create_eomt("deit3_large_patch16_384", **_defaults(dict(img_size=512, num_blocks=4), kwargs))


# EVA-02 ViT-L (paper Table A): RoPE on patch tokens only (queries, CLS unrotated), SwiGLU MLP, no registers;
# no official code path exists. `use_fc_norm=False` keeps timm's final token LayerNorm as EoMT's final_norm.
@register_model
def eomt_eva02_large_patch16_1024(**kwargs) -> EoMT:
    defaults = dict(img_size=1024, num_blocks=4, use_fc_norm=False)
    return _create_eomt("eva02_large_patch14_224", **_defaults(defaults, kwargs))


@register_model
def eomt_eva02_large_patch16_512(**kwargs) -> EoMT:
    defaults = dict(img_size=512, num_blocks=4, use_fc_norm=False)
    return _create_eomt("eva02_large_patch14_224", **_defaults(defaults, kwargs))


# DINOv3 (timm's `vit_*_patch16_dinov3_qkvb`: native patch 16, 4 registers, RoPE on the patches, LayerScale;
# the q/v biases the official code trains through Hugging Face's DINOv3ViTModel). Official EoMT DINOv3 settings
# (tue-mps/eomt model_zoo/dinov3.md): COCO panoptic S / B / L at 640 and L at 1280 with Q = 200, C = 133; ADE20K
# semantic L at 512 with Q = 100, C = 150; L2 = 4 for L, 3 for S / B (as in the DINOv2 S / B configs). Their
# released weights are deltas to the DINOv3 backbone: build with pretrained_backbone=<DINOv3 weights> and
# checkpoint=<the official file> (models/checkpoints.py adds the two). The *_1024 variants keep the Cityscapes
# defaults of this toolkit (C = 19, Q = 100) for training here; no official checkpoint exists for them.
# rope_rescale_coords: in training, HF's DINOv3 scales the RoPE coordinates by one log-uniform factor in [1/2, 2]
# per forward (its config's pos_embed_rescale = 2), and the official EoMT trains through that module.
_DINOV3 = dict(dynamic_img_size=False, rope_rescale_coords=2.0)
_DINOV3_COCO = dict(num_queries=200, num_classes=133, **_DINOV3)


@register_model
def eomt_dinov3_small_patch16_640(**kwargs) -> EoMT:
    defaults = dict(img_size=640, num_blocks=3, **_DINOV3_COCO)
    return _create_eomt("vit_small_patch16_dinov3_qkvb", **_defaults(defaults, kwargs))


@register_model
def eomt_dinov3_base_patch16_640(**kwargs) -> EoMT:
    defaults = dict(img_size=640, num_blocks=3, **_DINOV3_COCO)
    return _create_eomt("vit_base_patch16_dinov3_qkvb", **_defaults(defaults, kwargs))


@register_model
def eomt_dinov3_large_patch16_640(**kwargs) -> EoMT:
    defaults = dict(img_size=640, num_blocks=4, **_DINOV3_COCO)
    return _create_eomt("vit_large_patch16_dinov3_qkvb", **_defaults(defaults, kwargs))


@register_model
def eomt_dinov3_large_patch16_1280(**kwargs) -> EoMT:
    defaults = dict(img_size=1280, num_blocks=4, **_DINOV3_COCO)
    return _create_eomt("vit_large_patch16_dinov3_qkvb", **_defaults(defaults, kwargs))


@register_model
def eomt_dinov3_large_patch16_512(**kwargs) -> EoMT:
    defaults = dict(img_size=512, num_blocks=4, num_queries=100, num_classes=150, **_DINOV3)
    return _create_eomt("vit_large_patch16_dinov3_qkvb", **_defaults(defaults, kwargs))


@register_model
def eomt_dinov3_small_patch16_1024(**kwargs) -> EoMT:
    defaults = dict(img_size=1024, num_blocks=3, **_DINOV3)
    return _create_eomt("vit_small_patch16_dinov3_qkvb", **_defaults(defaults, kwargs))


@register_model
def eomt_dinov3_base_patch16_1024(**kwargs) -> EoMT:
    defaults = dict(img_size=1024, num_blocks=3, **_DINOV3)
    return _create_eomt("vit_base_patch16_dinov3_qkvb", **_defaults(defaults, kwargs))


@register_model
def eomt_dinov3_large_patch16_1024(**kwargs) -> EoMT:
    defaults = dict(img_size=1024, num_blocks=4, **_DINOV3)
    return _create_eomt("vit_large_patch16_dinov3_qkvb", **_defaults(defaults, kwargs))


@register_model
def eomt_test(**kwargs) -> EoMT:
    """Tiny DINOv2-style EoMT for tests: S 64, p 16 (G 4), D 32, 4 blocks, 2 heads, 2 registers, L2 2, Q 8, C 19."""
    defaults = dict(
        img_size=64,
        embed_dim=32,
        depth=4,
        num_heads=2,
        reg_tokens=2,
        num_blocks=2,
        num_queries=8,
        num_classes=19,
    )
    return _create_eomt("vit_small_patch14_reg4_dinov2", **_defaults(defaults, kwargs))


@register_model
def eomt_dinov3_test(**kwargs) -> EoMT:
    """Tiny DINOv3-style EoMT for tests: S 64, p 16 (G 4), D 32, 4 blocks, 2 heads, 2 registers, L2 2, Q 8, C 19."""
    defaults = dict(
        img_size=64,
        embed_dim=32,
        depth=4,
        num_heads=2,
        num_reg_tokens=2,
        num_blocks=2,
        num_queries=8,
        num_classes=19,
        **_DINOV3,
    )
    return _create_eomt("vit_small_patch16_dinov3_qkvb", **_defaults(defaults, kwargs))
