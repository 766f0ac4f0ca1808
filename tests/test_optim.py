"""Parameter groups (LLRD, backbone multiplier, weight-decay rules) and the LR schedule of the three Table E
recipes, on their tiny models, against hand-computed values and against Mask2Former's own grouping rule."""

from __future__ import annotations

import pytest
import torch
from tiny_recipes import RECIPES, tiny_config
from torch import nn

from eomt_ood.config import load_config
from eomt_ood.errors import UserError
from eomt_ood.models import create_model
from eomt_ood.training.config import OptimConfig, TrainConfig
from eomt_ood.training.module import EoMTTrainingModule
from eomt_ood.training.optim import param_groups


def groups_by_name(model: nn.Module, optim: OptimConfig) -> dict[str, dict]:
    groups = param_groups(model, optim)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))  # each tensor once
    return {g["name"]: g for g in groups}


def recipe_optim(recipe: str, tmp_path) -> OptimConfig:
    return tiny_config(recipe, tmp_path, max_steps=10).optim


def test_recipe_files_state_the_optimiser_rules():
    swin = load_config(TrainConfig, RECIPES["swin"]).optim
    assert (swin.lr, swin.llrd, swin.backbone_lr_multiplier, swin.weight_decay_norm, swin.weight_decay_embed) == (
        1e-4, 1.0, 0.1, 0.0, 0.0
    )  # fmt: skip
    adapter = load_config(TrainConfig, RECIPES["vit_adapter"]).optim
    eomt = load_config(TrainConfig, RECIPES["eomt"]).optim
    assert adapter == eomt  # trained like EoMT-L
    assert (eomt.llrd, eomt.backbone_lr_multiplier, eomt.weight_decay_norm, eomt.weight_decay_embed) == (
        0.8, 1.0, None, None
    )  # fmt: skip


def test_eomt_groups(tmp_path):
    model = create_model("eomt_test")  # 4 ViT blocks
    groups = groups_by_name(model, recipe_optim("eomt", tmp_path))
    expected = {
        "backbone.blocks.0.attn.qkv.weight": 1e-4 * 0.8**3,
        "backbone.blocks.1.norm1.weight": 1e-4 * 0.8**2,
        "backbone.blocks.3.mlp.fc2.bias": 1e-4,
        "backbone.patch_embed.proj.weight": 1e-4 * 0.8**3,
        "backbone.reg_token": 1e-4 * 0.8**3,
        "backbone.norm.weight": 1e-4,
        "q.weight": 1e-4,
        "class_head.weight": 1e-4,
    }
    for name, lr in expected.items():
        assert groups[name]["lr"] == pytest.approx(lr), name
        assert groups[name]["backbone"] == name.startswith("backbone."), name
    assert {g["weight_decay"] for g in groups.values()} == {0.05}  # EoMT decays everything


def test_vit_adapter_groups(tmp_path):
    model = create_model("m2f_vit_adapter_test")  # 4 ViT blocks
    groups = groups_by_name(model, recipe_optim("vit_adapter", tmp_path))
    expected = {
        "backbone.blocks.0.attn.qkv.weight": 1e-4 * 0.8**3,
        "backbone.blocks.2.mlp.fc1.weight": 1e-4 * 0.8,
        "backbone.blocks.3.norm2.bias": 1e-4,
        "backbone.pos_embed": 1e-4 * 0.8**3,
        "backbone.cls_token": 1e-4 * 0.8**3,
        # the adapter and the Mask2Former head: base rate, not backbone
        "adapter.level_embed": 1e-4,
        "adapter.spm.stem.0.weight": 1e-4,
        "adapter.interactions.0.injector.gamma": 1e-4,
        "head.transformer_module.queries_features.weight": 1e-4,
        "head.class_predictor.weight": 1e-4,
    }
    for name, lr in expected.items():
        assert groups[name]["lr"] == pytest.approx(lr), name
        assert groups[name]["backbone"] == name.startswith("backbone."), name
    assert {g["weight_decay"] for g in groups.values()} == {0.05}
    backbone = [n for n, g in groups.items() if g["backbone"]]
    assert len(backbone) == len(list(model.backbone.parameters()))


def test_swin_groups(tmp_path):
    model = create_model("m2f_swin_test")
    groups = groups_by_name(model, recipe_optim("swin", tmp_path))
    enc = "model.pixel_level_module.encoder."
    expected = {  # name: (lr, weight decay)
        enc + "embeddings.patch_embeddings.projection.weight": (1e-5, 0.05),
        enc + "embeddings.norm.weight": (1e-5, 0.0),
        enc + "encoder.layers.0.blocks.0.attention.self.query.weight": (1e-5, 0.05),
        enc + "encoder.layers.0.blocks.0.attention.self.relative_position_bias_table": (1e-5, 0.0),
        enc + "encoder.layers.0.blocks.0.layernorm_after.bias": (1e-5, 0.0),
        enc + "encoder.layers.0.downsample.reduction.weight": (1e-5, 0.05),
        enc + "hidden_states_norms.stage4.weight": (1e-5, 0.0),
        "model.pixel_level_module.decoder.level_embed": (1e-4, 0.05),  # a plain Parameter, decayed
        "model.pixel_level_module.decoder.input_projections.0.1.weight": (1e-4, 0.0),  # GroupNorm
        "model.pixel_level_module.decoder.encoder.layers.0.fc1.weight": (1e-4, 0.05),
        "model.transformer_module.queries_features.weight": (1e-4, 0.0),  # nn.Embedding
        "model.transformer_module.level_embed.weight": (1e-4, 0.0),  # nn.Embedding
        "model.transformer_module.decoder.layers.0.cross_attn.in_proj_weight": (1e-4, 0.05),
        "model.transformer_module.decoder.layernorm.weight": (1e-4, 0.0),
        "class_predictor.weight": (1e-4, 0.05),
    }
    for name, (lr, decay) in expected.items():
        assert (groups[name]["lr"], groups[name]["weight_decay"]) == pytest.approx((lr, decay)), name
        assert groups[name]["backbone"] == name.startswith(enc), name


