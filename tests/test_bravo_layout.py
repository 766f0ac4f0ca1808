"""BRAVO layout (docs/formats.md §1, §2): suffixes, strict matching, folder/tar reading and header-checked readers."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from eomt_ood.bravo import layout as bravo
from eomt_ood.bravo.submission import raw_names
from eomt_ood.data.png import encode_png
from eomt_ood.errors import UserError

# Examples written out from docs/formats.md §1.2, §2, §4.2 (independent of the suffix tables in the module).
EXAMPLES = [
    (
        "bravo_ACDC/fog/test/GOPR0475/GOPR0475_frame_000247_rgb_anon.png",
        "bravo_ACDC/fog/test/GOPR0475/GOPR0475_frame_000247",
        "_gt_labelTrainIds.png",
        "_gt_invIds.png",
        "ACDCfog",
    ),
    (
        "bravo_SMIYC/RoadAnomaly21/images/airplane0000.jpg",
        "bravo_SMIYC/RoadAnomaly21/images/airplane0000",
        "_labels_semantic_fake.png",
        "_labels_semantic.png",
        "SMIYC",
    ),
    ("bravo_synobjs/polar bear/4.png", "bravo_synobjs/polar bear/4", "_gt.png", "_mask.png", "synobjs"),
    (
        "bravo_synrain/munster/munster_000000_000019_leftImg8bit.png",
        "bravo_synrain/munster/munster_000000_000019",
        "_gt_labelTrainIds.png",
        "_gt_invIds.png",
        "synrain",
    ),
    (
        "bravo_outofcontext/frankfurt/frankfurt_000001_000538_leftImg8bit.png",
        "bravo_outofcontext/frankfurt/frankfurt_000001_000538",
        "_gt_labelTrainIds.png",
        "_gt_invIds.png",
        "outofcontext",
    ),
]


@pytest.mark.parametrize(("image", "base", "label_suffix", "mask_suffix", "subset"), EXAMPLES)
def test_names_follow_the_spec(image, base, label_suffix, mask_suffix, subset):
    found = bravo.subset_of_label(base + label_suffix)
    assert found is not None and found.subset == subset and found.base == base
    assert found.mask_name == base + mask_suffix
    # The raw submission names come from the *input image* name (docs/formats.md §2), the GT names from <base>
    # (docs/formats.md §1.2).
    assert (found.pred_name, found.conf_name) == raw_names(image)
    assert found.samples_name == base + "_samples.bin"


def test_subset_order_and_kinds():
    assert bravo.SUBSETS == (
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
    assert bravo.OOD_SUBSETS == {"SMIYC", "synobjs"}
    assert set(bravo.SUBSETS) - bravo.SEMANTIC_SUBSETS == {"SMIYC"}


@pytest.mark.parametrize(
    "name",
    [
        "bravo_ACDC/dusk/test/G/G_frame_000001_gt_labelTrainIds.png",  # not one of the four conditions
        "x/bravo_ACDC/fog/test/G/G_frame_000001_gt_labelTrainIds.png",  # substring, not prefix
        "bravo_ACDC/fog/test/G/G_frame_000001_gt_invIds.png",  # a mask, not a label
        "bravo_synobjs/armchair/1_mask.png",
        "bravo_synobjs/armchair/1_gt.png.bak",
        "bravo_unknown/a/1_gt.png",
        "bravo_synobjs_gt.png",
    ],
)
def test_strict_matching_rejects_stray_names(name):
    assert bravo.subset_of_label(name) is None


def test_match_gt_warns_about_unmatched_files():
    names = ["bravo_synobjs/a/1_gt.png", "bravo_synobjs/a/1_mask.png", "bravo_synobjs/a/notes.txt"]
    warnings: list[str] = []
    found = bravo.match_gt(names, warnings.append)
    assert [i.base for i in found["synobjs"]] == ["bravo_synobjs/a/1"]
    assert len(warnings) == 1 and "notes.txt" in warnings[0]
    assert all(not images for subset, images in found.items() if subset != "synobjs")


def _write_tree(tmp_path):
    folder = tmp_path / "tree"
    files = {"bravo_synobjs/polar bear/4_gt.png": b"abc", "bravo_SMIYC/x/y.bin": b"\x00" * 1000}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder, files


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_folder_and_tar_read_the_same(tmp_path, mode):
    folder, files = _write_tree(tmp_path)
    tar_path = tmp_path / f"tree.{mode[2:] or 'tar'}"
    with tarfile.open(tar_path, mode) as tar:
        for name in files:
            tar.add(folder / name, arcname="./" + name)  # a leading ./ must be stripped
        tar.add(folder / "bravo_SMIYC", arcname="./bravo_SMIYC", recursive=False)  # directories are skipped
    with bravo.open_tree(folder) as f_tree, bravo.open_tree(tar_path) as t_tree:
        assert f_tree.names == t_tree.names == sorted(files)
        for name, data in files.items():
            assert f_tree.read(name) == t_tree.read(name) == data
            # A MemberRef reads on its own (what a worker process gets).
            assert t_tree.ref(name).read() == data
    with pytest.raises(UserError, match="missing"):
        bravo.open_tree(folder).ref("nope.png")


def test_an_unpacked_tar_is_held_while_open_and_one_a_killed_run_left_is_removed(tmp_path, monkeypatch):
    """A compressed tar is unpacked into a temporary folder (as large as the tar unpacked). While the tree is
    open no other run may take that folder for abandoned; one left by a killed run goes when the next compressed
    tree is opened, and the tree's own goes when it closes."""
    import os
    import tempfile
    import time

    from eomt_ood.io import remove_abandoned_folders

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    folder, files = _write_tree(tmp_path)
    tar_path = tmp_path / "tree.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name in files:
            tar.add(folder / name, arcname=name)
    abandoned = temp / "eomt-ood-tar-abandoned"  # as a killed run leaves it: nothing holds it
    abandoned.mkdir()
    (abandoned / "unpacked.tar").write_bytes(bytes(100))
    hour_ago = time.time() - 3600
    os.utime(abandoned, (hour_ago, hour_ago))
    with bravo.open_tree(tar_path) as tree:
        assert not abandoned.exists()
        [unpacked] = temp.iterdir()
        assert remove_abandoned_folders("eomt-ood-tar-", grace=0) == 0  # held by this tree
        assert (unpacked / "unpacked.tar").is_file()
        assert all(tree.read(name) == data for name, data in files.items())
    assert list(temp.iterdir()) == []


