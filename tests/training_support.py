"""Training test helpers: blocky synthetic street scenes, the tiny synthetic config, logged metrics, a stop
callback (shared by the training, baseline-recipe and runtime tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eomt_ood.config import load_config
from eomt_ood.data.png import write_png
from eomt_ood.training.config import TrainConfig

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "eomt_test_synthetic.yaml"

# trainId -> RGB of the synthetic scenes (distinct colours, as a tiny model needs).
COLOURS = {0: (128, 64, 128), 1: (244, 35, 232), 2: (70, 70, 70), 8: (107, 142, 35), 10: (70, 130, 180),
           13: (0, 0, 142)}  # fmt: skip


def write_scenes(root: Path, num_images: int, seed: int = 0, size: tuple[int, int] = (64, 128)) -> Path:
    """Blocky street scenes in a Cityscapes layout (train and val get the same images: overfitting)."""
    rng = np.random.default_rng(seed)
    height, width = size
    for index in range(num_images):
        ids = np.full((height, width), 2, np.uint8)  # building
        ids[: 8 * int(rng.integers(1, 3))] = 10  # sky
        ids[height - 8 * int(rng.integers(2, 4)) :] = 0  # road
        ids[height - 8 * int(rng.integers(4, 5)) : height - 24, : 8 * int(rng.integers(2, 6))] = 1  # sidewalk
        tree = 8 * int(rng.integers(0, width // 8 - 2))
        ids[8:40, tree : tree + 16] = 8
        car = 8 * int(rng.integers(0, width // 8 - 3))
        ids[height - 24 : height - 8, car : car + 24] = 13
        image = np.zeros((height, width, 3), np.uint8)
        for train_id, colour in COLOURS.items():
            image[ids == train_id] = colour
        noise = rng.integers(-12, 13, size=image.shape)
        image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        ids[rng.random(ids.shape) < 0.01] = 255  # a few ignored pixels
        for split in ("train", "val"):
            stem = f"synth_{index:06d}_000019"
            write_png(root / "leftImg8bit" / split / "synth" / f"{stem}_leftImg8bit.png", image)
            write_png(root / "gtFine" / split / "synth" / f"{stem}_gtFine_labelTrainIds.png", ids)
    return root


def synthetic_config(root: Path, *sets: str) -> TrainConfig:
    return load_config(TrainConfig, CONFIG, [f"data.root={root}", *sets])


def read_metrics(out: Path) -> list[dict[str, str]]:
    import csv

    rows: list[dict[str, str]] = []
    for path in sorted(out.glob("logs/version_*/metrics.csv")):
        with path.open() as f:
            rows.extend(csv.DictReader(f))
    return rows


class StopAt:
    """Lightning callback that stops training after `step` optimizer steps (simulates a killed run)."""

    def __new__(cls, step: int):
        import lightning as L

        class _Stop(L.Callback):
            def on_train_batch_end(self, trainer, *args) -> None:
                if trainer.global_step >= step:
                    trainer.should_stop = True

        return _Stop()
