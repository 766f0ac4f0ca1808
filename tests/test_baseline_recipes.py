"""The two Mask2Former Cityscapes recipes: what the files say, and that their code paths train (tiny models on
synthetic street scenes): the loss falls, the Swin backbone runs at 0.1 x the head lr, gradients are clipped to
the configured total norm, and a resumed run ends with exactly the weights of an uninterrupted one."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_recipes import RECIPES, tiny_config
from training_support import StopAt, read_metrics, write_scenes

from eomt_ood.config import load_config, to_dict
from eomt_ood.models import list_models
from eomt_ood.models.registry import load_model
from eomt_ood.training.config import TrainConfig
from eomt_ood.training.run import find_last_checkpoint, train


def test_swin_recipe_is_mask2formers():
    config = load_config(TrainConfig, RECIPES["swin"])
    assert config.model.name == "m2f_swin_large" and config.model.name in list_models()
    d = config.data
    assert d.augmentation == "mask2former"
    assert list(d.short_sides) == [int(x * 0.1 * 1024) for x in range(5, 21)]  # MIN_SIZE_TRAIN, "choice"
    assert (d.max_long_side, d.crop_size, d.single_category_max_area, d.color_jitter) == (
        4096,
        (512, 1024),
        1.0,
        True,
    )
    assert d.batch_size * config.trainer.devices == 16
    loss = config.loss
    assert (loss.num_points, loss.class_weight, loss.mask_weight, loss.dice_weight, loss.no_object_weight) == (
        12544, 2.0, 5.0, 5.0, 0.1
    )  # fmt: skip
    s = config.schedule
    assert (s.head_warmup_steps, s.backbone_warmup_steps, s.poly_power, s.mask_annealing) == (
        0,
        0,
        0.9,
        False,
    )
    t = config.trainer
    assert (t.max_steps, t.precision, t.strategy) == (90000, "16-mixed", "ddp")
    assert "swin_large_patch4_window12_384" in str(config.model.pretrained_backbone)


def test_vit_adapter_recipe_differs_from_eomt_only_where_the_architecture_does():
    adapter = to_dict(load_config(TrainConfig, RECIPES["vit_adapter"]))
    eomt = to_dict(load_config(TrainConfig, RECIPES["eomt"]))
    differences = {
        (section, key)
        for section in eomt
        for key in eomt[section]
        if eomt[section][key] != adapter[section][key]
    }
    assert differences == {
        ("model", "name"),  # m2f_vit_adapter_large (same DINOv2 ViT-L weights file)
        ("schedule", "mask_annealing"),  # Mask2Former's decoder always masks
        ("trainer", "sync_batchnorm"),  # the adapter's BatchNorm
    }
    assert adapter["model"]["name"] == "m2f_vit_adapter_large"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("scenes"), 6)


class GradNorms(L.Callback):
    """Total gradient L2 norm before clipping (before the optimizer step) and after it (after the step)."""

    def __init__(self):
        self.before: list[float] = []
        self.after: list[float] = []

    @staticmethod
    def norm(module) -> float:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.before.append(self.norm(module))

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.after.append(self.norm(module))


@pytest.mark.parametrize("recipe", ["swin", "vit_adapter"])
def test_recipe_trains_tiny(recipe, scenes, tmp_path):
    steps = 14
    # lr 3e-3 so that a few steps show the fall; everything else is the recipe's.
    config = tiny_config(recipe, scenes, steps, lr=3e-3)
    norms = GradNorms()
    weights = train(config, out_dir=tmp_path / "run", callbacks=[norms])
    rows = read_metrics(tmp_path / "run")
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == steps and np.isfinite(losses).all()
    assert np.mean(losses[-4:]) < 0.92 * np.mean(losses[:4])
    # Full-model clipping at 0.01: the raw norms are larger, the applied ones are 0.01.
    assert min(norms.before) > 0.01
    assert norms.after == pytest.approx([0.01] * steps, rel=1e-4)
    heads = [float(r["lr/heads"]) for r in rows if r.get("lr/heads")]
    backbone = [float(r["lr/backbone_max"]) for r in rows if r.get("lr/backbone_max")]
    if recipe == "swin":
        # poly from step 0, no warm-up; the backbone at 0.1 x the head rate throughout
        assert heads[0] == pytest.approx(3e-3 * (1 - 1 / steps) ** 0.9)
        assert backbone == pytest.approx([0.1 * h for h in heads])
    else:
        # two-stage warm-up (scaled to 2 / 4 steps): the heads (adapter, Mask2Former) first, the ViT after
        assert heads[0] == pytest.approx(3e-3 / 2) and backbone[0] == 0.0
    assert (
        type(load_model(weights)).__name__
        == {"swin": "Mask2FormerSwin", "vit_adapter": "ViTAdapterMask2Former"}[recipe]
    )


@pytest.mark.parametrize("recipe", ["swin", "vit_adapter"])
def test_recipe_resumes_exactly(recipe, scenes, tmp_path):
    # 6 scenes, batch 2: 3 steps per epoch; the stop at step 2 is mid-epoch and the resumed run crosses into the
    # next epoch. Drop-path 0.3 (Swin) and BatchNorm (adapter) draw / update state that a resume must reproduce.
    def config():
        return tiny_config(recipe, scenes, 4, "trainer.checkpoint_every_n_steps=2")

    straight = train(config(), out_dir=tmp_path / "a")
    train(config(), out_dir=tmp_path / "b", callbacks=[StopAt(2)])
    assert find_last_checkpoint(tmp_path / "b").name == "step=0000002.ckpt"
    resumed = train(config(), resume="auto", out_dir=tmp_path / "b")
    a, b = load_file(straight), load_file(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
