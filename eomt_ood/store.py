"""The prediction store of a run: per image its previews and statistics, per subset its histograms (h5py).

An evaluation produces one `ImageRecord` per image (`eomt_ood.evaluate`): small previews of the maps for the
app and the report, the image's scalar metrics per confidence score, and its sufficient statistics (confusion
matrix and sparse level histograms) from which any resample of images can be re-scored without the images
(bootstrap intervals, paired comparisons). A record is saved on its own as soon as its image is finished
(`save_record`, an `.npz` in the run folder: what makes an image "done" for resuming), and the records of a run
are gathered into one file, `RUN_DIR/predictions.h5`, written to a temporary name and renamed when complete.

Full-resolution maps are not stored here: they are the run's own PNGs (the raw submission), which the app reads
when it zooms. Previews are at most 512 pixels on the long side and stored compressed by the worker that made
them (each map by `pack_array`, the photo as JPEG), so gathering them costs the writer no
compression; `benchmarks/bench_evaluate.py` prints the bytes per image.

Layout (format `eomt-ood-predictions-3`)::

    attrs: format, eomt_ood_version, model, confidences (the first is the submission's), num_levels
    images/relpath, images/subset          (N,) strings: image i's BRAVO input path and subset
    images/height, images/width            (N,) int32 full-resolution size
    images/has_gt                          (N,) bool
    previews/<i:06d>/<name>                (n,) uint8 bytes of one preview map (`pack_array`; `rgb`: JPEG):
        pred                               (h, w) uint8 train ids (nearest)
        conf/<score>                       (h, w) uint16 levels, the box-filter mean of the image's levels
        gt_label, gt_invalid               (h, w) uint8 (nearest), with ground truth only
        top2_class, top2_score             (2, h, w) uint8 / float16: the two best classes, normalised scores
        rgb                                (h, w, 3) uint8 input photo
    stats/<score>/<field>                  (N,) float64 per-image metrics (`eomt_ood.bravo.scoring.image_metrics`)
    image_stats/cm                         (N, 19, 19) int32 confusion matrices over V pixels (score-independent)
    image_stats/pixels                     (N, 3) int64: valid, invalid, void pixels
    image_stats/<score>/levels             (M,) uint16: per image, the levels where any histogram is non-zero
    image_stats/<score>/counts             (M, 3) int32: correct, wrong (V pixels, pred == / != GT), ood_pos
                                           (I pixels) at that level; with the official sample, sampled pixels
    image_stats/<score>/offsets            (N + 1,) int64: image i's rows are offsets[i]:offsets[i+1]
    histograms/<score>/<subset>/<name>     (65536,) int64 pooled: correct, wrong, ood_pos, ood_neg (by level)
    level_histograms/<score>/<subset>      (65536,) int64 of every pixel, for runs without ground truth

`image_stats` is the one per-image statistics format of the project (`eomt_ood.metrics.image_stats`), from
which `eomt_ood.bravo.intervals` re-scores resampled images. Images without ground truth have no rows and a
zero `cm`. A *statistics file* (`eomt-ood score --stats`, a regression baseline's) is a store of the same format
without `previews/`; `attrs.kind` says which (`predictions` or `statistics`) and its `images/height` and
`images/width` are 0 where the size is not known.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from eomt_ood import __version__
from eomt_ood.data.resample import downsample_labels, downsample_mean, photo_preview, preview_shape
from eomt_ood.deflate import deflate
from eomt_ood.errors import UserError
from eomt_ood.io import atomic_path

if TYPE_CHECKING:
    from eomt_ood.metrics.image_stats import ImageSetStatistics

FORMAT = "eomt-ood-predictions-3"
_READABLE = (FORMAT, "eomt-ood-predictions-2")  # format 2 differs only in how previews are packed
_STR = h5py.string_dtype(encoding="utf-8")
_GZIP = {"compression": "gzip", "compression_opts": 4, "shuffle": True}  # for the statistics tables


# ------------------------------------------------------------------------------------------------ previews


# A packed array: MAGIC, a 4-byte little-endian length, a JSON header {dtype, shape, filter}, then the zlib stream
# of the filtered bytes. Arrays of 2-byte elements (the uint16 confidence levels, the float16 top-2 scores) are
# filtered as PNG and Blosc do before deflate: each value minus its left neighbour (mod 2^16), then the low bytes of
# every element followed by the high bytes. Smooth maps turn into runs of small numbers that deflate well; on the
# store's previews this saves 6-29% over plain zlib (least on the noise of random-weight models). Stores of format
# 2 hold plain zlib-compressed `.npy` bytes (their first byte is zlib's 0x78), which `unpack_array` still reads.
_MAGIC = b"EOA1"


def pack_array(array: np.ndarray) -> np.ndarray:
    """Any array -> (n,) uint8, lossless and compressed (`unpack_array` inverts it)."""
    array = np.asarray(array)
    array = array.astype(array.dtype.newbyteorder("="), order="C", copy=False)
    delta = array.dtype.itemsize == 2 and array.ndim >= 1 and array.shape[-1] > 0
    payload = _delta_planes(array.view(np.uint16)) if delta else array.tobytes()
    header = json.dumps(
        {"dtype": array.dtype.str, "shape": list(array.shape), "filter": "delta16" if delta else None}
    ).encode()
    packed = _MAGIC + len(header).to_bytes(4, "little") + header + deflate(payload)
    return np.frombuffer(packed, dtype=np.uint8)


def unpack_array(data: np.ndarray) -> np.ndarray:
    raw = np.asarray(data, dtype=np.uint8).tobytes()
    if not raw.startswith(_MAGIC):  # format 2: zlib-compressed .npy bytes
        return np.load(io.BytesIO(zlib.decompress(raw)), allow_pickle=False)
    size = int.from_bytes(raw[4:8], "little")
    header = json.loads(raw[8 : 8 + size])
    payload = zlib.decompress(raw[8 + size :])
    dtype, shape = np.dtype(header["dtype"]), tuple(header["shape"])
    if header["filter"] == "delta16":
        return _undo_delta_planes(payload, shape).view(dtype)
    return np.frombuffer(payload, dtype=dtype).reshape(shape).copy()


def _delta_planes(values: np.ndarray) -> bytes:
    """(..., w) uint16 -> bytes: differences along the last axis (the first column kept), as two byte planes."""
    delta = values.copy()
    np.subtract(values[..., 1:], values[..., :-1], out=delta[..., 1:])  # wraps modulo 2^16
    planes = delta.astype("<u2", copy=False).reshape(-1).view(np.uint8).reshape(-1, 2)
    return planes.T.tobytes()


def _undo_delta_planes(payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
    planes = np.frombuffer(payload, dtype=np.uint8).reshape(2, -1)
    delta = np.ascontiguousarray(planes.T).view("<u2").reshape(shape)
    return np.cumsum(delta, axis=-1, dtype=np.uint16)  # sums wrap modulo 2^16, undoing the differences


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> np.ndarray:
    """(h, w, 3) uint8 -> JPEG bytes as a (n,) uint8 array (a photo preview costs a tenth of its raw size)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="JPEG", quality=quality)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def decode_jpeg(data: np.ndarray) -> np.ndarray:
    """The inverse of `encode_jpeg`: (h, w, 3) uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(np.asarray(data, dtype=np.uint8).tobytes())) as img:
        return np.asarray(img.convert("RGB"))


def make_previews(
    pred: np.ndarray,
    levels: Mapping[str, np.ndarray],
    *,
    gt_label: np.ndarray | None = None,
    gt_invalid: np.ndarray | None = None,
    rgb: np.ndarray | None = None,
    top2: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The packed preview maps of one image from its full-resolution maps (names: see the module docstring).

    pred (H, W) uint8; levels {score: (H, W) uint16}; gt_label (H, W) uint8 and gt_invalid (H, W) bool/uint8;
    rgb at full or preview size (h, w, 3) uint8; top2 (classes, scores) already at preview size (2, h, w).
    """
    shape = preview_shape(*pred.shape)
    maps = {"pred": downsample_labels(pred, shape)}
    for score, conf in levels.items():
        maps[f"conf/{score}"] = downsample_mean(conf, shape).round().astype(np.uint16)
    if gt_label is not None and gt_invalid is not None:
        maps["gt_label"] = downsample_labels(gt_label, shape)
        maps["gt_invalid"] = downsample_labels((np.asarray(gt_invalid) != 0).astype(np.uint8), shape)
    if top2 is not None:
        if top2[0].shape != (2, *shape) or top2[1].shape != (2, *shape):
            raise ValueError(
                f"top-2 previews must have shape (2, {shape[0]}, {shape[1]}), got {top2[0].shape}"
            )
        maps["top2_class"] = top2[0].astype(np.uint8)
        maps["top2_score"] = top2[1].astype(np.float16)
    out = {name: pack_array(value) for name, value in maps.items()}
    if rgb is not None:
        out["rgb"] = encode_jpeg(photo_preview(rgb))
    return out


