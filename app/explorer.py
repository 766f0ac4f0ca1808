"""Streamlit confidence explorer: `eomt-ood app RUN_DIR [RUN_DIR ...] [--allow DIR ...]`
(streamlit run app/explorer.py -- RUN_DIR ... --allow DIR).

Layout and widgets only; every number and picture comes from the modules beside this script: `support.py` (runs,
maps, overlays, readouts, the TPR-95 threshold), `dataset_view.py` (filters, order, pages, thumbnails),
`linked_plots.py` (threshold scales, clickable curves and confusion matrix), `view_state.py` (the view in the
URL) and `thumbgrid.py` (the clickable thumbnail grid). Every widget has a key, so
`streamlit.testing.v1.AppTest` can drive it (tests/test_app.py).

Two parts, for speed at BRAVO scale (benchmarks/bench_app.py):

- the *view*: which runs and scores, which images (subset, filters) in which order. Set in the upper sidebar;
  a change reruns the whole script.
- the *display* (`display`, a Streamlit fragment): the tabs, the image, the overlay and the threshold (in the
  lower sidebar). A change reruns only the fragment, and only the open tab runs. It is drawn before the upper
  sidebar, so the thumbnails reach the browser first.

A run's per-image tables are read once per process (`get_run`); a page reads only the previews it shows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the support modules beside this script

import dataset_view as dv
import linked_plots as lp
import support as sup
import view_state as vs
from mapview import mapview
from thumbgrid import thumbgrid

from eomt_ood.data.labels import TRAIN_ID_NAMES
from eomt_ood.errors import UserError
from eomt_ood.reports.plots import (
    SUMMARY_KEYS,
    format_interval,
    format_value,
    ordered_subsets,
    reliability_diagrams,
)

st.set_page_config(page_title="eomt-ood confidence explorer", layout="wide")

VIEWS = ("Dataset", "Image", "Curves", "Confusion", "Metrics", "Your image")
GRID_COLUMNS = 6
state = st.session_state


# ------------------------------------------------------------------------------------------------ cached reads


@st.cache_resource
def get_run(path: str) -> sup.Run:
    return sup.open_run(Path(path))


@st.cache_data(max_entries=32, show_spinner=False)
def get_maps(path: str, index: int) -> dict:
    return sup.read_maps(get_run(path).reader, index)


@st.cache_data(max_entries=4096, show_spinner=False)
def get_thumbnail(
    path: str, index: int, overlay: str, score: str, colormap: str, opacity: float, level: int | None
) -> str:
    maps = dv.thumbnail_maps(get_run(path).reader, index, overlay, score)
    return dv.thumbnail(sup.compose(maps, overlay, opacity, score, colormap, level))


@st.cache_data(max_entries=16, show_spinner=False)
def get_region(path: str, index: int, rows: tuple[int, int], cols: tuple[int, int]) -> dict:
    return sup.read_region(get_run(path), index, (slice(*rows), slice(*cols)))


@st.cache_data(max_entries=32, show_spinner=False)
def get_readout(path: str, index: int) -> dict:
    return sup.readout_grid(get_maps(path, index))


@st.cache_resource
def get_model(model: str | None, checkpoint: str | None):
    return sup.build_model(model, Path(checkpoint) if checkpoint else None)


@st.cache_data
def get_samples() -> dict:
    from eomt_ood.data.demo import demo_images

    return {img.image_rel: img.rgb for img in demo_images(seed=0, per_subset=1)}


def subset_counts(path: str, score: str, subset: str | None) -> tuple[dict, np.ndarray | None]:
    """(stored histograms, scored-pixel counts by level) of a run's subset (`support.scored_counts`)."""
    run = get_run(path)
    hist = run.histograms(score).get(subset, {})
    return hist, sup.scored_counts(hist, run.level_histograms(score).get(subset))


# ------------------------------------------------------------------------------------------------ callbacks


def put(key: str, value, same=None) -> None:
    """Give a widget the value the app computed for it, only where it differs (`same(old, new)`, default ==).
    Writing a widget's state sends its value to the browser, where it replaces whatever the user did meanwhile:
    rewritten on every rerun, a slider moved by several key presses in a row would jump back and lose them."""
    if key not in state or not (same or (lambda a, b: a == b))(state[key], value):
        state[key] = value


def open_image(index: int) -> None:
    state["image"] = int(index)
    state["view"] = "Image"


