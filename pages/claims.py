"""Claim cards: for every shipped model, the numbers a robustness claim rests on and the masking audit."""

import streamlit as st

from pages import _shared as ui
from qshield_core import lab

s = ui.sidebar()
st.title("Claim cards")
st.markdown(
    "One card per model and gradient mode, RobustBench style: the clean accuracy, the robust accuracy under "
    "the paper's protocol and under AutoAttack, the **per-point worst case** over every attack run on the same "
    "points, and the **masking audit**: automatic checks that say when a robustness number is not to be "
    "believed. Every figure is read from `results/claims.json`, which a command computes from the committed "
    "results; nothing here is typed by hand."
)

ui.shipped_only_note(s, "The committed claim cards")
cards, problem = lab.load_claim_cards()
if problem:
    st.error(problem)
if not cards:
    st.info("No claim cards committed yet. Generate them with the command below.")
mine = [c for c in cards if c["dataset"] == s.dataset]
if cards and not mine:
    st.info("No claim card for this dataset.")

for card in mine:
    view = lab.claim_card_view(card)
    with st.container(border=True):
        st.subheader(view.title)
        cols = st.columns(4)
        for col, (label, value, help_text) in zip(cols, view.figures, strict=True):
            col.metric(label, value, help=help_text)
        if view.admitted:
            st.success("RobustBench would admit this model (deterministic, gradients everywhere, AutoAttack run).",
                       icon=":material/verified:")
        else:
            st.warning("RobustBench would not admit it: " + "; ".join(view.reasons) + ".", icon=":material/block:")
        st.table(view.flags.set_index("check"))

with st.expander("How these cards are made, and the command that regenerates them"):
    st.markdown(lab.CLAIMS_EXPLAINED)
    st.code(lab.CLAIMS_COMMAND, language="bash")
