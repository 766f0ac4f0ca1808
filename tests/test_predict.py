import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eomt_ood.bravo.submission import outputs_complete, predict_folder, raw_names
from eomt_ood.confidence import PixelOutputs, list_confidences
from eomt_ood.confidence.levels import quantise_confidence
from eomt_ood.data.png import read_png, write_png
from eomt_ood.data.resample import resize_image
from eomt_ood.errors import UserError
from eomt_ood.inference.predict import (
    Buffers,
    canvas_levels,
    canvas_maps,
    predict_canvas,
    predict_image,
    predict_maps,
    prepare_model,
    window_stack,
)
from eomt_ood.inference.windows import stitch_windows, window_starts
from eomt_ood.models.registry import create_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class StandIn(nn.Module):
    """Tiny stand-in with the EoMT interface: (B,3,S,S) in [0,1] -> ([(B,Q,S/4,S/4)], [(B,Q,C+1)])."""

    def __init__(self, img_size=32, num_classes=5, num_queries=6):
        super().__init__()
        self.img_size, self.num_classes, self.num_queries = img_size, num_classes, num_queries
        self.masked_attn_enabled = True
        self.masks = nn.Conv2d(3, num_queries, 3, padding=1)
        self.classes = nn.Linear(3, num_queries * (num_classes + 1))
        nn.init.normal_(self.masks.weight, std=2.0)
        nn.init.normal_(self.classes.weight, std=3.0)

    def forward(self, images):
        pooled = F.avg_pool2d(images, 4)
        class_logits = self.classes(images.mean((2, 3))).reshape(len(images), self.num_queries, -1)
        return [self.masks(pooled)], [class_logits]


def random_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    # Smooth structure plus noise, so windows see different content.
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 3) % 256, (y * 5) % 256, ((x + y) * 2) % 256], -1)
    return ((base + rng.integers(0, 60, (height, width, 3))) % 256).astype(np.uint8)


def reference_canvas(model, image):
    """Independent reference: all windows in one forward, all queries upsampled at once, loops over q and c."""
    side = model.img_size
    resized = torch.tensor(resize_image(image, side)).permute(2, 0, 1).float() / 255
    height, width = resized.shape[-2:]
    starts = window_starts(max(height, width), side)
    if height > width:
        windows = torch.stack([resized[:, s : s + side, :] for s in starts])
    else:
        windows = torch.stack([resized[:, :, s : s + side] for s in starts])
    with torch.no_grad():
        masks, classes = (out[-1] for out in model(windows))
    masks = F.interpolate(masks, size=(side, side), mode="bilinear", align_corners=False).sigmoid()
    probs = classes.softmax(-1)
    stacks = torch.zeros(len(starts), probs.shape[-1], side, side)
    for w in range(len(starts)):
        for q in range(probs.shape[1]):
            for k in range(probs.shape[2]):
                stacks[w, k] += probs[w, q, k] * masks[w, q]
    return stitch_windows(stacks, height, width)


def test_window_stack_matches_a_direct_loop():
    g = torch.Generator().manual_seed(0)
    masks, classes = torch.randn(7, 8, 8, generator=g) * 4, torch.randn(7, 4, generator=g) * 3
    stack = window_stack(masks, classes, 32, query_chunk=3)
    up = F.interpolate(masks[None], size=(32, 32), mode="bilinear", align_corners=False)[0]
    expected = torch.zeros(4, 32, 32)
    for q in range(7):
        p = torch.exp(classes[q]) / torch.exp(classes[q]).sum()
        for k in range(4):
            expected[k] += p[k] / (1 + torch.exp(-up[q]))
    torch.testing.assert_close(stack, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(32, 75), (75, 32), (20, 50), (32, 32), (48, 96)])
def test_canvas_matches_the_reference_for_several_shapes(size):
    torch.manual_seed(0)
    model = prepare_model(StandIn())
    image = random_image(*size)
    canvas = predict_canvas(model, image, micro_batch=2)
    torch.testing.assert_close(canvas, reference_canvas(model, image), atol=1e-5, rtol=1e-5)
    # Micro-batch size and channel order of the input do not change the result.
    torch.testing.assert_close(predict_canvas(model, image.transpose(2, 0, 1).copy(), micro_batch=1), canvas)


