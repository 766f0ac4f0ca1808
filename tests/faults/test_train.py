"""`eomt-ood train`: bad configs, bad overrides, bad checkpoints to resume, outputs: one line before any work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from . import bad
from .harness import Case, run_case, run_cli

TRAIN = ["train", "--config", "{config}", "--out", "{out}"]
BUILD = ("eomt_ood.training.run.build_model",)


def _edit(section: str, **values):
    """Setup: change keys of one section of the case's train.yaml."""

    def setup(w):
        path = w["config"]
        data = yaml.safe_load(path.read_text())
        data[section].update(values)
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    return setup


def _write(text: str):
    def setup(w):
        (w.root / "bad.yaml").write_text(text)

    return setup


def _edited_checkpoint(edit, saved_as: str = "step=0000003.ckpt"):
    """Setup: the real training checkpoint (`trained`), changed by `edit(state)`, saved as `saved_as` (relative to
    the case's folder)."""

    def setup(w):
        state = torch.load(w["trained"], weights_only=True)
        edit(state)
        target = w.root / saved_as
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, target)

    return setup


def _weights_only(state):
    """What Lightning saves with `save_weights_only=True`: no optimizer, scheduler or callback state."""
    for key in ("optimizer_states", "lr_schedulers", "callbacks"):
        state.pop(key)


def _first_weight_a_number(state):
    weights = state["state_dict"]
    weights[next(iter(weights))] = 3


def _one_param_group(state):
    optimizer = state["optimizer_states"][0]
    optimizer["param_groups"] = optimizer["param_groups"][:1]


def _other_model(state):
    """A training checkpoint whose state dict belongs to another network."""
    state["state_dict"] = {"model.other.weight": torch.zeros(2)}


def _other_recipe(state):
    """A training checkpoint whose recorded recipe has another learning rate than the case's config."""
    state["eomt_ood_config"]["optim"]["lr"] = 0.5


def _earlier_run(w):
    """The case's --out already holds a training run's checkpoint."""
    folder = w.root / "out" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "step=0000002.ckpt").write_bytes(b"a checkpoint")


# Values of the right type that no training can use: each named as the --set that gave it.
RANGES = [
    ("optim.lr=-1", "positive"),
    ("optim.eps=0", "positive"),
    ("optim.weight_decay=-1", "at least 0"),
    ("optim.betas=[2, 3]", "[0, 1)"),
    ("optim.grad_clip=-1", "at least 0"),
    ("schedule.poly_power=-1", "at least 0"),
    ("data.scale_range=[3, 1]", "low <= high"),
    ("loss.oversample_ratio=0", "at least 1"),
    ("loss.importance_sample_ratio=2", "[0, 1]"),
    ("trainer.float32_matmul_precision=ultra", "ultra"),
    ("trainer.max_steps=", "integer"),
]