# ------------------------------------------------------------------------------------------------ one image


@dataclass
class ImageRecord:
    """Everything the store keeps of one image (picklable: worker processes build it).

    previews: see `make_previews`. stats: {score: {field: float}} (`image_metrics`). With ground truth: cm (19, 19),
    pixels (valid, invalid, void), and per score the sparse histograms {score: (levels (m,) uint16, counts (m, 3))}.
    Without: level_counts {score: (levels (m,) uint16, counts (m,))} of every pixel.
    """

    relpath: str
    subset: str
    height: int
    width: int
    previews: dict[str, np.ndarray]
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    cm: np.ndarray | None = None
    pixels: tuple[int, int, int] | None = None
    sparse: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    level_counts: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def has_gt(self) -> bool:
        return self.cm is not None


def save_record(path: str | Path, record: ImageRecord) -> None:
    """Write one record as an `.npz`, atomically (its existence is what marks the image as done)."""
    arrays: dict[str, Any] = {
        "meta": np.array(
            [record.relpath, record.subset, str(record.height), str(record.width)], dtype=object
        ).astype(str),
        "stat_names": np.array([f"{s}/{k}" for s, row in record.stats.items() for k in row], dtype=str),
        "stat_values": np.array([v for row in record.stats.values() for v in row.values()], dtype=np.float64),
    }
    arrays.update({f"preview/{name}": value for name, value in record.previews.items()})
    if record.cm is not None and record.pixels is not None:
        arrays["cm"] = record.cm.astype(np.int32)
        arrays["pixels"] = np.asarray(record.pixels, dtype=np.int64)
    for kind, table in (("sparse", record.sparse), ("level_counts", record.level_counts)):
        for score, (levels, counts) in table.items():
            arrays[f"{kind}/{score}/levels"] = levels
            arrays[f"{kind}/{score}/counts"] = counts
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez(handle, **arrays)  # the previews are compressed already


