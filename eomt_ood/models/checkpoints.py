"""EoMT checkpoints: one pure filter that turns any supported file into our keys, then strict loading.

Formats, told apart by their keys, not file names (docs/models.md §5):
- official tue-mps/eomt (`network.encoder.backbone.<timm>`, `network.q.weight`, ..., `criterion.empty_weight`),
  also wrapped in a Lightning `.ckpt` (`{"state_dict": ...}`) and with `_orig_mod.` left by torch.compile;
- Hugging Face `EomtForUniversalSegmentation` (`embeddings.*`, `layers.N.attention.{q,k,v}_proj`, ...) and the
  older port generation (`model.` prefix, `model.encoder.layers`, `model.encoder.query`, `attention.proj_out`);
- ours (`backbone.<timm>`, `q.weight`, `class_head`, `mask_head.{0,2,4}`, `upscale.N`, `attn_mask_probs`),
  written by `registry.save_checkpoint` as safetensors with the model name and kwargs in the metadata;
- official DINOv3 EoMT (`network.encoder.backbone.` + Hugging Face DINOv3ViTModel keys with `embeddings` renamed
  `patch_embed` and `layer` renamed `blocks`), whose released files hold deltas to the DINOv3 backbone.

`read_state_dict` is the package's one reader of weights files (EoMT checkpoints, backbone weights, baseline
checkpoints): safetensors or `torch.load(weights_only=True)` only, so nothing is ever unpickled. This module
knows file formats and key layouts but not the registry: building a model from a file is `registry.load_model`.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eomt_ood.errors import UserError, first_line, plain_text

FORMAT_TAG = "eomt_ood"
_PIXEL_CONSTANTS = ("pixel_mean", "pixel_std")


class CheckpointMismatch(ValueError):
    """A state dict that is not an EoMT checkpoint or does not fit the model (message without the file name)."""


# ---------------------------------------------------------------------------------------------- reading files
# The package's only reader of weights files: EoMT checkpoints, backbone weights and baseline checkpoints all
# come through `read_state_dict`, so a file problem reads the same whichever model asked for it.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def resolve_weights_file(path: str | Path, missing_hint: str = "") -> Path:
    """A weights file, or what a Hugging Face folder holds: model.safetensors, pytorch_model.bin, or the index
    of a sharded save (model.safetensors.index.json / pytorch_model.bin.index.json), in that order.

    missing_hint: appended to the "not found" error (e.g. where to download the file).
    """
    path = Path(path)
    if path.is_dir():
        for name in WEIGHT_FILES + SHARD_INDEXES:
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path}: folder has none of {', '.join(WEIGHT_FILES + SHARD_INDEXES)}")
    if not path.is_file():
        raise UserError(f"{path}: weights file not found" + (f"; {missing_hint}" if missing_hint else ""))
    return path


def read_state_dict(path: str | Path, missing_hint: str = "") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a weights file, or of the weights in a Hugging Face folder.

    Reads .safetensors (with its metadata), .bin / .pt / .pth / .ckpt through `torch.load(weights_only=True)`,
    and sharded Hugging Face saves through their index. Lightning `{"state_dict": ...}` and `{"model": ...}`
    wrappers (Lightning .ckpt, Meta's DeiT/DINO release files) are unwrapped. Metadata is the safetensors
    header's; a Lightning checkpoint of `eomt-ood train` gives the same record of the model as our safetensors
    files (`recorded_model`); other files have none. Every failure is a UserError naming the file: not found,
    unreadable, pickled Python objects refused, not a dict of tensors.
    """
    path = resolve_weights_file(path, missing_hint)
    if path.name in SHARD_INDEXES:
        return _read_shards(path), {}
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except Exception as exc:
        raise UserError(f"{path}: unreadable safetensors file ({first_line(exc)})") from exc