CASES = [
    *(
        Case(
            f"set-{setting.split('=')[0].replace('.', '-')}-out-of-range",
            [*TRAIN, "--set", setting],
            [f"--set {setting.split('=')[0]}", why],
            untouched_steps=BUILD,
        )
        for setting, why in RANGES
    ),
    Case("set-empty-key", [*TRAIN, "--set", "=1"], ["--set", "empty"], untouched_steps=BUILD),
    Case(
        "model-override-unknown",
        [*TRAIN, "--set", "model.overrides.foo=1"],
        ["model.overrides", "foo"],
        untouched_steps=BUILD,
    ),
    Case(
        "model-override-bad-value",
        [*TRAIN, "--set", "model.overrides.num_classes=0"],
        ["model.overrides", "num_classes"],
        untouched_steps=BUILD,
    ),
    Case("out-holds-a-run", TRAIN, ["--out", "--resume auto"], _earlier_run, untouched_steps=BUILD),
    Case(
        "resume-with-another-recipe",
        [*TRAIN, "--resume", "{tmp}/step=0000003.ckpt"],
        ["--resume", "optim.lr"],
        _edited_checkpoint(_other_recipe),
    ),
    Case(
        "config-missing",
        ["train", "--config", "{missing}", "--out", "{out}"],
        ["--config", "{missing}"],
        untouched_steps=BUILD,
    ),
    Case(
        "config-unknown-name",
        ["train", "--config", "eomt_tiny_nope", "--out", "{out}"],
        ["--config", "eomt_tiny_nope"],
    ),
    Case(
        "config-binary",
        ["train", "--config", "{tmp}/bad.yaml", "--out", "{out}"],
        ["bad.yaml"],
        lambda w: bad.binary(w.root / "bad.yaml"),
        untouched_steps=BUILD,
    ),
    Case(
        "config-invalid-yaml",
        ["train", "--config", "{tmp}/bad.yaml", "--out", "{out}"],
        ["bad.yaml"],
        _write("model: [unclosed\n"),
        untouched_steps=BUILD,
    ),
    Case(
        "config-a-list",
        ["train", "--config", "{tmp}/bad.yaml", "--out", "{out}"],
        ["bad.yaml"],
        _write("- 1\n- 2\n"),
        untouched_steps=BUILD,
    ),
    Case(
        "config-is-a-folder",
        ["train", "--config", "{folder}", "--out", "{out}"],
        ["{folder}"],
        untouched_steps=BUILD,
    ),
    Case(
        "unknown-section",
        TRAIN,
        ["bogus"],
        lambda w: w["config"].write_text(w["config"].read_text() + "bogus: {}\n"),
        untouched_steps=BUILD,
    ),
    Case("unknown-key", TRAIN, ["speed"], _edit("trainer", speed=3), untouched_steps=BUILD),
    Case("wrong-type", TRAIN, ["max_steps"], _edit("trainer", max_steps="many"), untouched_steps=BUILD),
    Case(
        "max-steps-negative",
        TRAIN,
        ["max_steps", "-5"],
        _edit("trainer", max_steps=-5),
        untouched_steps=BUILD,
    ),
    Case("max-steps-zero", [*TRAIN, "--set", "trainer.max_steps=0"], ["max_steps"], untouched_steps=BUILD),
    Case("epochs-zero", [*TRAIN, "--set", "trainer.epochs=0"], ["epochs"], untouched_steps=BUILD),
    Case("batch-size-zero", [*TRAIN, "--set", "data.batch_size=0"], ["batch_size"], untouched_steps=BUILD),
    Case(
        "num-workers-negative",
        [*TRAIN, "--set", "data.num_workers=-1"],
        ["num_workers"],
        untouched_steps=BUILD,
    ),
    Case(
        "accumulate-zero",
        [*TRAIN, "--set", "trainer.accumulate_grad_batches=0"],
        ["accumulate_grad_batches"],
        untouched_steps=BUILD,
    ),
    Case(
        "checkpoint-every-zero",
        [*TRAIN, "--set", "trainer.checkpoint_every_n_steps=0"],
        ["checkpoint_every_n_steps"],
        untouched_steps=BUILD,
    ),
    Case(
        "augmentation-unknown",
        [*TRAIN, "--set", "data.augmentation=cutmix"],
        ["augmentation", "cutmix"],
        untouched_steps=BUILD,
    ),
    Case("set-without-equals", [*TRAIN, "--set", "trainer.max_steps"], ["--set"], untouched_steps=BUILD),
    Case("set-unknown-key", [*TRAIN, "--set", "trainer.turbo=1"], ["turbo"], untouched_steps=BUILD),
    Case("set-value-and-section", [*TRAIN, "--set", "trainer=1"], ["trainer"], untouched_steps=BUILD),
    Case(
        "devices-8-on-cpu", [*TRAIN, "--set", "trainer.devices=8"], ["trainer.devices"], untouched_steps=BUILD
    ),
    Case(
        "devices-not-a-count",
        [*TRAIN, "--set", "trainer.devices=many"],
        ["trainer.devices"],
        untouched_steps=BUILD,
    ),
    Case("num-nodes-zero", [*TRAIN, "--set", "trainer.num_nodes=0"], ["num_nodes"], untouched_steps=BUILD),
    Case(
        "precision-unknown",
        [*TRAIN, "--set", "trainer.precision=64-nope"],
        ["trainer.precision"],
        untouched_steps=BUILD,
    ),
    Case(
        "strategy-unknown",
        [*TRAIN, "--set", "trainer.strategy=ring"],
        ["trainer.strategy"],
        untouched_steps=BUILD,
    ),
    Case(
        "accelerator-unknown",
        [*TRAIN, "--set", "trainer.accelerator=tpu9"],
        ["trainer.accelerator"],
        untouched_steps=BUILD,
    ),
    Case(
        "data-root-missing",
        [*TRAIN, "--set", "data.root={missing}"],
        ["data.root", "{missing}"],
        untouched_steps=BUILD,
    ),
    Case(
        "data-without-train-split",
        [*TRAIN, "--set", "data.root={folder}"],
        ["{folder}"],
        untouched_steps=BUILD,
    ),
    Case(
        "batch-larger-than-data",
        [*TRAIN, "--set", "data.batch_size=64"],
        ["data.batch_size"],
        untouched_steps=BUILD,
    ),
    Case("model-unknown", [*TRAIN, "--set", "model.name=eomt_nope"], ["eomt_nope"], untouched_steps=BUILD),
    Case(
        "model-checkpoint-missing",
        [*TRAIN, "--set", "model.checkpoint={missing}"],
        ["model.checkpoint"],
        untouched_steps=BUILD,
    ),
    Case("model-checkpoint-malicious", [*TRAIN, "--set", "model.checkpoint={evil}"], ["{evil}", "unpickle"]),
    Case(
        "model-checkpoint-folder-without-weights",
        [*TRAIN, "--set", "model.checkpoint={folder}"],
        ["model.checkpoint", "{folder}", "model.safetensors"],
        untouched_steps=BUILD,
    ),
    Case(
        "pretrained-backbone-folder-without-weights",
        [*TRAIN, "--set", "model.pretrained_backbone={folder}"],
        ["model.pretrained_backbone", "{folder}", "model.safetensors"],
        untouched_steps=BUILD,
    ),
    Case(
        "pretrained-backbone-missing",
        [*TRAIN, "--set", "model.pretrained_backbone={missing}"],
        ["model.pretrained_backbone"],
    ),
    Case(
        "resume-missing", [*TRAIN, "--resume", "{missing}"], ["--resume", "{missing}"], untouched_steps=BUILD
    ),
    Case("resume-a-folder", [*TRAIN, "--resume", "{folder}"], ["--resume"], untouched_steps=BUILD),
    Case(
        "resume-malicious-pickle",
        [*TRAIN, "--resume", "{evil}"],
        ["--resume", "{evil}", "unpickle"],
        untouched_steps=BUILD,
    ),
    Case(
        "resume-malicious-torch-zip",
        [*TRAIN, "--resume", "{evil_zip}"],
        ["--resume", "{evil_zip}", "unpickle"],
        untouched_steps=BUILD,
    ),
    Case(
        "resume-garbage", [*TRAIN, "--resume", "{garbage}"], ["--resume", "{garbage}"], untouched_steps=BUILD
    ),
    Case(
        "resume-not-a-lightning-checkpoint",
        [*TRAIN, "--resume", "{ckpt}"],
        ["--resume", "{ckpt}"],
        untouched_steps=BUILD,
    ),
    Case(
        "resume-another-model",
        [*TRAIN, "--resume", "{tmp}/step=0000003.ckpt"],
        ["--resume", "step=0000003.ckpt"],
        _edited_checkpoint(_other_model),
    ),
    # Checkpoints that are not whole training states: Lightning failed deep in its restore (KeyError,
    # AttributeError: a traceback), or restored nothing and went on silently (no loop progress: the run started
    # again at step 0; empty optimizer or scheduler lists: no Adam moments, no schedule).
    *(
        Case(
            f"resume-{name}",
            [*TRAIN, "--resume", "{tmp}/step=0000003.ckpt"],
            ["--resume", "step=0000003.ckpt", *names],
            _edited_checkpoint(edit),
        )
        for name, edit, names in [
            ("weights-only", _weights_only, ["optimizer state", "model.checkpoint"]),
            ("without-optimizer-state", lambda s: s.pop("optimizer_states"), ["optimizer state"]),
            ("optimizer-state-malformed", lambda s: s.update(optimizer_states=[{"bad": 1}]), ["optimizer"]),
            ("optimizer-states-empty", lambda s: s.update(optimizer_states=[]), ["optimizer"]),
            ("without-scheduler-state", lambda s: s.pop("lr_schedulers"), ["scheduler"]),
            ("scheduler-states-empty", lambda s: s.update(lr_schedulers=[]), ["lr_schedulers"]),
            ("state-dict-holds-a-number", _first_weight_a_number, ["state_dict", "not a tensor"]),
            ("without-loop-progress", lambda s: s.pop("loops"), ["loop progress"]),
            ("loop-progress-empty", lambda s: s.update(loops={"fit_loop": {}}), ["loop progress"]),
            ("global-step-not-a-count", lambda s: s.update(global_step="2"), ["global_step"]),
            ("optimizer-of-another-model", _one_param_group, ["parameter group"]),
        ]
    ),
    Case(
        "resume-weights-only-into-its-own-run",
        [*TRAIN, "--resume", "auto"],
        ["--resume", "step=0000002.ckpt", "optimizer state"],
        _edited_checkpoint(_weights_only, "out/checkpoints/step=0000002.ckpt"),  # --out's latest checkpoint
    ),
    Case(
        "out-is-a-file",
        ["train", "--config", "{config}", "--out", "{file}"],
        ["--out", "{file}"],
        untouched_steps=BUILD,
    ),
    Case(
        "out-under-a-file",
        ["train", "--config", "{config}", "--out", "{file}/run"],
        ["--out"],
        untouched_steps=BUILD,
    ),
    Case(
        "out-read-only",
        ["train", "--config", "{config}", "--out", "{readonly}/run"],
        ["--out"],
        needs_permissions=True,
    ),
    Case(
        "out-is-the-data",
        ["train", "--config", "{config}", "--out", "{scenes}"],
        ["--out"],
        untouched_steps=BUILD,
    ),
    Case("unknown-option", [*TRAIN, "--epochs", "3"], ["--epochs"]),
]

