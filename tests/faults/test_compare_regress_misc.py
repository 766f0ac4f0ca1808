"""`compare`, `regress`, `make-data`, `make-fixture`, `app` and the command line itself."""

from __future__ import annotations

import json
import socket

import pytest

from . import bad
from .harness import Case, run_case, with_options

COMPARE = ["compare", "{run}", "{run2}", "--out", "{out}/c.html"]


def compare(*changes: str) -> list[str]:
    return with_options(COMPARE, changes)


def _json(path_key: str, content):
    def setup(w):
        w[path_key].write_text(json.dumps(content) if not isinstance(content, str) else content)

    return setup


def _results_without_metrics(w):
    path = w["run"] / "results.json"
    meta = json.loads(path.read_text())["meta"]
    path.write_text(json.dumps({"meta": meta}))


def _compared(world, out, err):
    html = (world.root / "out" / "c.html").read_text()
    lines = out.splitlines()
    assert (
        "AUPRC" in html
        and lines[0].split()[:2] == ["run", "score"]
        and lines[-1].startswith("compared 2 run(s)")
    )


COMPARE_CASES = [
    Case("run-missing", ["compare", "{missing}", "--out", "{out}/c.html"], ["{missing}"]),
    Case("run-not-a-run-folder", ["compare", "{folder}", "--out", "{out}/c.html"], ["{folder}"]),
    Case("no-run", ["compare", "--out", "{out}/c.html"], ["RUN_DIR"]),
    Case("out-is-a-runs-results", compare("--out", "{run}/results.json"), ["--out"]),
    Case("out-is-a-runs-store", compare("--out", "{run2}/predictions.h5"), ["--out"]),
    Case("out-is-a-runs-report", compare("--out", "{run}/report.html"), ["--out"]),
    Case("out-is-a-runs-config", compare("--out", "{run2}/config.yaml"), ["--out"]),
    Case("out-is-a-folder", compare("--out", "{folder}"), ["--out"]),
    Case("out-under-a-file", compare("--out", "{file}/c.html"), ["--out"]),
    Case("out-read-only", compare("--out", "{readonly}/c.html"), ["--out"], needs_permissions=True),
    Case("csv-is-a-runs-results", [*COMPARE, "--csv", "{run}/results.json"], ["--csv"]),
    Case("csv-is-the-out", [*COMPARE, "--csv", "{out}/c.html"], ["--csv"]),
    Case("csv-under-a-file", [*COMPARE, "--csv", "{file}/c.csv"], ["--csv"]),
    Case(
        "results-invalid-json",
        COMPARE,
        ["results.json"],
        lambda w: bad.text(w["run"] / "results.json", "{nope"),
    ),
    Case(
        "results-a-list", COMPARE, ["results.json"], lambda w: bad.text(w["run"] / "results.json", "[1, 2]")
    ),
    Case("results-binary", COMPARE, ["results.json"], lambda w: bad.binary(w["run"] / "results.json")),
    Case("results-missing", COMPARE, ["results.json"], lambda w: (w["run"] / "results.json").unlink()),
    Case("results-without-metrics", COMPARE, ["results.json"], _results_without_metrics),
    Case(
        "store-corrupt", COMPARE, ["predictions.h5"], lambda w: bad.truncate(w["run"] / "predictions.h5", 0.1)
    ),
    Case("confidence-unknown", [*COMPARE, "--confidence", "nope"], ["nope"]),
    Case("confidence-one-of-several-unknown", [*COMPARE, "--confidence", "msp,nope"], ["nope"]),
    Case("confidence-empty-list", [*COMPARE, "--confidence", " , "], ["--confidence"]),
    # A results file given instead of a run folder brings its statistics file (here the store beside it).
    Case(
        "out-is-a-results-files-statistics",
        ["compare", "{run}/results.json", "--out", "{run}/predictions.h5"],
        ["--out"],
    ),
    Case(
        "csv-is-a-results-files-statistics",
        ["compare", "{run}/results.json", "--out", "{out}/c.html", "--csv", "{run}/predictions.h5"],
        ["--csv"],
    ),
    Case("ok", COMPARE, code=0, keeps=("out/c.html",), check=_compared),
]

REGRESS = ["regress", "--baseline", "{baseline}", "--results", "{results}"]


def regress(*changes: str) -> list[str]:
    return with_options(REGRESS, changes)


