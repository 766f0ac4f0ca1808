"""Build and run EoMT training: model, data loaders, Lightning Trainer, loggers, checkpoints, exact resume.

`train(config, resume, out_dir)` is what `eomt-ood train` calls. Output layout under `out_dir`:

    config.yaml                      the resolved config of the run
    checkpoints/step=NNNNNNN.ckpt    the latest Lightning checkpoint (saved every `checkpoint_every_n_steps` and
                                     at the end; with `keep_checkpoints: all` every one is kept)
    checkpoints/best-step=NNNNNNN.ckpt  the checkpoint with the highest val/miou so far (when validation runs)
    checkpoints/config.yaml          the same resolved config, next to the checkpoints
    logs/version_*/metrics.csv       CSV log;  tb/version_*/  TensorBoard log
    model.safetensors                final weights (`models.checkpoints` format, loadable by create_model)

Exact resume: data order and augmentation are pure functions of (seed, epoch, position) — the sampler starts
wherever the restored optimizer step says, and each sample's transform runs under its own seed — and the
training module re-seeds the model-side RNGs from the step (see `training/module.py`). Optimizer, LR
scheduler, GradScaler and `attn_mask_probs` come back with the Lightning checkpoint. A run stopped at a
checkpoint and resumed therefore ends with the same weights as an uninterrupted one (tests/test_train_run.py).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import random
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler

from eomt_ood.config import to_dict
from eomt_ood.errors import LostProcess, Terminated, UserError, first_line
from eomt_ood.training.config import DataConfig, TrainConfig, TrainerConfig, check_paths
from eomt_ood.training.module import EoMTTrainingModule, step_seed

CHECKPOINT_NAME = re.compile(r"^step=(\d+)\.ckpt$")
BEST_MONITOR = "val/miou"


# ------------------------------------------------------------------------------------------------ data


class StepSampler(Sampler):
    """Shuffled, padded, rank-sharded sample order that starts where the restored optimizer step says.

    Epoch e uses `randperm(N)` seeded by (seed, e), padded by wrapping to a multiple of world_size (like
    `DistributedSampler`), then every world_size-th index from `rank`. Yields `(index, sample_seed)` pairs; the
    sample seed makes the augmentation of that draw reproducible. On each `iter()` it asks `step_fn()` for the
    number of optimizer steps taken and skips the batches those consumed, so after a resume the loader continues
    mid-epoch exactly where the interrupted run was.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        accumulate: int = 1,
        step_fn: Callable[[], int] = lambda: 0,
    ):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.accumulate = accumulate
        self.step_fn = step_fn
        self.per_rank = math.ceil(num_samples / world_size)
        self.batches_per_epoch = self.per_rank // batch_size  # drop_last
        if self.batches_per_epoch == 0:
            raise UserError(
                f"data.batch_size: {batch_size} is larger than the {self.per_rank} training images per process"
            )
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / accumulate)

    def __len__(self) -> int:
        return self.per_rank

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's dataset indices for `epoch` (length `per_rank`)."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.num_samples, generator=gen).tolist()
        padded = (order * math.ceil(self.per_rank * self.world_size / self.num_samples))[
            : self.per_rank * self.world_size
        ]
        return padded[self.rank :: self.world_size]

    def start(self) -> tuple[int, int]:
        """(epoch, first sample position in the epoch) implied by the optimizer steps taken so far."""
        steps = int(self.step_fn())
        epoch, step_in_epoch = divmod(steps, self.steps_per_epoch)
        return epoch, step_in_epoch * self.accumulate * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, first = self.start()
        order = self.epoch_order(epoch)
        for position in range(first, self.batches_per_epoch * self.batch_size):
            yield order[position], step_seed(self.seed, epoch, position, self.rank)