def load_weights_only(path: str | Path, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain containers, never a pickled object.

    mmap: map the tensors instead of reading them (zip-format files; older files are read). Any failure is a
    UserError naming the file; a file holding Python objects is "refused to unpickle" with the refused global.
    """
    import warnings
    import zipfile

    try:
        with warnings.catch_warnings():
            # torch warns (on stderr) about pickle protocols it does not expect before it refuses the file.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(
                path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path)
            )
    except Exception as exc:
        raise UserError(
            f"{path}: {_refusal(exc) or f'unreadable torch weights file ({first_line(exc)})'}"
        ) from exc


def _read_torch(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    obj = load_weights_only(path)
    metadata: dict[str, str] = {}
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):  # Lightning .ckpt; Meta release files
            if isinstance(obj.get(wrapper), dict) and not all(isinstance(v, Tensor) for v in obj.values()):
                metadata = _training_record(obj.get("eomt_ood_config"))
                obj = obj[wrapper]
                break
    if not _is_state_dict(obj):
        raise UserError(f"{path}: expected a dict of tensors (a state dict), found {_describe(obj)}")
    return obj, metadata


def _training_record(config: Any) -> dict[str, str]:
    """Our metadata for the model a training checkpoint records (`eomt_ood_config`, the resolved recipe), or {}
    for other files. The module's weights sit under `model.`, which the key filters strip."""
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        return {}
    record = {"name": model["name"], "kwargs": model.get("overrides") or {}}
    return {"format": FORMAT_TAG, "name": model["name"], "config": json.dumps(record, sort_keys=True)}


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _read_shards(index: Path) -> dict[str, Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{index}: unreadable shard index ({first_line(exc)})") from exc
    state: dict[str, Tensor] = {}
    for name in shards:
        shard = resolve_weights_file(index.parent / name)
        state |= (_read_safetensors(shard) if shard.suffix == ".safetensors" else _read_torch(shard))[0]
    return state


def _refusal(exc: BaseException) -> str | None:
    """What torch's weights-only unpickler refused, as the rest of a one-line message; None for other failures.

    Its message spends several lines on the change of default in PyTorch 2.6; the line that matters names the
    refused global ("Unsupported global: GLOBAL argparse.Namespace", "unsupported GLOBAL posix.system") or
    opcode ("Unsupported operand 149").
    """
    text = plain_text(exc)  # torch colours part of its message
    found = re.search(r"unsupported global:? (GLOBAL )?([\w.]+)", text, re.IGNORECASE)
    if found:
        return (
            f"refused to unpickle: the file holds Python objects besides tensors (GLOBAL {found.group(2)}); "
            "only weights-only files are loaded"
        )
    found = re.search(r"Unsupported operand \d+|Unpickler error: *(\S[^\n]*)", text)
    if found and "Weights only load failed" in text:
        return (
            f"unreadable torch weights file: not a weights-only file ({found.group(0).strip()[:80]}); "
            "nothing in it was unpickled"
        )
    return None


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        odd = next(k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, Tensor)))
        if not isinstance(odd, str):
            return f"a dict with the {type(odd).__name__} key {str(odd)[:60]!r} (state dict keys are names)"
        return f"a dict whose entry {str(odd)[:60]!r} is a {type(obj[odd]).__name__}"
    return f"a {type(obj).__name__}"


def recorded_model(metadata: dict[str, str], path: str | Path) -> tuple[str, dict[str, Any]] | None:
    """The registered name and construction kwargs a file records (`registry.save_checkpoint`, or a training
    checkpoint's recipe), None when it records none; a record that cannot be read is a UserError naming the
    file (a file written by another program under our tag, or edited)."""
    if metadata.get("format") != FORMAT_TAG:
        return None
    try:
        config = json.loads(metadata["config"])
        name, kwargs = config["name"], config["kwargs"]
        if not isinstance(name, str) or not isinstance(kwargs, dict):
            raise TypeError("name must be a string and kwargs a mapping")
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: unreadable eomt_ood model record ({first_line(exc)})") from None
    return name, dict(kwargs)


@contextlib.contextmanager
def fitting(path: str | Path) -> Iterator[None]:
    """Any failure while a weights file is converted and fitted to a model becomes one UserError naming the file.

    The filters and loaders below check what they expect and say so (`CheckpointMismatch`); a file edited or
    written by another program can still break an assumption of a key layout or a tensor's rank (a KeyError, an
    IndexError, a torch RuntimeError), which is the file's problem too, not a crash."""
    try:
        yield
    except UserError:
        raise
    except CheckpointMismatch as exc:
        raise UserError(f"{path}: {exc}") from exc
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise UserError(f"{path}: does not fit the model ({type(exc).__name__}: {first_line(exc)})") from exc