def test_links_are_read_as_their_targets(tmp_path):
    """A linked subset folder and hard or symbolic links in a tar list and read as the files they point at."""
    folder, files = _write_tree(tmp_path)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "bravo_synobjs").symlink_to(folder / "bravo_synobjs", target_is_directory=True)
    (linked / "bravo_SMIYC").symlink_to(folder / "bravo_SMIYC", target_is_directory=True)
    tar_path = tmp_path / "links.tar"
    first, second = sorted(files)
    with tarfile.open(tar_path, "w") as tar:
        tar.add(folder / first, arcname=first)
        hard = tarfile.TarInfo(second)  # a hard link to the first member (as `tar` writes a second name)
        hard.type, hard.linkname = tarfile.LNKTYPE, first
        tar.addfile(hard)
        soft = tarfile.TarInfo("bravo_SMIYC/x/z.bin")  # a symbolic link, relative to its own folder
        soft.type, soft.linkname = tarfile.SYMTYPE, "y.bin"
        tar.addfile(soft)
    with bravo.open_tree(linked) as tree:
        assert tree.names == sorted(files)
        assert all(tree.read(name) == data for name, data in files.items())
    with bravo.open_tree(tar_path) as tree:
        assert tree.names == sorted([*files, "bravo_SMIYC/x/z.bin"])
        assert tree.read(second) == tree.read("bravo_SMIYC/x/z.bin") == files[first]
        assert tree.ref(second).read() == files[first]  # what a worker process reads


def test_open_tree_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        bravo.open_tree(tmp_path / "absent", "ground truth")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(UserError, match="junk.tar"):
        bravo.open_tree(junk)


def _png(array, mode=None) -> bytes:
    if mode is None:
        return encode_png(array)
    buf = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def test_readers_accept_the_right_formats():
    ids = np.array([[0, 18], [255, 3]], dtype=np.uint8)
    levels = np.array([[0, 65535], [1, 300]], dtype=np.uint16)
    np.testing.assert_array_equal(bravo.read_label(_png(ids), "l"), ids)
    np.testing.assert_array_equal(bravo.read_pred(_png(ids), "p"), ids)
    conf = bravo.read_conf(_png(levels), "c")
    assert conf.dtype == np.uint16
    np.testing.assert_array_equal(conf, levels)
    np.testing.assert_array_equal(bravo.read_mask(_png(ids), "m"), ids != 0)
    one_bit = _png(np.array([[0, 255], [255, 0]], dtype=np.uint8), mode="1")
    assert one_bit[24] == 1
    np.testing.assert_array_equal(bravo.read_mask(one_bit, "m"), [[False, True], [True, False]])


@pytest.mark.parametrize(
    ("reader", "data", "problem"),
    [
        ("read_conf", "gray8", "8-bit grayscale"),
        ("read_pred", "gray16", "16-bit grayscale"),
        ("read_pred", "rgb", "8-bit RGB"),
        ("read_pred", "palette", "8-bit palette"),
        ("read_label", "rgb", "8-bit RGB"),
        ("read_label", "palette", "palette"),
        ("read_mask", "gray16", "16-bit"),
        ("read_mask", "rgb", "RGB"),
        ("read_pred", "corrupt", "corrupt PNG"),
        ("read_conf", "corrupt", "16-bit"),
        ("read_conf", "notpng", "not a PNG"),
    ],
)
def test_readers_reject_other_formats_naming_the_file(reader, data, problem):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    payloads = {
        "gray8": _png(gray),
        "gray16": _png(gray.astype(np.uint16)),
        "rgb": _png(np.stack([gray] * 3, axis=-1)),
        "palette": _png(np.stack([gray] * 3, axis=-1), mode="P"),
        "corrupt": _png(gray)[:45],
        "notpng": b"GIF89a" + b"\x00" * 40,
    }
    with pytest.raises(UserError, match=rf"^some/file\.png: .*{problem}"):
        getattr(bravo, reader)(payloads[data], "some/file.png")
