"""Checkpoint formats, safety, error messages and the save/load round trip (docs/models.md §5)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from eomt_ood.errors import UserError
from eomt_ood.models import create_model
from eomt_ood.models.checkpoints import (
    checkpoint_filter_fn,
    describe_mismatch,
    infer_config,
    load_checkpoint,
    read_state_dict,
)
from eomt_ood.models.registry import load_model, save_checkpoint


def official_large_cityscapes_state() -> dict[str, torch.Tensor]:
    """Key names and shapes of the official EoMT-L Cityscapes file, typed in from docs/models.md §5.1
    (meta tensors)."""
    meta = dict(device="meta")
    bb = "network.encoder.backbone."
    sd = {
        "network.encoder.pixel_mean": torch.empty(1, 3, 1, 1, **meta),
        "network.encoder.pixel_std": torch.empty(1, 3, 1, 1, **meta),
        bb + "cls_token": torch.empty(1, 1, 1024, **meta),
        bb + "reg_token": torch.empty(1, 4, 1024, **meta),
        bb + "pos_embed": torch.empty(1, 4096, 1024, **meta),
        bb + "patch_embed.proj.weight": torch.empty(1024, 3, 16, 16, **meta),
        bb + "patch_embed.proj.bias": torch.empty(1024, **meta),
        bb + "norm.weight": torch.empty(1024, **meta),
        bb + "norm.bias": torch.empty(1024, **meta),
        "network.attn_mask_probs": torch.empty(4, **meta),
        "network.q.weight": torch.empty(100, 1024, **meta),
        "network.class_head.weight": torch.empty(20, 1024, **meta),
        "network.class_head.bias": torch.empty(20, **meta),
        "criterion.empty_weight": torch.empty(20, **meta),
    }
    for i in range(24):
        p = f"{bb}blocks.{i}."
        for name in ("norm1", "norm2"):
            sd[p + name + ".weight"] = torch.empty(1024, **meta)
            sd[p + name + ".bias"] = torch.empty(1024, **meta)
        sd[p + "attn.qkv.weight"] = torch.empty(3072, 1024, **meta)
        sd[p + "attn.qkv.bias"] = torch.empty(3072, **meta)
        sd[p + "attn.proj.weight"] = torch.empty(1024, 1024, **meta)
        sd[p + "attn.proj.bias"] = torch.empty(1024, **meta)
        sd[p + "ls1.gamma"] = torch.empty(1024, **meta)
        sd[p + "ls2.gamma"] = torch.empty(1024, **meta)
        sd[p + "mlp.fc1.weight"] = torch.empty(4096, 1024, **meta)
        sd[p + "mlp.fc1.bias"] = torch.empty(4096, **meta)
        sd[p + "mlp.fc2.weight"] = torch.empty(1024, 4096, **meta)
        sd[p + "mlp.fc2.bias"] = torch.empty(1024, **meta)
    for i in (0, 2, 4):
        sd[f"network.mask_head.{i}.weight"] = torch.empty(1024, 1024, **meta)
        sd[f"network.mask_head.{i}.bias"] = torch.empty(1024, **meta)
    for i in (0, 1):
        sd[f"network.upscale.{i}.conv1.weight"] = torch.empty(1024, 1024, 2, 2, **meta)
        sd[f"network.upscale.{i}.conv1.bias"] = torch.empty(1024, **meta)
        sd[f"network.upscale.{i}.conv2.weight"] = torch.empty(1024, 1, 3, 3, **meta)
        sd[f"network.upscale.{i}.norm.weight"] = torch.empty(1024, **meta)
        sd[f"network.upscale.{i}.norm.bias"] = torch.empty(1024, **meta)
    return sd


def test_official_large_layout_maps_onto_registered_model():
    official = official_large_cityscapes_state()
    with torch.device("meta"):
        model = create_model("eomt_large_patch16_1024")
    ours = model.state_dict()
    filtered = checkpoint_filter_fn(official, model)
    assert set(filtered) == set(ours)
    assert all(filtered[k].shape == ours[k].shape for k in ours)
    assert "criterion.empty_weight" in official  # the filter is pure: the input keeps its keys
    # Parameter counts from docs/models.md §5.1: backbone 307.35 M, heads + queries 11.68 M.
    backbone = sum(v.numel() for k, v in filtered.items() if k.startswith("backbone."))
    heads = sum(
        v.numel() for k, v in filtered.items() if not k.startswith("backbone.") and k != "attn_mask_probs"
    )
    assert round(backbone / 1e6, 2) == 307.35 and round(heads / 1e6, 2) == 11.68
    assert infer_config(official) == {
        "learned_pos_embed": True,
        "embed_dim": 1024,
        "depth": 24,
        "reg_tokens": 4,
        "separate_qkv": False,
        "patch_size": 16,
        "grid_size": 64,
        "img_size": 1024,
        "num_queries": 100,
        "num_classes": 19,
        "num_blocks": 4,
        "mlp_hidden": 4096,
        "swiglu": False,
    }


def test_wrong_size_checkpoint_says_what_differs(tmp_path):
    # Our own file of another size: depth 6 vs 4, width 48 vs 32, 5 classes, L2 3 vs 2.
    other = create_model("eomt_test", embed_dim=48, depth=6, num_classes=5, num_blocks=3)
    path = tmp_path / "other.safetensors"
    save_checkpoint(other, path)
    model = create_model("eomt_test")
    with pytest.raises(UserError) as info:
        load_checkpoint(model, path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "checkpoint has 6 blocks, model has 4; embed dim 48 vs 32; classes 5 vs 19" in message
    assert "query blocks (L2) 3 vs 2" in message


def test_wrong_size_message_suggests_registered_name():
    with torch.device("meta"):
        model = create_model("eomt_small_patch16_1024")
    from eomt_ood.models.checkpoints import CheckpointMismatch, load_state_dict_into

    with pytest.raises(
        CheckpointMismatch,
        match=r"checkpoint has 24 blocks, model has 12; embed dim 1024 vs 384.*eomt_large_patch16_1024",
    ):
        load_state_dict_into(model, official_large_cityscapes_state())


UNPICKLED = []


def _record_unpickling() -> str:
    UNPICKLED.append(True)
    return "ran"


class CodeOnUnpickle:
    """An object whose unpickling calls a function: what a malicious checkpoint would do."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_pickled_objects_are_refused(tmp_path):
    model = create_model("eomt_test")
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": dict(model.state_dict()), "callbacks": CodeOnUnpickle()}, path)
    with pytest.raises(UserError, match="refused to unpickle.*_record_unpickling"):
        load_checkpoint(model, path)
    assert UNPICKLED == []


