"""The Streamlit explorer driven through `streamlit.testing.v1.AppTest`: every control by its key.

What the browser does that AppTest cannot (a click on a thumbnail, a curve point or a confusion cell, the hover
readout) is in tests/test_app_browser.py; here the clicks are stood in for by the state their callbacks set.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dataset_view as dv
import linked_plots as lp
import numpy as np
import pytest
import support as sup
from run_support import build_run
from streamlit.testing.v1 import AppTest

from eomt_ood.data.png import decode_png
from eomt_ood.reports.plots import format_value

SCRIPT = str(Path(__file__).resolve().parents[1] / "app" / "explorer.py")
BIG = "bravo_synobjs/bear/1.png"  # the 600x1200 image of the shared runs


@pytest.fixture(autouse=True)
def _keep_main_module():
    """AppTest runs the script as `__main__` and leaves it in sys.modules; worker processes that later tests
    start (forkserver / spawn) re-import `__main__` and would run the app script and die. Put pytest's back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="module")
def runs(finished_run, second_run) -> tuple[Path, Path]:
    return finished_run, second_run


@pytest.fixture(scope="module")
def run_a(finished_run):
    opened = sup.open_run(finished_run)
    yield opened
    opened.reader.close()


def _app(monkeypatch, *args, query: dict | None = None) -> AppTest:
    monkeypatch.setattr(sys, "argv", ["explorer.py", *map(str, args)])
    at = AppTest.from_file(SCRIPT, default_timeout=120)
    if query:
        at.query_params.update(query)
    at.run()
    assert not at.exception, at.exception
    return at


def _component(at: AppTest, key: str) -> dict | None:
    """The data of the thumbnail grid / picture component with this key (None when it is not on the page)."""
    for element in at.get("bidi_component"):
        if element.proto.id.endswith("-" + key):
            return json.loads(element.proto.json)[0]  # sent wrapped in a list (app/thumbgrid.py)
    return None


def _picture(data: dict) -> np.ndarray:
    return decode_png(base64.b64decode(data["src"].split(",", 1)[1]), "picture")


def _captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


def _grid(at: AppTest, key: str = "grid") -> list[int]:
    return [item["index"] for item in _component(at, key)["items"]]


def test_no_run_dir_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["explorer.py", str(tmp_path)])
    at = AppTest.from_file(SCRIPT, default_timeout=60)
    at.run()
    assert "not a run folder (no predictions.h5)" in at.error[0].value


def test_dataset_grid_subset_order_filters_and_pages(monkeypatch, runs, run_a):
    monkeypatch.setattr(dv, "PAGE_SIZE", 2)
    at = _app(monkeypatch, runs[0])
    stats = run_a.stats("msp")
    assert at.session_state["view"] == "Dataset"
    assert at.sidebar.button_group(key="subset").options == ["all", "ACDCfog", "synrain", "synobjs"]
    # Oracle: lowest AUPRC first, images without one after them in store order.
    finite = sorted((v, i) for i, v in enumerate(stats["auprc_ood"]) if np.isfinite(v))
    by_auprc = [i for _, i in finite] + [i for i, v in enumerate(stats["auprc_ood"]) if not np.isfinite(v)]
    assert _grid(at) == by_auprc[:2]
    assert at.markdown[0].value.startswith("**6** of 6 images in **all**") and "page 1 of 3" in _captions(at)
    items = _component(at, "grid")["items"]
    assert items[0]["caption"].endswith(f"auprc_ood {format_value(stats['auprc_ood'][by_auprc[0]])}")
    at.button(key="page_next").click().run()
    assert _grid(at) == by_auprc[2:4] and "page 2 of 3" in _captions(at)
    at.button(key="page_next").click().run()
    assert _grid(at) == by_auprc[4:]
    assert items[0]["src"].startswith("data:image/jpeg;base64,")
    assert all(item["caption"].endswith("auprc_ood –") for item in _component(at, "grid")["items"])

    at.sidebar.button_group(key="subset").set_value("synobjs").run()
    at.sidebar.selectbox(key="sort").select("fpr95_ood").run()
    synobjs = [i for i, s in enumerate(run_a.reader.subsets) if s == "synobjs"]
    by_fpr = sorted(synobjs, key=lambda i: -stats["fpr95_ood"][i])  # worst = highest
    assert _grid(at) == by_fpr[:2] and "page 1 of 2" in _captions(at)  # a new view starts on page 1
    at.sidebar.toggle(key="sort_reverse").set_value(True).run()
    assert _grid(at) == by_fpr[::-1][:2]

    # The filters: closed, then opened; a narrower range keeps only the images inside it.
    ranges = lambda: [w for w in at.sidebar.slider if w.key.startswith("range_")]  # noqa: E731
    assert not ranges()  # closed: no range slider drawn
    at.session_state["filters_open"] = True
    at.run()
    key = "range_fpr95_ood_synobjs_msp"
    span = (float(stats["fpr95_ood"][synobjs].min()), float(stats["fpr95_ood"][synobjs].max()))
    assert at.sidebar.slider(key=key).value == pytest.approx(span)
    assert len(at.sidebar.get("image")) == len(ranges()) == 5  # a histogram above each range
    middle = sorted(stats["fpr95_ood"][synobjs])[1]
    at.sidebar.slider(key=key).set_value((span[0], middle)).run()
    kept = [i for i in synobjs if stats["fpr95_ood"][i] <= middle]
    assert sorted(_grid(at)) == sorted(kept) and len(kept) == 2
    assert "Filters: fpr95_ood" in _captions(at)
    # Closing the expander keeps the filter (its range lives in a plain key).
    at.session_state["filters_open"] = False
    at.run()
    assert sorted(_grid(at)) == sorted(kept)