def mask2former_rule(model: nn.Module, base_lr, weight_decay, multiplier, backbone_path) -> dict[str, tuple]:
    """Mask2Former's `build_optimizer` (train_net.py), transcribed: lr x multiplier for modules whose name
    contains the backbone's name, weight decay 0 for relative-position tables / absolute position embeddings,
    normalisation layers and embeddings (WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = 0.0). The backbone's module
    name here is the Hugging Face path instead of detectron2's "backbone"."""
    norms = (
        nn.BatchNorm2d,
        nn.SyncBatchNorm,
        nn.GroupNorm,
        nn.LayerNorm,
        nn.InstanceNorm2d,
        nn.LocalResponseNorm,
    )
    out, memo = {}, set()
    for module_name, module in model.named_modules():
        for param_name, value in module.named_parameters(recurse=False):
            if value in memo:
                continue
            memo.add(value)
            lr, decay = base_lr, weight_decay
            if backbone_path in module_name:
                lr = lr * multiplier
            if "relative_position_bias_table" in param_name or "absolute_pos_embed" in param_name:
                decay = 0.0
            if isinstance(module, norms):
                decay = 0.0
            if isinstance(module, nn.Embedding):
                decay = 0.0
            out[f"{module_name}.{param_name}"] = (lr, decay)
    return out


def test_swin_groups_equal_mask2formers_rule_for_every_parameter(tmp_path):
    model = create_model("m2f_swin_test")
    ours = {
        n: (g["lr"], g["weight_decay"])
        for n, g in groups_by_name(model, recipe_optim("swin", tmp_path)).items()
    }
    theirs = mask2former_rule(model, 1e-4, 0.05, 0.1, "pixel_level_module.encoder")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name]), name


def test_multiplier_and_llrd_compose(tmp_path):
    optim = OptimConfig(lr=1e-3, llrd=0.5, backbone_lr_multiplier=0.1)
    groups = groups_by_name(create_model("eomt_test"), optim)
    assert groups["backbone.blocks.1.attn.proj.weight"]["lr"] == pytest.approx(1e-3 * 0.1 * 0.5**2)
    assert groups["class_head.bias"]["lr"] == pytest.approx(1e-3)


def test_llrd_on_swin_is_a_user_error(tmp_path):
    with pytest.raises(
        UserError, match=r"optim\.llrd: 0\.8 needs a ViT backbone.*SwinBackbone.*optim\.llrd: 1\.0"
    ):
        param_groups(create_model("m2f_swin_test"), OptimConfig(llrd=0.8))


def test_mask2former_poly_schedule(tmp_path):
    # detectron2's WarmupPolyLR with no warm-up: lr_t = base * (1 - t / T) ** 0.9 for every group.
    config = tiny_config("swin", tmp_path, max_steps=100)
    module = EoMTTrainingModule(
        create_model("m2f_swin_test"), config.loss, config.optim, config.schedule, total_steps=100
    )
    out = module.configure_optimizers()
    optimizer, scheduler = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert out["lr_scheduler"]["interval"] == "step"
    base = {g["name"]: g["initial_lr"] for g in optimizer.param_groups}
    for step in range(100):
        if step in (0, 1, 37, 99):
            for group in optimizer.param_groups:
                want = base[group["name"]] * (1 - step / 100) ** 0.9
                assert group["lr"] == pytest.approx(want, rel=1e-9, abs=1e-15), (step, group["name"])
        scheduler.step()


def test_trainer_clips_the_full_model_norm(tmp_path):
    from eomt_ood.training.run import build_trainer

    for recipe in RECIPES:
        trainer, _ = build_trainer(tiny_config(recipe, tmp_path, max_steps=1), tmp_path / recipe)
        assert (trainer.gradient_clip_val, trainer.gradient_clip_algorithm) == (0.01, "norm"), recipe
    no_clip = tiny_config("swin", tmp_path, 1, "optim.grad_clip=0")
    trainer, _ = build_trainer(no_clip, tmp_path / "no_clip")
    assert trainer.gradient_clip_val is None


def test_every_swin_parameter_gets_a_gradient():
    # DDP (the recipe's strategy) needs every parameter in the graph.
    model = create_model("m2f_swin_test").train()
    masks, classes = model(torch.rand(1, 3, 64, 128))
    (sum(m.mean() for m in masks) + sum(c.mean() for c in classes)).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
