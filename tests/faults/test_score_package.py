"""`eomt-ood score` and `eomt-ood package`: every bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from . import bad
from .harness import Case, run_case, with_options

CAT = "bravo_synobjs/cat/1"
ASTRONAUT = "bravo_synobjs/astronaut/1"
FOG = "bravo_ACDC/fog/test/GOPR0475/GOPR0475_frame_000247"
PRED, CONF = f"{CAT}_pred.png", f"{CAT}_conf.png"
LABEL, MASK = f"{CAT}_gt.png", f"{CAT}_mask.png"

SCORE = ["score", "--gt", "{gt}", "--submission", "{sub}", "--out", "{out}/r.json", "--workers", "0"]
SCORING = ("eomt_ood.bravo.scoring.score_image",)


def score(*changes: str) -> list[str]:
    """The score command line with options replaced (`--gt X`) or added."""
    return with_options(SCORE, changes)


def _gt_tar(w, truncated: bool = False):
    path = bad.tar_of(w["gt"], w.root / "gt.tar")
    if truncated:
        bad.truncate(path, 0.4)
    return path


def _tar_with_duplicate(w):
    """The submission as a tar, with one prediction appended a second time (`tar -r` of a changed file)."""
    path = bad.tar_of(w["sub"], w.root / "sub.tar")
    with tarfile.open(path, "a") as tar:
        tar.add(w["sub"] / PRED, arcname=PRED)


def _tar_with_dangling_link(w):
    """The submission as a tar whose prediction is a symbolic link to a member the tar does not hold."""
    (w["sub"] / PRED).unlink()
    path = bad.tar_of(w["sub"], w.root / "sub.tar")
    with tarfile.open(path, "a") as tar:
        info = tarfile.TarInfo(PRED)
        info.type, info.linkname = tarfile.SYMTYPE, "elsewhere.png"
        tar.addfile(info)


def _score_ok(world, out, err):
    results = json.loads((world.root / "out" / "r.json").read_text())
    assert 0 <= results["synobjs_auprc_ood"] <= 1
    assert "NaN" in results["meta"]["nan"]  # how an undefined metric is written, said in the file


SCORE_CASES = [
    Case("gt-missing", score("--gt", "{missing}"), ["{missing}"]),
    Case("submission-missing", score("--submission", "{missing}"), ["{missing}"]),
    Case("gt-is-a-text-file", score("--gt", "{file}"), ["{file}"]),
    Case("gt-is-an-empty-folder", score("--gt", "{folder}"), ["{folder}"]),
    Case("gt-truncated-tar", score("--gt", "{tmp}/gt.tar"), ["gt.tar"], lambda w: _gt_tar(w, True)),
    Case("submission-not-a-tar", score("--submission", "{text_tar}"), ["{text_tar}"]),
    Case("pred-missing", SCORE, [PRED], lambda w: (w["sub"] / PRED).unlink(), untouched_steps=SCORING),
    Case("conf-missing", SCORE, [CONF], lambda w: (w["sub"] / CONF).unlink(), untouched_steps=SCORING),
    Case("conf-8-bit", SCORE, [CONF], lambda w: bad.as_8bit(w["sub"] / CONF)),
    Case("pred-rgb", SCORE, [PRED], lambda w: bad.as_rgb(w["sub"] / PRED)),
    Case("pred-class-19", SCORE, [PRED, "19"], lambda w: bad.with_value(w["sub"] / PRED, 19)),
    Case("pred-class-200", SCORE, [PRED, "200"], lambda w: bad.with_value(w["sub"] / PRED, 200)),
    Case("conf-size-differs", SCORE, [CONF], lambda w: bad.crop(w["sub"] / CONF)),
    Case("pred-size-differs", SCORE, [PRED], lambda w: bad.crop(w["sub"] / PRED)),
    Case("pred-truncated-png", SCORE, [PRED], lambda w: bad.truncate(w["sub"] / PRED)),
    Case("conf-text-named-png", SCORE, [CONF], lambda w: bad.text(w["sub"] / CONF)),
    Case("gt-mask-missing", SCORE, [MASK], lambda w: (w["gt"] / MASK).unlink(), untouched_steps=SCORING),
    Case("gt-label-class-40", SCORE, [LABEL], lambda w: bad.with_value(w["gt"] / LABEL, 40)),
    Case("gt-label-truncated", SCORE, [LABEL], lambda w: bad.truncate(w["gt"] / LABEL)),
    Case("gt-label-rgb", SCORE, [LABEL], lambda w: bad.as_rgb(w["gt"] / LABEL)),
    Case("subsets-unknown", score("--subsets", "nope"), ["--subsets", "nope"], untouched_steps=SCORING),
    Case("subsets-empty", score("--subsets", ","), ["--subsets"], untouched_steps=SCORING),
    Case(
        "submission-tar-holds-a-file-twice",
        score("--submission", "{tmp}/sub.tar"),
        ["sub.tar", PRED, "twice"],
        _tar_with_duplicate,
    ),
    Case(
        "submission-tar-link-to-nothing",
        score("--submission", "{tmp}/sub.tar"),
        ["sub.tar", PRED, "elsewhere.png"],
        _tar_with_dangling_link,
    ),
    Case(
        "gt-folder-links-back-to-itself",
        SCORE,
        ["bravo_synobjs/loop", "links back"],
        lambda w: (w["gt"] / "bravo_synobjs" / "loop").symlink_to(w["gt"], target_is_directory=True),
    ),
    Case("stats-over-a-runs-store", score("--stats", "{run}/predictions.h5"), ["--stats", "run folder"]),
    Case(
        "subsets-absent-from-gt",
        score("--subsets", "synobjs"),
        ["synobjs"],
        lambda w: [p.unlink() for p in (w["gt"] / "bravo_synobjs").rglob("*.png")],
    ),
    Case("samples-missing", score("--samples", "{missing}"), ["{missing}"]),
    Case("samples-not-a-tar", score("--samples", "{text_tar}"), ["{text_tar}"]),
    Case("samples-without-members", score("--samples", "{empty_tar}"), ["_samples.bin"]),
    Case(
        "sample-index-outside-the-image",
        score("--samples", "{tmp}/s.tar", "--subsets", "synobjs"),
        [f"{CAT}_samples.bin"],
        lambda w: bad.sampling_tar(
            w.root / "s.tar", {ASTRONAUT: np.arange(10), CAT: np.array([0, 5, 10**6])}
        ),
    ),
    Case(
        "degenerate-subset",
        SCORE,
        ["synobjs"],
        lambda w: [bad.fill(w["gt"] / f"bravo_synobjs/{o}/1_gt.png", 255) for o in ("cat", "astronaut")],
    ),
    Case("out-is-a-folder", score("--out", "{folder}"), ["--out"], untouched_steps=SCORING),
    Case("out-under-a-file", score("--out", "{file}/r.json"), ["--out"], untouched_steps=SCORING),
    Case("out-read-only", score("--out", "{readonly}/r.json"), ["--out"], needs_permissions=True),
    Case("out-is-the-gt-tar", score("--gt", "{tmp}/gt.tar", "--out", "{tmp}/gt.tar"), ["--out"], _gt_tar),
    Case("out-is-the-samples", score("--samples", "{samples}", "--out", "{samples}"), ["--out"]),
    Case("out-over-a-submission-file", score("--out", "{sub}/" + PRED), ["--out"], untouched_steps=SCORING),
    # A new file inside a searched input would be a stray file (or a GT file) of the next score.
    Case("out-inside-the-gt", score("--out", "{gt}/r.json"), ["--out", "inside"], untouched_steps=SCORING),
    Case("out-inside-the-submission", score("--out", "{sub}/r.json"), ["--out", "inside"]),
    Case("workers-negative", score("--workers", "-1"), ["--workers"]),
    Case("unknown-option", [*SCORE, "--bogus", "1"], ["--bogus"]),
    Case("gt-option-missing", ["score", *SCORE[3:]], ["--gt"]),
    # Controls: the harness accepts a good run, and an unmatched file is a warning, not an error.
    Case("ok", SCORE, code=0, keeps=("out/r.json",), check=_score_ok),
    Case(
        "ok-unmatched-file-is-a-warning",
        SCORE,
        code=0,
        warnings=1,
        setup=lambda w: bad.text(w["sub"] / "bravo_synobjs/cat/notes.txt"),
        keeps=("out/r.json",),
    ),
]

PACKAGE = [
    "package",
    "--submission",
    "{sub}",
    "--samples",
    "{samples}",
    "--out",
    "{out}/up.tar",
    "--workers",
    "0",
]
ENCODING = ("eomt_ood.bravo.upload.encode_task",)


def package(*changes: str) -> list[str]:
    return with_options(PACKAGE, changes)


def _package_ok(world, out, err):
    from eomt_ood.bravo.upload import verify_upload

    assert verify_upload(world.root / "out" / "up.tar", world["samples"]) == 18


PACKAGE_CASES = [
    Case("submission-missing", package("--submission", "{missing}"), ["{missing}"]),
    Case("samples-missing", package("--samples", "{missing}"), ["{missing}"]),
    Case("samples-not-a-tar", package("--samples", "{text_tar}"), ["{text_tar}"]),
    Case(
        "samples-truncated",
        package("--samples", "{samples}"),
        ["{samples}"],
        lambda w: bad.truncate(w["samples"], 0.3),
    ),
    Case("samples-without-members", package("--samples", "{empty_tar}"), ["{empty_tar}"], warnings=1),
    Case(
        "sample-of-no-bravo-image",
        package("--samples", "{tmp}/s.tar"),
        ["holiday/beach_samples.bin"],
        lambda w: bad.sampling_tar(w.root / "s.tar", {"holiday/beach": np.array([0, 1])}),
    ),
    Case("pred-missing", PACKAGE, [PRED], lambda w: (w["sub"] / PRED).unlink(), untouched_steps=ENCODING),
    Case("conf-8-bit", PACKAGE, [CONF], lambda w: bad.as_8bit(w["sub"] / CONF)),
    Case("conf-size-differs", PACKAGE, [CONF], lambda w: bad.crop(w["sub"] / CONF)),
    Case("pred-truncated-png", PACKAGE, [PRED], lambda w: bad.truncate(w["sub"] / PRED)),
    Case("pred-class-19", PACKAGE, [PRED, "19"], lambda w: bad.with_value(w["sub"] / PRED, 19)),
    Case("pred-class-200", PACKAGE, [PRED, "200"], lambda w: bad.with_value(w["sub"] / PRED, 200)),
    Case(
        "sample-index-outside-the-image",
        package("--samples", "{tmp}/s.tar"),
        [f"{CAT}_samples.bin"],
        lambda w: bad.sampling_tar(w.root / "s.tar", {CAT: np.array([0, 5, 10**6])}),
    ),
    Case("out-is-a-folder", package("--out", "{folder}"), ["--out"], untouched_steps=ENCODING),
    Case("out-under-a-file", package("--out", "{file}/up.tar"), ["--out"], untouched_steps=ENCODING),
    Case("out-read-only", package("--out", "{readonly}/up.tar"), ["--out"], needs_permissions=True),
    Case("out-is-the-samples", package("--out", "{samples}"), ["--out"], untouched_steps=ENCODING),
    Case(
        "out-over-a-submission-file", package("--out", "{sub}/" + CONF), ["--out"], untouched_steps=ENCODING
    ),
    Case("out-inside-the-submission", package("--out", "{sub}/up.tar"), ["--out", "inside"]),
    Case("workers-negative", package("--workers", "-1"), ["--workers"]),
    Case("ok", PACKAGE, code=0, keeps=("out/up.tar",), check=_package_ok),
]


@pytest.mark.parametrize("case", [c.param() for c in SCORE_CASES])
def test_score(case, world, monkeypatch, capsys):
    run_case(case, world, monkeypatch, capsys)


@pytest.mark.parametrize("case", [c.param() for c in PACKAGE_CASES])
def test_package(case, world, monkeypatch, capsys):
    run_case(case, world, monkeypatch, capsys)
