"""DINOv3 EoMT: parity with the official model code on random weights, through the official key layout.

The oracle is the official tue-mps/eomt DINOv3 forward, transcribed here independently of eomt_ood: a Hugging Face
`DINOv3ViTModel` as the encoder with its `embeddings` renamed `patch_embed` and `layer` renamed `blocks` (as the
official ViT wrapper does), queries prepended at block L - L2, masked attention through the HF attention module
with its RoPE (cos, sin), LayerScale via `layer_scale1/2`, and the EoMT heads. Its state dict with a `network.`
prefix is the official checkpoint layout; the released files hold deltas to the DINOv3 backbone weights, which
the official loader adds back (tue-mps/eomt `training/lightning_module.py`, `delta_weights`).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import LayerNorm2d
from torch import nn

from eomt_ood.errors import UserError
from eomt_ood.models import create_model
from eomt_ood.models.algm import enable_token_merging

transformers = pytest.importorskip("transformers")

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TINY = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2)


def make_dinov3(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.DINOv3ViTConfig(**TINY, num_register_tokens=2, image_size=64, patch_size=16)
    model = transformers.DINOv3ViTModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lambda1" in name or name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
            else:
                param.add_(0.1 * torch.randn_like(param))
    return model


class ScaleBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.norm = LayerNorm2d(dim)

    def forward(self, x):
        return self.norm(self.conv2(self.act(self.conv1(x))))


class Encoder(nn.Module):
    def __init__(self, dinov3: nn.Module):
        super().__init__()
        # The official wrapper's renames: DINOv3's embeddings become `patch_embed`, its layers `blocks`.
        dinov3.patch_embed = dinov3.embeddings
        dinov3.blocks = dinov3.layer
        del dinov3.embeddings, dinov3.layer, dinov3.patch_embed.mask_token
        self.backbone = dinov3
        self.register_buffer("pixel_mean", MEAN.clone())
        self.register_buffer("pixel_std", STD.clone())


class OfficialEoMT(nn.Module):
    """The official EoMT forward for a DINOv3 encoder (eval: random query disabling never happens at P = 1)."""

    def __init__(self, dinov3: nn.Module, num_classes=19, num_q=8, num_blocks=2):
        super().__init__()
        self.encoder = Encoder(dinov3)
        dim, config = dinov3.config.hidden_size, dinov3.config
        self.num_q, self.num_blocks, self.masked_attn_enabled = num_q, num_blocks, False
        self.num_prefix = 1 + config.num_register_tokens
        self.grid = config.image_size // config.patch_size
        self.num_heads = config.num_attention_heads
        self.register_buffer("attn_mask_probs", torch.ones(num_blocks))
        self.q = nn.Embedding(num_q, dim)
        self.class_head = nn.Linear(dim, num_classes + 1)
        self.mask_head = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim)
        )
        self.upscale = nn.Sequential(*[ScaleBlock(dim) for _ in range(max(1, int(math.log2(16)) - 2))])

    def predict(self, x):
        q = x[:, : self.num_q]
        patches = x[:, self.num_q + self.num_prefix :].transpose(1, 2)
        patches = patches.reshape(x.shape[0], -1, self.grid, self.grid)
        return torch.einsum("bqc,bchw->bqhw", self.mask_head(q), self.upscale(patches)), self.class_head(q)

    def attn_mask(self, x, mask_logits):
        mask = torch.ones(x.shape[0], x.shape[1], x.shape[1], dtype=torch.bool)
        down = F.interpolate(mask_logits, (self.grid, self.grid), mode="bilinear").flatten(2)
        mask[:, : self.num_q, self.num_q + self.num_prefix :] = down > 0
        return mask

    def forward(self, images):
        backbone = self.encoder.backbone
        x = (images - self.encoder.pixel_mean) / self.encoder.pixel_std
        rope = backbone.rope_embeddings(x)
        x = backbone.patch_embed(x)
        masks, classes = [], []
        first = len(backbone.blocks) - self.num_blocks
        for i, block in enumerate(backbone.blocks):
            mask = None
            if i == first:
                x = torch.cat([self.q.weight[None].expand(x.shape[0], -1, -1), x], dim=1)
            if self.masked_attn_enabled and i >= first:
                mask_logits, class_logits = self.predict(backbone.norm(x))
                masks.append(mask_logits)
                classes.append(class_logits)
                mask = self.attn_mask(x, mask_logits)[:, None].expand(-1, self.num_heads, -1, -1)
            x = x + block.layer_scale1(block.attention(block.norm1(x), mask, rope)[0])
            x = x + block.layer_scale2(block.mlp(block.norm2(x)))
        mask_logits, class_logits = self.predict(backbone.norm(x))
        return [*masks, mask_logits], [*classes, class_logits]


def fine_tuned(pretrained: nn.Module) -> OfficialEoMT:
    """The oracle network: the pretrained DINOv3 moved a little (as fine-tuning does), random heads."""
    torch.manual_seed(11)
    backbone = make_dinov3(0)
    backbone.load_state_dict(pretrained.state_dict())
    with torch.no_grad():
        for param in backbone.parameters():
            param.add_(0.05 * torch.randn_like(param))
    network = OfficialEoMT(backbone).eval()
    with torch.no_grad():
        for name, param in network.named_parameters():
            if not name.startswith("encoder."):
                param.add_(0.1 * torch.randn_like(param))
    return network


def official_file(network: OfficialEoMT, pretrained: nn.Module | None) -> dict[str, torch.Tensor]:
    """The official checkpoint: `network.` keys; with `pretrained`, the released deltas (encoder minus DINOv3,
    everything else minus its zero / initial base: attn_mask_probs starts at 1)."""
    state = {f"network.{k}": v.detach().clone() for k, v in network.state_dict().items()}
    state["criterion.empty_weight"] = torch.ones(20)
    if pretrained is None:
        return state
    base = {f"network.encoder.backbone.{k}": v for k, v in pretrained.state_dict().items()}
    base = {
        k.replace(".embeddings.", ".patch_embed.").replace(".layer.", ".blocks."): v for k, v in base.items()
    }
    for key in state:
        if key in base:
            state[key] = state[key] - base[key]
        elif key == "network.attn_mask_probs":
            state[key] = state[key] - 1
        elif key.startswith("network.encoder.pixel_"):
            state[key] = torch.zeros_like(state[key])
    return state


def save(tmp_path, name: str, state: dict[str, torch.Tensor]):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def oracle_and_input():
    pretrained = make_dinov3(1)
    network = fine_tuned(pretrained)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    return pretrained, network, x


def outputs(model, x, masked: bool):
    model.masked_attn_enabled = masked
    with torch.no_grad():
        masks, classes = model(x)
    return masks[-1], classes[-1]


def assert_parity(ours, oracle, x):
    for masked in (False, True):  # P = 1 in both: every query sees only patches inside its predicted mask
        expected = outputs(oracle, x, masked)
        got = outputs(ours, x, masked)
        assert expected[0].abs().mean() > 0.1
        torch.testing.assert_close(got[0], expected[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[1], expected[1], atol=1e-4, rtol=1e-4)
    # masking must matter, or the masked comparison above would prove nothing
    assert not torch.allclose(outputs(oracle, x, True)[0], outputs(oracle, x, False)[0], atol=1e-3)


def test_hugging_face_dinov3_weights_load_as_the_timm_backbone(tmp_path, oracle_and_input):
    pretrained, _, x = oracle_and_input
    from eomt_ood.models.backbones import create_backbone

    path = save(tmp_path, "model.safetensors", pretrained.state_dict())  # facebook/dinov3-* layout
    sizes = dict(embed_dim=32, depth=4, num_heads=2, num_reg_tokens=2, dynamic_img_size=False)
    ours = create_backbone("vit_small_patch16_dinov3_qkvb", 64, pretrained_backbone=path, **sizes).eval()
    with torch.no_grad():
        expected = pretrained(pixel_values=(x - MEAN) / STD).last_hidden_state
        got = ours.forward_features((x - MEAN) / STD)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_released_deltas_rebuild_the_official_model(tmp_path, oracle_and_input):
    pretrained, network, x = oracle_and_input
    backbone_file = save(tmp_path, "dinov3.safetensors", pretrained.state_dict())
    delta_file = tmp_path / "pytorch_model.bin"
    torch.save(official_file(network, pretrained), delta_file)
    ours = create_model("eomt_dinov3_test", pretrained_backbone=backbone_file, checkpoint=delta_file).eval()
    assert torch.equal(ours.attn_mask_probs, torch.ones(2))  # 1 + (1 - 1), as the official loader adds
    assert_parity(ours, network, x)


def test_full_weights_in_the_official_layout_load_without_a_backbone(tmp_path, oracle_and_input):
    pretrained, network, x = oracle_and_input
    path = save(tmp_path, "full.safetensors", official_file(network, None))
    assert_parity(create_model("eomt_dinov3_test", checkpoint=path).eval(), network, x)
    with pytest.raises(UserError, match="full DINOv3 EoMT weights, not deltas"):
        backbone = save(tmp_path, "dinov3.safetensors", pretrained.state_dict())
        create_model("eomt_dinov3_test", pretrained_backbone=backbone, checkpoint=path)


def test_deltas_without_the_dinov3_backbone_are_a_user_error(tmp_path, oracle_and_input):
    pretrained, network, _ = oracle_and_input
    path = save(tmp_path, "delta.safetensors", official_file(network, pretrained))
    with pytest.raises(
        UserError, match="deltas to the DINOv3 backbone: build the model with pretrained_backbone"
    ):
        create_model("eomt_dinov3_test", checkpoint=path)


def test_own_save_round_trip_and_registry_settings(tmp_path):
    from eomt_ood.models.registry import load_model, save_checkpoint

    torch.manual_seed(3)
    model = create_model("eomt_dinov3_test").eval()
    assert model.uses_rope and model.num_prefix_tokens == 3
    # Queries, CLS and registers stay unrotated in the query blocks, as HF's RoPE leaves every prefix token.
    assert [b.attn.num_prefix_tokens for b in model.backbone.blocks] == [3, 3, 11, 11]
    again = load_model(save_checkpoint(model, tmp_path / "m.safetensors")).eval()
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(outputs(again, x, False), outputs(model, x, False))
    large = create_model("eomt_dinov3_large_patch16_640", img_size=64, embed_dim=32, depth=6, num_heads=2)
    assert (large.num_queries, large.num_classes, large.num_blocks, large.img_size) == (200, 133, 4, 64)
    ade = create_model("eomt_dinov3_large_patch16_512", img_size=64, embed_dim=32, depth=6, num_heads=2)
    assert (ade.num_queries, ade.num_classes) == (100, 150)
    with pytest.raises(UserError, match="RoPE"):
        enable_token_merging(model)


def test_training_rescales_rope_coordinates_like_hugging_face():
    # HF's DINOv3 (which the official code trains) rescales RoPE coordinates at random in training only.
    assert transformers.DINOv3ViTConfig().pos_embed_rescale == 2.0
    torch.manual_seed(4)
    model = create_model("eomt_dinov3_test", masked_attn_enabled=False)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        model.train()
        first, second = model(x)[0][-1], model(x)[0][-1]
        model.eval()
        assert torch.equal(model(x)[0][-1], model(x)[0][-1])
    assert not torch.allclose(first, second)