def test_image_view_picture_and_threshold(monkeypatch, runs, run_a):
    at = _app(monkeypatch, runs[0])
    big = run_a.index_of(BIG)
    at.session_state["image"], at.session_state["view"] = big, "Image"  # what a click on its thumbnail sets
    at.run()
    maps = sup.read_maps(run_a.reader, big)
    hist = run_a.histograms("msp")["synobjs"]
    start = sup.tpr95_threshold(hist["ood_pos"], hist["ood_neg"])
    assert at.sidebar.number_input(key="threshold").value == start.doubt
    picture = _component(at, "image_fig_0")
    expected = sup.compose(maps, "OOD outcome", 0.6, "msp", "Viridis", start.level)
    np.testing.assert_array_equal(_picture(picture), expected)  # the photo under the outcome colours
    grid = picture["readout"]
    assert grid["rows"] * grid["stride"] >= maps["pred"].shape[0] and grid["names"][19] == "void"

    # The exact value typed: the counts and the picture follow it.
    at.sidebar.number_input(key="threshold").set_value(0.5).run()
    level = sup.level_of_doubt(0.5)
    counts = sup.outcome_counts(
        sup.outcome_map(maps["confs"]["msp"], maps["gt_label"], maps["gt_invalid"], level)
    )
    assert f"TP {counts['true positive']:,} · FP {counts['false positive']:,}" in _captions(at)
    np.testing.assert_array_equal(
        _picture(_component(at, "image_fig_0")),
        sup.compose(maps, "OOD outcome", 0.6, "msp", "Viridis", level),
    )
    assert "Set from the value typed" in _captions(at)
    # The log slider reaches small doubts; the quantile slider flags a share of the subset's pixels.
    at.sidebar.slider(key="threshold_log").set_value(-2.5).run()
    assert at.sidebar.number_input(key="threshold").value == pytest.approx(10**-2.5)
    at.sidebar.radio(key="threshold_scale").set_value("quantile").run()
    at.sidebar.slider(key="threshold_quantile").set_value(0.2).run()
    shares = lp.flagged_shares(hist["ood_pos"] + hist["ood_neg"])
    assert at.sidebar.number_input(key="threshold").value == lp.doubt_of_level(
        lp.level_of_quantile(shares, 0.2)
    )
    # Back to TPR 95 %: of the subset, then of this image's own preview maps.
    at.sidebar.button(key="threshold_image").click().run()
    own = sup.tpr95_threshold(
        *sup.image_ood_histograms(maps["confs"]["msp"], maps["gt_label"], maps["gt_invalid"])
    )
    assert at.sidebar.number_input(key="threshold").value == own.doubt
    at.sidebar.button(key="threshold_reset").click().run()
    assert at.sidebar.number_input(key="threshold").value == start.doubt

    # Another overlay: other pixels, the ones `compose` makes; and the class legend beside it.
    at.sidebar.radio(key="overlay").set_value("prediction").run()
    np.testing.assert_array_equal(
        _picture(_component(at, "image_fig_0")), sup.compose(maps, "prediction", 0.6, "msp", "Viridis")
    )
    assert (
        "road" in at.sidebar.get("html")[0].proto.body and "bicycle" in at.sidebar.get("html")[0].proto.body
    )

    # A click on the picture puts the readout there (its callback sets these); previous / next walk the view.
    at.session_state["pixel_row"], at.session_state["pixel_col"] = 100, 300
    at.run()
    readout = sup.format_readout(sup.pixel_readout(maps, 100, 300))
    assert "  \n".join(readout.split("\n")) in [m.value for m in at.markdown]
    view = dv.order(run_a.stats("msp"), np.arange(6), "auprc_ood")
    at.button(key="image_next").click().run()
    assert at.session_state["image"] == view[(list(view).index(big) + 1) % 6]
    at.sidebar.number_input(key="image_position").set_value(1).run()
    assert at.session_state["image"] == view[0]
    at.sidebar.text_input(key="image_find").input("cat/2").run()
    assert run_a.reader.relpaths[at.session_state["image"]] == "bravo_synobjs/cat/2.png"