def _baseline_edit(edit):
    def setup(w):
        data = json.loads(w["baseline"].read_text())
        edit(data)
        w["baseline"].write_text(json.dumps(data))

    return setup


def _results_with_statistics(name: str):
    """r.json: the run's results naming `name` beside it as their statistics file (as `score --stats` does)."""

    def setup(w):
        results = json.loads(w["results"].read_text())
        results["meta"]["statistics"] = name
        (w.root / "r.json").write_text(json.dumps(results))
        (w.root / name).write_bytes((w["run"] / "predictions.h5").read_bytes())

    return setup


def _higher(data):
    data["msp"]["synobjs_auprc_ood"] += 0.5


def _regressed(world, out, err):
    assert (
        "REGRESSED" in out
        and "msp/synobjs_auprc_ood" in out
        and out.strip().splitlines()[-1].startswith("FAILED")
    )


def _passed(world, out, err):
    assert out.strip().splitlines()[-1].startswith("passed")


def _other_gt(data):
    data["meta"]["gt"] = "/elsewhere/gt"


def _other_counts(data):
    data["meta"]["subsets"]["synobjs"]["images"] = 200


def _note(words: str):
    def check(world, out, err):
        assert words in out, out

    return check


def _one_score(world, out, err):
    assert "synobjs_auprc_ood" in out and "rba" not in out and "msp/" not in out


def _updated(name: str):
    def check(world, out, err):
        written = json.loads((world.root / name).read_text())
        assert written["msp"] == json.loads(world["results"].read_text())["msp"]

    return check


REGRESS_CASES = [
    Case("baseline-missing", regress("--baseline", "{missing}"), ["{missing}"]),
    Case("results-missing", regress("--results", "{missing}"), ["{missing}"]),
    Case("results-is-a-folder", regress("--results", "{folder}"), ["{folder}"]),
    Case("baseline-invalid-json", REGRESS, ["baseline.json"], lambda w: bad.text(w["baseline"], "{nope")),
    Case("baseline-binary", REGRESS, ["baseline.json"], lambda w: bad.binary(w["baseline"])),
    Case("baseline-a-list", REGRESS, ["baseline.json"], lambda w: bad.text(w["baseline"], "[1]")),
    Case("baseline-flat-results-per-score", REGRESS, ["flat"], _json("baseline", {"synobjs_auprc_ood": 0.5})),
    Case(
        "baseline-mixes-blocks-and-keys",
        REGRESS,
        ["baseline"],
        _json("baseline", {"msp": {"synobjs_auprc_ood": 0.5}, "ACDCfog_auprc_ood": 0.1}),
    ),
    # A watched value that is not a number would leave the comparison and let the gate pass.
    Case(
        "baseline-value-null",
        REGRESS,
        ["msp/synobjs_auprc_ood", "null"],
        _baseline_edit(lambda data: data["msp"].update(synobjs_auprc_ood=None)),
    ),
    Case(
        "baseline-value-a-string",
        REGRESS,
        ["msp/synobjs_auprc_ood", '"0.5"'],
        _baseline_edit(lambda data: data["msp"].update(synobjs_auprc_ood="0.5")),
    ),
    Case("bootstrap-negative", [*REGRESS, "--bootstrap", "-3"], ["--bootstrap"]),
    Case("tolerance-negative", [*REGRESS, "--tolerance", "-1"], ["--tolerance"]),
    Case("tolerance-not-a-number", [*REGRESS, "--tolerance", "tiny"], ["--tolerance"]),
    Case("keys-match-nothing", [*REGRESS, "--keys", "*_nothing"], ["--keys", "*_nothing"]),
    Case("update-baseline-is-a-folder", [*regress("--baseline", "{folder}"), "--update"], ["--baseline"]),
    Case(
        "update-baseline-under-a-file", [*regress("--baseline", "{file}/b.json"), "--update"], ["--baseline"]
    ),
    Case("update-baseline-is-the-results", [*regress("--baseline", "{results}"), "--update"], ["--baseline"]),
    Case(
        "update-baseline-read-only",
        [*regress("--baseline", "{readonly}/b.json"), "--update"],
        ["--baseline"],
        needs_permissions=True,
    ),
    # The statistics --update writes may not replace an input or any run's store (the app reads its previews).
    Case(
        "update-stats-is-the-results-store",
        [*REGRESS, "--update", "--baseline-stats", "{run}/predictions.h5"],
        ["--baseline-stats"],
    ),
    Case(
        "update-stats-is-another-runs-store",
        [*REGRESS, "--update", "--baseline-stats", "{run2}/predictions.h5"],
        ["--baseline-stats", "run folder"],
    ),
    Case(
        "update-stats-is-the-results-statistics-file",
        [*regress("--results", "{tmp}/r.json", "--baseline", "{tmp}/b.json"), "--update"],
        ["--baseline-stats", "b.stats.h5"],
        _results_with_statistics("b.stats.h5"),
    ),
    Case(
        "update-stats-is-a-folder",
        [*REGRESS, "--update", "--baseline-stats", "{folder}"],
        ["--baseline-stats"],
    ),
    Case("regressed-exits-1", REGRESS, code=1, setup=_baseline_edit(_higher), check=_regressed),
    Case("passes", REGRESS, code=0, check=_passed),
    Case(
        "update-creates-a-baseline",
        [*regress("--baseline", "{out}/b.json"), "--update"],
        code=0,
        keeps=("out/b.json", "out/b.stats.h5"),
        check=_updated("out/b.json"),
    ),
    Case(
        "update-replaces-a-baseline",
        [*REGRESS, "--update"],
        code=0,
        setup=_baseline_edit(_higher),
        keeps=("baseline.json", "baseline.stats.h5"),
        check=_updated("baseline.json"),
    ),
    Case("baseline-empty", REGRESS, ["{baseline}"], _json("baseline", {})),
    Case(
        "baseline-from-other-ground-truth",
        REGRESS,
        code=0,
        setup=_baseline_edit(_other_gt),
        check=_note("another ground truth"),
    ),
    Case(
        "baseline-from-other-image-counts",
        REGRESS,
        code=0,
        setup=_baseline_edit(_other_counts),
        check=_note("another dataset"),
    ),
    Case(
        "gate-one-score-of-several",
        [*REGRESS, "--confidence", "msp"],
        code=0,
        check=_one_score,
    ),
]

