"""Templates of the fault suite, made once per session, and the per-case `world` folder that copies them lazily.

Everything is tiny: 18 BRAVO-layout images of 32 x 64 (two per subset), the `eomt_test` model with random
weights, a finished run of it over those images (two scores), four synthetic street scenes for `train`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from .harness import SCORES, World, make_read_only, undo_read_only


class Evil:
    """Unpickling this runs `touch <marker>`: a file that must never appear."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _sampling_tar(gt: Path, out: Path) -> None:
    from eomt_ood.bravo.layout import match_gt, read_label
    from eomt_ood.bravo.sampling import official_sample_indices, write_sampling_tar

    names = [p.relative_to(gt).as_posix() for p in gt.rglob("*.png")]
    samples = []
    for images in match_gt(names).values():
        for image in images:
            label = read_label((gt / image.label_name).read_bytes(), image.label_name)
            base = image.samples_name[: -len("_samples.bin")]
            samples.append((base, official_sample_indices(label != 255)))
    write_sampling_tar(out, samples)


@pytest.fixture(scope="session")
def templates(tmp_path_factory) -> Path:
    """The session's read-only templates (see the module docstring); cases get copies through `world`."""
    import torch

    from eomt_ood.data.demo import write_demo
    from eomt_ood.data.streets import write_dataset
    from eomt_ood.evaluate import EvaluateConfig, evaluate_bravo
    from eomt_ood.models import create_model, save_checkpoint

    root = tmp_path_factory.mktemp("faults-templates")
    write_demo(root / "data", seed=5, per_subset=2, size=(32, 64))
    torch.manual_seed(0)
    save_checkpoint(create_model("eomt_test"), root / "model.safetensors")
    _sampling_tar(root / "data" / "gt", root / "samples.tar")
    config = EvaluateConfig(
        out=root / "run",
        images_root=root / "data" / "images",
        gt=root / "data" / "gt",
        checkpoint=root / "model.safetensors",
        confidences=SCORES,
        workers=0,
    )
    evaluate_bravo(config, progress=False)
    write_dataset(root / "scenes", 4, seed=0, size=(32, 64), simple=True)
    return root


@functools.cache
def _trained(templates: Path) -> Path:
    """A real Lightning training checkpoint (2 steps of `eomt_test_synthetic` on the scenes, with the recipe of
    the case's train.yaml), made on first use and kept among the templates."""
    from eomt_ood.config import load_config
    from eomt_ood.training.config import TrainConfig
    from eomt_ood.training.run import find_last_checkpoint, train

    out = templates / "trained"
    if find_last_checkpoint(out) is None:
        world = World(templates / "trained-config", {"scenes": lambda w: templates / "scenes"})
        world.root.mkdir(exist_ok=True)
        config = load_config(TrainConfig, _train_yaml(world))
        # Quiet: a case's setup makes it, and what it prints would be read as the command's stderr.
        # (Lightning logs through a handler bound to the stream of when it was imported, so logging is off too.)
        logging.disable(logging.INFO)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                train(config, out_dir=out)
        finally:
            logging.disable(logging.NOTSET)
    checkpoint = find_last_checkpoint(out)
    assert checkpoint is not None
    return checkpoint


def _copy(source: Path, target: Path) -> Path:
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return target


def _train_yaml(world: World) -> Path:
    import yaml

    from eomt_ood.resources import find_config

    data = yaml.safe_load(find_config("eomt_test_synthetic").read_text())
    data["data"].update(root=str(world["scenes"]), batch_size=2)
    data["trainer"].update(max_steps=2, val_every_n_epochs=0, checkpoint_every_n_steps=1)
    path = world.root / "train.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _evil_legacy(world: World) -> Path:
    path = world.root / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": Evil(world["marker"])}, protocol=2))
    return path


def _evil_zip(world: World) -> Path:
    import torch

    path = world.root / "evil_zip.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Evil(world["marker"])}, path)
    return path


def _other_ckpt(world: World) -> Path:
    """A weights-only Lightning-style checkpoint of some other network."""
    import torch

    path = world.root / "other.ckpt"
    torch.save({"state_dict": {"net.weight": torch.zeros(3, 3)}, "global_step": 1, "epoch": 0}, path)
    return path


def _garbage(world: World) -> Path:
    path = world.root / "garbage.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _text_tar(world: World) -> Path:
    path = world.root / "not_a.tar"
    path.write_text("this is not a tar file\n")
    return path


def _empty_tar(world: World) -> Path:
    path = world.root / "empty.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("README.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    return path


def _file(world: World) -> Path:
    path = world.root / "afile.txt"
    path.write_text("hello\n")
    return path


def _folder(world: World) -> Path:
    path = world.root / "afolder"
    path.mkdir()
    return path


def _readonly(world: World) -> Path:
    path = world.root / "readonly"
    path.mkdir()
    make_read_only(path)  # (cases that need it are skipped where it cannot be done)
    return path


@pytest.fixture
def world(templates, tmp_path) -> World:
    """A fresh case folder; `world[name]` (and `{name}` in a case's argv) copies or makes `name` on first use."""
    t = templates
    makers = {
        "images": lambda w: _copy(t / "data" / "images", w.root / "data" / "images"),
        "gt": lambda w: _copy(t / "data" / "gt", w.root / "data" / "gt"),
        "ckpt": lambda w: _copy(t / "model.safetensors", w.root / "model.safetensors"),
        "samples": lambda w: _copy(t / "samples.tar", w.root / "samples.tar"),
        "run": lambda w: _copy(t / "run", w.root / "run"),
        "run2": lambda w: _copy(t / "run", w.root / "run2"),
        "results": lambda w: w["run"] / "results.json",
        "baseline": lambda w: _copy(t / "run" / "results.json", w.root / "baseline.json"),
        "sub": lambda w: _copy(t / "run" / "submission", w.root / "sub"),
        "scenes": lambda w: _copy(t / "scenes", w.root / "scenes"),
        "trained": lambda w: _copy(_trained(t), w.root / "trained" / "step=0000002.ckpt"),
        "config": _train_yaml,
        "evil": _evil_legacy,
        "evil_zip": _evil_zip,
        "other_ckpt": _other_ckpt,
        "garbage": _garbage,
        "text_tar": _text_tar,
        "empty_tar": _empty_tar,
        "file": _file,
        "folder": _folder,
        "readonly": _readonly,
        # Paths that are not made: where a command must not write, or what must never appear.
        "tmp": lambda w: w.root,
        "missing": lambda w: w.root / "missing",
        "out": lambda w: w.root / "out",
        "marker": lambda w: w.root / "PWNED",
        "port": lambda w: Path((w.root / "port").read_text().strip()),  # written by a case's setup
    }
    case_root = tmp_path / "case"
    case_root.mkdir()
    made = World(case_root, makers)
    yield made
    readonly = case_root / "readonly"
    if readonly.exists():
        undo_read_only(readonly)
    assert not (case_root / "PWNED").exists(), "a pickle was unpickled: its payload ran"
