"""The Streamlit explorer driven through `streamlit.testing.v1.AppTest`: every control by its key."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import support as sup
from conftest import build_run
from streamlit.testing.v1 import AppTest

from eomt_ood.reports.plots import format_value
from eomt_ood.store import StoreReader

SCRIPT = str(Path(__file__).resolve().parents[1] / "app" / "explorer.py")


@pytest.fixture(autouse=True)
def _keep_main_module():
    """AppTest runs the script as `__main__` and leaves it in sys.modules; worker processes that later tests
    start (forkserver / spawn) re-import `__main__` and would run the app script and die. Put pytest's back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


BIG = "bravo_synobjs/bear/1.png"  # the 600x1200 image of the shared runs


@pytest.fixture(scope="module")
def runs(finished_run, second_run) -> tuple[Path, Path]:
    return finished_run, second_run


def _index(run: Path, relpath: str) -> int:
    with StoreReader(run / "predictions.h5") as reader:
        return reader.relpaths.index(relpath)


def _app(monkeypatch, *run_dirs) -> AppTest:
    monkeypatch.setattr(sys, "argv", ["explorer.py", *map(str, run_dirs)])
    at = AppTest.from_file(SCRIPT, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def _charts(at: AppTest) -> list[str]:
    """The keys of the plotly charts on the page (the element id ends with the user key)."""
    return [chart.proto.id.rsplit("-", 1)[-1] for chart in at.get("plotly_chart")]


def _captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


def test_no_run_dir_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["explorer.py", str(tmp_path)])
    at = AppTest.from_file(SCRIPT, default_timeout=60)
    at.run()
    assert "not a run folder (no predictions.h5)" in at.error[0].value


def test_one_run_browse_threshold_and_readout(monkeypatch, runs):
    at = _app(monkeypatch, runs[0])
    assert at.sidebar.selectbox(key="subset").options == ["ACDCfog", "synrain", "synobjs"]  # official order
    # ACDCfog has no invalid pixels: no threshold, but the picture, table and curves are there.
    assert "no threshold" in _captions(at)
    assert {"image_fig_0", "ood_curves_0", "reliability_0"} <= set(_charts(at))

    at.sidebar.selectbox(key="subset").select("synobjs").run()
    assert at.sidebar.selectbox(key="image").value == _index(runs[0], "bravo_synobjs/bear/0.png")
    big = _index(runs[0], BIG)
    with StoreReader(runs[0] / "predictions.h5") as reader:
        hist = reader.histograms("msp")["synobjs"]
        expected = sup.tpr95_threshold(hist["ood_pos"], hist["ood_neg"])
        image_hist = sup.image_ood_histograms(
            reader.preview(big, "conf/rba"),
            reader.preview(big, "gt_label"),
            reader.preview(big, "gt_invalid"),
        )
        maps = sup.read_maps(reader, big)
    assert at.slider(key="threshold").value == pytest.approx(expected.doubt)
    assert f"TPR {expected.tpr:.4f}, FPR {expected.fpr:.4f}" in _captions(at)

    # Another image and score, the threshold from the image's own maps.
    at.sidebar.selectbox(key="image").select(big)
    at.sidebar.selectbox(key="score").select("rba").run()
    at.radio(key="threshold_source").set_value("this image's maps (preview)").run()
    from_image = sup.tpr95_threshold(*image_hist)
    assert at.slider(key="threshold").value == pytest.approx(from_image.doubt)

    # Moving the slider changes the outcome counts to those of the new threshold.
    at.sidebar.radio(key="overlay").set_value("OOD outcome")
    at.slider(key="threshold").set_value(0.5).run()
    counts = sup.outcome_counts(
        sup.outcome_map(maps["confs"]["rba"], maps["gt_label"], maps["gt_invalid"], sup.level_of_doubt(0.5))
    )
    assert f"TP {counts['true positive']:,} · FP {counts['false positive']:,}" in _captions(at)

    # Pixel readout in preview coordinates.
    at.number_input(key="pixel_row").set_value(100)
    at.number_input(key="pixel_col").set_value(300).run()
    readout = sup.format_readout(sup.pixel_readout(maps, 100, 300)).split("<br>")
    assert "  \n".join(readout) in [m.value for m in at.markdown]

    for overlay in sup.OVERLAYS:
        at.sidebar.radio(key="overlay").set_value(overlay).run()
        assert not at.exception
    at.sidebar.slider(key="opacity").set_value(1.0)
    at.sidebar.selectbox(key="colormap").select("Inferno").run()
    assert not at.exception


