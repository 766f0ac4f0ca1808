"""Cityscapes semantic segmentation as mask targets (docs/training.md §2), from folders or the official zips.

Accepted roots (checked in this order):

1. the extracted layout: `root/leftImg8bit/<split>/<city>/*_leftImg8bit.png` with
   `root/gtFine/<split>/<city>/*_gtFine_labelIds.png` (or only `*_gtFine_labelTrainIds.png`, as in synthetic data);
2. a folder holding the official zips `leftImg8bit_trainvaltest.zip` and `gtFine_trainvaltest.zip`, read in place
   (members `leftImg8bit/<split>/...` and `gtFine/<split>/...`).

Labels: labelIds are mapped to trainIds with `LABEL_TO_TRAIN`; a labelTrainIds PNG is used as-is (values other
than 0..18 become 255), which gives the same result. When both exist, labelIds wins.

Skipping (docs/training.md §2): an image whose label PNG is constant (min == max), or whose present trainIds are
all ignored, is left out. This is decided once, at construction, by decoding every label PNG (grayscale PNGs
decode quickly: the 2975 Cityscapes train labels take tens of seconds on one core); `check_labels=False` skips
the scan and keeps every image, for callers that know their data is clean.

Zip handles are opened lazily and re-opened in each process (a handle inherited through fork shares one file
offset between workers and corrupts reads), and they are dropped when the dataset is pickled for spawned workers.
"""

from __future__ import annotations

import fnmatch
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eomt_ood.data.labels import IGNORE, LABEL_TO_TRAIN, NUM_CLASSES
from eomt_ood.data.png import decode_png
from eomt_ood.errors import UserError
from eomt_ood.io import walk_files

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
LABEL_TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
IMAGES_ZIP = "leftImg8bit_trainvaltest.zip"
LABELS_ZIP = "gtFine_trainvaltest.zip"
SPLITS = ("train", "val")

# trainIds PNG -> trainIds: 0..18 stay, anything else is ignored.
_TRAIN_TO_TRAIN = np.full(256, IGNORE, dtype=np.uint8)
_TRAIN_TO_TRAIN[:NUM_CLASSES] = np.arange(NUM_CLASSES, dtype=np.uint8)

Target = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Sample:
    """One image/label pair; paths are relative to the root (folder mode) or zip member names (zip mode)."""

    image: str
    label: str
    label_is_train_ids: bool

    @property
    def stem(self) -> str:
        """`<city>_<seq>_<frame>`, the Cityscapes image id."""
        return Path(self.image).name[: -len(IMAGE_SUFFIX)]