def open_from(grid_key: str) -> None:
    clicked = (state.get(grid_key) or {}).get("open")
    if clicked is not None:
        open_image(clicked)


def set_threshold(doubt: float, note: str) -> None:
    state["threshold"] = float(np.clip(doubt, 0.0, 1.0))
    state["_threshold_note"] = note


def threshold_moved(key: str, shares: np.ndarray | None) -> None:
    if key == "threshold_log":
        set_threshold(lp.doubt_of_log(state[key]), "the log slider")
    elif shares is not None:
        set_threshold(lp.doubt_of_level(lp.level_of_quantile(shares, state[key])), "the quantile slider")


def curve_clicked(key: str, title: str) -> None:
    level = lp.level_from_selection(state.get(key))
    if level is not None:
        set_threshold(lp.doubt_of_level(level), f"a click on the curves of {title}")


def cell_clicked() -> None:
    cell = lp.cell_from_selection(state.get("cm_fig"))
    if cell is not None:
        state["_cm_cell"] = cell


def keep_cell() -> None:
    state["_cm_cell"] = (state["cm_true"], state["cm_pred"])


def step_image(options: list[int], step: int) -> None:
    position = options.index(state["image"]) if state.get("image") in options else 0
    state["image"] = options[(position + step) % len(options)]


def find_image(options: list[int], relpaths: list[str]) -> None:
    """Open the first image of the view whose path contains the text typed (a note when none does)."""
    text = state.get("image_find", "").strip()
    found = next((i for i in options if text and text in relpaths[i]), None)
    if found is not None:
        open_image(found)
        state["_find_note"] = None
    elif text:
        state["_find_note"] = f"no image of this view has {text!r} in its path"


def picture_clicked(key: str, shape: tuple[int, int]) -> None:
    """A click on a picture: the pixel readout and the zoom's centre go there."""
    clicked = (state.get(key) or {}).get("click")
    if clicked:
        row, col = int(clicked["row"]), int(clicked["col"])
        state["pixel_row"], state["pixel_col"] = row, col
        state["zoom_row"], state["zoom_col"] = (row + 0.5) / shape[0], (col + 0.5) / shape[1]


def keep_range(key: str) -> None:
    state["_" + key] = tuple(state[key])


# ------------------------------------------------------------------------------------------------ runs and URL

try:
    run_args, allowed = sup.parse_args(sys.argv[1:])
    roots = sup.resolve_run_dirs(run_args)
except UserError as exc:
    st.error(f"error: {exc}")
    st.stop()
paths = [str(r) for r in roots]
labels = sup.run_labels(paths)

if "_url_read" not in state:
    state["_url_read"] = True
    choices = [
        vs.RunChoice(
            labels[p], p, get_run(p).reader.confidences, get_run(p).reader.subsets, get_run(p).reader.relpaths
        )
        for p in paths
    ]
    params = {key: st.query_params.get_all(key) for key in st.query_params}
    values, state["_url_notes"] = vs.read_url(params, choices, VIEWS, sup.OVERLAYS)
    state.update({k: v for k, v in values.items() if k != "threshold"})
    if "threshold" in values:
        state["threshold"], state["_threshold_pinned"] = values["threshold"], True
        state["_threshold_note"] = "the link"

# ------------------------------------------------------------------------------------------------ the view
# Resolved from session state before any widget is drawn (each widget's value is in the state by then), so the
# display can be sent to the browser before the sidebar that sets the view.

state.setdefault("runs", paths[: min(4, len(paths))])
state["runs"] = [p for p in state["runs"] if p in paths]
chosen = list(state["runs"])
if not chosen:
    st.sidebar.multiselect(
        "Runs (side by side, first = reference)", paths, format_func=labels.get, key="runs"
    )
    st.info("Pick at least one run in the sidebar.")
    st.stop()
ref_path = chosen[0]
ref = get_run(ref_path)
reader = ref.reader
if state.get("score") not in reader.confidences:
    state["score"] = reader.confidences[0]
score = state["score"]
seconds = ["none", *(s for s in reader.confidences if s != score)]
if state.get("score2") not in seconds:
    state["score2"] = "none"
