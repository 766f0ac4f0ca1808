"""Mask2Former baselines (Swin via transformers, ViT-Adapter): interface, parity with transformers' own
Mask2Former, Hugging Face checkpoint folders, save/reload, gradient flow and the windowed inference path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Mask2FormerForUniversalSegmentation

from eomt_ood.errors import UserError
from eomt_ood.models import create_model, list_models
from eomt_ood.models.registry import load_model, save_checkpoint

TEST_MODELS = ["m2f_swin_test", "m2f_vit_adapter_test"]
# Detectron2's Mask2Former pixel mean/std on 0-255 RGB, written out independently of the package constants.
D2_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
D2_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def images(batch: int = 2, side: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return create_model("m2f_swin_test")


@pytest.fixture(scope="module")
def adapter():
    torch.manual_seed(0)
    return create_model("m2f_vit_adapter_test")


def test_names_are_registered():
    names = set(list_models())
    for name in [
        "m2f_swin_large",
        "m2f_swin_tiny",
        "m2f_vit_adapter_large",
        "m2f_vit_adapter_small",
        *TEST_MODELS,
    ]:
        assert name in names


@pytest.mark.parametrize("fixture", ["swin", "adapter"])
def test_interface(fixture, request):
    model = request.getfixturevalue(fixture)
    assert (model.img_size, model.num_classes, model.num_queries) == (64, 19, 8)
    assert hasattr(model, "masked_attn_enabled")
    assert model.config["name"] in TEST_MODELS and model.config["kwargs"] == {}
    x = images()
    model.train()
    masks, classes = model(x)
    # decoder_layers = 3: the prediction from the raw queries, then one per decoder layer (2)
    assert len(masks) == len(classes) == 3
    for m, c in zip(masks, classes, strict=True):
        assert m.shape == (2, 8, 16, 16) and c.shape == (2, 8, 20)
        assert torch.isfinite(m).all() and torch.isfinite(c).all()
    model.eval()
    with torch.no_grad():
        eval_masks, eval_classes = model(x)
    assert len(eval_masks) == len(eval_classes) == 1
    # no dropout / drop-path / batch statistics in the tiny Swin model: eval final == train final
    if fixture == "swin":
        torch.testing.assert_close(eval_masks[0], masks[-1])
        torch.testing.assert_close(eval_classes[0], classes[-1])


def _hf_twin(model) -> Mask2FormerForUniversalSegmentation:
    """transformers' own Mask2Former with the same config and weights as our wrapper."""
    hf = Mask2FormerForUniversalSegmentation(model.hf_config).eval()
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    assert unexpected == [] and missing == ["criterion.empty_weight"]
    return hf