_ON_CPU = {"devices-8-on-cpu"}


def _params():
    out = []
    for case in CASES:
        if case.id in _ON_CPU:
            out.append(
                pytest.param(
                    case,
                    id=case.id,
                    marks=pytest.mark.skipif(
                        torch.cuda.is_available(), reason="needs a machine without CUDA"
                    ),
                )
            )
        else:
            out.append(case.param())
    return out


@pytest.mark.parametrize("case", _params())
def test_train(case, world, monkeypatch, capsys):
    run_case(case, world, monkeypatch, capsys)


def test_model_checkpoint_may_be_a_hf_folder(world, monkeypatch, capsys):
    """A Hugging Face folder (model.safetensors inside) is a checkpoint here as everywhere else; it was refused as
    "model.checkpoint: DIR not found". (Not a `Case`: a finished training prints Lightning's status lines.)"""
    import eomt_ood.models

    folder = world.root / "hf"
    folder.mkdir()
    shutil.copy(world["ckpt"], folder / "model.safetensors")
    loaded = []
    create_model = eomt_ood.models.create_model

    def spy(*args, **kwargs):
        loaded.append(kwargs.get("checkpoint"))
        return create_model(*args, **kwargs)

    monkeypatch.setattr(eomt_ood.models, "create_model", spy)
    monkeypatch.chdir(world.root)
    argv = [world.fmt(a) for a in [*TRAIN, "--set", f"model.checkpoint={folder}"]]
    code, out, err, escaped = run_cli(argv, monkeypatch, capsys)
    assert escaped is None and code == 0, f"exit {code}\n{escaped or ''}{err[-2000:]}"
    assert out.startswith("trained -> ") and (world.root / "out" / "model.safetensors").is_file()
    assert Path(folder) in [Path(c) for c in loaded if c is not None], loaded


def test_a_diverged_run_stops_at_its_next_checkpoint(world, monkeypatch, capsys):
    """Starting weights that are NaN (the same as a run that diverged): every step trained on NaN and the run
    exported NaN weights, exit 0. The first checkpoint save refuses them, and nothing is written for that step."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    nan = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in load_file(world["ckpt"]).items()
    }
    with safe_open(world["ckpt"], "pt") as f:
        metadata = f.metadata()
    save_file(nan, str(world.root / "nan.safetensors"), metadata=metadata)
    monkeypatch.chdir(world.root)
    argv = [world.fmt(a) for a in [*TRAIN, "--set", f"model.checkpoint={world.root / 'nan.safetensors'}"]]
    code, _, err, escaped = run_cli(argv, monkeypatch, capsys)
    assert escaped is None and code == 2, f"exit {code}\n{escaped or ''}{err[-2000:]}"
    assert "training diverged:" in err and "NaN or inf at step 1" in err and "Traceback" not in err
    assert not list((world.root / "out").glob("checkpoints/step=*.ckpt"))
    assert not (world.root / "out" / "model.safetensors").exists()