class SeededSamples(Dataset):
    """`dataset[(index, seed)]` = `dataset[index]` computed with all global RNGs seeded by `seed`.

    The caller's RNG states are restored afterwards, so loading in the main process (num_workers 0) does not
    disturb the training stream, and the result does not depend on the worker that loads it.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)  # noqa: NPY002 (the global generator is what third-party code draws from)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                np.random.set_state(np_state)  # noqa: NPY002
                random.setstate(py_state)


def build_train_transform(data: DataConfig, img_size: int) -> Callable:
    """The training augmentation `data.augmentation` names, for a model of input side `img_size`."""
    from eomt_ood.data.transforms import ShortSideCropTransform, TrainTransform

    if data.augmentation == "eomt":
        return TrainTransform(img_size, scale_range=data.scale_range, color_jitter=data.color_jitter)
    if not data.short_sides or min(data.short_sides) <= 0:
        raise UserError("data.short_sides: the mask2former augmentation needs a list of positive short sides")
    crop = data.crop_size or (img_size, img_size)
    if min(crop) <= 0:
        raise UserError(f"data.crop_size: {list(crop)} must be two positive sizes (height, width)")
    if not 0 < data.single_category_max_area <= 1:
        raise UserError(f"data.single_category_max_area: {data.single_category_max_area} is not in (0, 1]")
    return ShortSideCropTransform(
        data.short_sides,
        crop,
        max_long_side=data.max_long_side,
        single_category_max_area=data.single_category_max_area,
        color_jitter=data.color_jitter,
    )


class CityscapesData(L.LightningDataModule):
    """Cityscapes train (augmented, `StepSampler`) and val (full resolution, sharded across ranks) loaders."""

    def __init__(self, config: TrainConfig, img_size: int):
        super().__init__()
        self.config = config
        self.img_size = img_size

    def train_dataloader(self) -> DataLoader:
        from eomt_ood.data.cityscapes import CityscapesSemantic, collate_batch

        d, trainer = self.config.data, self.trainer
        transform = build_train_transform(d, self.img_size)
        dataset = CityscapesSemantic(d.root, d.train_split, transform=transform)
        sampler = StepSampler(
            len(dataset),
            d.batch_size,
            seed=self.config.trainer.seed,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            accumulate=trainer.accumulate_grad_batches,
            step_fn=lambda: trainer.global_step,
        )
        return DataLoader(
            SeededSamples(dataset),
            batch_size=d.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=d.num_workers,
            collate_fn=collate_batch,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )

    def val_dataloader(self) -> DataLoader | list:
        from eomt_ood.data.cityscapes import CityscapesSemantic, collate_lists

        d, trainer = self.config.data, self.trainer
        if self.config.trainer.val_every_n_epochs <= 0:
            return []
        dataset = CityscapesSemantic(d.root, d.val_split)
        count = len(dataset) if d.val_max_images is None else min(d.val_max_images, len(dataset))
        # Each image on exactly one rank (no padding): the confusion matrix is summed over ranks.
        indices = list(range(count))[trainer.global_rank :: trainer.world_size]
        return DataLoader(
            torch.utils.data.Subset(dataset, indices),
            batch_size=1,
            shuffle=False,
            num_workers=min(d.num_workers, 2),
            collate_fn=collate_lists,
        )


# -------------------------------------------------------------------------------------------- helpers


def find_last_checkpoint(out_dir: str | Path) -> Path | None:
    """The `checkpoints/step=N.ckpt` with the largest N under `out_dir`, or None."""
    folder = Path(out_dir) / "checkpoints"
    found = []
    for path in folder.glob("step=*.ckpt") if folder.is_dir() else []:
        match = CHECKPOINT_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def resolve_resume(resume: str | Path | None, out_dir: Path) -> Path | None:
    if resume is None:
        return None
    if str(resume) == "auto":
        return find_last_checkpoint(out_dir)
    path = Path(resume)
    if not path.is_file():
        raise UserError(
            f"--resume {path}: "
            + ("a folder, not a checkpoint file" if path.is_dir() else "checkpoint not found")
        )
    return path


def read_resume(path: Path) -> dict[str, Any]:
    """The Lightning checkpoint `--resume` names, its tensors memory-mapped and nothing unpickled; a file that is
    not one (weights only, pickled objects, garbage) is a `UserError` naming --resume."""
    from eomt_ood.models.checkpoints import load_weights_only

    hint = "to start from its weights set model.checkpoint instead"
    if path.suffix == ".safetensors":
        raise UserError(f"--resume {path}: a weights file, not a training checkpoint; {hint}")
    try:
        state = load_weights_only(path, mmap=True)
    except UserError as exc:
        raise UserError(f"--resume {exc}") from None
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("state_dict"), dict)
        or "global_step" not in state
    ):
        raise UserError(
            f"--resume {path}: not a Lightning training checkpoint (no state_dict and global_step); {hint}"
        )
    problem = _training_state_problem(state)
    if problem is not None:
        raise UserError(f"--resume {path}: not a training checkpoint ({problem}); {hint}")
    return state


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _loop_step(fit_loop: dict[str, Any]) -> Any:
    """The optimizer steps the checkpoint's fit loop had taken (what Lightning restores `global_step` from),
    None where the loop holds no such count under the name Lightning 2 gives it (a later version may rename it:
    then nothing is compared)."""
    try:
        progress = fit_loop["epoch_loop.automatic_optimization.optim_progress"]
        return progress["optimizer"]["step"]["total"]["completed"]
    except (KeyError, TypeError):
        return None


def _training_state_problem(state: dict[str, Any]) -> str | None:
    """What a Lightning checkpoint lacks for `trainer.fit(ckpt_path=...)` to resume our training exactly, or None.

    Lightning raises KeyError / AttributeError deep inside the restore for most of these, and restores nothing
    (silently) for others: without loop progress the run starts again at step 0 with the restored weights, and
    empty optimizer or scheduler lists restore no Adam moments or learning-rate schedule.
    """
    weights = state["state_dict"]
    odd = next((k for k, v in weights.items() if not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        return f"state_dict entry {odd!r} is not a tensor but {type(weights[odd]).__name__}"
    if not _is_count(state["global_step"]) or not _is_count(state.get("epoch")):
        return "global_step and epoch are not step and epoch counts"
    if "optimizer_states" not in state:
        return "no optimizer state: saved with weights only?"
    optimizers = state["optimizer_states"]
    if (
        not isinstance(optimizers, list)
        or len(optimizers) != 1
        or not isinstance(optimizers[0], dict)
        or not isinstance(optimizers[0].get("state"), dict)
        or not isinstance(optimizers[0].get("param_groups"), list)
        or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in optimizers[0]["param_groups"]
        )
    ):
        return "optimizer_states is not one optimizer's state and param_groups"
    schedulers = state.get("lr_schedulers")
    if schedulers is None:
        return "no learning-rate scheduler state: saved with weights only?"
    if (
        not isinstance(schedulers, list)
        or len(schedulers) != 1
        or not isinstance(schedulers[0], dict)
        or not isinstance(schedulers[0].get("lr_lambdas"), list)
    ):
        return "lr_schedulers is not one LambdaLR scheduler's state"
    loops = state.get("loops")
    if not isinstance(loops, dict) or not isinstance(loops.get("fit_loop"), dict) or not loops["fit_loop"]:
        return "no loop progress: no step to continue from"
    step = _loop_step(loops["fit_loop"])
    if step is not None and step != state["global_step"]:
        return f"its loop progress is at step {step}, its global_step is {state['global_step']}"
    return None


# What may differ between a run and its resume: where things are and how the run is carried out, not what it
# computes (a changed recipe would train one model with two recipes, and the run's config.yaml would describe
# neither). The devices may change (a lost node), at the cost of the exact data order.
RESUME_MAY_CHANGE = frozenset(
    {
        "model.pretrained_backbone",  # only the start of the run reads these two
        "model.checkpoint",
        "data.root",
        "data.num_workers",
        "data.val_max_images",
        "data.val_micro_batch",
        "trainer.accelerator",
        "trainer.devices",
        "trainer.num_nodes",
        "trainer.strategy",
        "trainer.compile",
        "trainer.log_every_n_steps",
        "trainer.val_every_n_epochs",
        "trainer.checkpoint_every_n_steps",
        "trainer.keep_checkpoints",
        "trainer.progress_bar",
    }
)


class _ProgressLines(L.Callback):
    """Progress as plain lines on stderr, for a run whose output is not a terminal (a cluster job's log file),
    where Lightning's bar shows nothing until the run ends: every `every` optimizer steps, the step out of the
    run's total, the epoch, the loss, the pace and the time left; and the mIoU of each validation."""

    def __init__(self, every: int):
        self.every = every
        self.last: tuple[int, float] | None = None  # (step, time) of the previous line

    def on_train_start(self, trainer: L.Trainer, *_: Any) -> None:
        self.last = (trainer.global_step, time.perf_counter())

    def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
        step = trainer.global_step
        if self.last is None or step == self.last[0] or step % self.every or not trainer.is_global_zero:
            return
        now = time.perf_counter()
        pace = (now - self.last[1]) / (step - self.last[0])
        self.last = (step, now)
        total = int(trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches)
        loss = trainer.callback_metrics.get("train/loss")
        parts = [f"step {step}/{total}", f"epoch {trainer.current_epoch}"]
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        left = datetime.timedelta(seconds=round(pace * max(total - step, 0)))
        parts += [f"{pace:.3g} s/step", f"{left} left"]
        print(" · ".join(parts), file=sys.stderr, flush=True)

    def on_validation_end(self, trainer: L.Trainer, *_: Any) -> None:
        miou = trainer.callback_metrics.get("val/miou")
        if not trainer.sanity_checking and trainer.is_global_zero and miou is not None:
            print(
                f"validation at step {trainer.global_step}: mIoU {float(miou):.4f}",
                file=sys.stderr,
                flush=True,
            )


def _progress(t: TrainerConfig) -> tuple[bool, list[L.Callback]]:
    """How `train` shows its progress (`trainer.progress_bar`), as (Lightning's bar on, callbacks): Lightning's bar
    on a terminal (for a recipe that counts steps, `_step_progress_bar`), plain lines otherwise
    (`_ProgressLines`), or nothing."""
    if not t.progress_bar:
        return False, []
    if not _on_terminal():
        return False, [_ProgressLines(t.log_every_n_steps)]
    return True, [_step_progress_bar()] if t.max_steps is not None else []


def _on_terminal() -> bool:
    return sys.stdout.isatty()  # where Lightning's bar draws


def _step_progress_bar() -> L.Callback:
    """Lightning's default progress bar for a recipe that counts steps (`trainer.max_steps`).

    Lightning then runs with max_epochs = -1, which its rich bar shows as "Epoch 9/-2"; this one shows the epoch
    alone and, beside the bar's other figures, "step 1234/2000".
    """
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

    base: type = RichProgressBar if _RICH_AVAILABLE else TQDMProgressBar

    class StepProgressBar(base):  # type: ignore[misc, valid-type]
        def _get_train_description(self, current_epoch: int) -> str:  # the rich bar's
            return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"

        def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
            return {
                "step": f"{trainer.global_step}/{trainer.max_steps}",
                **super().get_metrics(trainer, pl_module),
            }

    return StepProgressBar()


class _StopWhenAsked(L.Callback):
    """Turns a Ctrl-C that `_noting_stops` noted into KeyboardInterrupt after the current batch, at a point where
    Lightning's graceful shutdown can take over."""

    def __init__(self, noted: list[int]):
        self.noted = noted

    def _check(self) -> None:
        if signal.SIGINT in self.noted:
            raise KeyboardInterrupt

    def on_train_batch_end(self, *_: Any) -> None:
        self._check()

    def on_validation_batch_end(self, *_: Any) -> None:
        self._check()


class _ForkGuard:
    """What a process forked during `_noting_stops` (a data worker) does with the stop signals.

    Python's fork hooks run in the new child before its own code: logging's among them. A signal to the process
    group arriving then would run the parent's Python handlers (Lightning's SIGTERM notifier among them) inside
    those hooks, which print whatever goes wrong there as a traceback. So the signals the run took over are
    blocked in the forking thread across `os.fork`: in the parent they stay pending and are handled once the fork
    returns; the child, in its own fork hook (registered after logging's), leaves Ctrl-C to the main process (a
    Python handler that does nothing, so that an exec resets it) and takes SIGTERM's default, death, before it
    unblocks them. Registered once per process (fork hooks cannot be removed); `signals` is empty outside
    `_noting_stops`.

    In the parent, SIGCHLD is held with SIGTERM. While the forking thread blocks SIGTERM, a SIGTERM to the group
    goes to another thread, which may run later than the worker it killed: the worker's SIGCHLD, taken by the
    forking thread, would then run torch's data-loader check (which raises, as a worker died of a signal) before
    `_noting_stops` had turned it off, inside the fork hooks, where the failure prints a traceback (seen in CI).
    Held together, SIGTERM is handled first: signals pending together are delivered, and Python handles them,
    lowest number first."""

    signals: frozenset[int] = frozenset()
    _registered = False
    _masks = threading.local()

    @classmethod
    def watch(cls, signals: frozenset[int]) -> None:
        cls.signals = signals
        if signals and not cls._registered:
            os.register_at_fork(
                before=cls._before, after_in_parent=cls._after_parent, after_in_child=cls._child
            )
            cls._registered = True

    @classmethod
    def _before(cls) -> None:
        cls._masks.held = cls.signals
        if cls.signals:
            held = cls.signals | {signal.SIGCHLD} if signal.SIGTERM in cls.signals else cls.signals
            cls._masks.previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)

    @classmethod
    def _after_parent(cls) -> None:
        if getattr(cls._masks, "held", None):
            signal.pthread_sigmask(signal.SIG_SETMASK, cls._masks.previous)

    @classmethod
    def _child(cls) -> None:
        held, cls.signals = getattr(cls._masks, "held", None), frozenset()
        if not held:
            return
        if signal.SIGINT in held:
            signal.signal(signal.SIGINT, _leave_to_main)
        if signal.SIGTERM in held:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, cls._masks.previous)