def test_unreadable_missing_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="nope.bin: weights file not found"):
        load_checkpoint(create_model("eomt_test"), tmp_path / "nope.bin")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="junk.safetensors: unreadable safetensors file"):
        read_state_dict(junk)
    junk_torch = tmp_path / "junk.pth"
    junk_torch.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="junk.pth: unreadable torch weights file"):
        read_state_dict(junk_torch)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: folder has none of model.safetensors, pytorch_model.bin"):
        read_state_dict(tmp_path / "empty")
    not_tensors = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_tensors)
    with pytest.raises(UserError, match=r"expected a dict of tensors \(a state dict\), found a list"):
        read_state_dict(not_tensors)
    foreign = tmp_path / "resnet.bin"
    torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3)}, foreign)
    with pytest.raises(UserError, match="not an EoMT checkpoint"):
        load_checkpoint(create_model("eomt_test"), foreign)


def test_extra_and_missing_keys_are_errors(tmp_path):
    model = create_model("eomt_test")
    state = dict(model.state_dict())
    state["surprise.weight"] = torch.zeros(1)
    path = tmp_path / "extra.safetensors"
    save_file(state, str(path))
    with pytest.raises(UserError, match=r"unexpected \['surprise.weight'\]"):
        load_checkpoint(model, path)
    del state["surprise.weight"], state["mask_head.2.bias"]
    save_file(state, str(path))
    with pytest.raises(UserError, match=r"missing \['mask_head.2.bias'\]"):
        load_checkpoint(model, path)


