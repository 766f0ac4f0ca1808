"""End-to-end training on the tiny config: finite decreasing loss, exact resume, overfitting, user errors."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from training_support import CONFIG, StopAt, read_metrics, synthetic_config, write_scenes

from eomt_ood.config import load_config
from eomt_ood.errors import UserError
from eomt_ood.models import create_model, load_checkpoint
from eomt_ood.training.config import TrainConfig
from eomt_ood.training.run import StepSampler, find_last_checkpoint, train


def test_step_sampler_resumes_mid_epoch():
    steps = {"n": 0}
    sampler = StepSampler(10, batch_size=2, seed=3, step_fn=lambda: steps["n"])
    full_epoch_1 = list(iter(StepSampler(10, batch_size=2, seed=3, step_fn=lambda: 5)))
    steps["n"] = 7  # 5 steps per epoch: epoch 1, batch 2
    resumed = list(iter(sampler))
    assert resumed == full_epoch_1[4:]
    assert sorted(i for i, _ in full_epoch_1) == list(range(10))
    # Sharding: ranks see disjoint halves of a padded permutation.
    ranks = [list(StepSampler(7, 1, seed=0, rank=r, world_size=2).epoch_order(0)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 4 and set(ranks[0]) | set(ranks[1]) == set(range(7))


def test_few_steps_write_outputs(tmp_path):
    root = write_scenes(tmp_path / "data", 4)
    config = synthetic_config(
        root, "trainer.max_steps=3", "trainer.log_every_n_steps=1", "trainer.val_every_n_epochs=1"
    )
    weights = train(config, out_dir=tmp_path / "run")
    out = tmp_path / "run"
    assert (
        weights.is_file()
        and (out / "config.yaml").is_file()
        and (out / "checkpoints" / "config.yaml").is_file()
    )
    assert find_last_checkpoint(out).name == "step=0000003.ckpt"
    rows = read_metrics(out)
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 3 and all(np.isfinite(losses))
    mious = [float(r["val/miou"]) for r in rows if r.get("val/miou")]
    assert len(mious) == 3 and all(0 <= m <= 1 for m in mious)  # 1 step per epoch, validation every epoch
    heads = [float(r["lr/heads"]) for r in rows if r.get("lr/heads")]
    assert heads == pytest.approx([1e-4, 2e-4, 3e-4])  # lr 1e-3 * t/10 after steps 1, 2, 3


def test_keeps_the_latest_and_the_best_checkpoint_unless_told_to_keep_all(tmp_path):
    # 4 scenes, batch 2: 2 steps per epoch, validation after each epoch (steps 2, 4, 6), a save every 2 steps.
    root = write_scenes(tmp_path / "data", 4)
    sets = ["trainer.max_steps=6", "data.batch_size=2", "trainer.checkpoint_every_n_steps=2"]
    sets += ["trainer.val_every_n_epochs=1", "trainer.log_every_n_steps=1"]
    train(synthetic_config(root, *sets), out_dir=tmp_path / "default")
    rows = read_metrics(tmp_path / "default")
    # The i-th validation ran after optimizer step 2i (the CSV's own step column counts from 0).
    mious = [(2 * (i + 1), float(r["val/miou"])) for i, r in enumerate(r for r in rows if r.get("val/miou"))]
    assert len(mious) == 3
    best_step = next(step for step, miou in mious if miou == max(m for _, m in mious))  # first of the ties
    kept = sorted(p.name for p in (tmp_path / "default" / "checkpoints").glob("*.ckpt"))
    assert kept == sorted(["step=0000006.ckpt", f"best-step={best_step:07d}.ckpt"])
    best = tmp_path / "default" / "checkpoints" / f"best-step={best_step:07d}.ckpt"
    load_checkpoint(create_model("eomt_test"), best)  # the best checkpoint loads like any other
    train(synthetic_config(root, *sets, "trainer.keep_checkpoints=all"), out_dir=tmp_path / "all")
    kept = sorted(p.name for p in (tmp_path / "all" / "checkpoints").glob("*.ckpt"))
    assert kept == ["step=0000002.ckpt", "step=0000004.ckpt", "step=0000006.ckpt"]
    with pytest.raises(UserError, match="keep_checkpoints: 'some' is not one of 'last_and_best', 'all'"):
        synthetic_config(root, "trainer.keep_checkpoints=some")


@pytest.mark.slow
def test_loss_decreases(tmp_path):
    root = write_scenes(tmp_path / "data", 4)
    config = synthetic_config(
        root, "trainer.max_steps=40", "trainer.val_every_n_epochs=0", "trainer.log_every_n_steps=1"
    )
    train(config, out_dir=tmp_path / "run")
    losses = [float(r["train/loss"]) for r in read_metrics(tmp_path / "run") if r.get("train/loss")]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_resume_is_exact(tmp_path):
    # 6 scenes, batch 4 -> 1 step per epoch (drop_last); 3 steps per epoch with batch 2. Use batch 2: the kill at
    # step 4 is mid-epoch (epoch 1, batch 1), and validation runs at the end of every epoch in between.
    root = write_scenes(tmp_path / "data", 6)
    sets = (
        "trainer.max_steps=8",
        "data.batch_size=2",
        "trainer.val_every_n_epochs=1",
        "trainer.checkpoint_every_n_steps=4",
    )
    straight = train(synthetic_config(root, *sets), out_dir=tmp_path / "straight")
    train(synthetic_config(root, *sets), out_dir=tmp_path / "resumed", callbacks=[StopAt(4)])
    assert find_last_checkpoint(tmp_path / "resumed").name == "step=0000004.ckpt"
    resumed = train(synthetic_config(root, *sets), resume="auto", out_dir=tmp_path / "resumed")

    from safetensors.torch import load_file

    a, b = load_file(straight), load_file(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # Annealing ran to the end of the run: P_k = 0 for both masked blocks after T = 7 steps.
    assert torch.equal(a["attn_mask_probs"], torch.zeros(2))


def test_missing_pretrained_backbone_is_a_user_error(tmp_path):
    root = write_scenes(tmp_path / "data", 2)
    config = synthetic_config(
        root, f"model.pretrained_backbone={tmp_path / 'missing.pth'}", "data.batch_size=1"
    )
    with pytest.raises(UserError, match=r"model\.pretrained_backbone.*missing\.pth"):
        train(config, out_dir=tmp_path / "run")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_training_image_is_one_line_naming_it(tmp_path, workers):
    """A corrupt image found while training: the error is the dataset's own line, also when a data worker read
    it (torch's loader raised it again built from the worker's whole traceback)."""
    root = write_scenes(tmp_path / "data", 4)
    broken = root / "leftImg8bit" / "train" / "synth" / "synth_000001_000019_leftImg8bit.png"
    broken.write_bytes(broken.read_bytes()[:200])
    sets = ["trainer.max_steps=2", "trainer.val_every_n_epochs=0", f"data.num_workers={workers}"]
    with pytest.raises(UserError) as caught:
        train(synthetic_config(root, *sets), out_dir=tmp_path / "run")
    assert str(caught.value) == f"{broken}: corrupt PNG (OSError: image file is truncated)"


def test_a_run_whose_weights_turn_nan_stops_within_a_log_interval(tmp_path):
    """Weights that turn NaN mid-run (as a diverging run's do) stop it at the next multiple of
    `trainer.log_every_n_steps`, long before its next checkpoint, which would have refused them; the checkpoint
    before is kept. Weights turned NaN by hand: the check must not depend on how a run diverges."""
    import lightning as L

    class Diverge(L.Callback):
        def on_train_batch_end(self, trainer, module, *_):
            if trainer.global_step == 5:
                with torch.no_grad():
                    next(module.model.parameters()).fill_(float("nan"))

    root = write_scenes(tmp_path / "data", 4)
    sets = ["trainer.max_steps=40", "trainer.val_every_n_epochs=0", "trainer.log_every_n_steps=3"]
    sets += ["trainer.checkpoint_every_n_steps=4"]  # kept at step 4; the next (8) would have refused
    with pytest.raises(UserError) as caught:
        train(synthetic_config(root, *sets), out_dir=tmp_path / "run", callbacks=[Diverge()])
    name = next(iter(dict(create_model("eomt_test").named_parameters())))
    assert str(caught.value).startswith(f"training diverged: model.{name} holds NaN or inf at step 6, the ")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("step=*.ckpt")] == ["step=0000004.ckpt"]


@pytest.mark.parametrize("signame", ["SIGKILL", "SIGTERM"])
def test_a_data_worker_killed_midway_is_one_line(signame, tmp_path, monkeypatch):
    """A data-loading worker killed while training: by SIGKILL (as the out-of-memory killer would), torch's
    RuntimeError ("DataLoader worker (pid N) is killed by signal") and its traceback become one `LostProcess`
    line; by SIGTERM, the job was stopped from outside (a scheduler's SIGTERM to the group whose main process
    has not noted it yet): `Terminated`, which the CLI says as such (exit 143)."""
    import os
    import signal

    import lightning as L

    from eomt_ood.errors import LostProcess, Terminated

    class KillWorkers(L.Callback):
        def on_train_batch_end(self, trainer, *_):
            if trainer.global_step == 2:
                tasks = Path(f"/proc/{os.getpid()}/task").iterdir()
                pids = [pid for task in tasks for pid in (task / "children").read_text().split()]
                # From another process: torch's workers exit quietly on a SIGTERM from their parent
                subprocess.run(["kill", f"-{signame.removeprefix('SIG')}", *pids], check=True)
                # torch's SIGCHLD check raises here; without the wait, the next batch may be read from the dead
                # worker first, which fails as "[Errno 104] Connection reset by peer" (one line from the CLI too)
                time.sleep(2)

    root = write_scenes(tmp_path / "data", 4)
    sets = ["trainer.max_steps=30", "trainer.val_every_n_epochs=0", "data.num_workers=1", "data.batch_size=1"]
    # torch installs its SIGCHLD check once per process (a `train` command's first loader): as in a fresh one,
    # whatever an earlier test did here
    monkeypatch.setattr(torch.utils.data._utils.signal_handling, "_SIGCHLD_handler_set", False)
    try:
        with pytest.raises(LostProcess if signame == "SIGKILL" else Terminated) as caught:
            train(synthetic_config(root, *sets), out_dir=tmp_path / "run", callbacks=[KillWorkers()])
    finally:
        # torch's SIGCHLD handler stays installed in this process, still holding the killed worker's pid: it
        # would raise that worker's death again inside whatever later test's child ends (a `train` command
        # ends with its process). Back to the default, which torch does not install twice.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if signame == "SIGTERM":
        return
    message = str(caught.value)
    assert message.startswith("a data-loading worker ended without a word (DataLoader worker (pid")
    assert message.endswith("out of memory? fewer data.num_workers use less") and "\n" not in message


def test_resume_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        config = synthetic_config(write_scenes(tmp_path / "data", 2), "data.batch_size=1")
        train(config, resume=tmp_path / "nope.ckpt", out_dir=tmp_path / "run")


@pytest.mark.slow
def test_tiny_model_overfits_synthetic_scenes(tmp_path):
    # eomt_test (D 32, 4 blocks, Q 8, S 64) learns 4 procedural street scenes (the generator's simple mode: six
    # classes, large objects) and is scored on the same scenes. 64 x 64 scenes at scale 1 (training crops are the
    # whole scene, inference is one window), lr 5e-3 instead of the tiny config's 1e-3, 200 steps instead of 1600.
    # Measured on the shared 2-core dev machine: mIoU 0.928 (150 steps: 0.916, 250: 0.934), the untrained model
    # 0.036; the test takes 23 s at load average 2 (training: 25 s of CPU time). The former version (64 x 128
    # scenes, 1600 steps at lr 1e-3) reached 0.916 with 204 s of CPU time, 170 s of test time.
    import shutil

    from eomt_ood.data.cityscapes import CityscapesSemantic, semantic_target
    from eomt_ood.data.streets import write_dataset
    from eomt_ood.inference.predict import predict_image, prepare_model
    from eomt_ood.metrics import ConfusionMatrix

    root = tmp_path / "data"
    write_dataset(root, 4, seed=0, size=(64, 64), splits=("train",), val_fraction=0.0, simple=True)
    for kind in ("leftImg8bit", "gtFine"):
        shutil.copytree(root / kind / "train", root / kind / "val")

    def miou(model) -> float:
        metric = ConfusionMatrix(num_classes=19, ignore_index=255)
        for image, target in CityscapesSemantic(root, "val"):
            pred = predict_image(prepare_model(model), image.numpy()).prediction
            metric.update(pred, semantic_target(target, image.shape[-2:]).long())
        return float(metric.compute()["miou"])

    sets = ["data.scale_range=[1.0, 1.0]", "optim.lr=5e-3", "trainer.max_steps=200"]
    config = synthetic_config(root, "trainer.val_every_n_epochs=1000000", *sets)
    start = time.perf_counter()
    weights = train(config, out_dir=tmp_path / "run")
    seconds = time.perf_counter() - start
    trained = miou(create_model("eomt_test", checkpoint=weights))
    torch.manual_seed(0)
    untrained = miou(create_model("eomt_test"))  # negative control: the threshold needs the training
    print(f"overfit mIoU {trained:.4f} in {seconds:.1f} s of training; untrained {untrained:.4f}")
    assert trained >= 0.9
    assert untrained < 0.2


def test_official_step_counts():
    # 2975 Cityscapes train images, 107 epochs (docs/training.md §8): 4 GPUs x 4 (padded sampler) and 1 x 16.
    assert StepSampler(2975, 4, seed=0, rank=0, world_size=4).steps_per_epoch * 107 == 19902
    assert StepSampler(2975, 16, seed=0).steps_per_epoch * 107 == 19795


@pytest.mark.parametrize("path", sorted((CONFIG.parent).glob("eomt_*.yaml")), ids=lambda p: p.name)
def test_configs_load(path):
    config = load_config(TrainConfig, path)
    from eomt_ood.models import list_models

    assert config.model.name in list_models()


def _tiny_module(total_steps: int = 100):
    from eomt_ood.training.module import EoMTTrainingModule

    config = load_config(TrainConfig, CONFIG, ["optim.lr=1e-4"])
    torch.manual_seed(0)
    model = create_model("eomt_test")
    return EoMTTrainingModule(model, config.loss, config.optim, config.schedule, total_steps=total_steps)


def test_param_groups_llrd():
    module = _tiny_module()
    optimizer = module.configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert len(groups) == len(list(module.model.parameters()))  # one group per tensor
    assert all(len(g["params"]) == 1 and g["weight_decay"] == 0.05 for g in groups.values())
    base = {name: g["initial_lr"] for name, g in groups.items()}
    depth = len(module.model.backbone.blocks)  # 4
    assert base["backbone.blocks.0.attn.qkv.weight"] == pytest.approx(1e-4 * 0.8 ** (depth - 1))
    assert base["backbone.blocks.2.mlp.fc1.bias"] == pytest.approx(1e-4 * 0.8)
    assert base["backbone.blocks.3.norm1.weight"] == pytest.approx(1e-4)
    for name in (
        "backbone.patch_embed.proj.weight",
        "backbone.pos_embed",
        "backbone.cls_token",
        "backbone.reg_token",
    ):
        assert base[name] == pytest.approx(1e-4 * 0.8 ** (depth - 1)), name
    assert base["backbone.norm.weight"] == pytest.approx(1e-4)
    for name in ("q.weight", "class_head.weight", "mask_head.0.weight", "upscale.0.conv1.weight"):
        assert base[name] == pytest.approx(1e-4) and not groups[name]["backbone"], name


def test_backbone_lr_zero_during_head_warmup_but_gradients_flow():
    # Tiny schedule: heads warm up over 10 steps, backbone lr 0 until 10, linear over 20 (the 500/1000 scaled).
    module = _tiny_module(total_steps=100)
    out = module.configure_optimizers()
    optimizer, scheduler = out["optimizer"], out["lr_scheduler"]["scheduler"]
    head = next(g for g in optimizer.param_groups if g["name"] == "class_head.weight")
    block0 = next(g for g in optimizer.param_groups if g["name"] == "backbone.blocks.0.attn.qkv.weight")
    assert head["lr"] == 0.0 and block0["lr"] == 0.0  # step 0
    for _ in range(5):
        scheduler.step()
    assert head["lr"] == pytest.approx(0.5e-4) and block0["lr"] == 0.0

    model = module.model
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    head_before = model.class_head.weight.detach().clone()
    images = torch.rand(2, 3, 64, 64)
    masks = [torch.zeros(1, 64, 64, dtype=torch.bool).index_fill_(1, torch.arange(32), True)] * 2
    labels = [torch.tensor([3])] * 2
    mask_logits, class_logits = model(images)
    module.criterion(mask_logits, class_logits, masks, labels)["loss"].backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    optimizer.step()
    for name, p in model.backbone.named_parameters():
        assert torch.equal(p, before[name]), name  # lr 0: no update, weight decay included
    assert not torch.equal(model.class_head.weight, head_before)  # the heads (lr 0.5e-4) did move
    for _ in range(15):
        scheduler.step()
    assert block0["lr"] == pytest.approx(1e-4 * 0.8**3 * 0.5)  # step 20: half-way through backbone warm-up


def test_cli_train_rejects_unknown_keys(tmp_path):
    from typer.testing import CliRunner

    from eomt_ood.cli import app

    result = CliRunner().invoke(
        app, ["train", "--config", str(CONFIG), "--set", "trainer.no_such_key=1", "--out", str(tmp_path)]
    )
    assert isinstance(result.exception, UserError)
    assert "no_such_key" in str(result.exception) and "max_steps" in str(result.exception)


def test_cli_train_runs_tiny_config(tmp_path):
    from typer.testing import CliRunner

    from eomt_ood.cli import app

    root = write_scenes(tmp_path / "data", 4)
    # The recipe by name (configs/eomt_test_synthetic.yaml), as a user of the installed wheel would give it.
    args = [
        "train",
        "--config",
        "eomt_test_synthetic",
        "--out",
        str(tmp_path / "run"),
        "--set",
        f"data.root={root}",
    ]
    args += ["--set", "trainer.max_steps=2", "--set", "trainer.val_every_n_epochs=0", "--resume", "auto"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert "trained ->" in result.output


def test_progress_bar_of_a_step_recipe_shows_the_step_not_a_negative_epoch_total(tmp_path, monkeypatch):
    """A recipe that counts steps runs Lightning with max_epochs = -1, which its bar showed as "Epoch 9/-2"."""
    from eomt_ood.training import run
    from eomt_ood.training.run import build_trainer

    monkeypatch.setattr(run, "_on_terminal", lambda: True)

    sets = ["trainer.progress_bar=true", "trainer.epochs=3"]
    steps, _ = build_trainer(synthetic_config(tmp_path, *sets, "trainer.max_steps=7"), tmp_path / "steps")
    bar = steps.progress_bar_callback
    if hasattr(bar, "_get_train_description"):  # the rich bar (Lightning's default where rich is installed)
        assert bar._get_train_description(9).strip() == "Epoch 9"
    assert bar.get_metrics(steps, None)["step"] == "0/7"
    epochs, _ = build_trainer(
        synthetic_config(tmp_path, *sets, "trainer.max_steps=null"), tmp_path / "epochs"
    )
    epochs.progress_bar_callback.setup(epochs, None, "fit")  # as Lightning does when fitting
    assert "step" not in epochs.progress_bar_callback.get_metrics(epochs, None)
    if hasattr(epochs.progress_bar_callback, "_get_train_description"):
        assert epochs.progress_bar_callback._get_train_description(1).strip() == "Epoch 1/2"


def test_progress_away_from_a_terminal_is_lines(tmp_path, capsys):
    """Lightning's bar draws nothing until the run ends when its output is not a terminal (a cluster job's log);
    there `train` prints a line every log_every_n_steps steps, and one per validation."""
    root = write_scenes(tmp_path / "data", 4)
    sets = ["trainer.progress_bar=true", "trainer.max_steps=4", "trainer.log_every_n_steps=2"]
    train(synthetic_config(root, *sets, "trainer.val_every_n_epochs=2"), out_dir=tmp_path / "run")
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith(("step ", "validation "))]
    assert [line.split(" · ")[0] for line in lines if line.startswith("step")] == ["step 2/4", "step 4/4"], (
        lines
    )
    pattern = r"step \d/4 · epoch \d · loss \d+\.\d{4} · [\d.e+-]+ s/step · \d+:\d\d:\d\d left"
    assert all(re.fullmatch(pattern, line) for line in lines if line.startswith("step")), lines
    assert re.fullmatch(r"validation at step 2: mIoU 0\.\d{4}", lines[1]), lines
    assert "━" not in captured.out + captured.err  # no bar drawn at the end