def _leave_to_main(*_: Any) -> None:
    """A data worker's Ctrl-C: the main process shuts the workers down."""


@contextlib.contextmanager
def _noting_stops(noted: list[int]) -> Iterator[None]:
    """For the span of Lightning's fit, appends the signals that ask the run to stop to `noted`.

    The first Ctrl-C is only noted, and `_StopWhenAsked` raises it after the batch (a second one raises at once):
    raised where the signal lands, it can fall into a fork hook or a `__del__`, which print it as a traceback and
    drop it, and training goes on. SIGTERM still reaches Lightning's own handler, which stops at the next batch
    (before that handler is installed, SIGTERM raises `Terminated`), and turns off torch's SIGCHLD check of the
    data workers: the same signal to the process group kills them, and the check would raise over the stop. Data
    workers forked meanwhile leave Ctrl-C to the main process and die of SIGTERM as by default (`_ForkGuard`).
    Handlers other than Python's defaults are left alone."""

    def ignore_workers(*_: Any) -> None:
        """SIGCHLD handled by doing nothing (not SIG_DFL: a SIGCHLD already pending for the old Python handler
        would then raise "signal ignored due to race condition" wherever the main thread is)."""

    def on_int(signum: int, frame: Any) -> None:
        if signum in noted:
            signal.default_int_handler(signum, frame)
        noted.append(signum)

    def on_term(signum: int, frame: Any) -> None:
        noted.append(signum)
        signal.signal(signal.SIGCHLD, ignore_workers)
        # Lightning's handlers, once installed, call this one; before that, this is the whole answer.
        if signal.getsignal(signal.SIGTERM) is on_term:
            raise Terminated

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    taken = set()
    if previous[signal.SIGINT] is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_int)
        taken.add(signal.SIGINT)
    if previous[signal.SIGTERM] == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, on_term)
        taken.add(signal.SIGTERM)
    _ForkGuard.watch(frozenset(taken))
    try:
        yield
    finally:
        _ForkGuard.watch(frozenset())
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _killed_by(exc: BaseException, signum: int) -> bool:
    """Whether torch's error for a dead data worker says `signum` killed it ("... is killed by signal:
    Terminated.", the signal named by the C library's `strsignal`, as `signal.strsignal` names it here).

    A worker dies of SIGTERM only when it was sent one: the job was stopped from outside (the out-of-memory
    killer sends SIGKILL). The main process may not have noted the group's SIGTERM by then: once in CI the
    loader's error came through with neither Lightning's flag nor `_noting_stops` set, and the run ended as a
    lost worker (exit 1). Likely, a worker's SIGCHLD was handled inside Lightning's SIGTERM handler, which
    logs before it records anything, and torch's check raised there."""
    name = signal.strsignal(signum)
    return name is not None and f"killed by signal: {name}" in str(exc)


