"""A picture of an image's maps with a pixel readout under the pointer (a Streamlit v2 component, inline JS).

`mapview(data=support.map_view_data(picture, maps, title), key=..., on_click_change=callback)` shows the picture
as a plain <img> and, on hover, the readout of the nearest point of a strided grid over the maps (predicted class,
top-2 classes and scores, every confidence, ground truth), decoded in the browser from compact byte arrays
(`support.readout_grid`): a 512-pixel picture with its readouts is about a tenth of the same as a plotly figure
with hover text, and it draws at once. A click sets the trigger value `click` to {row, col} in map pixels.
The text is formatted as `support.format_readout` formats it, so the browser tests can compare the two.
"""

from __future__ import annotations

import streamlit as st

JS = """
function bytes(b64) {
  if (!b64) return null;
  const raw = atob(b64);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}
function words(b64) {  // little-endian uint16
  const b = bytes(b64);
  return b ? new Uint16Array(b.buffer, b.byteOffset, b.length / 2) : null;
}

export default function (component) {
  const { setTriggerValue, parentElement } = component;
  const data = component.data[0];  // sent wrapped in a list (see the Python side)
  let root = parentElement.querySelector(".eo-mapview");
  if (!root) {
    root = document.createElement("figure");
    root.className = "eo-mapview";
    root.innerHTML = '<figcaption></figcaption><div class="eo-frame"><img><div class="eo-tip"></div></div>';
    parentElement.appendChild(root);
  }
  const img = root.querySelector("img");
  const tip = root.querySelector(".eo-tip");
  root.querySelector("figcaption").textContent = data.title || "";
  img.src = data.src;
  img.alt = data.title || "map";
  const g = data.readout;
  const grid = g && {
    pred: bytes(g.pred), top2c: bytes(g.top2_class), top2s: words(g.top2_score),
    conf: Object.fromEntries(Object.entries(g.conf).map(([s, v]) => [s, words(v)])),
    gt: bytes(g.gt), ood: bytes(g.ood),
  };
  const where = (event) => {
    const box = img.getBoundingClientRect();
    const row = Math.min(data.height - 1, Math.max(0, Math.floor(((event.clientY - box.top) / box.height) * data.height)));
    const col = Math.min(data.width - 1, Math.max(0, Math.floor(((event.clientX - box.left) / box.width) * data.width)));
    return { row, col, x: event.clientX - box.left, y: event.clientY - box.top };
  };
  img.onmousemove = (event) => {
    if (!grid) return;
    const p = where(event);
    const r = Math.min(g.rows - 1, Math.floor(p.row / g.stride));
    const c = Math.min(g.cols - 1, Math.floor(p.col / g.stride));
    const i = r * g.cols + c, n = g.rows * g.cols;
    const lines = [`row ${r * g.stride}, col ${c * g.stride}`, `pred: ${g.names[grid.pred[i]]}`];
    if (grid.top2c) {
      const top = [0, 1].map((k) => `${g.names[grid.top2c[k * n + i]]} ${(grid.top2s[k * n + i] / 1000).toFixed(3)}`);
      lines.push(`top-2: ${top.join(", ")}`);
    }
    lines.push(Object.entries(grid.conf).map(([s, v]) => `${s} ${((v[i] + 0.5) / 65536).toFixed(4)}`).join(" · "));
    if (grid.gt) lines.push(`GT: ${g.names[grid.gt[i]]} (${["valid", "invalid", "void"][grid.ood[i]]})`);
    tip.textContent = lines.join("\\n");
    tip.style.display = "block";
    tip.style.left = `${Math.min(p.x + 14, img.clientWidth - tip.offsetWidth)}px`;
    tip.style.top = `${p.y + 14}px`;
  };
  img.onmouseleave = () => { tip.style.display = "none"; };
  img.onclick = (event) => {
    const p = where(event);
    setTriggerValue("click", { row: p.row, col: p.col });
  };
}
"""

CSS = """
.eo-mapview { margin: 0; }
.eo-mapview figcaption { font-weight: 600; font-size: 14px; margin: 0 0 4px; min-height: 1em; }
.eo-frame { position: relative; line-height: 0; }
.eo-frame img { width: 100%; height: auto; image-rendering: pixelated; cursor: crosshair; border-radius: 4px; }
.eo-tip { display: none; position: absolute; z-index: 10; pointer-events: none; white-space: pre; line-height: 1.35;
          background: rgba(255, 255, 255, 0.95); color: #222; border: 1px solid #999; border-radius: 4px;
          padding: 4px 6px; font-size: 12px; font-family: ui-monospace, monospace; }
"""

# In the page's own DOM, like `thumbgrid`, with "eo-" class names.
_component = st.components.v2.component("eomt_ood_mapview", js=JS, css=CSS, isolate_styles=False)


def mapview(*, data: dict, key: str, on_click_change=None):
    """Draw the component with `data`. The data go to the browser wrapped in a one-item list: Streamlit scans the
    values of a dict for data frames, and that check imports pandas (seconds on the first page a fresh server
    draws, where nothing else needs it); a list is sent as JSON as it is."""
    callbacks = {"on_click_change": on_click_change} if on_click_change is not None else {}
    return _component(data=[data], key=key, **callbacks)