def test_reused_buffers_give_the_fresh_canvas():
    """A stream of images of several sizes through one `Buffers` equals fresh calls bit for bit (every canvas
    position is rewritten; a buffer of another shape is replaced, not misused)."""
    torch.manual_seed(0)
    model = prepare_model(StandIn())
    buffers = Buffers()
    for size in [(32, 75), (32, 75), (75, 32), (20, 50), (32, 75)]:
        image = random_image(*size)
        assert torch.equal(predict_canvas(model, image, buffers=buffers), predict_canvas(model, image))


def test_stream_levels_equals_one_image_at_a_time(monkeypatch):
    """`stream_levels` (each image's merge and levels in a second thread while the next forward runs) yields
    `canvas_levels` and `canvas_top2` of `predict_canvas`, bit for bit and in input order, with the unreadable
    (None) images passed through where they stood. The levels step is slowed, so the next forward always runs
    while the previous image is merged and scored: state the two threads shared would change the maps."""
    from eomt_ood.data.resample import preview_shape
    from eomt_ood.inference import predict

    torch.manual_seed(0)
    model = prepare_model(StandIn())
    sizes = [(32, 75), None, (32, 75), (75, 32), None, None, (20, 50), (32, 75), (32, 75)]
    inputs = [
        (i, random_image(*size, seed=i) if size else None, *(size or (0, 0))) for i, size in enumerate(sizes)
    ]
    levels_of = predict.canvas_levels

    def slowed(*args, **kwargs):
        time.sleep(0.05)
        return levels_of(*args, **kwargs)

    monkeypatch.setattr(predict, "canvas_levels", slowed)
    scores = ("msp", "rba")
    got = list(predict.stream_levels(model, iter(inputs), scores, micro_batch=1, top2=True))
    assert [key for key, _ in got] == list(range(len(sizes)))
    for (_, image, height, width), (_, maps) in zip(inputs, got, strict=True):
        if image is None:
            assert maps is None
            continue
        canvas = predict_canvas(model, image, micro_batch=1)
        prediction, levels = levels_of(canvas, height, width, scores)
        np.testing.assert_array_equal(maps.prediction, prediction)
        for name in scores:
            np.testing.assert_array_equal(maps.levels[name], levels[name])
        top_classes, top_scores = predict.canvas_top2(canvas, preview_shape(height, width))
        np.testing.assert_array_equal(maps.top2[0], top_classes)
        np.testing.assert_array_equal(maps.top2[1], top_scores)
        assert maps.seconds > 0