def check_resume_recipe(state: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """A `UserError` when the recipe differs from the one the checkpoint was trained with, in any key outside
    `RESUME_MAY_CHANGE` (a checkpoint without a recorded recipe passes: its weights are still checked)."""
    recorded = state.get("eomt_ood_config")
    if not isinstance(recorded, dict):
        return
    before, now = _flat(recorded), _flat(to_dict(config))
    changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    changed = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if changed:
        key = changed[0]
        more = f" (and {len(changed) - 1} more key(s))" if len(changed) > 1 else ""
        raise UserError(
            f"--resume {path}: trained with {key} = {before.get(key)!r}, this config has {now.get(key)!r}{more}; "
            "resume with the recorded recipe (checkpoints/config.yaml) or start a new --out"
        )


def _flat(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict) and key != "overrides":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume_fits(state: dict[str, Any], module: L.LightningModule, path: Path) -> None:
    """A `UserError` unless the checkpoint's weights are the module's (same names and shapes)."""
    expected = module.state_dict()
    got = state["state_dict"]
    wrong = [k for k, v in got.items() if k not in expected or tuple(v.shape) != tuple(expected[k].shape)]
    missing = [k for k in expected if k not in got]
    if wrong or missing:
        raise UserError(
            f"--resume {path}: a checkpoint of another model ({len(wrong)} of its weights unknown or of another "
            f"shape, {len(missing)} missing, e.g. {(wrong or missing)[0]}); resume with the config that made it"
        )
    # The optimizer has one group per trainable tensor (`optim.param_groups`); torch refuses other counts with a
    # ValueError, and LambdaLR pairs its lambdas with the groups.
    from eomt_ood.training.optim import param_groups

    groups = len(param_groups(module.model, module.optim_config))
    saved = state["optimizer_states"][0]["param_groups"]
    lambdas = state["lr_schedulers"][0]["lr_lambdas"]
    if len(saved) != groups or any(len(g["params"]) != 1 for g in saved) or len(lambdas) != groups:
        raise UserError(
            f"--resume {path}: its optimizer state has {len(saved)} parameter group(s) and its scheduler "
            f"{len(lambdas)}, this model trains {groups} (one per tensor); resume with the config that made it"
        )


def check_config(config: TrainConfig, out_dir: Path, resume: str | Path | None = None) -> None:
    """What `train` checks before it builds anything: the output folder, the model name and files, the data, the
    devices. Each problem is a `UserError` naming its config key or option."""
    from eomt_ood.data.cityscapes import CityscapesSemantic
    from eomt_ood.data.labels import NUM_CLASSES
    from eomt_ood.models import create_model, list_models
    from eomt_ood.models.checkpoints import resolve_weights_file

    m, d = config.model, config.data
    check_paths(config, out_dir, resume)
    for key, weights in (
        ("model.checkpoint", m.checkpoint),
        ("model.pretrained_backbone", m.pretrained_backbone),
    ):
        if weights is not None and Path(weights).is_dir():  # a Hugging Face folder: does it hold weights?
            try:
                resolve_weights_file(weights)
            except UserError as exc:
                raise UserError(f"{key}: {exc}") from None
    if m.name not in list_models():
        raise UserError(f"model.name: unknown name {m.name!r}; available: {', '.join(list_models())}")
    try:  # the architecture with its overrides, as a skeleton without memory (a second or less)
        with torch.device("meta"):
            skeleton = create_model(m.name, **m.overrides)
    except (TypeError, ValueError) as exc:
        raise UserError(f"model.overrides: {m.name} cannot be built with {m.overrides}: {exc}") from None
    if int(skeleton.num_classes) != NUM_CLASSES:
        raise UserError(
            f"model.overrides: num_classes = {skeleton.num_classes}; the Cityscapes labels train {NUM_CLASSES}"
        )
    world = check_devices(config.trainer)
    # The file listing only (labels are read when training starts): is there a split, is the batch not too big.
    images = len(CityscapesSemantic(d.root, d.train_split, check_labels=False))
    StepSampler(images, d.batch_size, seed=0, world_size=world)


def check_devices(t: Any) -> int:
    """A `UserError` for device settings this machine cannot run (CUDA asked for without CUDA, more GPUs than it
    has, several processes on the CPU); returns the number of training processes."""
    devices = t.devices
    if isinstance(devices, str) and devices != "auto":
        indices = [p.strip() for p in devices.split(",") if p.strip()]
        if not indices or not all(p.lstrip("-").isdigit() for p in indices):
            raise UserError(
                f"trainer.devices: {devices!r} is not a count, 'auto' or a list of device indices"
            )
        devices = len(indices) if len(indices) > 1 else int(indices[0])
    if isinstance(devices, int) and devices < 1 and devices != -1:
        raise UserError(
            f"trainer.devices: {devices} is not a device count (1 or more, -1 for all, or 'auto')"
        )
    cuda = torch.cuda.is_available()
    if t.accelerator in ("gpu", "cuda") and not cuda:
        raise UserError(
            f"trainer.accelerator: {t.accelerator} asked for, but this machine has no CUDA device "
            "(tiny configs train on the CPU with trainer.accelerator=cpu and trainer.devices=1)"
        )
    on_cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not cuda)
    count = devices if isinstance(devices, int) and devices > 0 else None
    if on_cpu:
        if (count or 1) > 1 or t.num_nodes > 1:
            raise UserError(
                f"trainer.devices: {t.devices} processes asked for on the CPU (no CUDA device here); CPU "
                "training runs in one process, set trainer.devices=1"
            )
        return 1
    available = torch.cuda.device_count() if cuda else 0
    if count is not None and available and count > available:
        raise UserError(f"trainer.devices: {count} asked for, this machine has {available} CUDA device(s)")
    return (count or max(1, available)) * t.num_nodes


