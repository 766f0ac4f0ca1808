"""`eomt-ood evaluate` and `eomt-ood predict`: bad inputs, bad options, bad weights, outputs over inputs, locks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from . import bad
from .harness import Case, run_case, with_options

CAT = "bravo_synobjs/cat/1"
FOG = "bravo_ACDC/fog/test/GOPR0475/GOPR0475_frame_000247"
CAT_IMAGE, FOG_IMAGE = f"{CAT}.png", f"{FOG}_rgb_anon.png"
NO_CUDA = "needs a machine without CUDA"

EVALUATE = ["evaluate", "--root", "{images}", "--gt", "{gt}", "--checkpoint", "{ckpt}", "--out", "{out}",
            "--workers", "0", "--confidence", "msp"]  # fmt: skip
MODEL_LOAD = ("eomt_ood.evaluate._load_model",)
INFERENCE = ("eomt_ood.inference.predict.stream_levels",)
KEPT = ("out/*",)  # what a run that failed at an image keeps: the finished images, its config, its lock


def evaluate(*changes: str) -> list[str]:
    return with_options(EVALUATE, changes)


def _drop(argv: list[str], flag: str) -> list[str]:
    i = argv.index(flag)
    return argv[:i] + argv[i + 2 :]


def _only(w, keep: str) -> None:
    """Leave one input image (and no GT)."""
    for path in list(w["images"].rglob("*")):
        if path.is_file() and path.relative_to(w["images"]).as_posix() != keep:
            path.unlink()


def _point_run_at_case(w) -> None:
    """The copied template run's config names the case's own inputs (copies of the template's), as if it had
    been made from them."""
    path = w["run"] / "config.yaml"
    config = yaml.safe_load(path.read_text())
    inputs = {"images_root": str(w["images"]), "gt": str(w["gt"]), "checkpoint": str(w["ckpt"])}
    config.update(inputs)
    config["resume"].update({key: str(Path(value).resolve()) for key, value in inputs.items()})
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _retrain(checkpoint) -> None:
    """Other weights of the same architecture saved over `checkpoint` (a model retrained in place)."""
    from eomt_ood.models import create_model, save_checkpoint

    torch.manual_seed(7)
    save_checkpoint(create_model("eomt_test"), checkpoint)


def _nan_weights(checkpoint, out) -> None:
    """`checkpoint` with every float tensor NaN (a diverged training), metadata kept."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(checkpoint), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(nan, str(out), metadata=metadata)


def _other_classes(name: str, classes: int):
    """Setup: weights of `name` built for `classes` classes (an ADE20K or toy model), as {tmp}/classes.safetensors."""

    def setup(w):
        from eomt_ood.models import create_model, save_checkpoint

        torch.manual_seed(0)
        save_checkpoint(create_model(name, num_classes=classes), w.root / "classes.safetensors")

    return setup


def _hold_lock(w):
    """Another process holds the run folder's lock until the case ends."""
    code = (
        "import sys, time\n"
        "from eomt_ood.bravo.rundir import RunDir\n"
        "with RunDir(sys.argv[1]).lock('eomt-ood evaluate'):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(w["out"])], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"

    def release():
        holder.kill()
        holder.wait()
        holder.stdout.close()

    return release


def _skipped(world, out, err):
    results = json.loads((world.root / "out" / "results.json").read_text())
    meta = results["meta"]
    assert meta["skip_unreadable"] is True
    assert sorted(meta["inference"]["failed"]) == sorted([CAT_IMAGE, FOG_IMAGE])
    assert meta["inference"]["predicted"] == 16


def _random_weights(world, out, err):
    meta = json.loads((world.root / "out" / "results.json").read_text())["meta"]
    assert meta["checkpoint"] is None and meta["random_weights"] is True


EVALUATE_CASES = [
    Case("root-missing", evaluate("--root", "{missing}"), ["--root", "{missing}"]),
    Case("root-is-a-file", evaluate("--root", "{file}"), ["--root", "{file}"]),
    Case(
        "root-without-bravo-images", evaluate("--root", "{folder}"), ["{folder}"], untouched_steps=MODEL_LOAD
    ),
    Case("gt-missing", evaluate("--gt", "{missing}"), ["--gt", "{missing}"]),
    Case("gt-is-a-text-file", evaluate("--gt", "{file}"), ["{file}"], untouched_steps=MODEL_LOAD),
    Case(
        "gt-truncated-tar",
        evaluate("--gt", "{tmp}/gt.tar"),
        ["gt.tar"],
        lambda w: bad.truncate(bad.tar_of(w["gt"], w.root / "gt.tar"), 0.4),
        untouched_steps=MODEL_LOAD,
    ),
    Case("samples-without-gt", _drop(evaluate("--samples", "{samples}"), "--gt"), ["--samples"]),
    Case("samples-missing", evaluate("--samples", "{missing}"), ["--samples", "{missing}"]),
    Case(
        "samples-not-a-tar", evaluate("--samples", "{text_tar}"), ["{text_tar}"], untouched_steps=MODEL_LOAD
    ),
    Case(
        "samples-without-members",
        evaluate("--samples", "{empty_tar}"),
        ["_samples.bin"],
        untouched_steps=MODEL_LOAD,
    ),
    Case("checkpoint-missing", evaluate("--checkpoint", "{missing}"), ["--checkpoint", "{missing}"]),
    Case("checkpoint-malicious-pickle", evaluate("--checkpoint", "{evil}"), ["{evil}", "unpickle"]),
    Case(
        "checkpoint-malicious-torch-zip", evaluate("--checkpoint", "{evil_zip}"), ["{evil_zip}", "unpickle"]
    ),
    Case("checkpoint-garbage", evaluate("--checkpoint", "{garbage}"), ["{garbage}"]),
    Case(
        "checkpoint-of-another-network",
        [*evaluate("--checkpoint", "{other_ckpt}"), "--model", "eomt_test"],
        ["{other_ckpt}"],
    ),
    Case("checkpoint-folder-without-weights", evaluate("--checkpoint", "{folder}"), ["{folder}"]),
    # BRAVO scores the 19 Cityscapes train ids: 5 classes gave full tables (exit 0), 150 failed after inference
    # naming a prediction PNG. Refused when the model is loaded, before anything is written or predicted.
    *(
        Case(
            f"checkpoint-of-{classes}-classes-{name}",
            evaluate("--checkpoint", "{tmp}/classes.safetensors"),
            ["classes.safetensors", f"predicts {classes} classes", "19"],
            _other_classes(name, classes),
            untouched_steps=INFERENCE,
        )
        for name, classes in [("eomt_test", 5), ("eomt_test", 150), ("m2f_swin_test", 5)]
    ),
    Case("model-unknown", [*EVALUATE, "--model", "nope"], ["nope"]),
    Case(
        "random-weights-without-opt-in",
        [*_drop(EVALUATE, "--checkpoint"), "--model", "eomt_test"],
        ["--random-weights"],
        untouched_steps=MODEL_LOAD,
    ),
    Case(
        "random-weights-and-a-checkpoint",
        [*EVALUATE, "--model", "eomt_test", "--random-weights"],
        ["--random-weights"],
    ),
    Case(
        "confidence-unknown",
        evaluate("--confidence", "nope"),
        ["--confidence", "nope"],
        untouched_steps=MODEL_LOAD,
    ),
    Case("confidence-twice", evaluate("--confidence", "msp,msp"), ["--confidence"]),
    Case(
        "precision-unknown",
        [*EVALUATE, "--precision", "fp8"],
        ["--precision", "fp8"],
        untouched_steps=MODEL_LOAD,
    ),
    Case("device-unknown", [*EVALUATE, "--device", "tpu"], ["--device", "tpu"], untouched_steps=MODEL_LOAD),
    Case("device-cuda-without-cuda", [*EVALUATE, "--device", "cuda"], ["--device"]),
    Case(
        "token-merging-unknown",
        [*EVALUATE, "--token-merging", "tome"],
        ["--token-merging"],
        untouched_steps=MODEL_LOAD,
    ),
    Case("dataset-unknown", [*EVALUATE, "--dataset", "cityscapes"], ["--dataset"]),
    Case("gt-without-root", ["evaluate", "--gt", "{gt}", "--out", "{out}"], ["--gt"]),
    Case("out-missing-for-a-model", _drop(EVALUATE, "--out"), ["--out"]),
    Case("micro-batch-zero", [*EVALUATE, "--micro-batch", "0"], ["--micro-batch"]),
    Case("workers-negative", evaluate("--workers", "-1"), ["--workers"]),
    Case("devices-zero", [*EVALUATE, "--devices", "0"], ["--devices"]),
    Case("unknown-option", [*EVALUATE, "--fast"], ["--fast"]),
    Case("out-is-a-file", evaluate("--out", "{file}"), ["--out", "{file}"]),
    Case("out-is-the-root", evaluate("--out", "{images}"), ["--out"]),
    Case("out-is-the-gt", evaluate("--out", "{gt}"), ["--out"]),
    Case("out-holds-the-root", evaluate("--out", "{tmp}/data", "--root", "{images}"), ["--out"]),
    # Inside an input folder, a run's PNGs would be listed as images (or GT files) by the next run.
    Case("out-inside-the-root", evaluate("--out", "{images}/run"), ["--out", "inside"]),
    Case("out-inside-the-gt", evaluate("--out", "{gt}/run"), ["--out", "inside"]),
    Case("out-under-a-file", evaluate("--out", "{file}/run"), ["--out"]),
    Case("out-read-only", evaluate("--out", "{readonly}/run"), ["--out"], needs_permissions=True),
    Case(
        "image-truncated",
        EVALUATE,
        [CAT_IMAGE, "--skip-unreadable"],
        lambda w: bad.truncate(w["images"] / CAT_IMAGE),
        keeps=KEPT,
    ),
    Case(
        "image-is-text",
        EVALUATE,
        [FOG_IMAGE, "--skip-unreadable"],
        lambda w: bad.text(w["images"] / FOG_IMAGE),
        keeps=KEPT,
    ),
    Case(
        "skip-unreadable-is-recorded",
        [*EVALUATE, "--skip-unreadable"],
        code=0,
        warnings=2,
        setup=lambda w: (bad.truncate(w["images"] / CAT_IMAGE), bad.text(w["images"] / FOG_IMAGE)),
        keeps=KEPT,
        check=_skipped,
    ),
    Case(
        "gt-size-differs",
        EVALUATE,
        [f"{CAT}_gt.png"],
        lambda w: bad.crop(w["gt"] / f"{CAT}_gt.png"),
        keeps=KEPT,
    ),
    Case(
        "gt-without-an-input-image",
        EVALUATE,
        [f"{CAT}_gt.png"],
        lambda w: (w["images"] / CAT_IMAGE).unlink(),
        untouched_steps=MODEL_LOAD,
    ),
    Case(
        "gt-mask-missing",
        EVALUATE,
        [f"{CAT}_mask.png"],
        lambda w: (w["gt"] / f"{CAT}_mask.png").unlink(),
        untouched_steps=MODEL_LOAD,
    ),
    Case(
        "two-inputs-one-output-name",
        EVALUATE,
        [CAT_IMAGE, f"{CAT}.jpg"],
        lambda w: shutil.copy(w["images"] / CAT_IMAGE, w["images"] / f"{CAT}.jpg"),
        untouched_steps=MODEL_LOAD,
    ),
    Case(
        "resume-with-other-scores",
        evaluate("--out", "{run}"),
        ["{run}", "confidences"],
        _point_run_at_case,
        untouched_steps=MODEL_LOAD,
    ),
    # The records hold statistics counted on the GT and maps of the weights' content, whatever the paths say.
    Case(
        "resume-with-other-gt",
        evaluate("--out", "{run}", "--gt", "{tmp}/gt2", "--confidence", "msp,rba"),
        ["{run}", "gt = "],
        lambda w: (_point_run_at_case(w), shutil.copytree(w["gt"], w.root / "gt2")),
        untouched_steps=MODEL_LOAD,
    ),
    Case(
        "resume-after-the-weights-changed",
        evaluate("--out", "{run}", "--confidence", "msp,rba"),
        ["{run}", "other weights"],
        lambda w: (_point_run_at_case(w), _retrain(w["ckpt"])),
        untouched_steps=MODEL_LOAD,
    ),
    Case(
        "resume-with-unreadable-config",
        evaluate("--out", "{run}"),
        ["config.yaml"],
        lambda w: bad.binary(w["run"] / "config.yaml"),
        untouched_steps=MODEL_LOAD,
    ),
    Case("out-in-use-by-another-run", EVALUATE, ["{out}", "pid"], _hold_lock, untouched_steps=MODEL_LOAD),
    Case(
        "weights-give-nan",
        evaluate("--checkpoint", "{tmp}/nan.safetensors"),
        ["nan.safetensors", "NaN"],
        lambda w: _nan_weights(w["ckpt"], w.root / "nan.safetensors"),
        keeps=KEPT,
    ),
    Case("devices-two-cuda-without-cuda", [*EVALUATE, "--devices", "2", "--device", "cuda"], ["--device"]),
    Case(
        "random-weights-opt-in",
        [
            "evaluate",
            "--root",
            "{images}",
            "--model",
            "eomt_test",
            "--random-weights",
            "--out",
            "{out}",
            "--workers",
            "0",
        ],
        code=0,
        setup=lambda w: _only(w, CAT_IMAGE),
        keeps=KEPT,
        check=_random_weights,
    ),
]

PREDICT = [
    "predict",
    "--model",
    "eomt_test",
    "--checkpoint",
    "{ckpt}",
    "--input",
    "{images}",
    "--output",
    "{out}",
]
WEIGHTS = ("eomt_ood.models.registry.create_model",)


def predict(*changes: str) -> list[str]:
    return with_options(PREDICT, changes)


def _predicted_one(world, out, err):
    assert out.startswith("1 written")
    assert sorted(p.name for p in (world.root / "out").rglob("*.png")) == ["1_conf.png", "1_pred.png"]


PREDICT_CASES = [
    Case("input-missing", predict("--input", "{missing}"), ["--input", "{missing}"], untouched_steps=WEIGHTS),
    Case("input-is-a-file", predict("--input", "{file}"), ["--input", "{file}"], untouched_steps=WEIGHTS),
    Case(
        "input-without-images",
        predict("--input", "{folder}"),
        ["--input", "{folder}"],
        untouched_steps=WEIGHTS,
    ),
    Case(
        "input-holds-only-text",
        predict("--input", "{folder}"),
        ["--input"],
        lambda w: bad.text(w["folder"] / "notes.txt"),
        untouched_steps=WEIGHTS,
    ),
    Case("output-is-the-input", predict("--output", "{images}"), ["--output"], untouched_steps=WEIGHTS),
    Case(
        "output-holds-the-input",
        predict("--output", "{tmp}/data"),
        ["--output"],
        lambda w: w["images"],
        untouched_steps=WEIGHTS,
    ),
    Case("output-inside-the-input", predict("--output", "{images}/pred"), ["--output", "inside"]),
    Case(
        "output-holds-maps-without-a-record",
        predict("--output", "{tmp}/old"),
        ["--output", "without"],
        lambda w: shutil.copytree(w["run"] / "submission", w.root / "old"),
        untouched_steps=WEIGHTS,
    ),
    Case("output-is-a-file", predict("--output", "{file}"), ["--output", "{file}"], untouched_steps=WEIGHTS),
    Case("output-under-a-file", predict("--output", "{file}/pred"), ["--output"], untouched_steps=WEIGHTS),
    Case("output-read-only", predict("--output", "{readonly}/pred"), ["--output"], needs_permissions=True),
    Case(
        "two-inputs-one-output-name",
        PREDICT,
        [CAT_IMAGE, f"{CAT}.jpg"],
        lambda w: shutil.copy(w["images"] / CAT_IMAGE, w["images"] / f"{CAT}.jpg"),
        untouched_steps=WEIGHTS,
    ),
    # One warning names the file as the run goes on; the last line says the run failed.
    Case(
        "image-truncated",
        PREDICT,
        ["--input"],
        lambda w: bad.truncate(w["images"] / CAT_IMAGE),
        warnings=1,
        keeps=("out/*",),
    ),
    # Every image failed: no map, so no record of how maps were made is left behind either.
    Case(
        "every-image-unreadable",
        PREDICT,
        ["--input"],
        lambda w: (_only(w, CAT_IMAGE), bad.truncate(w["images"] / CAT_IMAGE)),
        warnings=1,
    ),
    Case(
        "weights-give-nan",
        predict("--checkpoint", "{tmp}/nan.safetensors"),
        ["nan.safetensors", "NaN"],
        lambda w: (_only(w, CAT_IMAGE), _nan_weights(w["ckpt"], w.root / "nan.safetensors")),
    ),
    Case("model-unknown", predict("--model", "nope"), ["nope"]),
    Case("checkpoint-missing", predict("--checkpoint", "{missing}"), ["{missing}"]),
    Case("checkpoint-malicious-pickle", predict("--checkpoint", "{evil}"), ["{evil}", "unpickle"]),
    Case("checkpoint-malicious-torch-zip", predict("--checkpoint", "{evil_zip}"), ["{evil_zip}", "unpickle"]),
    Case("checkpoint-garbage", predict("--checkpoint", "{garbage}"), ["{garbage}"]),
    Case("checkpoint-of-another-network", predict("--checkpoint", "{other_ckpt}"), ["{other_ckpt}"]),
    Case(
        "random-weights-without-opt-in",
        _drop(PREDICT, "--checkpoint"),
        ["--random-weights"],
        untouched_steps=WEIGHTS,
    ),
    Case(
        "random-weights-and-a-checkpoint",
        [*PREDICT, "--random-weights"],
        ["--random-weights"],
        untouched_steps=WEIGHTS,
    ),
    Case(
        "confidence-unknown",
        [*PREDICT, "--confidence", "nope"],
        ["--confidence", "nope"],
        untouched_steps=WEIGHTS,
    ),
    Case("layout-unknown", [*PREDICT, "--layout", "coco"], ["--layout", "coco"], untouched_steps=WEIGHTS),
    Case("precision-unknown", [*PREDICT, "--precision", "fp8"], ["--precision"], untouched_steps=WEIGHTS),
    Case("device-unknown", [*PREDICT, "--device", "tpu"], ["--device"], untouched_steps=WEIGHTS),
    Case("device-cuda-without-cuda", [*PREDICT, "--device", "cuda"], ["--device"], untouched_steps=WEIGHTS),
    Case(
        "token-merging-unknown",
        [*PREDICT, "--token-merging", "tome"],
        ["--token-merging"],
        untouched_steps=WEIGHTS,
    ),
    Case("micro-batch-zero", [*PREDICT, "--micro-batch", "0"], ["--micro-batch"]),
    Case(
        "random-weights-without-model",
        [*_drop(_drop(PREDICT, "--model"), "--checkpoint"), "--random-weights"],
        ["--random-weights", "--model"],
        untouched_steps=WEIGHTS,
    ),
    Case(
        "model-from-the-checkpoint",  # no --model: the architecture the checkpoint records, as evaluate does
        _drop(PREDICT, "--model"),
        code=0,
        setup=lambda w: _only(w, CAT_IMAGE),
        keeps=("out/*",),
        check=_predicted_one,
    ),
    Case(
        "ok-one-image",
        PREDICT,
        code=0,
        setup=lambda w: _only(w, CAT_IMAGE),
        keeps=("out/*",),
        check=_predicted_one,
    ),
]

_CUDA_ROWS = {"device-cuda-without-cuda", "devices-two-cuda-without-cuda"}


def _params(cases):
    params = []
    for case in cases:
        param = case.param()
        if case.id in _CUDA_ROWS:
            param = pytest.param(
                case, id=case.id, marks=pytest.mark.skipif(torch.cuda.is_available(), reason=NO_CUDA)
            )
        params.append(param)
    return params


@pytest.mark.parametrize("case", _params(EVALUATE_CASES))
def test_evaluate(case, world, monkeypatch, capsys):
    run_case(case, world, monkeypatch, capsys)


@pytest.mark.parametrize("case", _params(PREDICT_CASES))
def test_predict(case, world, monkeypatch, capsys):
    run_case(case, world, monkeypatch, capsys)