def test_stream_levels_passes_errors_on(monkeypatch):
    """An error of the levels thread, or of the inputs, reaches the caller (the images before it are yielded)."""
    from eomt_ood.inference import predict

    model = prepare_model(StandIn())

    def inputs(fail_at):
        for i in range(4):
            if i == fail_at:
                raise UserError(f"input {i} is broken")
            yield i, random_image(32, 75, seed=i), 32, 75

    got = []
    with pytest.raises(UserError, match="input 2 is broken"):
        got.extend(key for key, _ in predict.stream_levels(model, inputs(2)))
    assert got == [0, 1]
    canvas_levels_of = predict.canvas_levels
    calls = []

    def failing(canvas, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("confidence map contains NaN")
        return canvas_levels_of(canvas, *args, **kwargs)

    monkeypatch.setattr(predict, "canvas_levels", failing)
    got = []
    with pytest.raises(ValueError, match="NaN"):
        got.extend(key for key, _ in predict.stream_levels(model, inputs(None)))
    assert got == [0]


def test_prepare_model_turns_masking_off_and_sets_eval():
    model = StandIn().train()
    prepare_model(model)
    assert not model.training and model.masked_attn_enabled is False


def test_full_outputs_are_the_resized_canvas_and_maps_equal_them_in_bands():
    torch.manual_seed(1)
    model = prepare_model(StandIn())
    image = random_image(45, 70)
    outputs = predict_image(model, image)
    assert outputs.class_scores.shape == (5, 45, 70) and outputs.no_object.shape == (45, 70)
    canvas = predict_canvas(model, image)
    expected = F.interpolate(canvas[None], size=(45, 70), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(
        torch.cat([outputs.class_scores, outputs.no_object[None]]), expected, atol=2e-6, rtol=0
    )
    names = list_confidences()
    prediction, maps = predict_maps(model, image, names, band_pixels=7 * 70)
    assert prediction.dtype == np.uint8 and prediction.shape == (45, 70)
    np.testing.assert_array_equal(prediction, outputs.prediction.numpy())
    from eomt_ood.confidence import get_confidence

    for name in names:
        assert maps[name].dtype == np.float32 and maps[name].shape == (45, 70)
        np.testing.assert_allclose(maps[name], get_confidence(name)(outputs).numpy(), atol=1e-6)


class HfAsEomt(nn.Module):
    """Our model interface around a transformers EomtForUniversalSegmentation (it expects normalised input)."""

    def __init__(self, hf_model, img_size):
        super().__init__()
        self.hf, self.img_size = hf_model, img_size
        self.num_classes, self.num_queries = hf_model.config.num_labels, hf_model.config.num_queries
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))

    def forward(self, images):
        out = self.hf(pixel_values=(images - self.mean) / self.std)
        return [out.masks_queries_logits], [out.class_queries_logits]


def tiny_hf_model(seed=0):
    from transformers import EomtConfig, EomtForUniversalSegmentation

    torch.manual_seed(seed)
    config = EomtConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
        num_blocks=2,
        num_queries=8,
        num_register_tokens=2,
        num_labels=19,
    )
    model = EomtForUniversalSegmentation(config).eval()
    with torch.no_grad():  # sharpen the random heads so scores are not all near-ties
        model.class_predictor.weight.mul_(20)
        # A fully annealed model (P_k = 0): the port then skips masked attention, like ours at inference.
        model.attn_mask_probs.zero_()
    return model


def hf_scores_and_prediction(hf_model, image, side):
    """The transformers pipeline: processor (resize + split) -> model -> its own semantic post-processing."""
    from transformers import EomtImageProcessor

    processor = EomtImageProcessor(size={"shortest_edge": side, "longest_edge": None}, do_split_image=True)
    inputs = processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        out = hf_model(pixel_values=inputs["pixel_values"])
    out.patch_offsets = inputs["patch_offsets"]
    target = [image.shape[:2]]
    prediction = processor.post_process_semantic_segmentation(out, target_sizes=target)[0]
    # The scores behind that argmax, with the same calls post_process_semantic_segmentation makes.
    masks = F.interpolate(out.masks_queries_logits, size=(side, side), mode="bilinear")
    scores = torch.einsum("bqc,bqhw->bchw", out.class_queries_logits.softmax(-1)[..., :-1], masks.sigmoid())
    merged = processor.merge_image_patches(scores, inputs["patch_offsets"], target, processor.size)[0]
    return merged, prediction


@pytest.mark.parametrize("size", [(48, 150), (150, 48), (40, 64), (64, 128)])
def test_windowed_pipeline_matches_the_transformers_processor(size):
    hf_model = tiny_hf_model()
    image = random_image(*size, seed=3)
    hf_scores, hf_prediction = hf_scores_and_prediction(hf_model, image, 64)
    ours = predict_image(prepare_model(HfAsEomt(hf_model, 64)), image)
    assert ours.class_scores.shape == hf_scores.shape
    torch.testing.assert_close(ours.class_scores, hf_scores, atol=2e-5, rtol=1e-4)
    # Argmax equal wherever the top two classes are not a float-rounding tie.
    top2 = hf_scores.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-4
    assert clear.float().mean() > 0.9
    assert torch.equal(ours.prediction[clear], hf_prediction[clear])


