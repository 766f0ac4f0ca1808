"""A grid of clickable thumbnails for the explorer (a Streamlit v2 component: inline JavaScript, no build step).

`thumbgrid(data={"items": [...], "columns": n}, key=..., on_open_change=callback)`: each item is
{index, src (data URI), title (the image path), caption}; a click on a thumbnail sets the trigger value `open` to
its index (read it in the callback from `st.session_state[key]["open"]`). Registered once, when this module is
first imported (Streamlit re-registers it on every new runtime, AppTest's included).
"""

from __future__ import annotations

import streamlit as st

# Built with DOM calls and textContent, never innerHTML: the captions are file names from the store.
JS = """
export default function (component) {
  const { setTriggerValue, parentElement } = component;
  const data = component.data[0];  // sent wrapped in a list (see the Python side)
  let root = parentElement.querySelector(".eo-thumbgrid");
  if (!root) {
    root = document.createElement("div");
    root.className = "eo-thumbgrid";
    parentElement.appendChild(root);
  }
  root.style.gridTemplateColumns = `repeat(${data.columns || 4}, minmax(0, 1fr))`;
  const cells = (data.items || []).map((item) => {
    const cell = document.createElement("button");
    cell.type = "button";
    cell.className = "eo-cell";
    cell.dataset.index = String(item.index);
    cell.title = item.title;
    const img = document.createElement("img");
    img.src = item.src;
    img.alt = item.title;
    const caption = document.createElement("span");
    caption.textContent = item.caption;
    cell.append(img, caption);
    cell.addEventListener("click", () => setTriggerValue("open", item.index));
    return cell;
  });
  root.replaceChildren(...cells);
}
"""

CSS = """
.eo-thumbgrid { display: grid; gap: 8px; }
.eo-cell { border: 2px solid transparent; border-radius: 6px; padding: 0; margin: 0; background: none;
        cursor: pointer; text-align: left; color: inherit; font: inherit; min-width: 0; }
.eo-cell:hover, .eo-cell:focus-visible { border-color: #ff4b4b; }
.eo-cell img { display: block; width: 100%; height: auto; border-radius: 4px; }
.eo-cell span { display: block; font-size: 12px; line-height: 1.3; padding: 2px 2px 0; overflow: hidden;
             text-overflow: ellipsis; white-space: nowrap; }
"""

# In the page's own DOM (not a shadow root), so the cells are plain `button.eo-cell` elements for scripts and tests;
# the "eo-" prefix keeps the styles from touching anything else.
_component = st.components.v2.component("eomt_ood_thumbgrid", js=JS, css=CSS, isolate_styles=False)


def thumbgrid(*, data: dict, key: str, on_open_change=None):
    """Draw the component with `data`. The data go to the browser wrapped in a one-item list: Streamlit scans the
    values of a dict for data frames, and that check imports pandas (seconds on the first page a fresh server
    draws, where nothing else needs it); a list is sent as JSON as it is."""
    callbacks = {"on_open_change": on_open_change} if on_open_change is not None else {}
    return _component(data=[data], key=key, **callbacks)
