"""Pretrained Swin weights (ImageNet) -> the transformers `SwinBackbone` inside `Mask2FormerSwin`.

Mask2Former's Swin-L recipe starts from the IN21K Swin-L at 384 px, window 12. Three local formats are read
(nothing is downloaded), recognised by their keys:

- timm (`swin_large_patch4_window12_384.ms_in22k`, file model.safetensors or pytorch_model.bin):
  `layers.{i}.blocks.{j}.attn.qkv`, patch merging stored at the START of stage i (`layers.{i}.downsample`, i >= 1);
- the original Microsoft release / timm before 0.9 (`swin_large_patch4_window12_384_22k.pth`, optionally under a
  "model" key): the same names with patch merging at the END of stage i (`layers.{i}.downsample`, i <= 2);
- Hugging Face (`microsoft/swin-large-patch4-window12-384-in22k` folder or a `SwinModel` file):
  `[swin.]embeddings...`, `[swin.]encoder.layers...` with separate query / key / value.

All three name the same tensors; the patch-merging reduction uses the same 2x2 neighbour order in every
implementation, so the only real transform is splitting timm's fused qkv into query, key and value (rows
[q; k; v]). The classifier head, the final norm and the non-persistent buffers (relative-position index,
attention mask) are dropped. The backbone's four output norms (`hidden_states_norms`, Mask2Former's norm0..3)
are not part of an ImageNet model and keep their fresh initialisation, as in Mask2Former.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from torch import Tensor, nn

from eomt_ood.errors import UserError
from eomt_ood.models.checkpoints import CheckpointMismatch, fitting, read_state_dict, resolve_weights_file

# Keys a classification checkpoint carries that the backbone has no place for.
_DROPPED = re.compile(
    r"^(head\.|classifier\.|norm\.|layernorm\.|pooler\.)|relative_position_index$|attn_mask$|\.num_batches_tracked$"
)
# timm / original block parameter names -> transformers names (the qkv split is handled separately).
_BLOCK_NAMES = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_OWN_KEYS = re.compile(r"^hidden_states_norms\.|relative_position_index$")


def _from_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # Old layout: merging at the end of stage i (layers.0.downsample exists); new: at the start of stage i + 1.
    merge_shift = 0 if any(k.startswith("layers.0.downsample.") for k in state) else -1
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if _DROPPED.search(key):
            continue
        if key.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("patch_embed.norm."):
            out["embeddings.norm." + key.rsplit(".", 1)[1]] = value
        elif match := re.match(r"^layers\.(\d+)\.downsample\.(.+)$", key):
            merged_stage = int(match.group(1)) + merge_shift
            out[f"encoder.layers.{merged_stage}.downsample.{match.group(2)}"] = value
        elif match := re.match(
            r"^layers\.(\d+)\.blocks\.(\d+)\.(.+)\.(weight|bias|relative_position_bias_table)$", key
        ):
            stage, block, name, kind = match.groups()
            prefix = f"encoder.layers.{stage}.blocks.{block}."
            if name == "attn" and kind == "relative_position_bias_table":
                out[prefix + "attention.self.relative_position_bias_table"] = value
            elif name == "attn.qkv":
                for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}attention.self.{part}.{kind}"] = chunk
            elif name in _BLOCK_NAMES:
                out[f"{prefix}{_BLOCK_NAMES[name]}.{kind}"] = value
            else:
                out[key] = value  # unknown: reported as unexpected by the strict load
        else:
            out[key] = value
    return out


def _from_hugging_face(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        key = key.removeprefix("swin.")
        if not _DROPPED.search(key):
            out[key] = value
    return out


def swin_backbone_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Any of the three formats -> `SwinBackbone` keys (without its output norms and index buffers)."""
    if any(k.startswith(("embeddings.", "swin.embeddings.")) for k in state):
        return _from_hugging_face(state)
    if any(k.startswith("patch_embed.") for k in state):
        return _from_timm(state)
    raise CheckpointMismatch(
        "not a Swin checkpoint (no patch_embed.* or embeddings.* keys); expected timm, original or Hugging Face Swin"
    )


def _check_hf_config(folder: Path, encoder: nn.Module) -> None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        return
    try:
        theirs = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{config_path}: cannot read ({type(exc).__name__})") from None
    ours = encoder.config
    for key in ("embed_dim", "depths", "num_heads", "window_size"):
        value = theirs.get(key)
        if value is not None and value != getattr(ours, key):
            raise UserError(f"{config_path}: {key} is {value}, but this backbone has {getattr(ours, key)}")


def load_swin_backbone(encoder: nn.Module, path: str | Path) -> None:
    """Load local pretrained Swin weights into a transformers `SwinBackbone` in place, strictly.

    path: a weights file (timm / original / Hugging Face) or a Hugging Face folder (its config.json is checked).
    Every backbone tensor must come from the file (except the output norms and index buffers, which keep their
    values); a missing, unexpected or mis-shaped tensor is a UserError naming the file and the key.
    """
    hint = (
        "download timm 'swin_large_patch4_window12_384.ms_in22k' (hub repo "
        "timm/swin_large_patch4_window12_384.ms_in22k, file model.safetensors) on a machine with network and "
        f"place it at {path}"
    )
    weights = resolve_weights_file(path, missing_hint=hint)
    if Path(path).is_dir():
        _check_hf_config(Path(path), encoder)
    state = read_state_dict(weights)[0]  # its errors name the file
    with fitting(weights):
        converted = swin_backbone_state_dict(state)
    expected = encoder.state_dict()
    own = {k: v for k, v in expected.items() if _OWN_KEYS.search(k) and k not in converted}
    missing = sorted(set(expected) - set(converted) - set(own))
    unexpected = sorted(set(converted) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"{weights}: does not fit this Swin backbone: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for key, value in converted.items():
        if value.shape != expected[key].shape:
            raise UserError(
                f"{weights}: {key} has shape {tuple(value.shape)}, the backbone expects {tuple(expected[key].shape)} "
                "(another Swin size or window?)"
            )
    encoder.load_state_dict({**converted, **own}, strict=True)