def load_record(path: str | Path) -> ImageRecord:
    """Read a record written by `save_record`; an unreadable file is a `UserError` naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: unreadable image record ({exc}); delete it to redo the image") from None
    relpath, subset, height, width = (str(v) for v in arrays["meta"])
    stats: dict[str, dict[str, float]] = {}
    for name, value in zip(arrays["stat_names"], arrays["stat_values"], strict=True):
        score, key = str(name).split("/", 1)
        stats.setdefault(score, {})[key] = float(value)
    record = ImageRecord(
        relpath,
        subset,
        int(height),
        int(width),
        previews={k[len("preview/") :]: v for k, v in arrays.items() if k.startswith("preview/")},
        stats=stats,
    )
    if "cm" in arrays:
        record.cm = arrays["cm"].astype(np.int64)
        record.pixels = tuple(int(v) for v in arrays["pixels"])  # type: ignore[assignment]
    for kind, table in (("sparse", record.sparse), ("level_counts", record.level_counts)):
        for name in arrays:
            if name.startswith(f"{kind}/") and name.endswith("/levels"):
                score = name[len(kind) + 1 : -len("/levels")]
                table[score] = (arrays[name], arrays[f"{kind}/{score}/counts"])
    return record


# ------------------------------------------------------------------------------------------------ the store


class StoreWriter:
    """Gather records into `path`: a context manager; the file appears (atomically) only on a clean exit."""

    def __init__(self, path: str | Path, *, model: str, confidences: list[str], kind: str = "predictions"):
        self.path = Path(path)
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._file = h5py.File(self._tmp, "w")
        self._file.attrs.update(
            format=FORMAT,
            kind=kind,
            eomt_ood_version=__version__,
            model=model,
            num_levels=65536,
            confidences=np.array(confidences, dtype=object),
        )
        self._confidences = list(confidences)
        self._index: list[tuple[str, str, int, int, bool]] = []
        self._stats: list[dict[str, dict[str, float]]] = []
        self._cm: list[np.ndarray] = []
        self._pixels: list[tuple[int, int, int]] = []
        # The sparse rows, the bulk of a record after its previews, go to the file as they come.
        self._rows = {s: _RowTable(self._file.create_group(f"image_stats/{s}")) for s in confidences}

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            self._file.close()
            self._atomic.__exit__(exc_type, exc, tb)

    def add(self, record: ImageRecord) -> None:
        """Append one image's record (its index is the number of records added before it)."""
        group = self._file.create_group(f"previews/{len(self._index):06d}")
        for name, value in record.previews.items():
            group.create_dataset(name, data=value)  # already compressed
        self._index.append((record.relpath, record.subset, record.height, record.width, record.has_gt))
        self._stats.append(record.stats)
        zeros = (np.zeros(0, np.uint16), np.zeros((0, 3), np.int32))
        self._cm.append(record.cm if record.cm is not None else np.zeros((19, 19), np.int64))
        self._pixels.append(record.pixels or (0, 0, 0))
        for score, table in self._rows.items():
            table.add(*record.sparse.get(score, zeros))

    def add_histograms(self, score: str, subset: str, histograms: Mapping[str, np.ndarray]) -> None:
        """A subset's pooled histograms ({"correct", "wrong", "ood_pos", "ood_neg"} -> (65536,) int64)."""
        group = self._file.require_group(f"histograms/{score}/{subset}")
        for name, counts in histograms.items():
            group.create_dataset(name, data=np.asarray(counts, dtype=np.int64), compression="gzip")

    def add_level_histogram(self, score: str, subset: str, counts: np.ndarray) -> None:
        """A subset's (65536,) histogram of every pixel's level (runs without ground truth)."""
        self._file.create_dataset(
            f"level_histograms/{score}/{subset}", data=np.asarray(counts, dtype=np.int64), compression="gzip"
        )

    def _finish(self) -> None:
        columns = list(zip(*self._index, strict=True)) if self._index else [(), (), (), (), ()]
        images = self._file.create_group("images")
        images.create_dataset("relpath", data=np.array(columns[0], dtype=object), dtype=_STR)
        images.create_dataset("subset", data=np.array(columns[1], dtype=object), dtype=_STR)
        images.create_dataset("height", data=np.array(columns[2], dtype=np.int32))
        images.create_dataset("width", data=np.array(columns[3], dtype=np.int32))
        images.create_dataset("has_gt", data=np.array(columns[4], dtype=bool))
        for score in self._confidences:
            rows = [row.get(score, {}) for row in self._stats]
            for key in sorted({k for row in rows for k in row}):
                values = np.array([row.get(key, np.nan) for row in rows], dtype=np.float64)
                self._file.create_dataset(f"stats/{score}/{key}", data=values)
        count = len(self._index)
        image_stats = self._file.require_group("image_stats")
        cm = np.array(self._cm, dtype=np.int32).reshape(count, 19, 19)
        image_stats.create_dataset("cm", data=cm, **_GZIP)
        image_stats.create_dataset("pixels", data=np.array(self._pixels, dtype=np.int64).reshape(count, 3))
        for table in self._rows.values():
            table.finish()