def write_config(config: TrainConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


class ConfigAndStepCheckpoint(L.Callback):
    """Stores the resolved config in every checkpoint and keeps `checkpoints/config.yaml` next to them; refuses to
    save weights that are not finite (a diverged run must not leave NaN weights to resume from or export)."""

    def __init__(self, config: TrainConfig, folder: Path):
        self.config = config
        self.folder = folder

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        bad = _not_finite(checkpoint["state_dict"].items())
        if bad is not None:
            raise _diverged(
                bad, trainer.global_step, "so this step was not saved (the checkpoints before it are kept)"
            )
        checkpoint["eomt_ood_config"] = to_dict(self.config)
        if trainer.is_global_zero:
            write_config(self.config, self.folder / "config.yaml")


class StopWhenDiverged(L.Callback):
    """Stops a run whose weights hold NaN or inf, checked every `every` optimizer steps (the recipe's
    `trainer.log_every_n_steps`), instead of training on until its next checkpoint refuses them, up to
    `trainer.checkpoint_every_n_steps` steps later. One check reads every weight once, on its device, and waits
    for the device once."""

    def __init__(self, every: int):
        self.every = every
        self.checked = 0  # the step checked last

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *_: Any) -> None:
        step = trainer.global_step
        if step == self.checked or step % self.every:
            return
        self.checked = step
        bad = _not_finite(module.named_parameters())
        if bad is not None:
            raise _diverged(bad, step, "the checkpoints before it are kept")


