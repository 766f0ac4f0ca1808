"""Compile and precision defaults for inference and training: CPU inductor agrees with eager, flags resolve."""

from __future__ import annotations

import copy

import pytest
import torch

from eomt_ood.errors import UserError
from eomt_ood.inference.predict import parse_precision, prepare_model, resolve_runtime
from eomt_ood.models.registry import create_model
from eomt_ood.training.run import compile_enabled


@pytest.mark.parametrize(
    ("device", "precision", "compile", "merging", "expected"),
    [
        ("cpu", "auto", None, False, (None, False)),  # CPU: fp32 eager
        ("cuda", "auto", None, False, (torch.bfloat16, True)),  # CUDA: bf16 autocast, compiled
        ("cuda", "auto", None, True, (torch.bfloat16, False)),  # token merging: shapes vary, stay eager
        ("cuda", "fp32", False, False, (None, False)),
        ("cpu", "fp16", True, False, (torch.float16, True)),  # explicit choices always win
        ("cuda", "bf16", True, True, (torch.bfloat16, True)),
    ],
)
def test_resolve_runtime_defaults(device, precision, compile, merging, expected):
    if device == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16; auto picks fp16 there")
    assert resolve_runtime(device, precision, compile, merging) == expected


def test_parse_precision_stays_compatible_and_names_auto_only_with_a_device():
    assert parse_precision("fp32") is None and parse_precision("bf16") is torch.bfloat16
    with pytest.raises(UserError, match=r"unknown precision 'auto'; available: fp32, bf16, fp16$"):
        parse_precision("auto")
    with pytest.raises(UserError, match="available: auto, fp32, bf16, fp16"):
        resolve_runtime("cpu", "fp8")


@pytest.mark.parametrize(
    ("setting", "accelerator", "expected"),
    [
        (None, "cpu", False),
        (None, "gpu", True),
        (None, "cuda", True),
        (None, "auto", torch.cuda.is_available()),
        (True, "cpu", True),
        (False, "gpu", False),
    ],
)
def test_training_compile_default_follows_the_accelerator(setting, accelerator, expected):
    assert compile_enabled(setting, accelerator) is expected


@pytest.mark.slow  # inductor compiles C++ kernels: 10-100 s
def test_compiled_model_matches_eager_on_cpu_inductor():
    # Real inductor (C++ codegen with gcc) on the smallest EoMT that still has every part: a query block,
    # the heads and the upscaler. Measured here: about 1e-6 apart; the tolerance leaves room for other CPUs.
    torch.manual_seed(0)
    eager = create_model("eomt_test", img_size=32, depth=2, num_blocks=1)
    for block in eager.backbone.blocks:  # LayerScale at 1e-5 would hide the blocks from the comparison
        block.ls1.gamma.data.fill_(1.0)
        block.ls2.gamma.data.fill_(1.0)
    compiled = prepare_model(copy.deepcopy(eager), "cpu", compile=True)
    prepare_model(eager, "cpu", compile=False)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, got = eager(x), compiled(x)
    assert expected[0][-1].abs().mean() > 0.1
    torch.testing.assert_close(got[0][-1], expected[0][-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1][-1], expected[1][-1], atol=1e-4, rtol=1e-4)


def test_prepare_model_compiles_only_when_asked_or_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: calls.append(type(self).__name__))
    prepare_model(create_model("eomt_test"), "cpu")  # default on CPU: eager
    assert calls == []
    prepare_model(create_model("eomt_test"), "cpu", compile=True)
    assert calls == ["EoMT"]


def test_training_compiles_the_model_when_configured(tmp_path, monkeypatch):
    from training_support import synthetic_config, write_scenes

    from eomt_ood.training.run import train

    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: calls.append(type(self).__name__))
    root = write_scenes(tmp_path / "data", 2)
    sets = ["trainer.max_steps=1", "trainer.val_every_n_epochs=0", "data.batch_size=2"]
    train(synthetic_config(root, *sets, "trainer.compile=true"), out_dir=tmp_path / "on")
    assert calls == ["EoMT"]
    train(synthetic_config(root, *sets), out_dir=tmp_path / "default")  # the tiny config: compile false
    assert calls == ["EoMT"]


def run_predict(monkeypatch, *args) -> int:
    from eomt_ood.cli import main

    monkeypatch.setattr("sys.argv", ["eomt-ood", "predict", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_predict_new_flags(tmp_path, monkeypatch, capsys):
    from eomt_ood.data.png import read_png, write_png

    write_png(tmp_path / "in" / "a.png", torch.randint(0, 255, (40, 90, 3), dtype=torch.uint8).numpy())
    common = ["--model", "eomt_test", "--random-weights", "--input", str(tmp_path / "in")]
    args = ["--precision", "auto", "--no-compile", "--token-merging", "algm"]
    assert run_predict(monkeypatch, *common, "--output", str(tmp_path / "out"), *args) == 0
    assert read_png(tmp_path / "out" / "a_pred.png").shape == (40, 90)
    capsys.readouterr()
    assert run_predict(monkeypatch, *common, "--output", str(tmp_path / "o2"), "--token-merging", "tome") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --token-merging: unknown method 'tome'; available: none, algm"]