def test_runs_side_by_side_each_with_its_score(monkeypatch, runs, tmp_path):
    only_msp = build_run(tmp_path, seed=2, scores=("msp",), name="run-msp")
    at = _app(monkeypatch, runs[0], only_msp)
    at.sidebar.selectbox(key="score").select("rba").run()
    assert at.sidebar.selectbox(key="run_score_1").value == "msp"  # the run without rba shows its own score
    at.session_state["view"] = "Image"
    at.run()
    assert _component(at, "image_fig_0")["title"] == "run-a · rba"
    assert _component(at, "image_fig_1")["title"] == "run-msp · msp"
    # One run with two scores side by side.
    at.sidebar.selectbox(key="score2").select("msp").run()
    titles = [_component(at, f"image_fig_{k}")["title"] for k in range(3)]
    assert titles == ["run-a · rba", "run-a · msp", "run-msp · msp"]
    # On the quantile scale each column flags the same share of its own subset's pixels.
    at.sidebar.radio(key="threshold_scale").set_value("quantile").run()
    at.sidebar.slider(key="threshold_quantile").set_value(0.3).run()
    ref, other = sup.open_run(runs[0]), sup.open_run(only_msp)
    rel = ref.reader.relpaths[at.session_state["image"]]
    subset = ref.reader.subsets[ref.index_of(rel)]
    shares = {
        name: lp.flagged_shares(sup.scored_counts(run.histograms(s)[subset], None))
        for name, run, s in (("rba", ref, "rba"), ("msp", ref, "msp"), ("other", other, "msp"))
    }
    ref_level = lp.level_of_quantile(shares["rba"], 0.3)
    quantile = lp.quantile_of_level(shares["rba"], ref_level)
    for name in ("msp", "other"):
        level = lp.level_of_quantile(shares[name], quantile)
        assert f"doubt ≥ {lp.doubt_of_level(level):.6f}:" in _captions(at), name
    # The metrics, per column: every missing value a dash.
    at.session_state["view"] = "Metrics"
    at.run()
    results = json.loads((runs[0] / "results.json").read_text())
    shown = {m.label: m.value for m in at.metric}
    assert shown["run-a · rba ood_hmean"] == format_value(results["rba"]["ood_hmean"])
    table = at.dataframe[0].value.set_index("subset")
    low, high = results["meta"]["intervals"]["rba"]["synobjs_auprc_ood"]  # each value, then its interval
    value = format_value(results["rba"]["synobjs_auprc_ood"])
    assert table.loc["synobjs", "auprc_ood"] == f"{value} [{low:.4f}, {high:.4f}]"
    assert table.loc["ACDCfog", "auprc_ood"] == "–"
    ref.reader.close()
    other.reader.close()