class CityscapesSemantic(torch.utils.data.Dataset):
    """Cityscapes images with one boolean mask per present trainId.

    `dataset[i]` -> `(image, target)`: image uint8 (3, H, W) RGB; target `{"masks": bool (K, H, W),
    "labels": int64 (K,)}` with one mask per trainId present in the label (all instances merged), labels sorted
    ascending, ignored pixels (255) in no mask. When `transform` is given (training) it is applied as
    `transform(image, target)` and its result returned; without it (validation) the full-resolution sample is
    returned as-is. Files are in sorted order; `samples[i]` names the files of item i.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]] | None = None,
        check_labels: bool = True,
    ):
        if split not in SPLITS:
            raise UserError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self._zips: dict[str, zipfile.ZipFile] | None = None
        self._zips_pid: int | None = None
        self.zip_mode, candidates = self._index()
        if check_labels:
            candidates = [s for s in candidates if _has_evaluated_class(self._read_train_ids(s))]
        self.samples: list[Sample] = candidates
        self._close_zips()  # workers forked from here open their own handles

    # ------------------------------------------------------------------------------------------- indexing

    def _index(self) -> tuple[bool, list[Sample]]:
        image_dir = self.root / "leftImg8bit" / self.split
        label_dir = self.root / "gtFine" / self.split
        if image_dir.is_dir() and label_dir.is_dir():
            images = sorted(
                f"leftImg8bit/{self.split}/{rel}"
                for rel in walk_files(image_dir)
                if rel.endswith(IMAGE_SUFFIX)
            )
            labels = {
                f"gtFine/{self.split}/{rel}"
                for rel in walk_files(label_dir)
                if fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], "*_gtFine_label*Ids.png")
            }
            return False, _pair(images, labels, str(self.root), self.split)
        if (self.root / IMAGES_ZIP).is_file() and (self.root / LABELS_ZIP).is_file():
            images = sorted(
                n
                for n in self._zip(IMAGES_ZIP).namelist()
                if n.startswith(f"leftImg8bit/{self.split}/") and n.endswith(IMAGE_SUFFIX)
            )
            labels = {
                n
                for n in self._zip(LABELS_ZIP).namelist()
                if n.startswith(f"gtFine/{self.split}/")
                and n.endswith(("_labelIds.png", "_labelTrainIds.png"))
            }
            return True, _pair(images, labels, f"{self.root}/{IMAGES_ZIP}", self.split)
        raise UserError(
            f"{self.root}: not a Cityscapes root; expected folders leftImg8bit/{self.split}/<city>/ and "
            f"gtFine/{self.split}/<city>/, or the zips {IMAGES_ZIP} and {LABELS_ZIP} in it"
        )

    # ------------------------------------------------------------------------------------------- reading

    def _zip(self, name: str) -> zipfile.ZipFile:
        if self._zips is None or self._zips_pid != os.getpid():
            self._zips = {}
            self._zips_pid = os.getpid()
        if name not in self._zips:
            path = self.root / name
            try:
                self._zips[name] = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise UserError(f"{path}: cannot open zip ({exc})") from None
        return self._zips[name]

    def _close_zips(self) -> None:
        if self._zips is not None and self._zips_pid == os.getpid():
            for handle in self._zips.values():
                handle.close()
        self._zips, self._zips_pid = None, None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_zips"], state["_zips_pid"] = None, None
        return state

    def _read_bytes(self, member: str, zip_name: str) -> tuple[bytes, str]:
        if self.zip_mode:
            try:
                return self._zip(zip_name).read(member), f"{self.root / zip_name}:{member}"
            except (KeyError, zipfile.BadZipFile, OSError) as exc:
                raise UserError(f"{self.root / zip_name}:{member}: cannot read ({exc})") from None
        path = self.root / member
        try:
            return path.read_bytes(), str(path)
        except OSError as exc:
            raise UserError(f"{path}: cannot read ({exc.strerror})") from None

    def _read_train_ids(self, sample: Sample) -> np.ndarray:
        data, name = self._read_bytes(sample.label, LABELS_ZIP)
        label = decode_png(data, name)
        if label.ndim != 2 or label.dtype != np.uint8:
            raise UserError(f"{name}: expected an 8-bit grayscale label PNG, got {label.dtype} {label.shape}")
        return (_TRAIN_TO_TRAIN if sample.label_is_train_ids else LABEL_TO_TRAIN)[label]

    def read_image(self, index: int) -> torch.Tensor:
        """uint8 (3, H, W) RGB image of item `index` (gray is repeated, alpha dropped)."""
        data, name = self._read_bytes(self.samples[index].image, IMAGES_ZIP)
        image = decode_png(data, name)
        if image.dtype != np.uint8:
            raise UserError(f"{name}: expected an 8-bit image, got {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        return torch.from_numpy(np.ascontiguousarray(image[:, :, :3].transpose(2, 0, 1)))

    def read_train_ids(self, index: int) -> np.ndarray:
        """(H, W) uint8 trainIds of item `index` (255 = ignore)."""
        return self._read_train_ids(self.samples[index])

    # ------------------------------------------------------------------------------------------- Dataset

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image = self.read_image(index)
        train_ids = self.read_train_ids(index)
        if image.shape[1:] != train_ids.shape:
            sample = self.samples[index]
            raise UserError(
                f"{sample.label}: size {train_ids.shape} differs from image {tuple(image.shape[1:])}"
            )
        target = masks_from_train_ids(train_ids)
        if self.transform is not None:
            return self.transform(image, target)
        return image, target


def _pair(images: list[str], labels: set[str], where: str, split: str) -> list[Sample]:
    if not images:
        raise UserError(f"{where}: no *{IMAGE_SUFFIX} images for split {split!r}")
    samples = []
    for image in images:
        # leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png -> gtFine/<split>/<city>/<stem>_gtFine_*.png
        base = "gtFine" + image[len("leftImg8bit") : -len(IMAGE_SUFFIX)]
        if base + LABEL_IDS_SUFFIX in labels:
            samples.append(Sample(image, base + LABEL_IDS_SUFFIX, label_is_train_ids=False))
        elif base + LABEL_TRAIN_IDS_SUFFIX in labels:
            samples.append(Sample(image, base + LABEL_TRAIN_IDS_SUFFIX, label_is_train_ids=True))
        else:
            raise UserError(f"{where}: {image} has no label {base}{LABEL_IDS_SUFFIX}")
    return samples


def _has_evaluated_class(train_ids: np.ndarray) -> bool:
    # Constant labels are skipped even when the constant is a real class (the official loader's min == max rule).
    if train_ids.min() == train_ids.max():
        return False
    return bool((train_ids != IGNORE).any())


def masks_from_train_ids(train_ids: np.ndarray | torch.Tensor) -> Target:
    """(H, W) uint8 trainIds -> `{"masks": bool (K, H, W), "labels": int64 (K,)}`, one mask per present class.

    Labels are sorted ascending; pixels equal to 255 (or any value >= 19) are in no mask.
    """
    ids = torch.as_tensor(np.asarray(train_ids) if not isinstance(train_ids, torch.Tensor) else train_ids)
    counts = torch.bincount(ids.reshape(-1).long(), minlength=256)[:NUM_CLASSES]
    labels = torch.nonzero(counts, as_tuple=False).reshape(-1)
    masks = ids.unsqueeze(0) == labels.to(ids.dtype).view(-1, 1, 1)
    return {"masks": masks, "labels": labels.to(torch.int64)}


def semantic_target(target: Target, shape: Sequence[int] | None = None) -> torch.Tensor:
    """Evaluation target: (H, W) uint8 filled with 255, each mask's pixels set to its trainId (docs/training.md §2).

    `shape` (H, W) defaults to the masks' spatial size and must match it when given (needed when K == 0).
    Later masks overwrite earlier ones where they overlap (they do not overlap for semantic targets).
    """
    masks, labels = target["masks"], target["labels"]
    size = tuple(masks.shape[-2:]) if shape is None else tuple(int(s) for s in shape)
    if masks.shape[0] and tuple(masks.shape[-2:]) != size:
        raise ValueError(f"masks are {tuple(masks.shape[-2:])}, requested shape {size}")
    out = torch.full(size, IGNORE, dtype=torch.uint8, device=masks.device)
    for mask, label in zip(masks, labels, strict=True):
        out[mask.bool()] = int(label)
    return out


def collate_batch(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Training collate: images stacked to uint8 (B, 3, H, W) (all the same size); targets kept as a list."""
    images = [image for image, _ in batch]
    if len({tuple(image.shape) for image in images}) != 1:
        raise ValueError(f"collate_batch needs equal image sizes, got {[tuple(i.shape) for i in images]}")
    return torch.stack(images), [target for _, target in batch]


def collate_lists(batch: Sequence[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Evaluation collate for any image sizes: (list of uint8 (3, H_i, W_i), list of targets)."""
    return [image for image, _ in batch], [target for _, target in batch]
