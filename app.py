"""QShield: the Streamlit app. Run with ``streamlit run app.py`` (or ``make run``).

This file only sets up the page and the navigation; every page lives in ``pages/`` (and draws the
shared sidebar first, through ``pages/_shared.py``) and every computation in ``qshield_core``.
"""

import streamlit as st

st.set_page_config(page_title="QShield", page_icon=":material/shield:", layout="wide")

# The first visit after the server starts imports PyTorch, torchattacks and Plotly (several seconds on a
# small CPU): say so at once instead of showing a blank page. Later reruns find them imported.
chart_warm_up = st.empty()
with st.spinner("Starting QShield: loading PyTorch and the attack library (first visit only)…"):
    # Before any chart: Plotly checks a chart's values against NumPy's and pandas' types by reading sys.modules
    # without importing (optional_imports.get_module(should_load=False)), so a chart built while another
    # session's thread is still importing either gets a half-made module and fails (seen: one of ten first
    # visits at once). An import waits for another thread's import of the same module to finish.
    import numpy  # noqa: F401
    import pandas  # noqa: F401

    if "charts_warmed_up" not in st.session_state:
        # The browser fetches and compiles Plotly's 4.7 MB bundle when it first meets a chart. A blank one now
        # has it do that while the server imports, not after the first result (traced: the first result's charts
        # drawn 1.5 s after the server's run ended, against 3 s). It is removed below.
        chart_warm_up.plotly_chart(
            {"data": [{"type": "scatter", "x": [0], "y": [0], "visible": False}],
             "layout": {"height": 10, "margin": {"l": 0, "r": 0, "t": 0, "b": 0}, "xaxis": {"visible": False},
                        "yaxis": {"visible": False}, "paper_bgcolor": "rgba(0,0,0,0)"}},
            config={"staticPlot": True, "displayModeBar": False}, key="chart_warm_up")
    import torch

    from pages import _shared  # noqa: F401  (imports qshield_core)
chart_warm_up.empty()
st.session_state.charts_warmed_up = True

# One intra-op thread per computation: a click attacks one image (tiny tensors), and concurrent sessions
# already run in parallel threads; two OpenMP threads per op only contend on a 2-core machine.
torch.set_num_threads(1)

PAGES = [
    st.Page("pages/attack_lab.py", title="Attack Lab", icon=":material/swords:", default=True),
    st.Page("pages/gallery.py", title="Gallery", icon=":material/grid_view:"),
    st.Page("pages/story.py", title="Story", icon=":material/slideshow:"),
    st.Page("pages/robustness_explorer.py", title="Robustness Explorer", icon=":material/show_chart:"),
    st.Page("pages/quantum_circuit.py", title="Quantum Circuit", icon=":material/blur_on:"),
    st.Page("pages/attacker_cost.py", title="Attacker Cost", icon=":material/timer:"),
    st.Page("pages/claims.py", title="Claim Cards", icon=":material/fact_check:"),
    st.Page("pages/certified.py", title="Certified", icon=":material/verified_user:"),
    st.Page("pages/about.py", title="About / Method", icon=":material/menu_book:"),
]

st.navigation(PAGES).run()
