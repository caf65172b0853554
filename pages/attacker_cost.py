"""Attacker Cost: what each attack costs against the hybrid compared with the classical CNN."""

import streamlit as st

from pages import _shared as ui
from qshield_core import lab, viz
from qshield_core.attacks import ATTACKS, PAPER_ATTACKS
from qshield_core.data import get_spec

s = ui.sidebar()
spec = get_spec(s.dataset)
st.title("Attacker Cost")
st.caption(
    "The paper argues that the hybrid makes attacks 22× to 247× more expensive (HQCNN-Full over the CNN, on the "
    "authors' laptop GPU). Here: the attacker's wall time and forward/backward passes per image, hybrid over "
    "classical, on this machine, and what the same attack would need on a real quantum device."
)

st.markdown(
    """
**Where a time gap comes from.** The hybrid-over-classical time ratio is the product of two factors:
- *passes ratio*: how many more forward and backward passes the attack needed. A fixed-budget attack (PGD-10:
  10 forward and 10 backward passes) needs the same on both models, so this is 1; attacks that stop once they
  succeed (Square, DeepFool, C&W, AutoAttack) need more passes on a model that resists longer. This part is the
  **model**.
- *time per pass ratio*: how much dearer one pass through the hybrid is. This part is the **simulator**: the
  paper's code rebuilt a PennyLane circuit and ran it once per image in a Python loop; this project simulates the
  same 4-qubit circuit exactly in one batched matrix product.
"""
)

RATIOS = {"seconds_ratio": "wall time per image", "passes_ratio": "passes per image (the model)",
          "per_pass_ratio": "time per pass (the simulator)"}
metric = st.radio("Ratio of", list(RATIOS), horizontal=True, key="ac_metric", format_func=RATIOS.get)


def _show(frame, key: str) -> None:
    """The ratio chart and the full table for one cost frame."""
    st.plotly_chart(viz.cost_ratio_figure(frame.dropna(subset=[metric]), metric), key=key)
    table = viz.display_frame(frame.drop(columns=["series"]), "{:.3g}")  # missing values as an en dash
    st.dataframe(table, hide_index=True, column_config={c: st.column_config.NumberColumn(format="%.3g")
                                                        for c in table.columns if table[c].dtype.kind == "f"})


st.subheader("From the committed results")
records = ui.committed_records()
committed = lab.cost_frame(records, s.dataset)
if committed.empty:
    st.warning(
        f"No attack timings for {spec.display_name} are committed yet (`results/*.json`). No figures are shown "
        "rather than invented ones: measure them below on the shipped images, or run the commands on the About page."
    )
else:
    _show(committed, "ac_committed")
    st.caption("Paper hybrid/CNN time: the paper's own ratio (HQCNN-Full over CNN) for the same attack.")

st.subheader("Measure now")
st.caption(
    "Runs the paper's eight attacks at its ε on a few shipped images against the classical CNN and the sidebar's "
    "hybrid, in the background. The app lowers the budget of the slowest attacks; ratios stay comparable because "
    "both models get the same budget."
)
with st.form("ac_form"):
    left, right = st.columns(2)
    n_images = left.slider("Images", 10, 50, 10, step=10, key="ac_n")
    attacks = right.multiselect("Attacks", list(PAPER_ATTACKS), default=["fgsm", "pgd", "square"],
                                format_func=lambda n: ATTACKS[n].display_name, key="ac_attacks")
    submitted = st.form_submit_button("Measure", type="primary", disabled=ui.job_of("ac_job") is not None)
if submitted and attacks:
    ui.start_sweep("ac_job", f"{len(attacks)} attacks on {n_images} images", s, attacks, [spec.paper_eps], n_images)
fresh = ui.sweep_result("ac_job", "ac_result")
if fresh is not None and fresh.records:
    measured = lab.cost_frame(fresh.records, fresh.records[0]["dataset"])
    if not measured.empty:
        st.markdown(f"**Measured just now** on {fresh.records[0]['n']} shipped images "
                    f"({get_spec(fresh.records[0]['dataset']).display_name}).")
        _show(measured, "ac_fresh")

st.subheader("On a real quantum device")
st.markdown(
    "The *circuit runs per image* column counts how many times an attacker would have to run the circuit if it "
    "only existed on quantum hardware (multiply by the shots per estimate):"
)
for mode, text in lab.circuit_cost_assumptions().items():
    st.markdown(f"- **{mode} mode**: {text}.")
st.info(
    "A 4-qubit circuit is trivial to simulate classically, and the paper's circuit is public: a white-box attacker "
    "needs no quantum device at all. These counts show what the cost argument would require, not a real barrier.",
    icon=":material/warning:",
)