MAKE_DATA = ["make-data", "cityscapes-synthetic", "--out", "{out}", "--num-images", "2", "--size", "32x64"]


def make_data(*changes: str) -> list[str]:
    return with_options(MAKE_DATA, changes)


def _made(world, out, err):
    images = sorted(p.name for p in (world.root / "out" / "leftImg8bit").rglob("*.png"))
    assert len(images) == 2 and out.startswith("1 train, 1 val")


def _shared(world, out, err):
    assert out.startswith("3 val, 2 test"), out


MAKE_DATA_CASES = [
    Case("kind-unknown", ["make-data", "coco", "--out", "{out}", "--num-images", "2"], ["coco"]),
    Case("num-images-zero", make_data("--num-images", "0"), ["--num-images"]),
    Case("num-images-fewer-than-splits", make_data("--num-images", "1"), ["--num-images"]),
    Case("size-not-a-size", make_data("--size", "big"), ["--size", "big"]),
    Case("size-too-small", make_data("--size", "8x8"), ["--size"]),
    Case("splits-unknown", make_data("--splits", "train,holdout"), ["--splits"]),
    Case("val-fraction-above-one", make_data("--val-fraction", "2"), ["--val-fraction"]),
    Case("out-is-a-file", make_data("--out", "{file}"), ["--out", "{file}"]),
    Case("out-under-a-file", make_data("--out", "{file}/data"), ["--out"]),
    Case("out-read-only", make_data("--out", "{readonly}/data"), ["--out"], needs_permissions=True),
    Case("seed-negative", make_data("--seed", "-1"), ["--seed"]),
    Case("size-too-large", make_data("--size", "100000x100000"), ["--size", "16384"]),
    Case("size-not-ascii-digits", make_data("--size", "²x64"), ["--size"]),
    Case(
        "out-not-empty",
        make_data("--out", "{tmp}/made"),
        ["--out", "not empty"],
        lambda w: bad.text(w.root / "made" / "leftImg8bit" / "old.png"),
    ),
    # A folder the file system refuses only when written (no check before the work can know): one line, exit 1.
    Case(
        "out-refused-by-the-file-system",
        make_data("--out", "/proc/eomt-ood-data"),
        ["/proc/eomt-ood-data"],
        code=1,
    ),
    Case("ok", MAKE_DATA, code=0, keeps=("out/*",), check=_made),
    Case(
        "ok-splits-without-train-share-the-images",
        make_data("--splits", "val,test", "--num-images", "5"),
        code=0,
        keeps=("out/*",),
        check=_shared,
    ),
]