panels = [(ref_path, score)] + ([(ref_path, state["score2"])] if state["score2"] != "none" else [])
for k, path in enumerate(chosen[1:], 1):
    own = get_run(path).reader.confidences
    if state.get(f"run_score_{k}") not in own:
        state[f"run_score_{k}"] = score if score in own else own[0]
    panels.append((path, state[f"run_score_{k}"]))
panels = panels[:4]

subsets = ordered_subsets(set(reader.subsets))
if state.get("subset") not in ["all", *subsets]:
    state["subset"] = "all"
subset = state["subset"]
stats = ref.stats(score)
base = dv.in_subset(ref.subsets, subset)
sort_options = [s for s in dv.SORT_STATS if s in stats] or ["mean_confidence"]
if state.get("sort") not in sort_options:
    state["sort"] = sort_options[0]
sort = state["sort"]
reverse = bool(state.setdefault("sort_reverse", False))

# Filters: a range per statistic, kept per subset and score in a plain key (a slider's own state would be
# dropped on a rerun that does not draw it).
filters: list[tuple[str, str, tuple[float, float]]] = []  # (stat, key, span)
ranges: dict[str, tuple[float, float]] = {}
for stat in dv.FILTER_STATS:
    values = stats.get(stat)
    span = dv.value_span(values[base]) if values is not None else None
    if span is None or span[0] == span[1]:
        continue
    key = f"range_{stat}_{subset}_{score}"
    if key not in state:  # dropped while the filters were closed: back from the plain key
        state[key] = state.get("_" + key, span)
    filters.append((stat, key, span))
    ranges[stat] = dv.fit_range(state[key], span)
ordered = dv.order(stats, dv.apply_ranges(stats, base, ranges), sort, reverse)
# Another view (runs, score, subset, filters, order) starts on its first page.
defined_by = (tuple(chosen), score, subset, sort, reverse, tuple(sorted(ranges.items())))
if state.get("_page_view") != defined_by:
    state["_page_view"], state["_page"] = defined_by, 1


@dataclass(frozen=True)
class View:
    """What the upper sidebar chose; the display's fragment reruns with the same one until it changes."""

    chosen: tuple[str, ...]
    panels: tuple[tuple[str, str], ...]
    score: str
    subset: str
    ordered: tuple[int, ...]
    total: int  # images in the subset before the filters
    sort: str
    reverse: bool


view = View(
    tuple(chosen), tuple(panels), score, subset, tuple(int(i) for i in ordered), len(base), sort, reverse
)

side = st.sidebar
side.title("Confidence explorer")
for note in state.pop("_url_notes", []):
    side.warning(f"Link: {note}; left out.")
view_box = side.container()  # runs, scores, subset, order, filters: filled after the display
display_box = side.container()  # image, overlay, threshold: filled by the display fragment


# ------------------------------------------------------------------------------------------------ the display