def test_our_eomt_with_the_same_hf_weights_matches_the_transformers_pipeline(tmp_path):
    from safetensors.torch import save_file

    hf_model = tiny_hf_model(seed=1)
    path = tmp_path / "hf.safetensors"
    save_file({k: v.contiguous() for k, v in hf_model.state_dict().items()}, str(path))
    ours = prepare_model(create_model("eomt_test", checkpoint=path))
    for size in [(48, 150), (150, 48)]:
        image = random_image(*size, seed=4)
        hf_scores, hf_prediction = hf_scores_and_prediction(hf_model, image, 64)
        outputs = predict_image(ours, image, micro_batch=2)
        torch.testing.assert_close(outputs.class_scores, hf_scores, atol=2e-5, rtol=1e-4)
        top2 = hf_scores.topk(2, dim=0).values
        clear = (top2[0] - top2[1]) > 1e-4
        assert clear.float().mean() > 0.9
        assert torch.equal(outputs.prediction[clear], hf_prediction[clear])


def test_eomt_test_model_end_to_end_with_autocast():
    torch.manual_seed(0)
    model = prepare_model(create_model("eomt_test"))
    image = random_image(50, 90)
    outputs = predict_image(model, image, micro_batch=1)
    assert outputs.class_scores.shape == (19, 50, 90)
    assert torch.isfinite(outputs.class_scores).all() and outputs.class_scores.min() >= 0
    # Each pixel's total mask mass sum_q sigmoid(m_q) = sum_c s_c + n is at most Q.
    assert (outputs.class_scores.sum(0) + outputs.no_object).max() <= model.num_queries + 1e-4
    low = predict_image(model, image, micro_batch=2, dtype=torch.bfloat16)
    assert torch.isfinite(low.class_scores).all()
    torch.testing.assert_close(low.class_scores, outputs.class_scores, atol=0.1, rtol=0.1)


