"""Certified: what can be proven beside what an attack breaks, for the quantum branch and the whole model."""

import streamlit as st
import torch

from pages import _shared as ui
from qshield_core import lab, viz
from qshield_core.certify import views as V
from qshield_core.certify.quantum import GLOBAL_DEPOLARIZING
from qshield_core.data import get_spec, load_samples

s = ui.sidebar()
spec = get_spec(s.dataset)
st.title("Certified")
st.caption(
    "An attack can only show that a model *can* be fooled: its robust accuracy is an upper bound. A certificate "
    "proves that *no* change within a radius can fool it: a lower bound. Here are both, side by side."
)

KINDS = {"the shipped noise family (mixed)": None, "global depolarizing (Du et al.'s setting)": GLOBAL_DEPOLARIZING}


@st.cache_data(max_entries=64, show_spinner=False)
def noise_view(dataset: str, hybrid: str, weights: str, entry: dict, kind: str | None) -> V.QuantumNoiseView:
    loaded = ui.get_model(dataset, hybrid, "differentiable")
    image = torch.from_numpy(ui.sample_pixels(entry))
    return V.quantum_noise_view(loaded.model, image, get_spec(dataset).paper_eps, kind)


@st.cache_data(max_entries=16, show_spinner=False)
def noise_cost(dataset: str, hybrid: str, weights: str, kind: str | None):
    loaded = ui.get_model(dataset, hybrid, "differentiable")
    images, labels = load_samples(dataset)
    return V.accuracy_under_noise(loaded.model, images, labels, kind), len(labels)


quantum_tab, smoothing_tab = st.tabs(["Quantum-noise certificate (one image, live)",
                                      "Randomized smoothing (whole model, committed)"])

with quantum_tab:
    loaded = ui.get_model(s.dataset, s.hybrid, "differentiable")
    problem = loaded.error if not loaded.available else V.certificate_problem(loaded.model)
    if problem:
        st.error(f"No quantum certificate for {s.hybrid} on {spec.display_name}: {problem}")
    else:
        st.caption(f"The circuit of **{s.hybrid}** (the sidebar's hybrid) with its fixed projection: the certificate "
                   "covers the circuit's own answer, not the paper mode's redrawn projection, whatever the sidebar's "
                   "gradient mode.")
        entry = ui.pick_sample(s.dataset, "cert")
        left, right = st.columns(2)
        kind_label = left.radio("Noise", list(KINDS), key="cert_kind")
        p = right.select_slider("Noise strength p", options=list(V.NOISE_GRID), value=0.005, key="cert_p",
                                help="The shipped circuit runs at p = 0.005 (mixed).")
        if entry is not None:
            with st.spinner("Computing the certificate over the noise grid…"):
                weights = loaded.card.get("weights_sha256", "")
                view = noise_view(s.dataset, s.hybrid, weights, entry, KINDS[kind_label])
                cost, n_samples = noise_cost(s.dataset, s.hybrid, weights, KINDS[kind_label])
            row = view.rows[view.rows["p"] == p].iloc[0]
            at_p = cost[cost["p"] == p].iloc[0]
            names = spec.class_names
            cols = st.columns(4)
            cols[0].metric("Circuit's answer", names[int(row["predicted"])],
                           help=f"The hybrid's answer: {names[int(row['fused_predicted'])]} (true: "
                                f"{names[entry['label']]}).")
            cols[1].metric("Certified trace distance", f"{row['radius_pure']:.3f}",
                           help="Largest move of the encoded (pure) state that provably cannot change the circuit's "
                                f"answer. Against any state, pure or mixed: {row['radius']:.3f}.")
            cols[2].metric("Du et al.'s bound", f"{row['radius_du']:.2g}",
                           help="Du et al. 2021's differential-privacy bound at the circuit's global depolarizing "
                                f"weight p* = {row['du_weight']:.2g}.")
            cols[3].metric(f"An attack at eps = {spec.paper_eps * 255:.0f}/255 moves it", f"{view.target:.3f}",
                           help="Found by PGD on this image (an estimate from below, not a bound).")
            covered = row["radius_pure"] >= view.target
            message = ("The certificate covers what the attack does to the state." if covered else
                       "The attack moves the state further than the certificate reaches.")
            (st.success if covered else st.warning)(
                f"At p = {p:g}: {message} What p costs: on the {n_samples} shipped samples the circuit alone is "
                f"right on {at_p['quantum branch']:.0%} and the hybrid on {at_p['hybrid (fused)']:.0%}.")
            st.plotly_chart(V.quantum_noise_figure(view, p), key="cert_curve")
        with st.expander("What this certificate promises, and what it does not", expanded=False):
            st.markdown(V.QUANTUM_EXPLAINED)
            reports, problem = V.quantum_reports(lab.RESULTS_DIR / V.QUANTUM_FILE.name)
            mine = [r for r in reports if r.get("dataset") == s.dataset]
            if mine:
                st.markdown(f"Over the committed test points ({spec.display_name}):")
                st.table(V.quantum_summary(mine[0]))
            elif problem:
                st.info(problem)
            st.code(V.QUANTUM_COMMAND, language="bash")

with smoothing_tab:
    records, problem = V.smoothing_records(s.dataset, lab.RESULTS_DIR / V.CERTIFIED_FILE.name)
    if problem:
        st.info(problem)
    if not records:
        st.info(f"No randomized-smoothing results for {spec.display_name}: the study covers MNIST and OrganAMNIST.")
    else:
        st.plotly_chart(V.smoothing_figure(records), key="cert_smoothing")
        table = V.smoothing_table(records)
        st.dataframe(viz.display_frame(table.drop(columns=["n"])), hide_index=True)
        points = ", ".join(str(n) for n in sorted(set(table["n"])))
        st.caption(f"Lines: certified accuracy (proven). Markers: accuracy left under attack (what was broken). "
                   f"Both on the same {points} test points. " + V.TABLE_NOTES)
        pairs = V.smoothing_pairs(records)
        if not pairs.empty:
            st.markdown("**Hybrid against CNN, point by point**")
            st.dataframe(viz.display_frame(pairs), hide_index=True)
            st.caption(V.PAIRS_NOTES)
    with st.expander("What randomized smoothing promises", expanded=not records):
        st.markdown(V.SMOOTHING_EXPLAINED)
        st.code(V.SMOOTHING_COMMAND, language="bash")