def _not_finite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor of `named` that holds NaN or inf, or None."""
    floats = [(name, tensor) for name, tensor in named if tensor.is_floating_point()]
    if not floats:
        return None
    with torch.no_grad():
        flags = [torch.isfinite(tensor).all() for _, tensor in floats]
        finite = torch.stack([flag.to(flags[0].device) for flag in flags]).cpu()  # one wait
    return None if bool(finite.all()) else floats[int(torch.nonzero(~finite)[0, 0])][0]


def _diverged(name: str, step: int, kept: str) -> UserError:
    return UserError(
        f"training diverged: {name} holds NaN or inf at step {step}, {kept}; lower optim.lr, or check the "
        "starting weights"
    )


def build_model(config: TrainConfig) -> torch.nn.Module:
    from eomt_ood.models import create_model

    m = config.model
    overrides = dict(m.overrides)
    if m.pretrained_backbone is not None:
        if not Path(m.pretrained_backbone).exists():  # a file, or a Hugging Face folder (DINOv2, Swin)
            # The backbone loader names the timm weights to fetch; say which config key to fix, too.
            try:
                create_model(m.name, pretrained_backbone=m.pretrained_backbone, **overrides)
            except UserError as exc:
                raise UserError(f"model.pretrained_backbone: {exc}") from None
        overrides["pretrained_backbone"] = m.pretrained_backbone
    # A missing model.checkpoint was refused before anything was built (`config.check_paths`).
    return create_model(m.name, checkpoint=m.checkpoint, **overrides)


def compile_enabled(setting: bool | None, accelerator: str) -> bool:
    """`trainer.compile`: an explicit true/false wins; null compiles exactly when training runs on CUDA."""
    if setting is not None:
        return setting
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def build_trainer(
    config: TrainConfig, out_dir: Path, callbacks: Sequence[L.Callback] = ()
) -> tuple[L.Trainer, Path]:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    t = config.trainer
    folder = out_dir / "checkpoints"
    keep_all = t.keep_checkpoints == "all"
    # The latest state, for resuming: with save_top_k=1 and no monitor Lightning replaces the previous file.
    latest = ModelCheckpoint(
        dirpath=folder,
        filename="step={step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every_n_steps,
        save_top_k=-1 if keep_all else 1,
        save_last=False,
        save_on_train_epoch_end=False,
    )
    checkpointing: list[L.Callback] = [latest]
    if not keep_all and t.val_every_n_epochs > 0:
        # The best by validation mIoU, checked after every validation (the name differs from step=N, so resume
        # "auto" never picks it).
        checkpointing.append(
            ModelCheckpoint(
                dirpath=folder,
                filename="best-step={step:07d}",
                auto_insert_metric_name=False,
                monitor=BEST_MONITOR,
                mode="max",
                save_top_k=1,
                save_last=False,
                save_on_train_epoch_end=False,
            )
        )
    loggers = [CSVLogger(out_dir, name="logs"), TensorBoardLogger(out_dir, name="tb")]
    bar, progress = _progress(t)
    trainer = L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,  # type: ignore[arg-type]
        sync_batchnorm=t.sync_batchnorm,
        max_epochs=t.epochs if t.max_steps is None else -1,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=config.optim.grad_clip or None,  # the total L2 norm over all parameters
        gradient_clip_algorithm="norm",
        check_val_every_n_epoch=max(1, t.val_every_n_epochs),
        limit_val_batches=None if t.val_every_n_epochs > 0 else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # StepSampler shards by rank itself
        default_root_dir=out_dir,
        logger=loggers,
        callbacks=[
            *checkpointing,
            ConfigAndStepCheckpoint(config, folder),
            StopWhenDiverged(t.log_every_n_steps),
            *progress,
            *callbacks,
        ],
    )
    return trainer, folder


def _checked_trainer(
    config: TrainConfig, out_dir: Path, callbacks: Sequence[L.Callback]
) -> tuple[L.Trainer, Path]:
    """`build_trainer`, with Lightning's refusals of the trainer settings as one line naming the key.

    Lightning's device summary and its advert, printed when a trainer is built, are left out: a run that then
    stops at a bad input ends with one line.
    """
    import logging

    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = rank_zero.level
    rank_zero.setLevel(logging.WARNING)
    try:
        return build_trainer(config, out_dir, callbacks)
    except (ValueError, TypeError) as exc:
        error = exc
    except Exception as exc:
        if type(exc).__name__ != "MisconfigurationException":
            raise
        error = exc
    finally:
        rank_zero.setLevel(level)
    text = " ".join(str(error).split())[:300]
    # Lightning's messages name the setting they refuse ("Precision '64-x' is invalid", "invalid strategy name").
    named = next((k for k in ("precision", "strategy", "devices", "accelerator") if k in text.lower()), None)
    key = f"trainer.{named}" if named else "trainer"
    raise UserError(f"{key}: {text}") from None


def export_weights(model: torch.nn.Module, path: Path) -> None:
    from eomt_ood.models.registry import save_checkpoint

    save_checkpoint(model, path)


def _from_data_worker(error: UserError) -> UserError:
    """A `UserError` raised in a data-loading worker (a corrupt image), as the worker raised it.

    torch's loader raises a worker's exception again in the main process, built from "Caught UserError in
    DataLoader worker process N. Original Traceback ...", the worker's traceback included: flattened into
    one line by `UserError`, the error line became hundreds of characters of traceback ending in the
    message. The message is what follows the last "eomt_ood.errors.UserError: "; any other error is returned
    as it is."""
    text = str(error)
    marker = f"{UserError.__module__}.{UserError.__qualname__}: "
    if not text.startswith(f"Caught {UserError.__qualname__} in DataLoader worker") or marker not in text:
        return error
    return UserError(text.rsplit(marker, 1)[1])


# ---------------------------------------------------------------------------------------------- train


def train(
    config: TrainConfig,
    resume: str | Path | None = None,
    out_dir: str | Path = "runs/train",
    callbacks: Sequence[L.Callback] = (),
) -> Path:
    """Train EoMT as configured; returns the path of the exported final weights (`out_dir/model.safetensors`).

    resume: a Lightning checkpoint path, "auto" (the latest `out_dir/checkpoints/step=N.ckpt`; a fresh start
    when there is none) or None. `callbacks` are extra Lightning callbacks (tests use one to stop early).
    """
    out_dir = Path(out_dir)
    check_config(config, out_dir, resume)
    ckpt_path = resolve_resume(resume, out_dir)
    resume_state = read_resume(ckpt_path) if ckpt_path is not None else None
    stops: list[int] = []  # the signals asking the run to stop (`_noting_stops`)
    trainer, folder = _checked_trainer(config, out_dir, [*callbacks, _StopWhenAsked(stops)])
    t = config.trainer
    if t.float32_matmul_precision:
        torch.set_float32_matmul_precision(t.float32_matmul_precision)
    L.seed_everything(t.seed, workers=True, verbose=False)
    model = build_model(config)
    if compile_enabled(t.compile, t.accelerator):
        model.compile()
    module = EoMTTrainingModule(
        model,
        config.loss,
        config.optim,
        config.schedule,
        seed=t.seed,
        val_micro_batch=config.data.val_micro_batch,
    )
    if resume_state is not None:
        assert ckpt_path is not None
        check_resume_recipe(resume_state, config, ckpt_path)
        check_resume_fits(resume_state, module, ckpt_path)
        del resume_state
    data = CityscapesData(config, img_size=int(model.img_size))
    if trainer.is_global_zero:
        write_config(config, out_dir / "config.yaml")
    with warnings.catch_warnings():
        # Mid-epoch resume is exact here (StepSampler restarts from the restored step), which Lightning cannot see.
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # Checkpoints hold only tensors and plain data, so they load without unpickling objects.
        with _noting_stops(stops):
            try:
                trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
            except BaseException as exc:
                # A stop asked for from outside ends as the command's own Ctrl-C (exit 130) or SIGTERM (143)
                # handling, saying what was kept, whatever surfaced here: Lightning answers Ctrl-C with a graceful
                # shutdown and exit status 1, and SIGTERM by stopping at the next batch; and the data workers,
                # signalled with the same process group, may die first, so that the loader raises instead.
                worker_died = isinstance(exc, RuntimeError) and str(exc).startswith("DataLoader worker (pid")
                if (
                    trainer.received_sigterm
                    or signal.SIGTERM in stops
                    or (worker_died and _killed_by(exc, signal.SIGTERM))
                ):
                    raise Terminated from None
                if signal.SIGINT in stops:
                    raise KeyboardInterrupt from None
                if isinstance(exc, UserError):
                    raise _from_data_worker(exc) from None
                if worker_died:
                    # torch's word for a data worker that died (the kernel's out-of-memory killer, most often)
                    said = first_line(exc).rstrip(". ")
                    raise LostProcess(
                        f"a data-loading worker ended without a word ({said}): out of memory? fewer "
                        "data.num_workers use less"
                    ) from None
                raise

    final = folder / f"step={trainer.global_step:07d}.ckpt"
    if not final.exists():
        trainer.save_checkpoint(final, weights_only=False)
    if t.keep_checkpoints != "all" and trainer.is_global_zero:
        # The end-of-run save above is the new latest; the periodic one it supersedes goes.
        for path in folder.glob("step=*.ckpt"):
            if path != final and CHECKPOINT_NAME.match(path.name):
                path.unlink()
    weights = out_dir / "model.safetensors"
    if trainer.is_global_zero:
        export_weights(module.model, weights)
    return weights
