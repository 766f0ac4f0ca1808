"""The encoded BRAVO upload (docs/formats.md §4.1, §4.2): `<base>_encoded.bin` per GT image, packed into one tar.

An encoded image holds every pixel's class and the confidences of the official pixel sample only (the indices
of `<base>_samples.bin` in `bravo_SAMPLING.tar`). Layout, all integers unsigned little-endian:

    offset  0  magic "BV23" | 4 version 2 | 8 rows H | 12 cols W | 16 n | 20 class length H*W | 24 conf length 2n
    offset 28  payload: one zstd frame (level 9, content size in the frame header) of the H*W class bytes
               (uint8, row-major) followed by n uint16 LE confidences conf.flat[idx[j]]
    end - 4    CRC-32 (zlib.crc32) of everything before it

`package_upload` walks the members of the sampling tar (so every GT image gets its file) and reads the raw
`_pred.png` / `_conf.png` pair of each from a submission folder or tar. `decode_encoded` applies the official
decoder's checks, so an upload can be verified before it is sent (`verify_upload`).
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard
from tqdm import tqdm

from eomt_ood.bravo.layout import (
    ENCODED_SUFFIX,
    LABEL_SUFFIX,
    SAMPLES_SUFFIX,
    GtImage,
    MemberRef,
    check_train_ids,
    open_tree,
    read_conf,
    read_pred,
    subset_of_label,
    unmatched_submission_files,
)
from eomt_ood.bravo.sampling import decode_sample_indices, open_sampling_file
from eomt_ood.errors import UserError
from eomt_ood.io import ProcessMap, atomic_path, check_output, default_workers, progress_file

MAGIC = b"BV23"
VERSION = 2
ZSTD_LEVEL = 9
HEADER = struct.Struct("<4s6I")  # magic, version, rows, cols, n, class length, conf length
CRC = struct.Struct("<I")

WarnFn = Callable[[str], None]


def encode_image(pred: np.ndarray, conf: np.ndarray, indices: np.ndarray) -> bytes:
    """`<base>_encoded.bin` bytes of one image.

    pred: (H, W) uint8 class ids; conf: (H, W) uint16 confidence levels (higher = more confident);
    indices: (n,) flat row-major sample indices, n >= 1, each in 0..H*W-1 (the sampling file's order).
    Every class byte is kept; only `conf.flat[indices]` is stored. Bad arrays raise `ValueError`.
    """
    if pred.dtype != np.uint8 or pred.ndim != 2:
        raise ValueError(f"pred must be a 2-D uint8 array, got {pred.dtype} with shape {pred.shape}")
    if conf.dtype != np.uint16 or conf.shape != pred.shape:
        raise ValueError(
            f"conf must be uint16 of the pred's shape {pred.shape}, got {conf.dtype} {conf.shape}"
        )
    indices = np.asarray(indices).ravel()
    if indices.size == 0 or indices.dtype.kind not in "iu":
        raise ValueError(
            f"indices must be a non-empty integer array, got {indices.dtype} of size {indices.size}"
        )
    if indices.min() < 0 or indices.max() >= pred.size:
        raise ValueError(f"sample indices must lie in 0..{pred.size - 1}")
    rows, cols = pred.shape
    classes = np.ascontiguousarray(pred).tobytes()
    confs = conf.ravel()[indices].astype("<u2").tobytes()
    # One-shot compress writes a single frame with the content size, which the official decoder requires.
    payload = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(classes + confs)
    header = HEADER.pack(MAGIC, VERSION, rows, cols, indices.size, len(classes), len(confs))
    body = header + payload
    return body + CRC.pack(zlib.crc32(body) & 0xFFFFFFFF)


def decode_encoded(data: bytes, name: str = "encoded image") -> tuple[np.ndarray, np.ndarray]:
    """(classes (H, W) uint8, confs (n,) uint16) from `<base>_encoded.bin` bytes, with the official checks.

    Checks magic, version, CRC-32 and that the payload decompresses (one-shot, so a frame without content size
    is refused as officially) to exactly class length + conf length bytes; also that the class length is
    rows * cols and the conf length 2 n. Any failure is a `UserError` naming `name`.
    """
    if len(data) < HEADER.size + CRC.size:
        raise UserError(f"{name}: too short for an encoded image ({len(data)} bytes)")
    magic, version, rows, cols, n, class_len, conf_len = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise UserError(f"{name}: bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise UserError(f"{name}: unsupported version {version}, expected {VERSION}")
    (stored_crc,) = CRC.unpack_from(data, len(data) - CRC.size)
    if zlib.crc32(data[: -CRC.size]) & 0xFFFFFFFF != stored_crc:
        raise UserError(f"{name}: CRC-32 mismatch (the file is corrupt or truncated)")
    try:
        raw = zstandard.ZstdDecompressor().decompress(data[HEADER.size : -CRC.size])
    except zstandard.ZstdError as exc:
        raise UserError(f"{name}: cannot decompress the payload ({exc})") from None
    if len(raw) != class_len + conf_len:
        raise UserError(
            f"{name}: payload holds {len(raw)} bytes, the header announces {class_len} + {conf_len}"
        )
    if class_len != rows * cols or conf_len != 2 * n:
        raise UserError(
            f"{name}: header is inconsistent (class length {class_len} for {rows}x{cols}, "
            f"conf length {conf_len} for n = {n})"
        )
    classes = np.frombuffer(raw, dtype=np.uint8, count=class_len).reshape(rows, cols).copy()
    confs = np.frombuffer(raw, dtype="<u2", count=n, offset=class_len).astype(np.uint16)
    return classes, confs


def gt_image_of_base(base: str, name: str) -> GtImage:
    """The `GtImage` (subset, split type, raw pred/conf names) of a `<base>`; `UserError` naming `name`."""
    split = base.split("/", 1)[0].removeprefix("bravo_")
    image = subset_of_label(base + LABEL_SUFFIX[split]) if split in LABEL_SUFFIX else None
    if image is None:
        raise UserError(
            f"{name}: not a BRAVO image path (expected bravo_<split>/..., see docs/formats.md §1.1)"
        )
    return image


@dataclass(frozen=True)
class UploadSummary:
    """What `package_upload` wrote: the tar path, the number of encoded images and the tar's size."""

    path: Path
    images: int
    size_bytes: int


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0  # equal input gives an equal tar
    return info


@dataclass(frozen=True)
class EncodeTask:
    """One image to encode: where its sample, pred and conf bytes are (picklable, for worker processes)."""

    sample: MemberRef
    pred: MemberRef
    conf: MemberRef
    encoded_name: str


def encode_task(task: EncodeTask) -> bytes:
    """Read, check and encode one image (see `package_upload`); `UserError` naming the offending file."""
    indices = decode_sample_indices(task.sample.read(), task.sample.name)
    pred = read_pred(task.pred.read(), task.pred.name)
    check_train_ids(pred, task.pred.name)
    conf = read_conf(task.conf.read(), task.conf.name)
    if conf.shape != pred.shape:
        raise UserError(
            f"{task.conf.name}: shape {conf.shape[0]}x{conf.shape[1]} differs from the prediction's "
            f"{pred.shape[0]}x{pred.shape[1]}"
        )
    if indices[-1] >= pred.size:
        raise UserError(
            f"{task.sample.name}: sample index {int(indices[-1])} lies outside the "
            f"{pred.shape[0]}x{pred.shape[1]} image {task.pred.name}"
        )
    return encode_image(pred, conf, indices)


def _encode_in_order(tasks: list[EncodeTask], pool: ProcessMap, progress: bool) -> Iterator[bytes]:
    """Encoded bytes of each task, in task order (so the tar is deterministic), inline or from processes."""
    with tqdm(
        total=len(tasks), desc="encoding", unit="image", disable=not progress, file=progress_file()
    ) as bar:
        for data in pool.map(encode_task, tasks):
            yield data
            bar.update()


def package_upload(
    submission: str | Path,
    samples: str | Path,
    out: str | Path,
    progress: bool = True,
    warn: WarnFn | None = None,
    workers: int | None = None,
) -> UploadSummary:
    """Write the upload tar `out` from a raw submission (folder or tar) and `bravo_SAMPLING.tar`.

    For each `<base>_samples.bin` of the sampling tar (in sorted order): read `<base>` + the split's raw
    `_pred.png` (8-bit gray) and `_conf.png` (16-bit gray) from the submission, check equal shapes and sample
    indices below H*W, and add `<base>_encoded.bin` to an uncompressed tar (no directory entries, no `./`).
    Missing files are reported before any encoding starts. Sampling members of another name and unused
    submission files are reported through `warn`. Any missing file or failed check is a `UserError` naming
    the file; `out` is only replaced when everything succeeded. `workers`: encoding processes (default
    min(cpus, 4); 0 or 1 = inline); the tar is the same for any number.
    """
    out = Path(out)
    check_output(out, "--out", [submission, samples])
    workers = default_workers() if workers is None else workers
    with (
        ProcessMap(workers if workers > 1 else 0) as pool,
        open_sampling_file(samples) as sampling,
        open_tree(submission, "submission") as sub,
    ):
        sample_names = [n for n in sampling.names if n.endswith(SAMPLES_SUFFIX)]
        if warn is not None and len(sample_names) != len(sampling.names):
            others = sorted(set(sampling.names) - set(sample_names))
            warn(
                f"{len(others)} file(s) in the sampling file are not *{SAMPLES_SUFFIX} and are ignored: {others[0]}"
            )
        if not sample_names:
            raise UserError(f"{samples}: sampling file holds no *{SAMPLES_SUFFIX} member")
        tasks, images = [], []
        for sample_name in sample_names:
            base = sample_name[: -len(SAMPLES_SUFFIX)]
            image = gt_image_of_base(base, sample_name)
            images.append(image)
            tasks.append(
                EncodeTask(
                    sampling.ref(sample_name),
                    sub.ref(image.pred_name),
                    sub.ref(image.conf_name),
                    base + ENCODED_SUFFIX,
                )
            )
        with atomic_path(out) as tmp, tarfile.open(tmp, "w") as tar:
            for task, data in zip(tasks, _encode_in_order(tasks, pool, progress), strict=True):
                tar.addfile(_tar_info(task.encoded_name, len(data)), io.BytesIO(data))
        unused = unmatched_submission_files(sub.names, images)
        if unused and warn is not None:
            shown = ", ".join(unused[:3]) + (", ..." if len(unused) > 3 else "")
            warn(
                f"{len(unused)} submission file(s) belong to no sampled image and are not in the upload: {shown}"
            )
    return UploadSummary(path=out, images=len(tasks), size_bytes=out.stat().st_size)


def verify_upload(upload: str | Path, samples: str | Path, progress: bool = False) -> int:
    """Check an upload tar as the official validation does; returns the number of images checked.

    Every `<base>_samples.bin` must have its `<base>_encoded.bin`, which must decode (`decode_encoded`) to as
    many confidences as the sample has indices, with every index below rows * cols. `UserError` otherwise.
    """
    with open_sampling_file(samples) as sampling, open_tree(upload, "upload") as up:
        sample_names = [n for n in sampling.names if n.endswith(SAMPLES_SUFFIX)]
        with tqdm(
            sample_names, desc="verifying", unit="image", disable=not progress, file=progress_file()
        ) as bar:
            for sample_name in bar:
                encoded_name = sample_name[: -len(SAMPLES_SUFFIX)] + ENCODED_SUFFIX
                classes, confs = decode_encoded(up.read(encoded_name), encoded_name)
                indices = decode_sample_indices(sampling.read(sample_name), sample_name)
                if confs.size != indices.size or indices[-1] >= classes.size:
                    raise UserError(
                        f"{encoded_name}: holds {confs.size} confidences of a {classes.shape[0]}x{classes.shape[1]} "
                        f"image, the sample has {indices.size} indices up to {int(indices[-1])}"
                    )
    return len(sample_names)