def test_save_and_load_model_round_trip(tmp_path):
    torch.manual_seed(3)
    model = create_model("eomt_test", num_classes=7, num_queries=5).eval()
    model.attn_mask_probs.fill_(0.25)
    path = save_checkpoint(model, tmp_path / "run" / "model.safetensors")
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta == {"name": "eomt_test", "kwargs": {"num_classes": 7, "num_queries": 5}}
    _, metadata = read_state_dict(path)
    assert metadata["name"] == "eomt_test" and json.loads(metadata["config"]) == meta

    rebuilt = load_model(path).eval()
    assert rebuilt.config == meta and rebuilt.num_classes == 7
    assert torch.equal(rebuilt.attn_mask_probs, torch.full((2,), 0.25))
    x = torch.rand(1, 3, 64, 64)
    model.masked_attn_enabled = rebuilt.masked_attn_enabled = False
    with torch.no_grad():
        for a, b in zip(model(x), rebuilt(x), strict=True):
            assert torch.equal(a[0], b[0])
    assert load_model(path, masked_attn_enabled=False).masked_attn_enabled is False


def test_load_model_without_metadata_uses_shapes(tmp_path):
    model = create_model("eomt_test")
    path = tmp_path / "plain.bin"
    torch.save(model.state_dict(), path)
    with pytest.raises(UserError, match="no registered size with embed dim 32"):
        load_model(path)


def test_eva02_file_into_dinov2_model_names_the_family(tmp_path):
    toy = dict(img_size=64, embed_dim=32, depth=4, num_heads=2, num_queries=8, num_blocks=2)
    path = save_checkpoint(create_model("eomt_eva02_large_patch16_512", **toy), tmp_path / "eva.safetensors")
    with pytest.raises(UserError, match=r"separate q/k/v projections \(EVA-02\): checkpoint yes, model no"):
        load_checkpoint(create_model("eomt_test"), path)


def test_own_lightning_ckpt_and_fine_tuning_without_class_head(tmp_path):
    torch.manual_seed(8)
    source = create_model("eomt_test").eval()
    path = tmp_path / "epoch=3.ckpt"
    state = {"model." + k: v for k, v in source.state_dict().items()}
    state["criterion.empty_weight"] = torch.ones(20)
    torch.save({"state_dict": state, "global_step": 12, "optimizer_states": [{"lr": 1e-4}]}, path)
    same = create_model("eomt_test").eval()
    load_checkpoint(same, path)
    expected = source.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in same.state_dict().items())

    five = create_model("eomt_test", num_classes=5)
    with pytest.raises(UserError, match="checkpoint has 19 classes, model has 5"):
        load_checkpoint(five, path)
    head_before = five.class_head.weight.clone()
    load_checkpoint(five, path, load_class_head=False)
    assert torch.equal(five.class_head.weight, head_before)
    assert torch.equal(five.mask_head[0].weight, source.mask_head[0].weight)


@pytest.mark.parametrize(
    "load",
    [
        lambda path: load_checkpoint(create_model("eomt_test"), path),
        lambda path: create_model("eomt_test", pretrained_backbone=path),
        lambda path: create_model("m2f_swin_test", checkpoint=path),
    ],
    ids=["eomt", "backbone", "mask2former"],
)
def test_one_reader_one_message_for_every_model_part(tmp_path, load):
    # EoMT checkpoints, backbone weights and baseline checkpoints go through the same reader and errors.
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "payload": CodeOnUnpickle()}, evil)
    with pytest.raises(UserError, match=r"evil\.pth: refused to unpickle"):
        load(evil)
    assert UNPICKLED == []
    with pytest.raises(UserError, match=r"gone\.safetensors: weights file not found"):
        load(tmp_path / "gone.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 16)
    with pytest.raises(UserError, match=r"junk\.safetensors: unreadable safetensors file"):
        load(junk)


def test_wrapped_and_sharded_files_read_like_plain_ones(tmp_path):
    from safetensors.torch import save_file as save_st

    state = {f"layer{i}.weight": torch.full((2, 2), float(i)) for i in range(4)}
    torch.save({"model": state, "epoch": 3}, tmp_path / "meta_release.pth")  # Meta's DeiT/DINO release files
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "run.ckpt")  # Lightning
    for name in ("meta_release.pth", "run.ckpt"):
        read, metadata = read_state_dict(tmp_path / name)
        assert metadata == {} and read.keys() == state.keys()
        assert all(torch.equal(read[k], state[k]) for k in state)
    # A sharded Hugging Face save: the index maps every key to its shard.
    shards = tmp_path / "sharded"
    shards.mkdir()
    weight_map = {}
    for part, keys in enumerate((["layer0.weight", "layer1.weight"], ["layer2.weight", "layer3.weight"])):
        name = f"model-0000{part + 1}-of-00002.safetensors"
        save_st({k: state[k] for k in keys}, str(shards / name))
        weight_map |= {k: name for k in keys}
    (shards / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    read, _ = read_state_dict(shards)
    assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)
    (shards / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UserError, match=r"model-00002-of-00002\.safetensors: weights file not found"):
        read_state_dict(shards)