def load_strict(module: nn.Module, state_dict: dict[str, Tensor], what: str = "the model") -> None:
    """`module.load_state_dict(state_dict, strict=True)` with every refusal as one CheckpointMismatch line:
    missing and unexpected keys, the first tensor of another shape, or integer values for a float tensor (the
    copy would cast them silently)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = [f"{kind} {keys[:3]}{f' and {len(keys) - 3} more' if len(keys) > 3 else ''}"
                 for kind, keys in (("missing", missing), ("unexpected", unexpected)) if keys]  # fmt: skip
        raise CheckpointMismatch(f"keys do not fit {what}: {', '.join(parts)}")
    for key, value in state_dict.items():
        if value.shape != expected[key].shape:
            raise CheckpointMismatch(
                f"{key} has shape {tuple(value.shape)}, {what} expects {tuple(expected[key].shape)}"
            )
        if expected[key].is_floating_point() and not value.is_floating_point():
            raise CheckpointMismatch(
                f"{key} holds {value.dtype} values, {what} expects floating point weights"
            )
    module.load_state_dict(state_dict, strict=True)


# ------------------------------------------------------------------------------------- format normalisation
def _from_official_or_ours(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    anchor = next(k for k in state_dict if k.endswith("backbone.cls_token"))
    # "network.encoder.backbone." | "backbone." | "model.backbone."
    return _split_network(state_dict, anchor[: -len("cls_token")], lambda backbone: backbone)


def _split_network(
    state_dict: dict[str, Tensor], backbone_prefix: str, convert_backbone: Any
) -> dict[str, Tensor]:
    """Keys under `backbone_prefix` -> `backbone.` + convert_backbone(their rest); the module's others unprefixed."""
    module_prefix = backbone_prefix[: -len("backbone.")]
    if module_prefix.endswith("encoder."):  # official: the ViT and pixel constants sit in network.encoder
        module_prefix = module_prefix[: -len("encoder.")]
    backbone = {k[len(backbone_prefix) :]: v for k, v in state_dict.items() if k.startswith(backbone_prefix)}
    out = {"backbone." + k: v for k, v in convert_backbone(backbone).items()}
    for key, value in state_dict.items():
        if key.startswith(backbone_prefix):
            continue
        if key.startswith(module_prefix):
            rest = key[len(module_prefix) :]
            if rest.removeprefix("encoder.") in _PIXEL_CONSTANTS or rest.startswith("criterion."):
                continue  # constants, and the loss's class weights (rebuilt by the loss; shape depends on C)
            out[rest] = value
        # else: keys outside the model's prefix belong to a training wrapper, not to the network
    return out