def test_zoom_reads_full_resolution_and_the_photo_the_run_names(monkeypatch, runs, tmp_path):
    import shutil

    import yaml

    # A copy of run-b whose config names an images folder that is gone: the zoom works, without the photo.
    moved = tmp_path / "moved"
    shutil.copytree(runs[1], moved / "run")
    config = yaml.safe_load((moved / "run" / "config.yaml").read_text())
    config["images_root"] = str(tmp_path / "gone")
    (moved / "run" / "config.yaml").write_text(yaml.safe_dump(config))
    at = _app(monkeypatch, runs[0], moved / "run", query={"view": "Image", "image": BIG, "overlay": "none"})
    at.toggle(key="zoom").set_value(True).run()
    at.select_slider(key="zoom_factor").set_value(8).run()
    captions = _captions(at)
    # 600x1200 at 1/8 around the centre: a 75x150 window.
    assert captions.count("rows 262-336, columns 525-674") == 2
    # run-a's photo is where its config.yaml says: the zoom shows it, at full resolution.
    assert captions.count("on the photo from the run's images folder") == 1
    assert captions.count("photo not found") == 1
    from eomt_ood.data.images import read_image

    photo = read_image(runs[0].parent / "images" / BIG)[262:337, 525:675]
    np.testing.assert_array_equal(_picture(_component(at, "zoom_fig_0")), photo)


def test_confusion_cells_list_their_images(monkeypatch, runs, run_a):
    at = _app(monkeypatch, runs[0], query={"view": "Confusion"})
    matrices = run_a.confusion_matrices()
    pooled = matrices.sum(axis=0)
    off = pooled.copy()
    np.fill_diagonal(off, 0)
    t, p = np.unravel_index(off.argmax(), off.shape)  # it opens on the largest confusion
    assert (at.selectbox(key="cm_true").value, at.selectbox(key="cm_pred").value) == (t, p)
    at.selectbox(key="cm_true").set_value(3)
    at.selectbox(key="cm_pred").set_value(8).run()
    assert (
        f"**{int(pooled[3, 8]):,}** pixels of true **wall** predicted as **vegetation**"
        in at.main.markdown[-1].value
    )
    items = _component(at, "cm_grid")["items"]
    expected = sorted(range(6), key=lambda i: (-matrices[i, 3, 8], i))
    expected = [i for i in expected if matrices[i, 3, 8] > 0][:12]
    assert [item["index"] for item in items] == expected
    assert items[0]["caption"].endswith(
        f"{int(matrices[expected[0], 3, 8]):,} px ({matrices[expected[0], 3, 8] / pooled[3, 8]:.1%})"
    )
    at.sidebar.button_group(key="subset").set_value("synrain").run()  # no ground truth there
    assert "No image with ground truth in this view." in [i.value for i in at.info]
    at.session_state["view"] = "Curves"
    at.sidebar.button_group(key="subset").set_value("synobjs").run()
    charts = [chart.proto.id.rsplit("-", 1)[-1] for chart in at.get("plotly_chart")]
    assert charts == ["curves_0", "reliability_0"]


def test_the_url_gives_the_view_and_follows_it(monkeypatch, runs, run_a):
    doubt = sup.doubt_of_level(61000)
    query = {
        "view": "Image",
        "image": BIG,
        "overlay": "confidence",
        "threshold": repr(doubt),
        "score": "rba",
        "run": "run-b",
        "subset": "bogus",
    }
    at = _app(monkeypatch, *runs, query=query)
    assert at.session_state["runs"] == [str(runs[1].resolve())]
    assert at.sidebar.number_input(key="threshold").value == doubt  # exactly, not the subset's start
    assert at.sidebar.radio(key="overlay").value == "confidence"
    assert _component(at, "image_fig_0")["title"] == "run-b · rba"
    assert any("subset 'bogus'" in w.value for w in at.sidebar.warning)
    assert at.query_params["image"] == BIG and at.query_params["threshold"] == repr(doubt)
    at.sidebar.radio(key="overlay").set_value("OOD ground truth").run()
    assert at.query_params["overlay"] == "OOD ground truth" and at.query_params["subset"] == "all"