def make_tree(root, sizes):
    paths = []
    for i, (rel, size) in enumerate(sizes.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image = random_image(*size, seed=i)
        if rel.endswith(".jpg"):
            from PIL import Image

            Image.fromarray(image).save(path, quality=95)
        else:
            write_png(path, image)
        paths.append(rel)
    return paths


def test_predict_folder_writes_resumes_and_names_unreadable_images(tmp_path, capsys):
    torch.manual_seed(0)
    model = StandIn()
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    sizes = {"bravo_ACDC/fog/a_rgb_anon.png": (40, 70), "bravo_synobjs/b.jpg": (70, 40), "c.png": (32, 32)}
    make_tree(inputs, sizes)
    (inputs / "bravo_ACDC" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")

    report = predict_folder(model, inputs, outputs, confidence="msp", progress=False)
    assert report.written == 3 and report.skipped == 0
    assert [rel for rel, _ in report.failed] == ["bravo_ACDC/broken.png"]
    assert "bravo_ACDC/broken.png" in capsys.readouterr().err
    for rel, (height, width) in sizes.items():
        pred_rel, conf_rel = raw_names(rel)
        pred, conf = read_png(outputs / pred_rel), read_png(outputs / conf_rel)
        assert pred.shape == conf.shape == (height, width)
        assert pred.dtype == np.uint8 and conf.dtype == np.uint16 and pred.max() < 5
        # The files hold exactly the prediction and the quantised msp confidence.
        prediction, maps = predict_maps(model, random_image(height, width, seed=list(sizes).index(rel)))
        if rel.endswith(".png"):
            np.testing.assert_array_equal(pred, prediction)
            levels = np.minimum(np.floor(maps["msp"].astype(np.float64) * 65536), 65535)
            np.testing.assert_array_equal(conf, levels)

    # A second run skips everything that is complete; a deleted or truncated file is redone.
    again = predict_folder(model, inputs, outputs, progress=False)
    assert (again.written, again.skipped, len(again.failed)) == (0, 3, 1)
    (outputs / raw_names("c.png")[1]).unlink()
    (outputs / raw_names("bravo_synobjs/b.jpg")[0]).write_bytes(b"\x89PNG")
    third = predict_folder(model, inputs, outputs, progress=False)
    assert (third.written, third.skipped) == (2, 1)
    assert read_png(outputs / raw_names("c.png")[1]).shape == (32, 32)


def test_outputs_complete_checks_size_and_depth(tmp_path):
    pred_rel, conf_rel = raw_names("x.png")
    assert not outputs_complete(tmp_path, "x.png", 4, 5)
    write_png(tmp_path / pred_rel, np.zeros((4, 5), np.uint8))
    write_png(tmp_path / conf_rel, np.zeros((4, 5), np.uint16))
    assert outputs_complete(tmp_path, "x.png", 4, 5)
    assert not outputs_complete(tmp_path, "x.png", 5, 4)
    write_png(tmp_path / conf_rel, np.zeros((4, 5), np.uint8))  # wrong bit depth
    assert not outputs_complete(tmp_path, "x.png", 4, 5)


def test_output_folder_inside_the_input_is_not_read_back(tmp_path):
    model = StandIn()
    make_tree(tmp_path, {"a.png": (32, 40)})
    report = predict_folder(model, tmp_path, tmp_path / "preds", progress=False)
    again = predict_folder(model, tmp_path, tmp_path / "preds", progress=False)
    assert (report.written, again.skipped, again.written, again.failed) == (1, 1, 0, [])


def test_images_in_linked_folders_are_found_and_link_loops_refused(tmp_path):
    """A BRAVO root is often put together from links to where each subset lives: linked folders are listed as
    their own files are; a link back to a folder on its own path is one error naming it."""
    from eomt_ood.data.images import find_images

    make_tree(tmp_path / "store", {"bravo_synobjs/cat/1.png": (8, 8), "bravo_SMIYC/a.jpg": (8, 8)})
    (tmp_path / "root").mkdir()
    for subset in ("bravo_synobjs", "bravo_SMIYC"):
        (tmp_path / "root" / subset).symlink_to(tmp_path / "store" / subset, target_is_directory=True)
    assert (
        find_images(tmp_path / "root")
        == find_images(tmp_path / "store")
        == [
            "bravo_SMIYC/a.jpg",
            "bravo_synobjs/cat/1.png",
        ]
    )
    (tmp_path / "store" / "bravo_synobjs" / "cat" / "again").symlink_to(tmp_path / "root")
    with pytest.raises(UserError, match="bravo_synobjs/cat/again links back to"):
        find_images(tmp_path / "root")


def test_bad_arguments_are_user_errors(tmp_path):
    model = StandIn()
    with pytest.raises(UserError, match="--input: .*missing: folder not found"):
        predict_folder(model, tmp_path / "missing", tmp_path / "out", progress=False)
    with pytest.raises(UserError, match="--confidence"):
        predict_folder(model, tmp_path, tmp_path / "out", confidence="nope", progress=False)
    with pytest.raises(UserError, match="--layout"):
        predict_folder(model, tmp_path, tmp_path / "out", layout="nope", progress=False)


def test_pixel_outputs_from_stack():
    stack = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(3, 2, 4)
    outputs = PixelOutputs.from_stack(stack)
    assert torch.equal(outputs.class_scores, stack[:2]) and torch.equal(outputs.no_object, stack[2])
    assert torch.equal(outputs.prediction, torch.ones(2, 4, dtype=torch.long))


def run_cli(monkeypatch, *args):
    from eomt_ood.cli import main

    monkeypatch.setattr("sys.argv", ["eomt-ood", "predict", *args])
    try:
        main()
    except SystemExit as exc:
        return exc.code or 0
    return 0


def test_cli_predict_writes_files_and_fails_at_the_end_on_unreadable_images(tmp_path, monkeypatch, capsys):
    make_tree(tmp_path / "in", {"sub/a.png": (40, 90)})
    common = ["--model", "eomt_test", "--random-weights", "--input", str(tmp_path / "in")]
    common += ["--output", str(tmp_path / "out")]
    assert run_cli(monkeypatch, *common, "--confidence", "rba", "--micro-batch", "1") == 0
    assert read_png(tmp_path / "out" / "sub" / "a_conf.png").shape == (40, 90)
    assert "1 written" in capsys.readouterr().out
    (tmp_path / "in" / "bad.jpg").write_bytes(b"garbage")
    assert run_cli(monkeypatch, *common, "--confidence", "rba") == 2
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "error: --input: 1 of 2 images could not be read" in err


def test_cli_predict_resumes_only_into_a_folder_made_with_the_same_settings(tmp_path, monkeypatch, capsys):
    from eomt_ood.bravo.layout import PREDICT_SETTINGS, unmatched_submission_files

    make_tree(tmp_path / "in", {"a.png": (40, 90)})
    common = ["--model", "eomt_test", "--random-weights", "--input", str(tmp_path / "in")]
    common += ["--output", str(tmp_path / "out")]
    assert run_cli(monkeypatch, *common, "--confidence", "rba") == 0
    before = (tmp_path / "out" / "a_conf.png").read_bytes()
    capsys.readouterr()
    assert run_cli(monkeypatch, *common, "--confidence", "rba") == 0  # same settings: resumed, nothing redone
    assert capsys.readouterr().out.startswith("0 written, 1 already complete")
    # Another score into the same folder: refused before any work; the old maps are not taken for finished.
    assert run_cli(monkeypatch, *common, "--confidence", "msp") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "confidences = ['rba'], not ['msp']" in err[0] and PREDICT_SETTINGS in err[0]
    assert (tmp_path / "out" / "a_conf.png").read_bytes() == before
    # The same relative --input from another folder is other images: refused too.
    (tmp_path / "elsewhere").mkdir()
    make_tree(tmp_path / "elsewhere" / "in", {"a.png": (40, 90)})
    monkeypatch.chdir(tmp_path / "elsewhere")
    relative = [
        "--model",
        "eomt_test",
        "--random-weights",
        "--input",
        "in",
        "--output",
        str(tmp_path / "out"),
    ]
    assert run_cli(monkeypatch, *relative, "--confidence", "rba") == 2
    assert "input = " in capsys.readouterr().err
    # The record is predict's own file: scoring the folder does not count it as a stray submission file.
    names = [p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert PREDICT_SETTINGS in names and unmatched_submission_files(names, []) == ["a_conf.png", "a_pred.png"]


def test_cli_predict_takes_the_architecture_from_the_checkpoint(tmp_path, monkeypatch, capsys):
    """Without --model, predict builds what the checkpoint records (as evaluate does): a model saved at a size
    that is not its name's default gives the maps `predict_folder` writes with that model; naming the model
    builds the name's defaults instead, which the checkpoint does not fit."""
    from eomt_ood.models import save_checkpoint

    make_tree(tmp_path / "in", {"a.png": (40, 90)})
    torch.manual_seed(0)
    model = create_model("eomt_test", img_size=32)
    checkpoint = save_checkpoint(model, tmp_path / "model.safetensors")
    common = ["--checkpoint", str(checkpoint), "--input", str(tmp_path / "in")]
    assert run_cli(monkeypatch, *common, "--output", str(tmp_path / "out")) == 0
    predict_folder(model, tmp_path / "in", tmp_path / "oracle", progress=False)
    for name in ("a_pred.png", "a_conf.png"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "oracle" / name).read_bytes()
    capsys.readouterr()
    assert run_cli(monkeypatch, "--model", "eomt_test", *common, "--output", str(tmp_path / "named")) == 2
    assert (
        "holds eomt_test with img_size=32, but the model built for it is eomt_test" in capsys.readouterr().err
    )
    assert run_cli(monkeypatch, "--random-weights", *common[2:], "--output", str(tmp_path / "untrained")) == 2
    assert "--random-weights: needs --model" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "unknown name 'nope'"),
        (["--model", "eomt_test", "--confidence", "nope"], "--confidence: unknown confidence"),
        (["--model", "eomt_test", "--precision", "fp8"], "--precision: unknown precision"),
        (
            ["--model", "eomt_test", "--input", "/does/not/exist"],
            "--input: /does/not/exist: folder not found",
        ),
    ],
)
def test_cli_predict_user_errors_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    make_tree(tmp_path / "in", {"a.png": (32, 40)})
    base = {"--input": str(tmp_path / "in"), "--output": str(tmp_path / "out")}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    assert run_cli(monkeypatch, *[x for kv in base.items() for x in kv], "--random-weights") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("error: ")