MAKE_FIXTURE_CASES = [
    Case("out-is-a-file", ["make-fixture", "--out", "{file}"], ["--out", "{file}"]),
    Case("out-under-a-file", ["make-fixture", "--out", "{file}/fx"], ["--out"]),
    Case("out-read-only", ["make-fixture", "--out", "{readonly}/fx"], ["--out"], needs_permissions=True),
    Case("seed-not-a-number", ["make-fixture", "--out", "{out}", "--seed", "x"], ["--seed"]),
]


def _busy_port(w):
    """Listen on a free port until the case ends; the case asks the app for that port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    (w.root / "port").write_text(str(server.getsockname()[1]))
    return server.close


APP_CASES = [
    Case("host-invalid", ["app", "{run}", "--host", "999.1.1.1"], ["--host", "999.1.1.1"]),
    Case("host-unresolvable", ["app", "{run}", "--host", "no-such-host.invalid"], ["--host"]),
    Case("port-zero", ["app", "{run}", "--port", "0"], ["--port"]),
    Case("port-too-large", ["app", "{run}", "--port", "70000"], ["--port"]),
    Case("port-busy", ["app", "{run}", "--port", "{port}"], ["--port"], _busy_port),
    Case("run-missing", ["app", "{missing}", "--port", "18999"], ["{missing}"]),
    Case("run-not-a-run-folder", ["app", "{folder}", "--port", "18999"], ["{folder}"]),
    # A broken run is refused before the server starts (it used to serve a page that showed the error).
    Case(
        "run-results-a-list",
        ["app", "{run}", "--port", "18999"],
        ["results.json"],
        lambda w: bad.text(w["run"] / "results.json", "[1]"),
    ),
    Case(
        "run-store-truncated",
        ["app", "{run}", "--port", "18999"],
        ["predictions.h5"],
        lambda w: bad.truncate(w["run"] / "predictions.h5"),
    ),
]

CLI_CASES = [
    Case("command-unknown", ["evaluat"], ["evaluat"]),
    Case("option-unknown", ["models", "--all"], ["--all"]),
    Case("option-without-value", ["score", "--gt"], ["--gt"]),
]


@pytest.mark.parametrize("case", [c.param() for c in COMPARE_CASES])
def test_compare(case, world, monkeypatch, capsys):
    run_case(case, world, monkeypatch, capsys)


@pytest.mark.parametrize("case", [c.param() for c in REGRESS_CASES])
def test_regress(case, world, monkeypatch, capsys):
    run_case(case, world, monkeypatch, capsys)


@pytest.mark.parametrize("case", [c.param() for c in MAKE_DATA_CASES])
def test_make_data(case, world, monkeypatch, capsys):
    run_case(case, world, monkeypatch, capsys)


@pytest.mark.parametrize("case", [c.param() for c in MAKE_FIXTURE_CASES])
def test_make_fixture(case, world, monkeypatch, capsys):
    run_case(case, world, monkeypatch, capsys)


@pytest.mark.parametrize("case", [c.param() for c in APP_CASES])
def test_app(case, world, monkeypatch, capsys):
    run_case(case, world, monkeypatch, capsys)


@pytest.mark.parametrize("case", [c.param() for c in CLI_CASES])
def test_command_line(case, world, monkeypatch, capsys):
    run_case(case, world, monkeypatch, capsys)


def test_help_into_a_closed_pipe_is_quiet():
    """`eomt-ood evaluate --help | head -3`: the reader leaves while the help is being written, and the write
    that follows fails (here click's last `echo`, where it failed in a real pipe); no traceback, status 1."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "try:\n"
        "    import typer._click.decorators as decorators\n"  # typer >= 0.20 carries its own click
        "except ImportError:\n"
        "    import click.decorators as decorators\n"
        "def echo(*args, **kwargs):\n"
        "    raise BrokenPipeError(32, 'Broken pipe')\n"
        "decorators.echo = echo\n"
        "sys.argv = ['eomt-ood', 'evaluate', '--help']\n"
        "from eomt_ood.cli import main\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60
    )
    assert done.stderr == ""
    assert done.returncode == 1