@st.fragment
def display(view: View) -> None:
    ref_path, score, subset = view.panels[0][0], view.score, view.subset
    ref = get_run(ref_path)
    reader, stats = ref.reader, ref.stats(score)
    order_list = list(view.ordered)

    # Values first (each widget's value is in the state already), widgets after the tabs: the picture or the
    # thumbnails reach the browser before the sidebar controls.
    if order_list and state.get("image") not in order_list:
        state["image"] = order_list[0]  # the view changed: its first image
    image = state["image"] if order_list else None
    if state.get("overlay") not in sup.OVERLAYS:
        state["overlay"] = "OOD outcome"
    if state.get("colormap") not in sup.COLORMAPS:
        state["colormap"] = sup.COLORMAPS[0]
    overlay, colormap = state["overlay"], state["colormap"]
    opacity = float(state.setdefault("opacity", 0.6))
    threshold_subset = reader.subsets[image] if image is not None else (None if subset == "all" else subset)
    ref_hist, ref_counts = subset_counts(ref_path, score, threshold_subset)
    ref_shares = lp.flagged_shares(ref_counts) if ref_counts is not None else None
    context = (ref_path, score, threshold_subset)
    if state.get("_threshold_context") != context:
        state["_threshold_context"] = context
        if not (state.pop("_threshold_pinned", False) and "threshold" in state):
            start, why = lp.start_threshold(ref_hist, ref_counts)
            set_threshold(start, f"{threshold_subset}: {why}")
    if state.get("threshold_scale") not in ("log", "quantile"):
        state["threshold_scale"] = "log"
    scale = state["threshold_scale"]
    doubt = float(state["threshold"])
    level = lp.level_of_doubt(doubt)

    def panel_level(path: str, panel_score: str, panel_subset: str | None) -> int:
        """The doubt level a column flags at: the same doubt on the log scale; on the quantile scale the same
        share of its own subset's pixels (so columns of different scores compare at equal quantiles)."""
        if scale != "quantile" or (path, panel_score) == (ref_path, score) or ref_shares is None:
            return level
        counts = subset_counts(path, panel_score, panel_subset)[1]
        own = lp.flagged_shares(counts) if counts is not None else None
        return level if own is None else lp.level_of_quantile(own, lp.quantile_of_level(ref_shares, level))

    # -------------------------------------------------------------------------------- tabs
    state.setdefault("view", VIEWS[0])
    tabs = dict(zip(VIEWS, st.tabs(VIEWS, key="view", on_change="rerun"), strict=True))
    names = [f"{labels[path]} · {s}" for path, s in view.panels]

    if tabs["Dataset"].open:
        with tabs["Dataset"]:
            dataset_tab(view, reader, stats, overlay, colormap, opacity, level)
    if tabs["Image"].open:
        with tabs["Image"]:
            image_tab(view, image, overlay, colormap, opacity, names, panel_level)
    if tabs["Curves"].open:
        with tabs["Curves"]:
            st.caption(
                "From the stored per-subset histograms. Click a point of a PR or ROC curve to put the threshold "
                "there; the star is the current threshold."
            )
            for k, ((path, panel_score), title) in enumerate(zip(view.panels, names, strict=True)):
                st.markdown(f"**{title}**")
                histograms = get_run(path).histograms(panel_score)
                curve_fig = lp.threshold_curves(histograms, panel_level(path, panel_score, threshold_subset))
                rel_fig = reliability_diagrams(histograms)
                if curve_fig is None and rel_fig is None:
                    st.info("No histograms with ground truth in this run.")
                if curve_fig is not None:
                    key = f"curves_{k}"
                    st.plotly_chart(
                        curve_fig,
                        key=key,
                        on_select=lambda key=key, title=title: curve_clicked(key, title),
                        selection_mode="points",
                    )
                if rel_fig is not None:
                    st.plotly_chart(rel_fig, key=f"reliability_{k}")
    if tabs["Confusion"].open:
        with tabs["Confusion"]:
            confusion_tab(view, overlay, colormap, opacity, level)
    if tabs["Metrics"].open:
        with tabs["Metrics"]:
            for k, ((path, panel_score), title) in enumerate(zip(view.panels, names, strict=True)):
                run = get_run(path)
                flat = sup.score_results(run.results, panel_score)
                st.markdown(f"**{title}**")
                if not flat:
                    st.info("results.json has no metrics for this score.")
                    continue
                intervals = sup.score_intervals(run.results, panel_score)
                summary = [key for key in SUMMARY_KEYS if key in flat]
                for column, key in zip(st.columns(max(1, len(summary))), summary, strict=False):
                    interval = intervals.get(key)
                    column.metric(
                        f"{title} {key}",
                        format_value(flat[key]),
                        help=None if interval is None else format_interval(flat[key], interval, html=False),
                    )
                if intervals:
                    level = (run.results.get("meta") or {}).get("bootstrap", {}).get("level", 0.95)
                    st.caption(
                        f"[low, high]: {level:.0%} bootstrap interval, images resampled within each subset"
                    )
                rows = sup.metric_table_rows(flat, ordered_subsets(set(run.reader.subsets)), intervals)
                st.dataframe(rows, hide_index=True, key=f"metrics_table_{k}")
    if tabs["Your image"].open:
        with tabs["Your image"]:
            own_image_tab(ref, score, opacity, colormap)

    display_controls(
        reader, order_list, image, threshold_subset, ref_hist, ref_counts, ref_shares, score, ref_path
    )

    # The view in the URL, so that a link shows a colleague the same.
    st.query_params.from_dict(
        vs.url_of(
            [labels[p] for p in view.chosen],
            score,
            subset,
            reader.relpaths[image] if image is not None else None,
            overlay,
            doubt,
            state["view"],
        )
    )