def test_own_image_runs_a_checkpoint_from_an_allowed_folder(monkeypatch, runs, tmp_path):
    from eomt_ood.models import create_model, save_checkpoint

    allowed = tmp_path / "allowed"
    save_checkpoint(create_model("eomt_test", num_classes=19), allowed / "nested" / "tiny.safetensors")
    at = _app(monkeypatch, runs[0], "--allow", allowed, query={"view": "Your image"})
    options = at.selectbox(key="own_model").options
    assert options == [
        "the run's model (config.yaml)",
        str((allowed / "nested" / "tiny.safetensors").resolve()),
    ]
    at.selectbox(key="own_model").set_value(options[1])
    at.button(key="own_run").click().run()
    assert not at.error, at.error
    assert {"own_pred", "own_conf"} <= {e.proto.id.rsplit("-", 1)[-1] for e in at.get("bidi_component")}
    maps = at.session_state["own_maps"]
    assert maps["pred"].shape == (256, 512) and set(maps["confs"]) == {"msp", "rba"}
    # The checkpoint's own model ran (random weights: not the run's), and its picture is what compose makes.
    picture = _picture(_component(at, "own_pred"))
    np.testing.assert_array_equal(picture, sup.compose(maps, "prediction", 0.6, "msp", "Viridis"))


def test_cli_refuses_a_folder_without_a_store_and_a_missing_allowed_folder(tmp_path, finished_run):
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "eomt_ood.cli", "app", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {tmp_path}: not a run folder (no predictions.h5)"
    done = subprocess.run(
        [sys.executable, "-m", "eomt_ood.cli", "app", str(finished_run), "--allow", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: --allow {tmp_path / 'nope'}: folder not found"


def test_streamlit_command_serves_locally_and_headless(tmp_path):
    from eomt_ood.serve import explorer_arguments, streamlit_command

    command = streamlit_command(8600, "127.0.0.1")
    assert command[1:4] == [str(Path(SCRIPT).with_name("launch.py")), "run", SCRIPT]
    assert {"--server.address=127.0.0.1", "--server.port=8600", "--server.headless=true"} <= set(command)
    arguments = explorer_arguments([tmp_path / "a", tmp_path / "b"], [tmp_path / "w"])
    assert arguments == [str(tmp_path / "a"), str(tmp_path / "b"), "--allow", str(tmp_path / "w")]
    assert sup.parse_args([*arguments[:2], "--allow", str(tmp_path)]) == (arguments[:2], [tmp_path.resolve()])


def test_sigterm_stops_the_server_child_and_exits_143(tmp_path):
    # The server is stood in for by a child that sleeps and writes its pid; SIGTERM to `serve_explorer`'s process
    # must end that child and report the signal the way a shell does (128 + 15), not a clean 0.
    script = (
        "import sys\n"
        "from eomt_ood import serve\n"
        "child = [sys.executable, '-c', 'import os, sys, time; open(sys.argv[1], \"w\").write(str(os.getpid()));"
        " time.sleep(60)', sys.argv[1]]\n"
        "serve.streamlit_command = lambda port, host: child + ['--']\n"
        "serve.explorer_arguments = lambda runs, allow: []\n"
        "sys.exit(serve.serve_explorer([], port=int(sys.argv[2])))\n"
    )
    pid_file = tmp_path / "child.pid"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-c", script, str(pid_file), str(port)], stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 143
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # reaped by the server before it returned, so gone at once
            os.kill(child, 0)
            time.sleep(0.05)


def test_launch_warms_every_module_the_explorer_imports():
    """`launch.py` imports, beside the starting server, what explorer.py imports at its top (all but what the
    server has loaded already and the components, which register with the running server), and each of them
    imports without error: a renamed module would otherwise silently drop out of the head start."""
    import ast

    import launch

    tree = ast.parse(Path(SCRIPT).read_text())
    imported = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    loaded_by_the_server = {"__future__", "sys", "dataclasses", "pathlib", "numpy", "streamlit"}
    components = {"mapview", "thumbgrid"}
    assert imported - loaded_by_the_server - components <= set(launch.WARM_MODULES)
    code = f"import sys; sys.path.insert(0, {str(Path(SCRIPT).parent)!r}); import launch; print(launch.warm_up())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