_ROWS_PER_CHUNK = 32768
"""HDF5 chunk length of the sparse statistics: one chunk holds one count column (shuffle + gzip compress a
column best: 8% smaller than chunks of whole rows) or the levels of 32,768 rows."""


class _RowTable:
    """One score's `image_stats/<score>` (`ImageSetStatistics.encode`'s levels, counts, offsets), appended image
    by image: rows reach the file in whole chunks, each compressed once, and at most one chunk's worth waits in
    memory, so a writer's memory does not grow with the number of images (a 2 MP image has tens of thousands
    of rows per score, about 0.7 MB)."""

    def __init__(self, group: h5py.Group):
        self._group = group
        chunk = _ROWS_PER_CHUNK
        self._levels = group.create_dataset(
            "levels", shape=(0,), maxshape=(None,), dtype=np.uint16, chunks=(chunk,), **_GZIP
        )
        self._counts = group.create_dataset(
            "counts", shape=(0, 3), maxshape=(None, 3), dtype=np.int32, chunks=(chunk, 1), **_GZIP
        )
        self._offsets = [0]
        self._waiting: list[tuple[np.ndarray, np.ndarray]] = []
        self._waiting_rows = 0

    def add(self, levels: np.ndarray, counts: np.ndarray) -> None:
        """One image's rows: levels (m,) and counts (m, 3); a count fits int32 (at most a pixel count)."""
        levels = np.asarray(levels).astype(np.uint16, copy=False)
        counts = np.asarray(counts).reshape(-1, 3).astype(np.int32, copy=False)
        if counts.shape[0] != levels.shape[0]:
            raise ValueError(f"{levels.shape[0]} levels but {counts.shape[0]} count rows")
        self._offsets.append(self._offsets[-1] + levels.shape[0])
        self._waiting.append((levels, counts))
        self._waiting_rows += levels.shape[0]
        if self._waiting_rows >= _ROWS_PER_CHUNK:
            self._write(whole_chunks=True)

    def finish(self) -> None:
        self._write(whole_chunks=False)
        self._group.create_dataset("offsets", data=np.array(self._offsets, dtype=np.int64))

    def _write(self, whole_chunks: bool) -> None:
        if not self._waiting:
            return
        levels = np.concatenate([rows[0] for rows in self._waiting])
        counts = np.concatenate([rows[1] for rows in self._waiting])
        size = levels.shape[0] // _ROWS_PER_CHUNK * _ROWS_PER_CHUNK if whole_chunks else levels.shape[0]
        if size:
            start = self._levels.shape[0]
            self._levels.resize((start + size,))
            self._counts.resize((start + size, 3))
            self._levels[start:] = levels[:size]
            self._counts[start:] = counts[:size]
        # A copy of the rest, so that the written rows' buffer is freed.
        self._waiting = [(levels[size:].copy(), counts[size:].copy())] if size < levels.shape[0] else []
        self._waiting_rows = levels.shape[0] - size