def display_controls(
    reader, order_list, image, threshold_subset, ref_hist, ref_counts, ref_shares, score: str, ref_path: str
) -> None:
    """The display's sidebar controls (image, overlay, threshold), drawn into the lower sidebar box."""
    box = display_box
    box.divider()
    if order_list:
        # The image by its place in the view, or found by a part of its path: a list of every image would cost
        # each rerun hundreds of kilobytes at BRAVO scale.
        put("image_position", order_list.index(image) + 1)
        box.number_input(
            f"Image (place in the view, of {len(order_list):,})",
            1,
            len(order_list),
            key="image_position",
            on_change=lambda: state.update(image=order_list[state["image_position"] - 1]),
        )
        box.caption(reader.relpaths[image])
        box.text_input(
            "Find an image by its path",
            key="image_find",
            placeholder="a part of the path, e.g. bear/1",
            on_change=find_image,
            args=(order_list, reader.relpaths),
        )
        if state.get("_find_note"):
            box.caption(state["_find_note"])
    overlay = box.radio("Overlay", sup.OVERLAYS, key="overlay")
    legend = sup.legend_html(overlay, state["colormap"])
    if legend:
        box.html(legend)
    shown = box.columns(2)
    shown[0].slider("Opacity", 0.0, 1.0, step=0.05, key="opacity")
    shown[1].selectbox("Colour map", sup.COLORMAPS, key="colormap")

    box.markdown("**OOD threshold** on doubt = 1 - confidence (pixels at or above it are flagged)")
    scale = box.radio("Threshold scale", ["log", "quantile"], horizontal=True, key="threshold_scale")
    doubt = float(state["threshold"])
    level = lp.level_of_doubt(doubt)
    if scale == "quantile" and ref_shares is not None:
        put(
            "threshold_quantile",
            lp.quantile_of_level(ref_shares, level),
            lambda old, new: lp.level_of_quantile(ref_shares, old) == level,
        )
        box.slider(
            f"share of the {threshold_subset} pixels flagged",
            0.0,
            1.0,
            step=0.001,
            format="%.3f",
            key="threshold_quantile",
            on_change=threshold_moved,
            args=("threshold_quantile", ref_shares),
        )
    else:
        put("threshold_log", lp.log_position(doubt), lambda old, new: abs(old - new) < 1e-9)
        box.slider(
            "log10 doubt",
            lp.LOG_MIN,
            0.0,
            step=0.01,
            format="%.2f",
            key="threshold_log",
            on_change=threshold_moved,
            args=("threshold_log", None),
        )
    box.number_input(
        "doubt threshold (exact)",
        0.0,
        1.0,
        step=0.0001,
        format="%.6f",
        key="threshold",
        on_change=lambda: state.update(_threshold_note="the value typed"),
    )
    box.caption(
        f"doubt ≥ {doubt:.6f} (level {level}) on {threshold_subset}: "
        f"{lp.describe_level(ref_hist, ref_counts, level)}. Set from {state.get('_threshold_note', '–')}."
    )
    buttons = box.columns(2)
    buttons[0].button(
        "TPR 95 % (subset)",
        key="threshold_reset",
        on_click=lambda: set_threshold(
            lp.start_threshold(ref_hist, ref_counts)[0], f"{threshold_subset}: the subset's start"
        ),
    )

    def image_tpr95() -> None:
        maps = get_maps(ref_path, image)
        found = sup.tpr95_threshold(
            *sup.image_ood_histograms(maps["confs"][score], maps["gt_label"], maps["gt_invalid"])
        )
        if found is not None:
            set_threshold(found.doubt, "TPR 95 % of this image's preview maps")

    buttons[1].button(
        "TPR 95 % (image)",
        key="threshold_image",
        on_click=image_tpr95,
        disabled=image is None or not reader.has_ground_truth(image),
    )


