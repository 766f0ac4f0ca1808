"""The explorer's view in the URL: which runs, score, subset, image, overlay, threshold and tab are shown.

`read_url` turns query parameters into widget values (checked against the runs the app was started with; a value
that does not fit is left out and named in a note), `url_of` turns the current widget values back into query
parameters. A link copied from the address bar therefore opens the same view for a colleague.

Parameters: `run` (repeatable: run labels, the first is the reference), `score`, `subset` ("all" or a subset),
`image` (the input image's path, e.g. bravo_synobjs/bear/1.png), `overlay`, `threshold` (the exact doubt value,
written with `repr` so it reads back to the same level) and `view` (the tab).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

URL_KEYS = ("view", "run", "score", "subset", "image", "overlay", "threshold")


@dataclass(frozen=True)
class RunChoice:
    """What the URL may name of one run: its label, scores, subsets and images (store order)."""

    label: str
    path: str
    scores: Sequence[str]
    subsets: Sequence[str]  # one per image
    relpaths: Sequence[str]


def _values(params: Mapping[str, Any], key: str) -> list[str]:
    value = params.get(key)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def read_url(
    params: Mapping[str, Any], runs: Sequence[RunChoice], views: Sequence[str], overlays: Sequence[str]
) -> tuple[dict[str, Any], list[str]]:
    """(widget values to set, notes on what was left out) from query parameters ({key: str or [str]}).

    Keys of the returned dict: `runs` (run paths), `score`, `subset`, `image` (store index in the reference
    run), `overlay`, `threshold` (float in [0, 1]), `view`; only those the URL gives validly.
    """
    out: dict[str, Any] = {}
    notes: list[str] = []
    by_label = {r.label: r for r in runs} | {r.path: r for r in runs}
    named = _values(params, "run")
    chosen = []
    for label in named:
        if label in by_label and by_label[label] not in chosen:
            chosen.append(by_label[label])
        else:
            notes.append(f"run {label!r} is not one of the runs given to the app")
    if chosen:
        out["runs"] = [r.path for r in chosen]
    ref = chosen[0] if chosen else runs[0]
    for score in _values(params, "score")[:1]:
        if score in ref.scores:
            out["score"] = score
        else:
            notes.append(f"score {score!r}: {ref.label} has {', '.join(ref.scores)}")
    for subset in _values(params, "subset")[:1]:
        if subset == "all" or subset in set(ref.subsets):
            out["subset"] = subset
        else:
            notes.append(f"subset {subset!r}: not in {ref.label}")
    for image in _values(params, "image")[:1]:
        index = next((i for i, rel in enumerate(ref.relpaths) if rel == image), None)
        if index is None:
            notes.append(f"image {image!r}: not in {ref.label}")
            continue
        out["image"] = index
        if out.get("subset", "all") not in ("all", ref.subsets[index]):
            out["subset"] = ref.subsets[index]  # the image wins over a subset it is not in
    for overlay in _values(params, "overlay")[:1]:
        if overlay in overlays:
            out["overlay"] = overlay
        else:
            notes.append(f"overlay {overlay!r}: one of {', '.join(overlays)}")
    for text in _values(params, "threshold")[:1]:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if 0.0 <= value <= 1.0:
            out["threshold"] = value
        else:
            notes.append(f"threshold {text!r}: a doubt value between 0 and 1")
    for view in _values(params, "view")[:1]:
        if view in views:
            out["view"] = view
        else:
            notes.append(f"view {view!r}: one of {', '.join(views)}")
    return out, notes


def url_of(
    labels: Sequence[str],
    score: str,
    subset: str,
    image: str | None,
    overlay: str,
    threshold: float | None,
    view: str,
) -> dict[str, str | list[str]]:
    """Query parameters of a view (see the module docstring); the threshold is written exactly (`repr`)."""
    params: dict[str, str | list[str]] = {
        "view": view,
        "run": list(labels),
        "score": score,
        "subset": subset,
        "overlay": overlay,
    }
    if image is not None:
        params["image"] = image
    if threshold is not None:
        params["threshold"] = repr(float(threshold))
    return params