class StoreReader:
    """Read a store written by `StoreWriter`. Cheap to open; previews are read lazily, one image at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: prediction store not found")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise UserError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        found = self._file.attrs.get("format")
        if found not in _READABLE:
            self._file.close()
            hint = (
                "; run `eomt-ood evaluate` again to rewrite it" if str(found).startswith("eomt-ood") else ""
            )
            raise UserError(
                f"{self.path}: not an eomt-ood prediction store of format {FORMAT} ({found!r}){hint}"
            )
        images = self._file["images"]
        self.relpaths: list[str] = [_text(s) for s in images["relpath"][()]]
        self.subsets: list[str] = [_text(s) for s in images["subset"][()]]
        self.heights = images["height"][()]
        self.widths = images["width"][()]
        self._has_gt = images["has_gt"][()]
        self.confidences: list[str] = [str(c) for c in self._file.attrs["confidences"]]
        self.model: str = str(self._file.attrs.get("model", ""))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.relpaths)

    def index_of(self, relpath: str) -> int | None:
        try:
            return self.relpaths.index(relpath)
        except ValueError:
            return None

    def stats(self, score: str | None = None) -> dict[str, np.ndarray]:
        """Per-image metrics of `score` (default: the first): {field: (N,) float64}, NaN where undefined."""
        score = score or self.confidences[0]
        group = self._file.get(f"stats/{score}")
        return {key: ds[()] for key, ds in group.items()} if group is not None else {}

    def has_ground_truth(self, index: int) -> bool:
        return bool(self._has_gt[index])

    def preview(self, index: int, name: str) -> np.ndarray:
        """One preview map of image `index`: "pred", "conf/<score>", "gt_label", "gt_invalid", "top2_class",
        "top2_score" or "rgb". `KeyError` when the image has no such map."""
        group = self._file[f"previews/{index:06d}"]
        if name not in group:
            raise KeyError(f"image {index} has no {name!r} preview")
        data = group[name][()]
        return decode_jpeg(data) if name == "rgb" else unpack_array(data)

    def preview_bytes(self, index: int, name: str) -> bytes:
        """The stored bytes of one preview map, undecoded (`rgb`: a JPEG, which a reader can decode at a reduced
        scale for a thumbnail; the others: `pack_array` bytes). `KeyError` when the image has no such map."""
        group = self._file[f"previews/{index:06d}"]
        if name not in group:
            raise KeyError(f"image {index} has no {name!r} preview")
        return group[name][()].tobytes()

    def histograms(self, score: str) -> dict[str, dict[str, np.ndarray]]:
        """{subset: {"correct", "wrong", "ood_pos", "ood_neg": (65536,) int64}} for one confidence score."""
        if f"histograms/{score}" not in self._file:
            return {}
        return {
            subset: {name: ds[()] for name, ds in group.items()}
            for subset, group in self._file[f"histograms/{score}"].items()
        }

    def level_histograms(self, score: str) -> dict[str, np.ndarray]:
        """{subset: (65536,) int64} of every pixel's level, for runs without ground truth ({} otherwise)."""
        group = self._file.get(f"level_histograms/{score}")
        return {subset: ds[()] for subset, ds in group.items()} if group is not None else {}

    @property
    def kind(self) -> str:
        """ "predictions" (an evaluation's store) or "statistics" (a statistics file, without previews)."""
        return _text(self._file.attrs.get("kind", "predictions"))

    def pixels(self) -> np.ndarray:
        """(N, 3) int64 valid, invalid and void pixels per image (0 for images without ground truth)."""
        return self._file["image_stats/pixels"][()]

    def image_statistics(self, score: str, indices: Sequence[int] | None = None) -> ImageSetStatistics:
        """The per-image sufficient statistics of `score` for the images `indices` (default all), in that
        order, checked (`ImageSetStatistics.decode`: a damaged file is a `UserError` naming it). Reads only
        the span of rows those images cover."""
        from eomt_ood.metrics.image_stats import ImageSetStatistics

        if f"image_stats/{score}" not in self._file:
            raise UserError(
                f"{self.path}: no per-image statistics for confidence {score!r} "
                f"(it has {', '.join(self.confidences)})"
            )
        group = self._file["image_stats"]
        offsets = group[f"{score}/offsets"][()].astype(np.int64)
        if offsets.shape != (len(self) + 1,) or (np.diff(offsets) < 0).any():
            raise UserError(f"{self.path}: image_stats/{score}/offsets do not match its {len(self)} images")
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        source = f"{self.path}:/image_stats/{score}"
        if idx.size == 0:
            empty = {"cm": np.zeros((0, 19, 19), np.int32), "levels": np.zeros(0, np.uint16)}
            empty.update(counts=np.zeros((0, 3), np.int32), offsets=np.zeros(1, np.int64))
            return ImageSetStatistics.decode(empty, source)
        lo, hi = int(offsets[idx.min()]), int(offsets[idx.max() + 1])
        levels, counts = group[f"{score}/levels"][lo:hi], group[f"{score}/counts"][lo:hi]
        starts, ends = offsets[idx] - lo, offsets[idx + 1] - lo
        if not np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
            # Contiguous copies per image (memcpy speed), not one fancy index over millions of rows.
            spans = list(zip(starts, ends, strict=True))
            levels = np.concatenate([levels[a:e] for a, e in spans])
            counts = np.concatenate([counts[a:e] for a, e in spans])
        arrays = {
            "cm": group["cm"][()][idx],
            "levels": levels,
            "counts": counts,
            "offsets": np.concatenate([[0], np.cumsum(ends - starts)]),
        }
        return ImageSetStatistics.decode(arrays, source)

    def confusion_matrices(self) -> np.ndarray:
        """(N, 19, 19) int64 per-image confusion matrices (rows: ground truth, columns: prediction; zeros
        without GT), without reading the per-score level histograms that `image_statistics` also returns."""
        return self._file["image_stats/cm"][()].astype(np.int64)

    def iter_images(self) -> Iterator[tuple[int, str, str]]:
        yield from ((i, r, s) for i, (r, s) in enumerate(zip(self.relpaths, self.subsets, strict=True)))