def test_swin_matches_transformers(swin):
    hf = _hf_twin(swin)
    x = images(seed=1)
    with torch.no_grad():
        ref = hf(pixel_values=(x * 255 - D2_MEAN) / D2_STD, output_auxiliary_logits=True)
        swin.train()
        masks, classes = swin(x)
        swin.eval()
        final_masks, final_classes = swin(x)
    ref_masks = [a["masks_queries_logits"] for a in ref.auxiliary_logits] + [ref.masks_queries_logits]
    ref_classes = [a["class_queries_logits"] for a in ref.auxiliary_logits] + [ref.class_queries_logits]
    assert len(ref_masks) == len(masks) == 3
    for ours, theirs in zip(masks + classes, ref_masks + ref_classes, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(final_masks[0], ref.masks_queries_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(final_classes[0], ref.class_queries_logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("safe", [True, False])
def test_swin_loads_hugging_face_folder(swin, tmp_path, safe):
    # transformers writes the folder (config.json + model.safetensors / pytorch_model.bin): the real layout.
    torch.manual_seed(5)
    source = Mask2FormerForUniversalSegmentation(swin.hf_config).eval()
    source.save_pretrained(tmp_path, safe_serialization=safe)
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    model = create_model("m2f_swin_test", checkpoint=tmp_path).eval()
    x = images(seed=2)
    with torch.no_grad():
        ref = source(pixel_values=(x * 255 - D2_MEAN) / D2_STD)
        masks, classes = model(x)
    torch.testing.assert_close(masks[-1], ref.masks_queries_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(classes[-1], ref.class_queries_logits, rtol=1e-4, atol=1e-5)


def test_swin_rejects_a_folder_for_another_architecture(swin, tmp_path):
    Mask2FormerForUniversalSegmentation(swin.hf_config).save_pretrained(tmp_path)
    with pytest.raises(UserError, match=r"config\.json: num_queries is 8, but this model has 12"):
        create_model("m2f_swin_test", num_queries=12, checkpoint=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="folder has none of model.safetensors, pytorch_model.bin"):
        create_model("m2f_swin_test", checkpoint=tmp_path / "empty")
    with pytest.raises(UserError, match="weights file not found"):
        create_model("m2f_swin_test", checkpoint=tmp_path / "missing")


@pytest.mark.parametrize("name", TEST_MODELS)
def test_save_and_reload_gives_identical_outputs(name, tmp_path):
    torch.manual_seed(3)
    model = create_model(name, num_classes=5)
    with torch.no_grad():  # move BatchNorm running statistics away from their init
        model.train()
        model(images(seed=4))
    model.eval()
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    reloaded = load_model(path).eval()
    assert type(reloaded) is type(model) and reloaded.num_classes == 5
    x = images(seed=5)
    with torch.no_grad():
        for a, b in zip(model(x), reloaded(x), strict=True):
            torch.testing.assert_close(a[-1], b[-1], rtol=0, atol=0)


def test_adapter_every_parameter_gets_a_gradient(adapter):
    # DDP needs every parameter in the graph; the unused ViT final norm is removed.
    adapter.train()
    adapter.zero_grad()
    masks, classes = adapter(images())
    (sum(m.mean() for m in masks) + sum(c.mean() for c in classes)).backward()
    no_grad = [n for n, p in adapter.named_parameters() if p.grad is None]
    assert no_grad == []


def test_adapter_with_zero_gamma_leaves_the_vit_unchanged(adapter):
    # Injector gammas start at 0, so the ViT tokens after the last block equal timm's own forward.
    adapter.eval()
    vit = adapter.backbone
    seen = {}
    handle = vit.blocks[-1].register_forward_hook(lambda module, args, out: seen.setdefault("tokens", out))
    x = images(seed=6)
    with torch.no_grad():
        adapter(x)
        handle.remove()
        expected = vit.forward_features((x - adapter.pixel_mean) / adapter.pixel_std)
    torch.testing.assert_close(seen["tokens"], expected)
    assert vit.num_prefix_tokens == 3  # CLS + 2 registers kept through the interactions


def test_adapter_feature_strides(adapter):
    adapter.eval()
    with torch.no_grad():
        features = adapter.adapter(images(batch=1), adapter.backbone)
    assert [tuple(f.shape) for f in features] == [
        (1, 32, 16, 16),
        (1, 32, 8, 8),
        (1, 32, 4, 4),
        (1, 32, 2, 2),
    ]


@pytest.mark.parametrize("fixture", ["swin", "adapter"])
def test_windowed_inference_path(fixture, request):
    predict = pytest.importorskip("eomt_ood.inference.predict")
    model = predict.prepare_model(request.getfixturevalue(fixture))
    image = (np.random.default_rng(0).random((64, 128, 3)) * 255).astype(np.uint8)
    out = predict.predict_image(model, image)
    assert out.class_scores.shape == (19, 64, 128) and out.prediction.shape == (64, 128)
    # Oracle: two disjoint 64 x 64 windows, scored by hand (docs/models.md §3).
    x = torch.tensor(image).permute(2, 0, 1).float().div(255)
    with torch.no_grad():
        masks, classes = model(torch.stack([x[:, :, :64], x[:, :, 64:]]))
    up = F.interpolate(masks[-1], size=(64, 64), mode="bilinear", align_corners=False).sigmoid()
    scores = torch.einsum("bqhw,bqc->bchw", up, classes[-1].softmax(-1)[..., :19])
    torch.testing.assert_close(
        out.class_scores, torch.cat([scores[0], scores[1]], dim=-1), rtol=1e-4, atol=1e-5
    )


@pytest.mark.slow
def test_vit_adapter_trains_on_synthetic_scenes(tmp_path):
    # The training loop (loss on every decoder prediction, LLRD on model.backbone) runs unchanged.
    from training_support import read_metrics, write_scenes

    from eomt_ood.config import load_config
    from eomt_ood.training.config import TrainConfig
    from eomt_ood.training.run import train

    config = load_config(
        TrainConfig,
        Path(__file__).resolve().parents[1] / "configs" / "m2f_vit_adapter_test_synthetic.yaml",
        [f"data.root={write_scenes(tmp_path / 'data', 4)}", "trainer.max_steps=20", "trainer.val_every_n_epochs=0",
         "trainer.log_every_n_steps=1"],
    )  # fmt: skip
    weights = train(config, out_dir=tmp_path / "run")
    losses = [float(r["train/loss"]) for r in read_metrics(tmp_path / "run") if r.get("train/loss")]
    assert len(losses) == 20 and np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert type(load_model(weights)).__name__ == "ViTAdapterMask2Former"


@pytest.mark.slow
def test_large_models_match_published_parameter_counts():
    # EoMT paper Table B step (0): ViT-Adapter-L + Mask2Former, COCO panoptic (Q 200, 133 classes, 640): 349M.
    # Mask2Former paper / HF model card: Swin-L Mask2Former 216M.
    def millions(model) -> float:
        return sum(p.numel() for p in model.parameters()) / 1e6

    adapter = create_model("m2f_vit_adapter_large", num_queries=200, num_classes=133, img_size=640)
    assert adapter.adapter.interaction_indexes == [[0, 5], [6, 11], [12, 17], [18, 23]]
    assert abs(millions(adapter) - 349) < 1
    del adapter
    assert abs(millions(create_model("m2f_swin_large")) - 216) < 1


# ---- facebook/mask2former-swin-large-cityscapes-semantic ------------------------------------------------------

# huggingface/label-files cityscapes-id2label.json, which transformers' Mask2Former conversion script puts in the
# config of every 19-class Cityscapes model.
CITYSCAPES_ID2LABEL = {
    0: "road", 1: "sidewalk", 2: "building", 3: "wall", 4: "fence", 5: "pole", 6: "traffic light",
    7: "traffic sign", 8: "vegetation", 9: "terrain", 10: "sky", 11: "person", 12: "rider", 13: "car",
    14: "truck", 15: "bus", 16: "train", 17: "motorcycle", 18: "bicycle",
}  # fmt: skip


def cityscapes_semantic_config(**tiny):
    """The config of facebook/mask2former-swin-large-cityscapes-semantic, as transformers' conversion script
    (convert_mask2former_original_pytorch_checkpoint_to_pytorch.py) builds it from Mask2Former's
    maskformer2_swin_large_IN21k_384_bs16_90k.yaml: the microsoft/swin-large-patch4-window12-384 backbone
    config with four output stages and drop-path 0.3, then the head settings of the detectron2 config.
    `tiny` replaces sizes (not structure) for a CPU-sized forward."""
    from transformers import Mask2FormerConfig, SwinConfig

    backbone = dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12)
    head = dict(feature_size=256, mask_feature_size=256, hidden_dim=256, num_attention_heads=8)
    head |= dict(dim_feedforward=2048, encoder_feedforward_dim=1024)
    backbone |= {k: v for k, v in tiny.items() if k in backbone}
    head |= {k: v for k, v in tiny.items() if k in head}
    swin = SwinConfig(
        image_size=384,
        patch_size=4,
        num_channels=3,
        mlp_ratio=4.0,
        qkv_bias=True,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.3,
        use_absolute_embeddings=False,
        layer_norm_eps=1e-5,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        **backbone,
    )
    return Mask2FormerConfig(
        backbone_config=swin,
        ignore_value=255,
        num_labels=19,
        id2label=CITYSCAPES_ID2LABEL,
        label2id={name: i for i, name in CITYSCAPES_ID2LABEL.items()},
        num_queries=100,
        no_object_weight=0.1,
        class_weight=2.0,
        mask_weight=5.0,
        dice_weight=5.0,
        train_num_points=12544,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
        init_std=0.02,
        init_xavier_std=1.0,
        use_auxiliary_loss=True,
        feature_strides=[4, 8, 16, 32],
        encoder_layers=6,
        decoder_layers=10,
        dropout=0.0,
        pre_norm=False,
        enforce_input_proj=False,
        common_stride=4,
        **head,
    )


# Tiny sizes of the same structure, and the m2f_swin_large overrides that match them.
TINY_CITYSCAPES = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], window_size=4, hidden_dim=32,
                       feature_size=32, mask_feature_size=32, num_attention_heads=2, dim_feedforward=64,
                       encoder_feedforward_dim=64)  # fmt: skip
TINY_OVERRIDES = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4, hidden_dim=32,
                      decoder_heads=2, dim_feedforward=64, encoder_feedforward_dim=64, img_size=64)  # fmt: skip


