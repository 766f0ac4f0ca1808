"""Streamlit confidence explorer: `eomt-ood app RUN_DIR [RUN_DIR ...]` (streamlit run app/explorer.py -- RUN_DIR...).

Layout and widgets only; every number and picture comes from `support.py` beside this file. Every widget has a
key, so `streamlit.testing.v1.AppTest` can drive it (tests/test_app.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the support module beside this script

import support as sup

from eomt_ood.errors import UserError
from eomt_ood.reports.plots import SUMMARY_KEYS, format_value, ordered_subsets

st.set_page_config(page_title="eomt-ood confidence explorer", layout="wide")


@st.cache_resource
def get_run(path: str) -> sup.Run:
    return sup.open_run(Path(path))


@st.cache_data(max_entries=64)
def get_maps(path: str, index: int) -> dict:
    return sup.read_maps(get_run(path).reader, index)


@st.cache_data(max_entries=16)
def get_region(path: str, index: int, rows: tuple[int, int], cols: tuple[int, int]) -> dict:
    return sup.read_region(get_run(path), index, (slice(*rows), slice(*cols)))


@st.cache_data(max_entries=32)
def get_histograms(path: str, score: str) -> dict:
    return get_run(path).reader.histograms(score)


@st.cache_data(max_entries=64)
def get_hover(path: str, index: int) -> tuple:
    return sup.hover_grid(get_maps(path, index))


@st.cache_resource
def get_model(model: str | None, checkpoint: str | None):
    return sup.build_model(model, Path(checkpoint) if checkpoint else None)


@st.cache_data
def get_samples() -> dict:
    from eomt_ood.data.demo import demo_images

    return {img.image_rel: img.rgb for img in demo_images(seed=0, per_subset=1)}


try:
    roots = sup.resolve_run_dirs(sys.argv[1:])
except UserError as exc:
    st.error(f"error: {exc}")
    st.stop()
paths = [str(r) for r in roots]
state = st.session_state
names = [Path(p).name for p in paths]
labels = {p: (n if names.count(n) == 1 else p) for p, n in zip(paths, names, strict=True)}  # unique labels

# ------------------------------------------------------------------------------------------------ sidebar
st.sidebar.title("Confidence explorer")
chosen = st.sidebar.multiselect(
    "Runs (side by side, first = reference)",
    paths,
    default=paths[: min(4, len(paths))],
    format_func=labels.get,
    max_selections=4,
    key="runs",
)
if not chosen:
    st.info("Pick at least one run in the sidebar.")
    st.stop()
ref = get_run(chosen[0])
reader = ref.reader
score = st.sidebar.selectbox("Confidence score", reader.confidences, key="score")
subsets = ordered_subsets(set(reader.subsets))

# A click in the image table (state of the previous rerun) opens that image: applied once per new selection.
table_subset = state.get("table_subset", "all")
table_sort = state.get("table_sort", sup.TABLE_METRICS[0])
table = sup.worst_first(
    sup.image_rows(reader, score), table_sort, None if table_subset == "all" else table_subset
)
selection = state.get("image_table")
picked_rows = tuple(selection["selection"]["rows"]) if selection else ()
view = (table_subset, table_sort)
# A selection made under another filter or order points at a different row now: record it, do not apply it.
if (
    picked_rows
    and state.get("_table_applied") != (picked_rows, view)
    and state.get("_table_view", view) == view
):
    row = table[picked_rows[0]]
    state["subset"], state["image"] = row["subset"], row["index"]
state["_table_applied"], state["_table_view"] = (picked_rows, view), view

subset = st.sidebar.selectbox("Subset", subsets, key="subset")
in_subset = [i for i, s in enumerate(reader.subsets) if s == subset]
if state.get("image") not in in_subset:
    state["image"] = in_subset[0]
index = st.sidebar.selectbox("Image", in_subset, format_func=lambda i: reader.relpaths[i], key="image")
relpath = reader.relpaths[index]
overlay = st.sidebar.radio("Overlay", sup.OVERLAYS, index=1, key="overlay")
opacity = st.sidebar.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="opacity")
colormap = st.sidebar.selectbox("Colour map", sup.COLORMAPS, key="colormap")
st.sidebar.image(
    np.repeat(sup.colormap_lut(colormap)[None], 12, axis=0), caption="confidence 0 → 1", width="stretch"
)

tab_image, tab_table, tab_curves, tab_metrics, tab_own = st.tabs(
    ["Image", "Images", "Curves", "Metrics", "Your image"]
)

# ------------------------------------------------------------------------------------------------ image
with tab_image:
    st.subheader(relpath)
    ref_maps = get_maps(chosen[0], index)
    stored = get_histograms(chosen[0], score).get(subset, {})
    threshold, source = None, None
    if ref_maps["gt_label"] is not None:
        # Fixed options, so the choice survives a change of subset; stored histograms win when they can.
        choice = st.radio(
            "Start the threshold at TPR 95 % of",
            ["the stored subset histograms", "this image's maps (preview)"],
            horizontal=True,
            key="threshold_source",
        )
        if choice.startswith("the stored"):
            threshold = sup.tpr95_threshold(stored.get("ood_pos", [0]), stored.get("ood_neg", [0]))
            source = f"stored {subset} histograms"
        if threshold is None:
            pos, neg = sup.image_ood_histograms(
                ref_maps["confs"][score], ref_maps["gt_label"], ref_maps["gt_invalid"]
            )
            threshold = sup.tpr95_threshold(pos, neg)
            source = "this image's preview maps"
    context = (chosen[0], score, index, source)
    if threshold is not None:
        if state.get("_threshold_context") != context:
            state["_threshold_context"] = context
            state["threshold"] = threshold.doubt
        doubt = st.slider(
            "OOD threshold on doubt = 1 - confidence (pixels at or above are flagged)",
            0.0,
            1.0,
            step=1.0 / 65536,
            format="%.4f",
            key="threshold",
        )
        st.caption(
            f"Starts at doubt {threshold.doubt:.4f}, where TPR reaches 95 % on the {source} "
            f"(TPR {threshold.tpr:.4f}, FPR {threshold.fpr:.4f}). Outcome colours: true positive green, "
            "false positive red, false negative yellow."
        )
        level = sup.level_of_doubt(doubt)
    else:
        level = None
        st.caption("No OOD ground truth with both valid and invalid pixels here: no threshold.")

    columns = st.columns(len(chosen))
    for k, (column, path) in enumerate(zip(columns, chosen, strict=True)):
        run = get_run(path)
        with column:
            if relpath not in run.reader.relpaths:
                st.warning(f"{run.name}: no image {relpath}")
                continue
            if score not in run.reader.confidences:
                st.warning(f"{run.name}: no confidence score {score}")
                continue
            i = run.reader.relpaths.index(relpath)
            maps = get_maps(path, i)
            picture = sup.compose(maps, overlay, opacity, score, colormap, level)
            st.plotly_chart(sup.image_figure(picture, get_hover(path, i), run.name), key=f"image_fig_{k}")
            image_row = next(r for r in sup.image_rows(run.reader, score) if r["index"] == i)
            st.caption(" · ".join(f"{key} {format_value(image_row[key])}" for key in sup.TABLE_METRICS))
            if level is not None and maps["gt_label"] is not None and score in maps["confs"]:
                counts = sup.outcome_counts(
                    sup.outcome_map(maps["confs"][score], maps["gt_label"], maps["gt_invalid"], level)
                )
                st.caption(
                    f"preview pixels: TP {counts['true positive']:,} · FP {counts['false positive']:,} · "
                    f"FN {counts['false negative']:,} · TN {counts['true negative']:,}"
                )

    with st.expander("Pixel readout (preview coordinates)"):
        height, width = ref_maps["pred"].shape
        row_col = st.columns(2)
        prow = row_col[0].number_input("row", 0, height - 1, height // 2, key="pixel_row")
        pcol = row_col[1].number_input("column", 0, width - 1, width // 2, key="pixel_col")
        readout = sup.pixel_readout(ref_maps, int(prow), int(pcol))
        st.markdown("  \n".join(sup.format_readout(readout).split("<br>")))

    zoom = st.toggle("Zoom (full resolution)", key="zoom")
    if zoom:
        zc = st.columns(3)
        factor = zc[0].select_slider("zoom", [2, 4, 8, 16], value=4, key="zoom_factor")
        centre_row = zc[1].slider("centre row", 0.0, 1.0, 0.5, key="zoom_row")
        centre_col = zc[2].slider("centre column", 0.0, 1.0, 0.5, key="zoom_col")
        zoom_columns = st.columns(len(chosen))
        for k, (column, path) in enumerate(zip(zoom_columns, chosen, strict=True)):
            run = get_run(path)
            if relpath not in run.reader.relpaths or score not in run.reader.confidences:
                continue
            i = run.reader.relpaths.index(relpath)
            h, w = int(run.reader.heights[i]), int(run.reader.widths[i])
            rows, cols = sup.zoom_region(h, w, (centre_row, centre_col), factor)
            region = get_region(path, i, (rows.start, rows.stop), (cols.start, cols.stop))
            base = region["rgb"]
            picture = sup.compose(region, overlay, opacity, score, colormap, level, base=base)
            with column:
                st.plotly_chart(sup.image_figure(picture, sup.hover_grid(region)), key=f"zoom_fig_{k}")
                st.caption(
                    f"rows {rows.start}-{rows.stop - 1}, columns {cols.start}-{cols.stop - 1}"
                    + ("" if base is not None else " · photo not found where the run recorded it")
                )

# ------------------------------------------------------------------------------------------------ table
with tab_table:
    tc = st.columns(2)
    tc[0].selectbox("Subset", ["all", *subsets], key="table_subset")
    tc[1].selectbox("Sort by (worst first)", sup.TABLE_METRICS, key="table_sort")
    table = sup.worst_first(
        sup.image_rows(reader, score),
        state["table_sort"],
        None if state["table_subset"] == "all" else state["table_subset"],
    )
    st.caption(f"{len(table)} images of {ref.name}; click a row to open it.")
    st.dataframe(
        pd.DataFrame(table, columns=["index", "subset", "image", *sup.TABLE_METRICS]),
        on_select="rerun",
        selection_mode="single-row",
        hide_index=True,
        key="image_table",
    )

# ------------------------------------------------------------------------------------------------ curves
with tab_curves:
    st.caption("From the stored per-subset histograms (no per-pixel recomputation).")
    for k, path in enumerate(chosen):
        ood_fig, rel_fig = sup.curve_figures(get_histograms(path, score))
        st.markdown(f"**{Path(path).name}** · {score}")
        if ood_fig is None and rel_fig is None:
            st.info("No histograms with ground truth in this run.")
        if ood_fig is not None:
            st.plotly_chart(ood_fig, key=f"ood_curves_{k}")
        if rel_fig is not None:
            st.plotly_chart(rel_fig, key=f"reliability_{k}")

# ------------------------------------------------------------------------------------------------ metrics
with tab_metrics:
    for k, path in enumerate(chosen):
        run = get_run(path)
        flat = sup.score_results(run.results, score)
        st.markdown(f"**{run.name}** · {score}")
        if not flat:
            st.info("results.json has no metrics for this score.")
            continue
        summary = [key for key in SUMMARY_KEYS if key in flat]
        for column, key in zip(st.columns(max(1, len(summary))), summary, strict=False):
            column.metric(f"{run.name} {key}", format_value(flat[key]))
        rows = sup.subset_metric_rows(flat, ordered_subsets(set(run.reader.subsets)))
        st.dataframe(pd.DataFrame(rows), hide_index=True, key=f"metrics_table_{k}")

# ------------------------------------------------------------------------------------------------ own image
with tab_own:
    st.caption(f"Runs the model of {ref.name} (config.yaml: model, checkpoint) on an image of your own.")
    origin = st.radio("Image", ["bundled sample", "upload"], horizontal=True, key="own_origin")
    image = None
    if origin == "upload":
        upload = st.file_uploader("PNG or JPEG", type=["png", "jpg", "jpeg"], key="own_upload")
        if upload is not None:
            try:
                image = sup.decode_upload(upload.getvalue(), upload.name)
            except UserError as exc:
                st.error(f"error: {exc}")
    else:
        samples = get_samples()
        name = st.selectbox("Sample", sorted(samples), key="own_sample")
        image = samples[name]
    if image is not None and st.button("Run the model", key="own_run"):
        try:
            model_name, checkpoint = sup.model_source(ref.config, roots)
            with st.spinner("running the model ..."):
                model = get_model(model_name, str(checkpoint) if checkpoint else None)
                state["own_maps"] = sup.predict_own_image(model, image, reader.confidences)
        except UserError as exc:
            st.error(f"error: {exc}")
    own = state.get("own_maps")
    if own is not None:
        own_columns = st.columns(2)
        own_columns[0].plotly_chart(
            sup.image_figure(
                sup.compose(own, "prediction", opacity, score, colormap), sup.hover_grid(own), "prediction"
            ),
            key="own_pred",
        )
        own_columns[1].plotly_chart(
            sup.image_figure(
                sup.compose(own, "confidence", opacity, score, colormap), sup.hover_grid(own), score
            ),
            key="own_conf",
        )