def copy_statistics(source: str | Path, out: str | Path, scores: Sequence[str] | None = None) -> Path:
    """Write a statistics file (`out`, atomically): the image index, the per-image statistics, per-image
    metrics and pooled histograms of `scores` (default all) of the store or statistics file `source`, without
    its previews. A regression baseline keeps one beside its results file."""
    with StoreReader(source) as reader:
        scores = list(scores or reader.confidences)
        missing = [s for s in scores if s not in reader.confidences]
        if missing:
            raise UserError(
                f"{source}: no confidence {missing[0]!r} (it has {', '.join(reader.confidences)})"
            )
        src = reader._file
        with atomic_path(out) as tmp, h5py.File(tmp, "w") as dst:
            dst.attrs.update(dict(src.attrs))
            dst.attrs.update(kind="statistics", confidences=np.array(scores, dtype=object))
            src.copy(src["images"], dst, "images")
            stats = dst.create_group("image_stats")
            for name in ("cm", "pixels"):
                src.copy(src[f"image_stats/{name}"], stats, name)
            for score in scores:
                src.copy(src[f"image_stats/{score}"], stats, score)
                for group in ("stats", "histograms"):
                    if f"{group}/{score}" in src:
                        src.copy(src[f"{group}/{score}"], dst.require_group(group), score)
    return Path(out)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