def test_levels_on_the_device_equal_quantised_maps():
    """`canvas_levels` (argmax, scores and quantisation per band on the canvas's device) gives exactly the
    prediction of `canvas_maps` and the levels that `quantise_confidence` makes of its float maps; also when
    the canvas must be upsampled, and in bands that do not divide the image."""
    torch.manual_seed(0)
    canvas = torch.rand(20, 48, 80) * 3
    for height, width, band in ((48, 80, 1000), (97, 161, 700), (48, 80, None)):
        scores = tuple(list_confidences())
        pred, maps = canvas_maps(canvas, height, width, scores, band_pixels=band or 1 << 18)
        pred2, levels = canvas_levels(canvas, height, width, scores, band_pixels=band)
        np.testing.assert_array_equal(pred, pred2)
        for name in scores:
            assert levels[name].dtype == np.uint16
            np.testing.assert_array_equal(levels[name], quantise_confidence(maps[name]), err_msg=name)


@pytest.mark.parametrize("size, shape", [((64, 128), (16, 32)), ((50, 97), (15, 29))])
def test_top2_reads_the_canvas_at_the_preview_pixel_centres(size, shape):
    """Evenly spaced centres (a strided view) and uneven ones (a gather) both equal a per-pixel numpy oracle: the
    two largest class scores in stable order (the lower class id first on ties, as the prediction)."""
    from eomt_ood.inference.predict import canvas_top2

    rng = np.random.default_rng(3)
    canvas = (rng.random((20, *size)) * 4).round().astype(np.float32) / 4  # coarse: many exact ties
    canvas[:-1, :, : size[1] // 8] = 0  # every class tied at zero
    classes, scores = canvas_top2(torch.from_numpy(canvas), shape)
    assert classes.shape == scores.shape == (2, *shape)
    for r in range(shape[0]):
        for c in range(shape[1]):
            y = int((r + 0.5) * size[0] / shape[0])
            x = int((c + 0.5) * size[1] / shape[1])
            pixel = canvas[:-1, y, x].astype(np.float64)
            order = np.argsort(-pixel, kind="stable")[:2]
            assert classes[:, r, c].tolist() == order.tolist()
            np.testing.assert_allclose(scores[:, r, c], pixel[order] / max(pixel.sum(), 1e-12), rtol=1e-3)


def test_quantise_tensor_equals_the_numpy_quantiser_at_every_edge():
    """Level boundaries k / 65536 and the floats either side of them, 0, -0, 1, beyond [0, 1], infinities and
    subnormals give `quantise_confidence`'s levels, as int32 and written into a uint16 host tensor; NaN raises."""
    from eomt_ood.confidence.levels import quantise_tensor

    k = np.array([0, 1, 2, 12345, 32768, 65534, 65535, 65536], dtype=np.float64)
    edges = (k / 65536).astype(np.float32)
    values = np.concatenate(
        [
            edges,
            np.nextafter(edges, np.float32(-1)),
            np.nextafter(edges, np.float32(2)),
            np.array([-0.0, -1e-30, -5, 1.5, np.inf, -np.inf, 1e-45, 1e-40], dtype=np.float32),
            np.random.default_rng(0).random(10_000, dtype=np.float32),
        ]
    ).astype(np.float32)
    expected = quantise_confidence(values)
    np.testing.assert_array_equal(quantise_tensor(torch.from_numpy(values)).numpy(), expected)
    host = np.empty(values.shape, dtype=np.uint16)
    quantise_tensor(torch.from_numpy(values), out=torch.from_numpy(host))
    np.testing.assert_array_equal(host, expected)
    for where in (0, 5000, values.size - 1):  # NaN in the vectorised body and in the tail
        broken = values.copy()
        broken[where] = np.nan
        with pytest.raises(UserError, match="holds NaN"):
            quantise_tensor(torch.from_numpy(broken))
