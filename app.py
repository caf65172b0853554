"""QShield: the Streamlit app. Run with ``streamlit run app.py`` (or ``make run``).

This file only sets up the page, the shared sidebar and the navigation; every page lives in
``pages/`` and every computation in ``qshield_core``.
"""

import streamlit as st

from pages import _shared as ui

st.set_page_config(page_title="QShield", page_icon="🛡️", layout="wide")

PAGES = [
    st.Page("pages/attack_lab.py", title="Attack Lab", icon="⚔️", default=True),
    st.Page("pages/robustness_explorer.py", title="Robustness Explorer", icon="📈"),
    st.Page("pages/quantum_circuit.py", title="Quantum Circuit", icon="⚛️"),
    st.Page("pages/attacker_cost.py", title="Attacker Cost", icon="⏱️"),
    st.Page("pages/about.py", title="About / Method", icon="📖"),
]

page = st.navigation(PAGES)
ui.sidebar()
page.run()