def test_zoom_reads_full_resolution_and_the_photo_the_run_names(monkeypatch, runs, tmp_path):
    import shutil

    import yaml

    # A copy of run-b whose config names an images folder that is gone: the zoom works, without the photo.
    moved = tmp_path / "moved"
    shutil.copytree(runs[1], moved / "run")
    config = yaml.safe_load((moved / "run" / "config.yaml").read_text())
    config["images_root"] = str(tmp_path / "gone")
    (moved / "run" / "config.yaml").write_text(yaml.safe_dump(config))
    at = _app(monkeypatch, runs[0], moved / "run")
    at.sidebar.selectbox(key="subset").select("synobjs").run()
    at.sidebar.selectbox(key="image").select(_index(runs[0], BIG)).run()
    at.toggle(key="zoom").set_value(True).run()
    at.select_slider(key="zoom_factor").set_value(8).run()
    assert {"zoom_fig_0", "zoom_fig_1"} <= set(_charts(at))
    captions = _captions(at)
    # 600x1200 at 1/8 around the centre: a 75x150 window.
    assert captions.count("rows 262-336, columns 525-674") == 2
    # run-a's photos are where its config.yaml says; the copy's config names a folder that has no photos.
    assert captions.count("photo not found") == 1


def test_two_runs_side_by_side_and_metrics(monkeypatch, runs):
    at = _app(monkeypatch, *runs)
    assert {"image_fig_0", "image_fig_1", "ood_curves_1"} <= set(_charts(at))
    for score in ("msp", "rba"):
        at.sidebar.selectbox(key="score").select(score).run()
        for run in runs:
            results = json.loads((run / "results.json").read_text())[score]
            shown = {m.label: m.value for m in at.metric}
            assert shown[f"{run.name} ood_hmean"] == format_value(results["ood_hmean"])
        # The metric tables carry no element id (not selectable): they follow the image table, one per run.
        table = [d.value for d in at.dataframe if not d.proto.id][1]
        results = json.loads((runs[1] / "results.json").read_text())[score]
        synobjs = table.set_index("subset").loc["synobjs"]
        assert synobjs["auprc_ood"] == results["synobjs_auprc_ood"]
    # Only one run selected: one picture.
    at.sidebar.multiselect(key="runs").unselect(str(runs[1].resolve())).run()
    assert "image_fig_1" not in _charts(at)


def test_image_table_filters_sorts_and_opens_a_row(monkeypatch, runs):
    at = _app(monkeypatch, runs[0])
    table = {d.proto.id.rsplit("-", 1)[-1]: d.value for d in at.dataframe}["image_table"]
    assert len(table) == 6
    at.selectbox(key="table_subset").select("synobjs")
    at.selectbox(key="table_sort").select("fpr95_ood").run()
    table = {d.proto.id.rsplit("-", 1)[-1]: d.value for d in at.dataframe}["image_table"]
    assert len(table) == 3
    assert list(table["fpr95_ood"]) == sorted(table["fpr95_ood"], reverse=True)
    # A click on the second row (what the browser sends) opens that image.
    at.session_state["image_table"] = {"selection": {"rows": [1], "columns": []}}
    at.run()
    opened = int(table["index"].iloc[1])
    assert at.sidebar.selectbox(key="image").value == opened
    assert at.sidebar.selectbox(key="subset").value == "synobjs"
    # Re-sorting while that row is still selected does not jump to whatever row 1 is now.
    at.selectbox(key="table_sort").select("auprc_ood").run()
    assert at.sidebar.selectbox(key="image").value == opened
    # Nor does picking another image in the sidebar get overridden by the old selection.
    synobjs = [_index(runs[0], rel) for rel in ("bravo_synobjs/bear/0.png", BIG, "bravo_synobjs/cat/2.png")]
    other = next(i for i in synobjs if i != opened)
    at.sidebar.selectbox(key="image").select(other).run()
    assert at.sidebar.selectbox(key="image").value == other


def test_cli_refuses_a_folder_without_a_store(tmp_path):
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "eomt_ood.cli", "app", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {tmp_path}: not a run folder (no predictions.h5)"


def test_streamlit_command_serves_locally_and_headless():
    from eomt_ood.serve import streamlit_command

    command = streamlit_command(8600, "127.0.0.1")
    assert command[1:5] == ["-m", "streamlit", "run", SCRIPT]
    assert {"--server.address=127.0.0.1", "--server.port=8600", "--server.headless=true"} <= set(command)


def test_own_image_runs_the_runs_model(monkeypatch, runs):
    at = _app(monkeypatch, runs[0])
    at.radio(key="own_origin").set_value("bundled sample").run()
    at.button(key="own_run").click().run()
    assert not at.error, at.error
    assert {"own_pred", "own_conf"} <= set(_charts(at))
    maps = at.session_state["own_maps"]
    assert maps["pred"].shape == (256, 512) and set(maps["confs"]) == {"msp", "rba"}
    assert np.all(maps["confs"]["msp"] >= 0)


def test_a_run_without_the_chosen_score_is_skipped_with_a_warning(monkeypatch, runs, tmp_path):
    only_msp = build_run(tmp_path, seed=2, scores=("msp",), name="run-msp")
    at = _app(monkeypatch, runs[0], only_msp)
    at.sidebar.selectbox(key="score").select("rba").run()
    assert not at.exception
    assert "run-msp: no confidence score rba" in [w.value for w in at.warning]
    assert "image_fig_0" in _charts(at) and "image_fig_1" not in _charts(at)