_HF_RENAMES = [  # (regex on the HF key, our key); applied after prefixes are normalised
    (r"embeddings\.cls_token", "backbone.cls_token"),
    (r"embeddings\.register_tokens", "backbone.reg_token"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"backbone.patch_embed.proj.\1"),
    (r"layers\.(\d+)\.norm([12])\.(weight|bias)", r"backbone.blocks.\1.norm\2.\3"),
    (r"layers\.(\d+)\.attention\.out_proj\.(weight|bias)", r"backbone.blocks.\1.attn.proj.\2"),
    (r"layers\.(\d+)\.layer_scale([12])\.lambda1", r"backbone.blocks.\1.ls\2.gamma"),
    (r"layers\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"backbone.blocks.\1.mlp.\2.\3"),
    (r"layers\.(\d+)\.mlp\.weights_in\.(weight|bias)", r"backbone.blocks.\1.mlp.fc1.\2"),  # SwiGLU (giant)
    (r"layers\.(\d+)\.mlp\.weights_out\.(weight|bias)", r"backbone.blocks.\1.mlp.fc2.\2"),
    (r"layernorm\.(weight|bias)", r"backbone.norm.\1"),
    (r"query\.weight", "q.weight"),
    (r"class_predictor\.(weight|bias)", r"class_head.\1"),
    (r"mask_head\.fc1\.(weight|bias)", r"mask_head.0.\1"),
    (r"mask_head\.fc2\.(weight|bias)", r"mask_head.2.\1"),
    (r"mask_head\.fc3\.(weight|bias)", r"mask_head.4.\1"),
    (r"upscale_block\.block\.(\d+)\.(conv[12])\.(weight|bias)", r"upscale.\1.\2.\3"),
    (r"upscale_block\.block\.(\d+)\.layernorm2d\.(weight|bias)", r"upscale.\1.norm.\2"),
    (r"attn_mask_probs", "attn_mask_probs"),
]


def _from_hugging_face(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    renamed: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for prefix in ("model.", "eomt."):  # older port generation / base_model_prefix
            key = key.removeprefix(prefix)
        for old, new in (("encoder.layers.", "layers."), ("encoder.query.", "query.")):
            if key.startswith(old):
                key = new + key[len(old) :]
        renamed[key.replace(".attention.proj_out.", ".attention.out_proj.")] = value

    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in renamed.items():
        if key.startswith("criterion.") or key == "embeddings.position_ids":
            continue
        if key == "embeddings.position_embeddings.weight":
            out["backbone.pos_embed"] = value.unsqueeze(0)  # (G*G, D) -> (1, G*G, D)
            continue
        if key == "embeddings.register_tokens" and value.shape[1] == 0:
            continue  # no registers: timm has no reg_token parameter at all
        split = re.fullmatch(r"layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)", key)
        if split:
            qkv.setdefault((split[1], split[3]), {})[split[2]] = value
            continue
        for pattern, replacement in _HF_RENAMES:
            if re.fullmatch(pattern, key):
                key = re.sub(pattern, replacement, key)
                break
        out[key] = value  # unknown keys pass through unchanged so strict loading names them
    for (block, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointMismatch(f"block {block} has only {sorted(parts)} of the q/k/v projections")
        # timm's fused qkv rows are [q; k; v]
        out[f"backbone.blocks.{block}.attn.qkv.{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    return out


_DINOV3_RENAMES = [  # (regex on a Hugging Face DINOv3ViTModel key, timm Eva key); official EoMT aliases too
    (r"(?:embeddings|patch_embed)\.cls_token", "cls_token"),
    (r"(?:embeddings|patch_embed)\.register_tokens", "reg_token"),
    (r"(?:embeddings|patch_embed)\.patch_embeddings\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"(?:layer|blocks)\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"(?:layer|blocks)\.(\d+)\.attention\.o_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"(?:layer|blocks)\.(\d+)\.attention\.q_proj\.bias", r"blocks.\1.attn.q_bias"),
    (r"(?:layer|blocks)\.(\d+)\.attention\.v_proj\.bias", r"blocks.\1.attn.v_bias"),
    (r"(?:layer|blocks)\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.gamma_\2"),
    (r"(?:layer|blocks)\.(\d+)\.mlp\.up_proj\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"(?:layer|blocks)\.(\d+)\.mlp\.down_proj\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
]
_DINOV3_ANCHOR = "patch_embed.patch_embeddings.weight"  # the official EoMT's name for DINOv3's patch conv


def is_hf_dinov3(state_dict: dict[str, Tensor]) -> bool:
    """A Hugging Face DINOv3ViTModel state dict (no prefix), e.g. facebook/dinov3-vitl16-pretrain-lvd1689m."""
    return "embeddings.patch_embeddings.weight" in state_dict and "layer.0.norm1.weight" in state_dict


def is_official_dinov3(state_dict: dict[str, Tensor]) -> bool:
    """An official tue-mps/eomt DINOv3 file: the HF DINOv3 backbone under `...encoder.backbone.`, aliased."""
    return any(k.endswith("backbone." + _DINOV3_ANCHOR) for k in state_dict)


def dinov3_to_timm(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face DINOv3ViTModel keys (or the official EoMT aliases `patch_embed.*`, `blocks.N.*`) -> timm's
    `vit_*_patch16_dinov3_qkvb` keys: q/k/v weights fused as rows [q; k; v], q and v biases kept (DINOv3 has no
    k bias), LayerScale as gamma_1/2; the mask token (pre-training only) and RoPE buffers are dropped."""
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        if key.endswith("mask_token") or key.startswith("rope_embeddings."):
            continue
        if ".mlp.gate_proj." in key:
            raise CheckpointMismatch("gated-MLP DINOv3 (ViT-S+/H+/7B) backbones are not supported")
        split = re.fullmatch(r"(?:layer|blocks)\.(\d+)\.attention\.([qkv])_proj\.weight", key)
        if split:
            qkv.setdefault(split[1], {})[split[2]] = value
            continue
        if re.fullmatch(r"(?:layer|blocks)\.\d+\.attention\.k_proj\.bias", key):
            if value.abs().max() > 0:
                raise CheckpointMismatch(f"{key} is not zero; timm's DINOv3 has no key bias")
            continue
        for pattern, replacement in _DINOV3_RENAMES:
            if re.fullmatch(pattern, key):
                key = re.sub(pattern, replacement, key)
                break
        out[key] = value  # norm.* keeps its name; unknown keys pass through so strict loading names them
    for block, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointMismatch(f"block {block} has only {sorted(parts)} of the q/k/v projections")
        out[f"blocks.{block}.attn.qkv.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _from_official_dinov3(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    anchor = next(k for k in state_dict if k.endswith("backbone." + _DINOV3_ANCHOR))
    return _split_network(state_dict, anchor[: -len(_DINOV3_ANCHOR)], dinov3_to_timm)


def _add_dinov3_base(delta: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Official DINOv3 EoMT weights from their released deltas, the way the official loader rebuilds them.

    It adds every tensor to a base: the model as initialised with the DINOv3 backbone weights, every parameter
    outside the backbone zeroed, buffers as initialised (attn_mask_probs = 1). So the backbone needs its DINOv3
    weights loaded first (`pretrained_backbone`). A file whose final LayerNorm weight is O(1) holds full weights,
    not deltas (fine-tuning moves LayerNorm weights by far less), and is taken as it is without a backbone.
    """
    backbone: Any = getattr(model, "backbone", None)
    pretrained = getattr(backbone, "pretrained_weights", None)
    norm = delta.get("backbone.norm.weight")
    full_weights = norm is not None and float(norm.abs().mean()) > 0.5
    if pretrained is None:
        if full_weights:
            return delta
        raise CheckpointMismatch(
            "official DINOv3 EoMT weights are deltas to the DINOv3 backbone: build the model with "
            "pretrained_backbone=<DINOv3 weights> (timm vit_*_patch16_dinov3_qkvb.lvd1689m, "
            "facebook/dinov3-*-pretrain-lvd1689m or Meta's .pth)"
        )
    if full_weights:
        raise CheckpointMismatch(
            "holds full DINOv3 EoMT weights, not deltas: build the model without pretrained_backbone"
        )
    base = model.state_dict()
    out = {}
    for key, value in delta.items():
        if key.startswith("backbone.") and key in base and base[key].shape == value.shape:
            out[key] = base[key].to(value.dtype) + value
        elif key == "attn_mask_probs":
            out[key] = 1 + value
        else:
            out[key] = value  # zero base; a key the model lacks is named by the strict load
    return out


def to_eomt_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Normalise an official / Lightning / Hugging Face / own state dict to our key names (model-independent)."""
    inner: Any = state_dict.get("state_dict")
    if isinstance(inner, dict):
        state_dict = inner
    state_dict = {k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}
    if is_official_dinov3(state_dict):
        return _from_official_dinov3(state_dict)
    if any(k.endswith("embeddings.cls_token") for k in state_dict):
        return _from_hugging_face(state_dict)
    if any(k.endswith("backbone.cls_token") for k in state_dict):
        return _from_official_or_ours(state_dict)
    raise CheckpointMismatch(
        "not an EoMT checkpoint: no backbone.cls_token (official/ours) or embeddings.cls_token (HF) key"
    )


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Any supported EoMT state dict -> one that `model.load_state_dict(..., strict=True)` accepts.

    Pure: the input is not modified. A missing `attn_mask_probs` (older HF files) defaults to zeros, i.e. the
    fully annealed state in which masking changes nothing. Official DINOv3 deltas are added to the model's
    DINOv3 backbone weights (`_add_dinov3_base`).
    """
    out = to_eomt_keys(state_dict)
    if is_official_dinov3({k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}):
        out = _add_dinov3_base(out, model)
    probs: Any = getattr(model, "attn_mask_probs", None)
    if "attn_mask_probs" not in out and isinstance(probs, Tensor):
        out["attn_mask_probs"] = torch.zeros_like(probs)
    return out


# --------------------------------------------------------------------------------------- config from shapes
def infer_config(state_dict: dict[str, Tensor]) -> dict[str, int | bool | None]:
    """Architecture read from tensor shapes (docs/models.md §5 step 5); accepts any supported format.

    Returns learned_pos_embed (False for DINOv3's rotary embedding), embed_dim D, depth L, reg_tokens R,
    separate_qkv (EVA-02), patch_size p, grid_size G, img_size S = G p (None without a learned table),
    num_queries Q, num_classes C, num_blocks L2 (None when the file has no attn_mask_probs), mlp_hidden, swiglu.
    Attention heads do not show in any shape and are not inferred.
    """
    sd = to_eomt_keys(state_dict)
    needed = ["backbone.cls_token", "backbone.patch_embed.proj.weight", "q.weight", "class_head.weight"]
    missing = [k for k in needed if k not in sd]
    if missing:
        raise CheckpointMismatch(f"not a complete EoMT checkpoint: missing {', '.join(missing)}")
    ranks = {"backbone.cls_token": 3, "backbone.patch_embed.proj.weight": 4, "q.weight": 2, "class_head.weight": 2,
             "backbone.pos_embed": 3, "backbone.reg_token": 3, "attn_mask_probs": 1}  # fmt: skip
    odd = [f"{k} {tuple(sd[k].shape)}" for k, rank in ranks.items() if k in sd and sd[k].dim() != rank]
    if odd:
        raise CheckpointMismatch(f"not an EoMT checkpoint: tensors of an unexpected rank: {', '.join(odd)}")
    block_ids = [int(m[1]) for k in sd if (m := re.match(r"backbone\.blocks\.(\d+)\.", k))]
    patch = int(sd["backbone.patch_embed.proj.weight"].shape[-1])
    reg_tokens = int(sd["backbone.reg_token"].shape[1]) if "backbone.reg_token" in sd else 0
    pos = sd.get("backbone.pos_embed")
    num_pos = -1  # rotary position embedding (DINOv3): no learned table, no image size in the weights
    if pos is not None:
        num_pos = int(pos.shape[1])
        if math.isqrt(num_pos) ** 2 != num_pos:  # pos-embed that also covers CLS + registers (EVA-02)
            num_pos -= 1 + reg_tokens
    grid = math.isqrt(max(num_pos, 0))
    fc1, fc2 = sd.get("backbone.blocks.0.mlp.fc1.weight"), sd.get("backbone.blocks.0.mlp.fc2.weight")
    return {
        "learned_pos_embed": pos is not None,
        "embed_dim": int(sd["backbone.cls_token"].shape[-1]),
        "depth": max(block_ids) + 1 if block_ids else 0,
        "reg_tokens": reg_tokens,
        "separate_qkv": "backbone.blocks.0.attn.q_proj.weight" in sd,
        "patch_size": patch,
        "grid_size": grid if grid * grid == num_pos else None,
        "img_size": grid * patch if grid * grid == num_pos else None,
        "num_queries": int(sd["q.weight"].shape[0]),
        "num_classes": int(sd["class_head.weight"].shape[0]) - 1,
        "num_blocks": int(sd["attn_mask_probs"].shape[0]) if "attn_mask_probs" in sd else None,
        "mlp_hidden": int(fc1.shape[0]) if fc1 is not None else None,
        "swiglu": bool(fc1 is not None and fc2 is not None and fc2.shape[1] != fc1.shape[0]),
    }


_LABELS = {
    "learned_pos_embed": "a learned position embedding (DINOv2, DeiT III, EVA-02; DINOv3 uses RoPE)",
    "depth": "blocks",
    "embed_dim": "embed dim",
    "separate_qkv": "separate q/k/v projections (EVA-02)",
    "reg_tokens": "register tokens",
    "patch_size": "patch size",
    "img_size": "image size",
    "num_queries": "queries",
    "num_classes": "classes",
    "num_blocks": "query blocks (L2)",
    "mlp_hidden": "MLP width",
    "swiglu": "SwiGLU MLP",
}

# Registered DINOv2 sizes by (embed_dim, depth), to suggest a name when a file does not fit.
_KNOWN_SIZES = {(384, 12): "small", (768, 12): "base", (1024, 24): "large", (1536, 40): "giant"}


def suggest_model_name(config: dict) -> str | None:
    """Registered name whose architecture fits an inferred config (DINOv2 sizes, patch 16), or None."""
    size = _KNOWN_SIZES.get((config["embed_dim"], config["depth"]))
    if size is None or config["patch_size"] != 16:
        return None
    if config["reg_tokens"] == 0 and size == "large":
        size, family = "large", "eomt_deit3"
    else:
        family = "eomt"
    return f"{family}_{size}_patch16_{config['img_size'] if config['img_size'] in (512, 1024) else 1024}"


def describe_mismatch(checkpoint: dict, model: dict) -> str | None:
    """One line naming every architecture difference, or None when the shapes agree."""
    diffs = [
        k
        for k in _LABELS
        if checkpoint.get(k) is not None and model.get(k) is not None and checkpoint[k] != model[k]
    ]
    if not diffs:
        return None
    parts = []
    for i, key in enumerate(diffs):
        ours, theirs, label = model.get(key), checkpoint[key], _LABELS[key]
        if isinstance(theirs, bool):
            parts.append(f"{label}: checkpoint {'yes' if theirs else 'no'}, model {'yes' if ours else 'no'}")
        elif i == 0:
            parts.append(f"checkpoint has {theirs} {label}, model has {ours}")
        else:
            parts.append(f"{label} {theirs} vs {ours}")
    line = "; ".join(parts)
    suggestion = suggest_model_name(checkpoint)
    if suggestion:
        size = checkpoint.get("img_size")
        other_size = f"img_size={size}, " if size is not None and not suggestion.endswith(f"_{size}") else ""
        line += (
            f" (the file looks like {suggestion} with {other_size}num_queries={checkpoint['num_queries']},"
            f" num_classes={checkpoint['num_classes']})"
        )
    return line


# -------------------------------------------------------------------------------------------------- loading
def load_state_dict_into(
    model: nn.Module, state_dict: dict[str, Tensor], load_class_head: bool = True
) -> None:
    """Filter `state_dict` for `model`, check the architecture, then load strictly (raises CheckpointMismatch).

    load_class_head=False keeps the model's own (freshly initialised) `class_head`, for fine-tuning on another
    label set (the official `load_ckpt_class_head False`); everything else still loads strictly.
    """
    own_filter = getattr(model, "checkpoint_filter_fn", None)
    if callable(own_filter):  # other families (the Mask2Former baselines) bring their own key filter
        load_strict(model, own_filter(state_dict), type(model).__name__)
        return
    filtered = checkpoint_filter_fn(state_dict, model)
    expected = model.state_dict()
    if not load_class_head:
        filtered |= {k: v for k, v in expected.items() if k.startswith("class_head.")}
    mismatch = describe_mismatch(infer_config(filtered), infer_config(expected))
    if mismatch:
        raise CheckpointMismatch(mismatch)
    load_strict(model, filtered)


def load_checkpoint(
    model: nn.Module, path: str | Path, load_class_head: bool = True, built: tuple[str, dict] | None = None
) -> None:
    """Load an official / Lightning / Hugging Face / own EoMT file into `model` in place, strictly.

    A file for another architecture or size is a UserError that names what differs, e.g.
    "checkpoint has 24 blocks, model has 12; embed dim 1024 vs 384". load_class_head=False keeps the
    model's own class head (fine-tuning on other classes). Models of other families bring their key filter
    (`model.checkpoint_filter_fn`) and may check a Hugging Face config.json beside the weights
    (`model.check_hf_config`, the Mask2Former baselines).

    built: the registered name and the kwargs the caller gave to build `model`; a file that records another
    model (`recorded_model`) is refused, also where no tensor shape shows the difference (attention heads,
    whole-image inference): see `check_record`.
    """
    weights = resolve_weights_file(path)
    state_dict, metadata = read_state_dict(weights)
    if built is not None:
        check_record(recorded_model(metadata, path), built, path)
    check_config: Any = getattr(model, "check_hf_config", None)
    if callable(check_config) and (weights.parent / "config.json").is_file():
        with fitting(weights.parent / "config.json"):
            check_config(weights.parent / "config.json")
    with fitting(path):
        load_state_dict_into(model, state_dict, load_class_head=load_class_head)


# Construction kwargs that change training only (dropout rates), not what a model computes in eval mode: a file
# trained with them fits a build without them.
TRAINING_ONLY_KWARGS = frozenset(
    {"drop_path_rate", "drop_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate", "patch_drop_rate"}
)


def check_record(recorded: tuple[str, dict] | None, built: tuple[str, dict], path: str | Path) -> None:
    """A UserError when a file records another model than the one built for it: another name, or a kwarg the
    file was saved with that the build leaves out or sets otherwise (`TRAINING_ONLY_KWARGS` aside). Kwargs only
    the build sets are its choice (e.g. a drop-path rate to fine-tune with, masked attention switched off)."""
    if recorded is None:
        return
    (name, kwargs), (built_name, built_kwargs) = recorded, built
    differ = [
        k
        for k in sorted(kwargs)
        if k not in TRAINING_ONLY_KWARGS and (k not in built_kwargs or built_kwargs[k] != kwargs[k])
    ]
    if name == built_name and not differ:
        return
    saved = ", ".join(f"{k}={kwargs[k]!r}" for k in differ) if name == built_name else ""
    what = f"{name} with {saved}" if saved else name
    given = ", ".join(f"{k}={built_kwargs[k]!r}" for k in differ if k in built_kwargs)
    raise UserError(
        f"{path}: holds {what}, but the model built for it is {built_name}{' with ' + given if given else ''}"
        " (the file records its model: leave out --model to build that one)"
    )


# ---------------------------------------------------------------------------------------- Hugging Face configs
def hf_config_to_kwargs(config: dict) -> tuple[str, dict]:
    """Registered name and overrides for a Hugging Face `EomtConfig` (config.json as a dict).

    Every architecture field is passed explicitly (also heads, which no tensor shape reveals), so any HF EoMT
    size maps onto the DINOv2 family: giant (SwiGLU) when `use_swiglu_ffn`, else the plain-MLP entry.
    """
    dim = int(config.get("hidden_size", 1024))
    mlp_ratio = float(config.get("mlp_ratio", 4))
    labels = config.get("id2label")
    kwargs: dict[str, Any] = {
        "img_size": int(config.get("image_size", 640)),
        "patch_size": int(config.get("patch_size", 16)),
        "embed_dim": dim,
        "depth": int(config.get("num_hidden_layers", 24)),
        "num_heads": int(config.get("num_attention_heads", 16)),
        "reg_tokens": int(config.get("num_register_tokens", 4)),
        "num_queries": int(config.get("num_queries", 200)),
        "num_classes": len(labels) if labels else int(config.get("num_labels", 2)),
        "num_blocks": int(config.get("num_blocks", 4)),
    }
    if config.get("use_swiglu_ffn"):
        # HF: hidden H = (int(D * r * 2/3) + 7) // 8 * 8; timm SwiGLUPacked: fc1 width int(D * mlp_ratio) = 2H.
        hidden = (int(dim * mlp_ratio * 2 / 3) + 7) // 8 * 8
        kwargs["mlp_ratio"] = (2 * hidden + 0.5) / dim  # +0.5: int(dim * ratio) must not round down to 2H - 1
        return "eomt_giant_patch16_1024", kwargs
    kwargs["mlp_ratio"] = mlp_ratio
    return "eomt_large_patch16_1024", kwargs