def test_checkpoints_module_does_not_import_the_registry():
    # Reading and converting files must not depend on the model builder (the builder depends on them).
    import ast
    from pathlib import Path

    import eomt_ood.models.checkpoints as checkpoints

    tree = ast.parse(Path(checkpoints.__file__).read_text())
    owner = {}  # import node -> name of the function that holds it (outer functions first, inner overwrite)
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        for node in ast.walk(function):
            owner[node] = function.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        if any(name.startswith("eomt_ood.models.registry") for name in names):
            found.append(owner.get(node, "<module>"))
    assert found == [], found


# ---- what a file records, and files that break a loader's assumptions -------------------------------------


def test_a_file_recording_another_model_is_refused(tmp_path):
    """Attention heads show in no tensor shape: a file saved with 4 heads fits `eomt_test` (2 heads) tensor for
    tensor and would run with the wrong heads. The file records what it holds, so naming another build is an
    error; leaving the name out builds what it records, and kwargs only the caller sets are its own choice."""
    path = save_checkpoint(create_model("eomt_test", num_heads=4), tmp_path / "h4.safetensors")
    with pytest.raises(
        UserError, match=r"h4\.safetensors: holds eomt_test with num_heads=4, but the model built"
    ):
        create_model("eomt_test", checkpoint=path)
    with pytest.raises(
        UserError, match=r"holds eomt_test, but the model built for it is eomt_small_patch16_512"
    ):
        create_model("eomt_small_patch16_512", checkpoint=path)
    assert int(load_model(path).backbone.blocks[0].attn.num_heads) == 4
    chosen = create_model("eomt_test", checkpoint=path, num_heads=4, masked_attn_enabled=False)
    assert int(chosen.backbone.blocks[0].attn.num_heads) == 4 and not chosen.masked_attn_enabled
    # A dropout rate it was trained with changes nothing in eval mode: the default build takes the file.
    trained = save_checkpoint(create_model("eomt_test", drop_path_rate=0.2), tmp_path / "dp.safetensors")
    create_model("eomt_test", checkpoint=trained)


def test_a_baseline_file_recording_whole_image_inference_is_refused_without_it(tmp_path):
    """`whole_image_inference` changes how the Swin baseline predicts, and no tensor shows it."""
    path = save_checkpoint(
        create_model("m2f_swin_test", whole_image_inference=True), tmp_path / "w.safetensors"
    )
    with pytest.raises(
        UserError, match=r"w\.safetensors: holds m2f_swin_test with whole_image_inference=True"
    ):
        create_model("m2f_swin_test", checkpoint=path)
    assert load_model(path).whole_image_inference


def test_a_training_checkpoint_records_its_model(tmp_path):
    """A Lightning checkpoint of `eomt-ood train` holds the recipe: a model with overrides that match no
    registered size by shape alone loads from it, as from the exported safetensors file."""
    torch.manual_seed(0)
    model = create_model("eomt_test", num_queries=7, num_heads=4)
    path = tmp_path / "step=0000002.ckpt"
    recipe = {"model": {"name": "eomt_test", "overrides": {"num_queries": 7, "num_heads": 4}}, "data": {}}
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "eomt_ood_config": recipe, "global_step": 2}, path)
    loaded = load_model(path)
    assert int(loaded.num_queries) == 7 and int(loaded.backbone.blocks[0].attn.num_heads) == 4
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(UserError, match="holds eomt_test with num_heads=4, num_queries=7"):
        create_model("eomt_test", checkpoint=path)