def dataset_tab(view: View, reader, stats, overlay: str, colormap: str, opacity: float, level: int) -> None:
    ref_path, score = view.panels[0]
    total = len(view.ordered)
    pages = dv.page_count(total, dv.PAGE_SIZE)
    # The page lives in a plain key: a widget's own state is dropped while its tab is closed.
    state["_page"] = min(max(1, int(state.get("_page", 1))), pages)
    put("page", state["_page"])
    head = st.columns([6, 1, 1, 1], vertical_alignment="bottom")
    head[0].markdown(
        f"**{total:,}** of {view.total:,} images in **{view.subset}** · sorted by "
        f"{dv.order_caption(view.sort, view.reverse)} · {labels[ref_path]} · {score} · click a picture to open it"
    )
    head[1].button("◀ page", key="page_prev", on_click=lambda: state.update(_page=max(1, state["_page"] - 1)))
    head[2].number_input(
        "page",
        1,
        pages,
        key="page",
        label_visibility="collapsed",
        on_change=lambda: state.update(_page=state["page"]),
    )
    head[3].button(
        "page ▶", key="page_next", on_click=lambda: state.update(_page=min(pages, state["_page"] + 1))
    )
    shown = dv.page_items(np.asarray(view.ordered, dtype=np.int64), state["_page"], dv.PAGE_SIZE)
    st.caption(f"page {state['_page']} of {pages}")
    if not len(shown):
        st.info("No image matches the filters.")
        return
    sources = [get_thumbnail(ref_path, int(i), overlay, score, colormap, opacity, level) for i in shown]
    items = dv.grid_items(shown, reader.relpaths, sources, stats, view.sort)
    thumbgrid(
        data={"items": items, "columns": GRID_COLUMNS}, key="grid", on_open_change=lambda: open_from("grid")
    )


