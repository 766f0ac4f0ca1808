"""Start the explorer's Streamlit server: `python launch.py ARGS` is `streamlit ARGS` (`eomt-ood app` runs
`launch.py run explorer.py ...`), plus a thread that imports what the explorer's first run needs.

Streamlit runs a script only when a browser session asks for it, so the first visitor would also wait for the
imports: Streamlit's plotly theme (built the first time `st.plotly_chart` is imported: 0.2 s here), plotly,
h5py, Pillow and the explorer's modules (0.3 s more where Python caches no bytecode). The browser spends
about 0.8 s loading Streamlit's page before it asks for the script; importing in that time takes the imports
off the first render (benchmarks/bench_app.py, 4,000 images: 1.95 -> 1.74 s, medians of three alternating
runs). The explorer's own imports stay as they are: this is a head start, not a dependency, and a failure here
only means the script imports them itself.
"""

from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent

# What the explorer's first run imports, Streamlit's plotly theme included; not the components (mapview,
# thumbgrid), which register themselves with the running server. tests/test_app.py checks the list against
# explorer.py's imports.
WARM_MODULES = (
    "dataset_view",
    "linked_plots",
    "support",
    "view_state",
    "eomt_ood.data.labels",
    "eomt_ood.errors",
    "eomt_ood.reports.plots",
    "eomt_ood.store",
    "plotly.graph_objects",
    "plotly.subplots",
    "streamlit.elements.plotly_chart",
)


def warm_up() -> list[str]:
    """Import `WARM_MODULES`; returns the names that failed (the explorer then imports them itself)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))  # where explorer.py finds its modules
    failed = []
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # a head start only: the script's own import reports a real problem
            failed.append(name)
    return failed


def main() -> None:
    # Streamlit's command line is imported first, so the thread imports only what the server itself does not.
    from streamlit.web import cli

    threading.Thread(target=warm_up, name="explorer-warm-up", daemon=True).start()
    cli.main(prog_name="streamlit")


if __name__ == "__main__":
    main()
