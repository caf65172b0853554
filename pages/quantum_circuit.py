"""Quantum Circuit: the circuit, and what it does with one image, with and without noise."""

import json

import numpy as np
import streamlit as st
import torch

from pages import _design as design
from pages import _shared as ui
from pages import _sources as sources
from qshield_core import lab, viz
from qshield_core.data import get_spec

s = ui.sidebar()
spec = get_spec(s.dataset)
st.title("Quantum Circuit")
st.caption(
    "The hybrid feeds the CNN's class scores into a small quantum circuit and mixes the circuit's output "
    "back with the CNN's own prediction. Here you can see every step for one image, and design and train "
    "a circuit of your own."
)
design.design_section(s)

study_tables, study_problems = lab.study_tables(s.dataset)
with st.expander("What the studies found: a richer circuit, device noise, finite shots, adversarial training, "
                 "the paper's models over seeds", icon=":material/science:"):
    for problem in study_problems:
        st.error(problem)
    if not study_tables and s.dataset in lab.STUDY_DATASETS:
        scripts = ", ".join(f"`bash {script}`" for script in lab.STUDY_SCRIPTS)
        st.info(f"No cell of the studies has run on {spec.display_name} yet ({scripts}).")
    elif not study_tables:
        st.info(f"The studies do not cover {spec.display_name}: they run on MNIST and OrganAMNIST.")
    for table in study_tables:
        st.markdown(f"#### {table.title}")
        st.markdown(table.caption)
        st.dataframe(table.frame, hide_index=True, width="stretch")
        if table.note:
            st.markdown(table.note)
        st.caption(table.legend + " The README says what each table rests on, and what has not run yet.")
        st.code(table.command, language="bash")

loaded = ui.get_model(s.dataset, s.hybrid, s.grad_mode, s.noise)
if not loaded.available:
    st.error(f"{s.hybrid} is unavailable for {spec.display_name}: {loaded.error}")
    st.stop()

source = st.radio("Image", ("Shipped sample", "Draw", "Camera"), horizontal=True, key="qc_source")
if source == "Shipped sample":
    entry = ui.pick_sample(s.dataset, "qc")
    pixels = None if entry is None else ui.sample_pixels(entry)
    image_title = None if entry is None else f"true: {spec.class_names[entry['label']]}"
elif source == "Draw":
    pixels, image_title = sources.drawn_image(s.dataset, "qc"), "your drawing"
else:
    pixels, image_title = sources.camera_image(s.dataset, "qc"), "your photo"
if pixels is None:
    st.stop()
image = torch.from_numpy(pixels)

seed_key = f"qc_seed_{s.dataset}"
st.session_state.setdefault(seed_key, 0)
if s.grad_mode == "paper":
    left, right = st.columns([3, 1])
    left.info(
        "Paper mode: the projection from the CNN's scores to the rotation angles is a fresh random draw "
        "at every forward pass, so the angles (and the output) change each time the model runs.",
        icon=":material/casino:")
    if right.button("Redraw the projection", key="qc_redraw"):
        st.session_state[seed_key] += 1
view = lab.quantum_view(loaded.model, image, seed=st.session_state[seed_key])
config = view.config
noise = config.noise

st.subheader("The circuit")
st.caption(
    f"{config.n_qubits} qubits, {config.encoding} angle encoding, entanglement **{config.entanglement}**, "
    f"depth {config.depth}{' with trainable layers' if config.variational else ''}, "
    f"noise: **{config.describe_noise()}** ({'as trained' if s.noise is None else 'changed in the sidebar'}). "
    "Drawn by PennyLane with this image's angles"
    + (" (trainable gates drawn at zero)." if config.variational else ".")
)
angles_key = tuple(np.round(view.angles, 3).ravel().tolist())
st.image(ui.circuit_png(json.dumps(config.to_dict()), angles_key), width="stretch")

col_img, col_angles, col_alpha = st.columns([1, 2, 1.3])
with col_img:
    st.plotly_chart(viz.image_figure(image.numpy(), image_title), key="qc_image")
with col_angles:
    st.markdown("**Encoding angles** (radians)")
    st.plotly_chart(viz.angles_figure(view.angles), key="qc_angles")
with col_alpha:
    st.plotly_chart(viz.alpha_figure(view.alpha), key="qc_alpha")
    st.caption("α near 1: the final answer is almost the CNN's alone; α near 0: mostly the circuit's.")

names = spec.class_names
st.markdown(
    f"CNN alone: **{names[view.cnn_prediction]}** ({view.cnn_probs.max():.1%}) · "
    f"circuit alone: **{names[view.quantum_prediction]}** ({view.quantum_probs.max():.1%}) · "
    f"fused (the hybrid's answer): **{names[view.prediction]}** ({view.fused_probs.max():.1%})"
)

st.subheader("Output over the basis states, with and without noise")
weights = loaded.model.quantum.weights  # a design's trained layers (None for the shipped circuits)
noiseless = lab.noiseless_probabilities(config, view.angles, weights)
distributions = {"noiseless": noiseless, config.describe_noise(): view.basis_probs}
st.plotly_chart(viz.basis_distribution_figure(distributions, spec.num_classes), key="qc_basis")
tv = 0.5 * float(np.abs(noiseless - view.basis_probs).sum())
st.caption(f"Total variation distance between the two: {tv:.4f}. States past the class count "
           f"({spec.num_classes}) are dropped and the rest renormalised.")

st.subheader("How the output moves with the noise strength")
kind = noise.kind if noise.kind not in ("none", "thermal") else "mixed"
st.caption(f"The same angles under {kind} noise of growing strength p (the shipped models use mixed, p = 0.005).")
strengths = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
sweep = lab.noise_sweep(config, view.angles, kind, strengths, readout=noise.readout, weights=weights)
classes = lab.class_distribution(sweep, spec.num_classes)
st.plotly_chart(viz.noise_sweep_figure(strengths, classes, names, kind), key="qc_sweep")