def _metadata_file(path, metadata):
    save_file(dict(create_model("eomt_test").state_dict()), str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("name", "make", "said"),
    [
        ("record-without-config", lambda p: _metadata_file(p, {"format": "eomt_ood"}), "unreadable eomt_ood model"),
        ("record-not-json", lambda p: _metadata_file(p, {"format": "eomt_ood", "config": "{"}), "unreadable"),
        ("record-a-list", lambda p: _metadata_file(p, {"format": "eomt_ood", "config": "[1]"}), "unreadable"),
        (
            "record-unknown-kwarg",
            lambda p: _metadata_file(p, {"format": "eomt_ood", "config": '{"name": "eomt_test", "kwargs": {"bogus": 1}}'}),
            "(does not fit the model .*|holds eomt_test with )bogus",
        ),
        (
            "record-unknown-model",
            lambda p: _metadata_file(p, {"format": "eomt_ood", "config": '{"name": "eomt_future", "kwargs": {}}'}),
            "(records the model 'eomt_future'|holds eomt_future, but)",
        ),
        (
            "cls-token-of-rank-0",
            lambda p: save_file({**create_model("eomt_test").state_dict(), "backbone.cls_token": torch.zeros(())}, str(p)),
            r"unexpected rank: backbone\.cls_token \(\)",
        ),
        (
            "pos-embed-of-rank-1",
            lambda p: save_file({**create_model("eomt_test").state_dict(), "backbone.pos_embed": torch.zeros(5)}, str(p)),
            r"unexpected rank: backbone\.pos_embed \(5,\)",
        ),
        ("integer-keys", lambda p: torch.save({0: torch.zeros(1)}, p), "the int key '0'"),
        (
            "integer-weights",
            lambda p: save_file({k: v.to(torch.int32) for k, v in create_model("eomt_test").state_dict().items()}, str(p)),
            "holds torch.int32 values, the model expects floating point",
        ),
    ],
)  # fmt: skip
def test_files_that_break_a_loader_are_one_error_naming_the_file(name, make, said, tmp_path):
    """Each once with the architecture from the file and once named (before: KeyError, JSONDecodeError,
    TypeError, IndexError or AttributeError tracebacks; integer weights loaded, cast, without a word)."""
    path = tmp_path / f"{name}.{'pt' if name == 'integer-keys' else 'safetensors'}"
    make(path)
    for load in (load_model, lambda p: create_model("eomt_test", checkpoint=p)):
        if load is load_model and name == "integer-weights":
            continue  # integer weights match no registered size by shape: the load stops before them
        with pytest.raises(UserError, match=f"{name}\\.(pt|safetensors): .*{said}"):
            load(path)


def test_dinov2_weights_for_a_dinov3_model_name_the_position_embedding(tmp_path):
    """Before: "checkpoint has 64 image size, model has 0" (no learned table read as size 0)."""
    path = tmp_path / "v2.safetensors"
    save_file(dict(create_model("eomt_test").state_dict()), str(path))  # no record: the shapes decide
    with pytest.raises(
        UserError, match=r"a learned position embedding .*: checkpoint yes, model no"
    ) as error:
        create_model("eomt_dinov3_test", checkpoint=path)
    assert "image size" not in str(error.value)


@pytest.mark.parametrize("name", ["m2f_swin_test", "m2f_vit_adapter_test"])
def test_baseline_weights_of_another_class_count_name_the_tensor(name, tmp_path):
    """A weights file without our record (a Hugging Face save): before, a RuntimeError traceback (Swin) or a
    message that stopped at "Error(s) in loading state_dict for ..." (ViT-Adapter)."""
    path = tmp_path / "c5.safetensors"
    save_file(dict(create_model(name, num_classes=5).state_dict()), str(path))
    with pytest.raises(
        UserError,
        match=r"c5\.safetensors: (head\.)?class_predictor\.(weight|bias) has shape \(6,( \d+)?\), \w+ expects \(20,",
    ):
        create_model(name, checkpoint=path)


def test_the_suggested_name_says_an_image_size_no_registered_name_has():
    """The official 640 px files (ADE20K, COCO) suggest the 1024 name, which needs img_size=640 to fit."""
    large = dict(learned_pos_embed=True, embed_dim=1024, depth=24, reg_tokens=4, separate_qkv=False, patch_size=16,
                 num_blocks=4, mlp_hidden=4096, swiglu=False)  # fmt: skip
    file = {**large, "grid_size": 40, "img_size": 640, "num_queries": 200, "num_classes": 133}
    model = {**large, "grid_size": 64, "img_size": 1024, "num_queries": 100, "num_classes": 19}
    line = describe_mismatch(file, model)
    assert line is not None and line.startswith("checkpoint has 640 image size, model has 1024")
    assert "looks like eomt_large_patch16_1024 with img_size=640, num_queries=200, num_classes=133" in line
    at_1024 = describe_mismatch({**file, "grid_size": 64, "img_size": 1024}, model)
    assert at_1024 is not None and "with num_queries=200, num_classes=133" in at_1024