def image_tab(
    view: View, image, overlay: str, colormap: str, opacity: float, names: list[str], panel_level
) -> None:
    ref_path, _ = view.panels[0]
    reader = get_run(ref_path).reader
    if image is None:
        st.info("No image matches the filters.")
        return
    options = list(view.ordered)
    relpath = reader.relpaths[image]
    head = st.columns([6, 1, 1], vertical_alignment="bottom")
    head[0].subheader(relpath)
    head[1].button("◀ previous", key="image_prev", on_click=step_image, args=(options, -1))
    head[2].button("next ▶", key="image_next", on_click=step_image, args=(options, 1))
    st.caption(f"{reader.subsets[image]} · image {options.index(image) + 1} of {len(options)} in this view")
    for k, (column, (path, panel_score), title) in enumerate(
        zip(st.columns(len(view.panels)), view.panels, names, strict=True)
    ):
        run = get_run(path)
        with column:
            i = run.index_of(relpath)
            if i is None:
                st.warning(f"{labels[path]}: no image {relpath}")
                continue
            maps = get_maps(path, i)
            panel_subset = run.reader.subsets[i]
            lvl = panel_level(path, panel_score, panel_subset)
            picture = sup.compose(maps, overlay, opacity, panel_score, colormap, lvl)
            mapview(
                data=sup.map_view_data(picture, get_readout(path, i), title),
                key=f"image_fig_{k}",
                on_click_change=lambda key=f"image_fig_{k}", shape=maps["pred"].shape: picture_clicked(
                    key, shape
                ),
            )
            panel_stats = run.stats(panel_score)
            st.caption(
                " · ".join(
                    f"{key} {format_value(float(panel_stats[key][i]) if key in panel_stats else None)}"
                    for key in sup.TABLE_METRICS
                )
            )
            hist, counts = subset_counts(path, panel_score, panel_subset)
            st.caption(
                f"doubt ≥ {lp.doubt_of_level(lvl):.6f}: {lp.describe_level(hist, counts, lvl)} on {panel_subset}"
            )
            if maps["gt_label"] is not None:
                codes = sup.outcome_map(maps["confs"][panel_score], maps["gt_label"], maps["gt_invalid"], lvl)
                n = sup.outcome_counts(codes)
                st.caption(
                    f"preview pixels: TP {n['true positive']:,} · FP {n['false positive']:,} · "
                    f"FN {n['false negative']:,} · TN {n['true negative']:,}"
                )

    ref_maps = get_maps(ref_path, image)
    with st.expander("Pixel readout (preview coordinates)"):
        height, width = ref_maps["pred"].shape
        put("pixel_row", min(int(state.get("pixel_row", height // 2)), height - 1))
        put("pixel_col", min(int(state.get("pixel_col", width // 2)), width - 1))
        row_col = st.columns(2)
        prow = row_col[0].number_input("row (or click the picture)", 0, height - 1, key="pixel_row")
        pcol = row_col[1].number_input("column", 0, width - 1, key="pixel_col")
        readout = sup.pixel_readout(ref_maps, int(prow), int(pcol))
        st.markdown("  \n".join(sup.format_readout(readout).split("\n")))

    if st.toggle("Zoom (full resolution, on the photo)", key="zoom"):
        zc = st.columns(3)
        for key, default in (("zoom_factor", 4), ("zoom_row", 0.5), ("zoom_col", 0.5)):
            state.setdefault(key, default)
        factor = zc[0].select_slider("zoom", [2, 4, 8, 16], key="zoom_factor")
        centre_row = zc[1].slider("centre row (or click the picture)", 0.0, 1.0, key="zoom_row")
        centre_col = zc[2].slider("centre column", 0.0, 1.0, key="zoom_col")
        for k, (column, (path, panel_score)) in enumerate(
            zip(st.columns(len(view.panels)), view.panels, strict=True)
        ):
            run = get_run(path)
            i = run.index_of(relpath)
            if i is None:
                continue
            h, w = int(run.reader.heights[i]), int(run.reader.widths[i])
            rows, cols = sup.zoom_region(h, w, (centre_row, centre_col), factor)
            region = get_region(path, i, (rows.start, rows.stop), (cols.start, cols.stop))
            lvl = panel_level(path, panel_score, run.reader.subsets[i])
            photo = region["rgb"]
            picture = sup.compose(region, overlay, opacity, panel_score, colormap, lvl, base=photo)
            with column:
                mapview(data=sup.map_view_data(picture, sup.readout_grid(region)), key=f"zoom_fig_{k}")
                where = "on the photo from the run's images folder" if photo is not None else None
                st.caption(
                    f"rows {rows.start}-{rows.stop - 1}, columns {cols.start}-{cols.stop - 1} · "
                    + (where or "photo not found where the run recorded it")
                )


def confusion_tab(view: View, overlay: str, colormap: str, opacity: float, level: int) -> None:
    ref_path, score = view.panels[0]
    ref = get_run(ref_path)
    matrices = ref.confusion_matrices()
    ordered = np.asarray(view.ordered, dtype=np.int64)
    matrix = dv.pooled_confusion(matrices, ordered)
    if not matrix.any():
        st.info("No image with ground truth in this view.")
        return
    # The chosen cell lives in a plain key too (see the page); it starts at the largest confusion.
    if state.get("_cm_cell") is None:
        off = matrix.copy()
        np.fill_diagonal(off, 0)
        state["_cm_cell"] = tuple(int(v) for v in np.unravel_index(off.argmax(), off.shape))
    put("cm_true", state["_cm_cell"][0])
    put("cm_pred", state["_cm_cell"][1])
    st.caption(
        f"Valid pixels of the {len(ordered):,} images in this view ({labels[ref_path]}, {view.subset}); click a "
        "cell to list the images with most of its pixels."
    )
    st.plotly_chart(
        lp.confusion_figure(matrix, state["_cm_cell"]),
        key="cm_fig",
        on_select=cell_clicked,
        selection_mode="points",
    )
    pick = st.columns(2)
    classes = list(range(len(TRAIN_ID_NAMES)))
    name = TRAIN_ID_NAMES.__getitem__
    t = pick[0].selectbox("ground truth", classes, format_func=name, key="cm_true", on_change=keep_cell)
    p = pick[1].selectbox("predicted", classes, format_func=name, key="cm_pred", on_change=keep_cell)
    found = dv.cell_contributors(matrices, ordered, t, p, count=12)
    st.markdown(
        f"**{int(matrix[t, p]):,}** pixels of true **{name(t)}** predicted as **{name(p)}**; "
        f"the {len(found)} images with most of them:"
    )
    if not found:
        return
    shown = [i for i, _, _ in found]
    sources = [get_thumbnail(ref_path, i, overlay, score, colormap, opacity, level) for i in shown]
    extra = [f"{n:,} px ({share:.1%})" for _, n, share in found]
    items = dv.grid_items(shown, ref.reader.relpaths, sources, {}, None, extra)
    thumbgrid(
        data={"items": items, "columns": GRID_COLUMNS},
        key="cm_grid",
        on_open_change=lambda: open_from("cm_grid"),
    )


def own_image_tab(ref: sup.Run, score: str, opacity: float, colormap: str) -> None:
    checkpoints = sup.checkpoint_choices(allowed)
    model_sources = ["the run's model (config.yaml)", *map(str, checkpoints)]
    if state.get("own_model") not in model_sources:
        state["own_model"] = model_sources[0]
    chosen_model = st.selectbox("Model", model_sources, key="own_model")
    st.caption(
        f"Runs a model on an image of your own: the model of {ref.name}, or a checkpoint from the folders "
        + (
            f"allowed with --allow ({', '.join(map(str, allowed))})."
            if allowed
            else "allowed on the command line (`eomt-ood app RUN_DIR --allow DIR`; none given)."
        )
    )
    origin = st.radio("Image", ["bundled sample", "upload"], horizontal=True, key="own_origin")
    own_image = None
    if origin == "upload":
        upload = st.file_uploader("PNG or JPEG", type=["png", "jpg", "jpeg"], key="own_upload")
        if upload is not None:
            try:
                own_image = sup.decode_upload(upload.getvalue(), upload.name)
            except UserError as exc:
                st.error(f"error: {exc}")
    else:
        samples = get_samples()
        sample = st.selectbox("Sample", sorted(samples), key="own_sample")
        own_image = samples[sample]
    if own_image is not None and st.button("Run the model", key="own_run"):
        try:
            checkpoint = None if chosen_model == model_sources[0] else Path(chosen_model)
            model_name, weights = sup.own_model_source(ref.config, checkpoint, roots, allowed)
            with st.spinner("running the model ..."):
                model = get_model(model_name, str(weights) if weights else None)
                state["own_maps"] = sup.predict_own_image(model, own_image, ref.reader.confidences)
        except UserError as exc:
            st.error(f"error: {exc}")
    own = state.get("own_maps")
    if own is not None:
        columns = st.columns(2)
        grid = sup.readout_grid(own)
        with columns[0]:
            picture = sup.compose(own, "prediction", opacity, score, colormap)
            mapview(data=sup.map_view_data(picture, grid, "prediction"), key="own_pred")
        with columns[1]:
            picture = sup.compose(own, "confidence", 1.0, score, colormap)
            mapview(data=sup.map_view_data(picture, grid, score), key="own_conf")


def filter_widgets(filters: list, ranges: dict, stats: dict, base: np.ndarray) -> None:
    """Per statistic: its histogram over the subset (the chosen range in blue) and a range slider."""
    for stat, key, span in filters:
        low, high = ranges[stat]
        st.markdown(f"**{stat}** {format_value(low)} – {format_value(high)}")
        st.image(dv.picture_uri(dv.histogram_picture(stats[stat][base], span, (low, high))), width="stretch")
        st.slider(
            stat,
            span[0],
            span[1],
            step=(span[1] - span[0]) / dv.FILTER_STEPS,
            format="%.4f",
            key=key,
            on_change=keep_range,
            args=(key,),
            label_visibility="collapsed",
        )
    for stat in dv.FILTER_STATS:
        if stat not in {f[0] for f in filters}:
            values = stats.get(stat)
            span = dv.value_span(values[base]) if values is not None else None
            st.caption(
                f"{stat}: " + ("– (undefined here)" if span is None else f"{format_value(span[0])} for all")
            )


display(view)

# ------------------------------------------------------------------------------------------------ sidebar: the view
# Drawn after the display (into the box made above it), so the thumbnails reach the browser first.

with view_box:
    st.multiselect(
        "Runs (side by side, first = reference)", paths, format_func=labels.get, max_selections=4, key="runs"
    )
    st.selectbox(f"Confidence score of {labels[ref_path]}", reader.confidences, key="score")
    if len(reader.confidences) > 1:
        st.selectbox("…and a second score beside it", seconds, key="score2")
    for k, path in enumerate(chosen[1:], 1):
        st.selectbox(f"Score of {labels[path]}", get_run(path).reader.confidences, key=f"run_score_{k}")
    st.pills("Subset", ["all", *subsets], key="subset", required=True)
    st.selectbox("Sort by (worst first)", sort_options, key="sort")
    st.toggle("best first instead", key="sort_reverse")
    # Closed by default and only drawn when open: the first page reaches the browser sooner. The ranges live in
    # plain keys, so a closed expander still filters.
    active = [
        f"{stat} {format_value(ranges[stat][0])}–{format_value(ranges[stat][1])}"
        for stat, key, span in filters
        if ranges[stat] != span
    ]
    box = st.expander("Filter by statistic", key="filters_open", on_change="rerun")
    if active:
        st.caption("Filters: " + " · ".join(active))
    if box.open:
        with box:
            filter_widgets(filters, ranges, stats, base)
