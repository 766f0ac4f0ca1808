"""The BRAVO layout (docs/formats.md §1, §2): subsets, file suffixes, strict file matching and checked PNG readers.

A *tree* is a folder or a tar (plain, gzip, bz2 or xz) whose files are named by relative POSIX paths such as
`bravo_synobjs/polar bear/4_gt.png` (a leading `./` in tar member names is stripped). `open_tree` lists it once;
`MemberRef` points at one file's bytes so that worker processes can read it without re-listing the tree.

File matching follows the product rule of docs/formats.md §1.3: a GT label belongs to split type T when its path
starts with `bravo_T/` and ends with T's label suffix (ACDC also needs `fog|night|rain|snow` as the second
component); every other name is derived from `<base>` = label path minus the label suffix and must exist exactly.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import posixpath
import shutil
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from eomt_ood.data.png import decode_png, png_header
from eomt_ood.errors import UserError
from eomt_ood.io import HeldTemporaryFolder, walk_files

# Official subset order: the order of the keys in the results file (docs/metrics.md §6).
SUBSETS = (
    "ACDCfog",
    "ACDCrain",
    "ACDCnight",
    "ACDCsnow",
    "synrain",
    "SMIYC",
    "synobjs",
    "synflare",
    "outofcontext",
)
SPLIT_TYPES = ("ACDC", "SMIYC", "synobjs", "synflare", "synrain", "outofcontext")
ACDC_CONDITIONS = ("fog", "night", "rain", "snow")

# subset -> (split type, ACDC condition or None)
SUBSET_SPLIT: dict[str, tuple[str, str | None]] = {
    "ACDCfog": ("ACDC", "fog"),
    "ACDCrain": ("ACDC", "rain"),
    "ACDCnight": ("ACDC", "night"),
    "ACDCsnow": ("ACDC", "snow"),
    "synrain": ("synrain", None),
    "SMIYC": ("SMIYC", None),
    "synobjs": ("synobjs", None),
    "synflare": ("synflare", None),
    "outofcontext": ("outofcontext", None),
}

# docs/metrics.md §8: which subsets report the semantic (`*_valid`) and the OOD (`*_ood`) metrics.
SEMANTIC_SUBSETS = frozenset(s for s in SUBSETS if s != "SMIYC")
OOD_SUBSETS = frozenset({"SMIYC", "synobjs"})

# docs/formats.md §1.2 GT suffixes and docs/formats.md §2 raw-submission suffixes, per split type.
LABEL_SUFFIX = {
    "ACDC": "_gt_labelTrainIds.png",
    "outofcontext": "_gt_labelTrainIds.png",
    "synflare": "_gt_labelTrainIds.png",
    "synrain": "_gt_labelTrainIds.png",
    "SMIYC": "_labels_semantic_fake.png",
    "synobjs": "_gt.png",
}
MASK_SUFFIX = {
    "ACDC": "_gt_invIds.png",
    "outofcontext": "_gt_invIds.png",
    "synflare": "_gt_invIds.png",
    "synrain": "_gt_invIds.png",
    "SMIYC": "_labels_semantic.png",
    "synobjs": "_mask.png",
}
IMAGE_SUFFIX = {
    "ACDC": "_rgb_anon.png",
    "outofcontext": "_leftImg8bit.png",
    "synflare": "_leftImg8bit.png",
    "synrain": "_leftImg8bit.png",
    "SMIYC": ".jpg",
    "synobjs": ".png",
}
PRED_SUFFIX = {split: suffix.rsplit(".", 1)[0] + "_pred.png" for split, suffix in IMAGE_SUFFIX.items()}
CONF_SUFFIX = {split: suffix.rsplit(".", 1)[0] + "_conf.png" for split, suffix in IMAGE_SUFFIX.items()}
SAMPLES_SUFFIX = "_samples.bin"
ENCODED_SUFFIX = "_encoded.bin"

VOID_LABEL = 255
NUM_CLASSES = 19

WarnFn = Callable[[str], None]


def normalise_member_name(name: str) -> str:
    """A tar member name as a relative POSIX path: leading `./` (and `/`) removed."""
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


# ------------------------------------------------------------------------------------------------ trees


@dataclass(frozen=True)
class MemberRef:
    """Where one file's bytes are: a plain file (`offset` None) or a byte range of an uncompressed tar.

    Small and picklable, so the parent can hand it to worker processes that read the bytes themselves.
    """

    container: str  # folder or uncompressed tar path
    name: str  # relative POSIX path, used in error messages
    offset: int | None = None
    size: int = 0

    def read(self) -> bytes:
        if self.offset is None:
            path = os.path.join(self.container, *self.name.split("/"))
            try:
                with open(path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                raise UserError(f"{self.name}: file not found in {self.container}") from None
            except OSError as exc:
                raise UserError(f"{self.name}: cannot read ({exc.strerror})") from None
        with open(self.container, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise UserError(f"{self.name}: truncated tar member in {self.container}")
        return data


_DECOMPRESSORS = (
    (b"\x1f\x8b", gzip.open),
    (b"BZh", bz2.open),
    (b"\xfd7zXZ\x00", lzma.open),
)


def _ends_cleanly(tar_path: Path, offset: int) -> bool:
    """True when the tar holds its end-of-archive zero block where listing stopped.

    `tarfile` stops listing quietly at a cut that falls between members or inside a header, so a truncated tar
    would look like a smaller, complete one; every tar writer ends the archive with zero blocks.
    """
    with open(tar_path, "rb") as f:
        f.seek(offset)
        block = f.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0")


class Tree:
    """A folder or tar listed once: `names` (sorted relative POSIX paths of regular files) and `ref(name)`.

    A compressed tar is first streamed into a temporary uncompressed tar (bounded memory, disk = its unpacked
    size) so that every member can be read by offset from any process. Use as a context manager, or `close()`.
    """

    def __init__(self, path: str | Path, label: str):
        self.path = Path(path)
        self.label = label
        self._tmpdir: HeldTemporaryFolder | None = None
        self._refs: dict[str, MemberRef] = {}
        if self.path.is_dir():
            self._list_folder()
        elif self.path.is_file():
            self._list_tar()
        else:
            raise UserError(f"{self.path}: {label} not found (expected a folder or a .tar file)")

    def _list_folder(self) -> None:
        root = str(self.path)
        for rel in walk_files(root):
            self._refs[rel] = MemberRef(root, rel)

    def _list_tar(self) -> None:
        with open(self.path, "rb") as f:
            magic = f.read(6)
        tar_path = self.path
        for prefix, opener in _DECOMPRESSORS:
            if magic.startswith(prefix):
                # (a killed run's unpacked tar is removed by the next run: see `HeldTemporaryFolder`)
                self._tmpdir = HeldTemporaryFolder("eomt-ood-tar-")
                tar_path = self._tmpdir.path / "unpacked.tar"
                try:
                    with opener(self.path, "rb") as src, open(tar_path, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                except (OSError, EOFError, lzma.LZMAError) as exc:
                    self.close()
                    raise UserError(f"{self.path}: cannot decompress {self.label} ({exc})") from None
                break
        links: dict[str, str] = {}  # link member -> the member it names
        try:
            with tarfile.open(tar_path, "r:") as tar:
                for member in tar:
                    if not (member.isfile() or member.islnk() or member.issym()):
                        continue
                    name = normalise_member_name(member.name)
                    if name in self._refs or name in links:
                        # Which copy a reader would take is not defined (extracting keeps the last one).
                        self.close()
                        raise UserError(f"{self.path}: {self.label} tar holds {name} twice")
                    if member.isfile():
                        self._refs[name] = MemberRef(str(tar_path), name, member.offset_data, member.size)
                    elif member.islnk():  # a hard link names its target from the archive's root
                        links[name] = normalise_member_name(member.linkname)
                    else:  # a symbolic link, relative to its own folder
                        links[name] = posixpath.normpath(
                            posixpath.join(posixpath.dirname(name), member.linkname)
                        )
                end = tar.offset
        except tarfile.TarError as exc:
            self.close()
            raise UserError(
                f"{self.path}: {self.label} is neither a folder nor a readable tar ({exc})"
            ) from None
        if not _ends_cleanly(tar_path, end):
            self.close()
            raise UserError(f"{self.path}: {self.label} tar is truncated (it ends inside a member)")
        for name in links:
            target = name
            for _ in range(len(links) + 1):  # a chain of links ends at a file within as many steps
                target = links.get(target, target)
                if target not in links:
                    break
            if target not in self._refs:
                self.close()
                raise UserError(
                    f"{self.path}: {name} in the {self.label} tar links to {links[name]}, not a file in it"
                )
            self._refs[name] = replace(self._refs[target], name=name)

    @property
    def names(self) -> list[str]:
        return sorted(self._refs)

    def __contains__(self, name: str) -> bool:
        return name in self._refs

    def ref(self, name: str) -> MemberRef:
        try:
            return self._refs[name]
        except KeyError:
            raise UserError(f"{name}: missing from {self.label} {self.path}") from None

    def read(self, name: str) -> bytes:
        return self.ref(name).read()

    def close(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_tree(path: str | Path, label: str = "tree") -> Tree:
    """List a folder or a (possibly gzip/bz2/xz-compressed) tar; `label` names it in errors ("ground truth")."""
    return Tree(path, label)


# ------------------------------------------------------------------------------------------------ matching


def subset_of_image(rel: str) -> str | None:
    """The subset of an input image path (`bravo_ACDC/fog/...` -> "ACDCfog"), or None outside the layout."""
    parts = rel.split("/")
    if len(parts) < 2 or not parts[0].startswith("bravo_") or parts[0][6:] not in SPLIT_TYPES:
        return None
    split = parts[0][6:]
    if split == "ACDC":
        return f"ACDC{parts[1]}" if parts[1] in ACDC_CONDITIONS else None
    return split


@dataclass(frozen=True)
class GtImage:
    """One GT image: its subset, split type and `<base>` (relative path without the label suffix)."""

    subset: str
    split: str
    base: str

    @property
    def label_name(self) -> str:
        return self.base + LABEL_SUFFIX[self.split]

    @property
    def mask_name(self) -> str:
        return self.base + MASK_SUFFIX[self.split]

    @property
    def pred_name(self) -> str:
        return self.base + PRED_SUFFIX[self.split]

    @property
    def conf_name(self) -> str:
        return self.base + CONF_SUFFIX[self.split]

    @property
    def samples_name(self) -> str:
        return self.base + SAMPLES_SUFFIX


def gt_image_of_input(rel: str) -> GtImage | None:
    """The `GtImage` an input image path belongs to (its GT names follow from it), None outside the layout."""
    split = rel.split("/", 1)[0].removeprefix("bravo_")
    suffix = IMAGE_SUFFIX.get(split)
    if suffix is None or not rel.endswith(suffix) or subset_of_image(rel) is None:
        return None
    return subset_of_label(rel[: -len(suffix)] + LABEL_SUFFIX[split])


def subset_of_label(name: str) -> GtImage | None:
    """The `GtImage` whose label file is `name`, or None if `name` is no label file (product rule,
    docs/formats.md §1.3)."""
    parts = name.split("/")
    if len(parts) < 2 or not parts[0].startswith("bravo_"):
        return None
    split = parts[0][len("bravo_") :]
    suffix = LABEL_SUFFIX.get(split)
    if suffix is None or not name.endswith(suffix) or len(name) == len(suffix):
        return None
    if split == "ACDC":
        if len(parts) < 3 or parts[1] not in ACDC_CONDITIONS:
            return None
        subset = "ACDC" + parts[1]
    else:
        subset = split
    return GtImage(subset=subset, split=split, base=name[: -len(suffix)])


def match_gt(gt_names: Iterable[str], warn: WarnFn | None = None) -> dict[str, list[GtImage]]:
    """GT images per subset (official order, sorted by path).

    Files that are neither a label nor the mask of a label are reported through `warn` (one line). A label
    without its mask is still listed; scoring fails with a `UserError` only if its subset is evaluated.
    """
    names = set(gt_names)
    by_subset: dict[str, list[GtImage]] = {s: [] for s in SUBSETS}
    used: set[str] = set()
    for name in sorted(names):
        image = subset_of_label(name)
        if image is None:
            continue
        by_subset[image.subset].append(image)
        used.update((name, image.mask_name))
    unmatched = sorted(names - used)
    if unmatched and warn is not None:
        warn(_unmatched_message(len(unmatched), "ground truth", "no BRAVO label or mask", unmatched))
    return by_subset


PREDICT_SETTINGS = "eomt-ood-predict.json"
"""What `eomt-ood predict` records at the root of its output folder: the settings its maps were made with."""


def unmatched_submission_files(sub_names: Iterable[str], images: Iterable[GtImage]) -> list[str]:
    """Submission files that are neither the pred nor the conf of any GT image (nor predict's settings record)."""
    expected = {PREDICT_SETTINGS}
    for image in images:
        expected.update((image.pred_name, image.conf_name))
    return sorted(set(sub_names) - expected)


def _unmatched_message(count: int, where: str, what: str, names: list[str]) -> str:
    shown = ", ".join(names[:3]) + (", ..." if count > 3 else "")
    return f"{count} file(s) in the {where} match {what} and are ignored: {shown}"


def warn_unmatched(names: list[str], where: str, warn: WarnFn | None) -> None:
    if names and warn is not None:
        warn(_unmatched_message(len(names), where, "no GT image", names))


# ------------------------------------------------------------------------------------------------ readers


def _require(data: bytes, name: str, what: str, depths: tuple[int, ...]) -> None:
    header = png_header(data, name)
    if header.color_type != 0 or header.bit_depth not in depths:
        want = " or ".join(f"{d}-bit" for d in depths)
        article = "an" if want.startswith("8") else "a"
        raise UserError(f"{name}: {what} must be {article} {want} grayscale PNG, got {header.kind}")


def read_label(data: bytes, name: str) -> np.ndarray:
    """GT label (H, W) uint8: train ids 0..18, 255 = void. Other colour types are rejected, not converted."""
    _require(data, name, "a GT label", (8,))
    return decode_png(data, name)


def read_mask(data: bytes, name: str) -> np.ndarray:
    """GT mask as (H, W) bool, True = invalid (any non-zero value, docs/formats.md §1.2); 1/2/4/8-bit grayscale
    accepted."""
    _require(data, name, "a GT mask", (1, 2, 4, 8))
    return decode_png(data, name) != 0


def read_pred(data: bytes, name: str) -> np.ndarray:
    """Predicted train ids (H, W) uint8; only an 8-bit grayscale PNG is accepted (no RGB/palette conversion)."""
    _require(data, name, "a prediction", (8,))
    return decode_png(data, name)


def check_train_ids(pred: np.ndarray, name: str) -> None:
    """`UserError` naming `name` unless every value of a uint8 prediction is a train id 0..18 (every pixel is
    checked, scored or not: a value outside is a broken file, whatever it covers)."""
    if pred.size and int(pred.max()) > NUM_CLASSES - 1:
        bad = np.flatnonzero(np.bincount(pred.ravel(), minlength=256)[NUM_CLASSES:]) + NUM_CLASSES
        raise UserError(f"{name}: prediction holds class id(s) {id_list(bad)}; train ids are 0..18")


def id_list(values: np.ndarray) -> str:
    """The first five of some class ids, for an error message ("19, 20, 200")."""
    return ", ".join(str(int(v)) for v in values[:5]) + (", ..." if values.size > 5 else "")


def read_conf(data: bytes, name: str) -> np.ndarray:
    """Confidence levels (H, W) uint16, level k = confidence (k + 0.5) / 65536; only 16-bit grayscale."""
    _require(data, name, "a confidence map", (16,))
    conf = decode_png(data, name)
    if conf.dtype != np.uint16:
        raise UserError(f"{name}: a confidence map must decode to uint16, got {conf.dtype}")
    return conf