def test_cityscapes_label_names_are_the_cityscapes_train_ids():
    from eomt_ood.data.labels import TRAIN_ID_NAMES

    assert tuple(CITYSCAPES_ID2LABEL.values()) == TRAIN_ID_NAMES


@pytest.mark.parametrize("safe", [True, False])
def test_cityscapes_folder_loads_and_predicts_like_transformers(tmp_path, safe):
    predict = pytest.importorskip("eomt_ood.inference.predict")
    torch.manual_seed(11)
    Mask2FormerForUniversalSegmentation(cityscapes_semantic_config(**TINY_CITYSCAPES)).save_pretrained(
        tmp_path, safe_serialization=safe
    )
    assert (tmp_path / "config.json").is_file()
    oracle = Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path).eval()
    model = predict.prepare_model(create_model("m2f_swin_large", checkpoint=tmp_path, **TINY_OVERRIDES))
    assert (model.num_classes, model.num_queries, len(model.hf_config.id2label)) == (19, 100, 19)
    image = (np.random.default_rng(4).random((64, 128, 3)) * 255).astype(np.uint8)
    x = torch.tensor(image).permute(2, 0, 1).float().div(255)
    windows = torch.stack([x[:, :, :64], x[:, :, 64:]])
    with torch.no_grad():
        ref = oracle(pixel_values=(windows * 255 - D2_MEAN) / D2_STD)
        masks, classes = model(windows)
    torch.testing.assert_close(masks[-1], ref.masks_queries_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(classes[-1], ref.class_queries_logits, rtol=1e-4, atol=1e-4)
    # Prediction, Mask2Former's protocol (m2f_swin_large's default): the whole image in one pass, scored from
    # transformers' logits of the whole image (the semantic scores of docs/models.md).
    full = x[None]
    with torch.no_grad():
        ref_full = oracle(pixel_values=(full * 255 - D2_MEAN) / D2_STD)
    out = predict.predict_image(model, image)
    up = F.interpolate(ref_full.masks_queries_logits, size=(64, 128), mode="bilinear", align_corners=False)
    scores = torch.einsum("bqhw,bqc->bchw", up.sigmoid(), ref_full.class_queries_logits.softmax(-1)[..., :19])
    torch.testing.assert_close(out.class_scores, scores[0], rtol=1e-4, atol=1e-4)
    # Windowed, as EoMT is evaluated: two 64 x 64 windows side by side.
    model.whole_image_inference = False
    out = predict.predict_image(model, image)
    up = F.interpolate(
        ref.masks_queries_logits, size=(64, 64), mode="bilinear", align_corners=False
    ).sigmoid()
    scores = torch.einsum("bqhw,bqc->bchw", up, ref.class_queries_logits.softmax(-1)[..., :19])
    torch.testing.assert_close(
        out.class_scores, torch.cat([scores[0], scores[1]], dim=-1), rtol=1e-4, atol=1e-4
    )


def test_full_size_cityscapes_folder_builds_and_loads(tmp_path):
    # The real sizes (216M parameters): no forward pass, random weights written and read back. Initialisation is
    # skipped on both sides (the weights are overwritten anyway), which keeps this to seconds.
    from transformers.modeling_utils import no_init_weights

    with no_init_weights():
        source = Mask2FormerForUniversalSegmentation(cityscapes_semantic_config())
    with torch.no_grad():
        for i, param in enumerate(source.parameters()):
            param.fill_(i % 97 / 97)  # distinct, finite values: a loaded tensor is recognisably this one
    source.save_pretrained(tmp_path)
    del source
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["backbone_config"]["depths"] == [2, 2, 18, 2] and config["num_queries"] == 100
    with no_init_weights():
        model = create_model("m2f_swin_large", checkpoint=tmp_path)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 216) < 1
    for i, param in enumerate(model.parameters()):
        assert float(param.detach().flatten()[0]) == pytest.approx(i % 97 / 97), i
