"""The Quantum Circuit page's "Design your own circuit" section: the controls, the Train button, the job.

It only arranges: the request is a :class:`qshield_core.user_training.TrainRequest`, what stands in its
way is :func:`~qshield_core.user_training.problems`, and the training is
:func:`~qshield_core.user_training.train_design`, run as a background job (:func:`pages._shared.start_job`)
with a progress bar and a Stop button (:func:`pages._shared.show_job`).

``st.session_state["qc_train_data"] = "samples"`` (set by the tests, never by a widget) trains on the
shipped samples in a few steps instead of the dataset; the page then says so.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import streamlit as st

from pages import _shared as ui
from qshield_core import devices
from qshield_core import user_training as ut
from qshield_core.data import REPO_ROOT, get_spec
from qshield_core.noise import NOISE_KINDS
from qshield_core.quantum import ENTANGLEMENTS, example_angles
from qshield_core.simulator import NOISE_PLACEMENTS

JOB_KEY = "qc_train_job"
RESULT_KEY = "qc_trained"
DATA_KEY = "qc_train_data"
"""Session key of the test knob: ``"samples"`` trains on the shipped samples (see the module docstring)."""
PLACEMENT_LABELS = {"every_layer": "after every layer", "end": "once, at the end"}
NO_DEVICE = "none"
MAX_DEPTH = 6


def design_section(s: ui.Settings) -> None:
    """The expander: design controls, what is missing, Train, the running job and the last result."""
    running = ui.job_of(JOB_KEY) is not None
    fresh = st.session_state.get(RESULT_KEY) is not None
    with st.expander("Design your own circuit and train it", icon=":material/design_services:",
                     expanded=running or fresh):
        spec = get_spec(s.dataset)
        st.caption(
            f"Choose the circuit, name it and press Train: one epoch of the hybrid recipe on {spec.display_name}, "
            "starting from the shipped CNN, in the background (about a minute for the paper's circuit on two CPU "
            "cores; deeper circuits, shots and device noise take longer). The model is "
            "saved with its card in the user models folder (`user_models/`, not `pretrained/`), joins the "
            "sidebar's **Hybrid model** list and can be attacked in the Attack Lab.")
        request = _request(s)
        _train_button(request, running)
        ui.show_job(JOB_KEY, _keep_result)
        _show_result(s)


def _request(s: ui.Settings) -> ut.TrainRequest:
    """The design controls, as a request."""
    left, mid, right = st.columns(3)
    entanglement = left.selectbox("Entanglement", ENTANGLEMENTS, index=ENTANGLEMENTS.index("full"),
                                  key="qc_d_entanglement", help="Which CNOTs each layer applies.")
    depth = mid.slider("Depth (layers)", 1, MAX_DEPTH, 1, key="qc_d_depth",
                       help="Layers of [trainable rotations, CNOTs, noise].")
    variational = right.toggle("Trainable layers", key="qc_d_variational",
                               help="A trainable Rot gate on every wire in every layer; trained in the "
                                    "differentiable mode (the paper mode cuts the circuit from the gradient).")
    left, mid, right = st.columns(3)
    kind = left.selectbox("Noise", NOISE_KINDS, index=NOISE_KINDS.index("mixed"), key="qc_d_noise",
                          help="The shipped hybrids: mixed, p = 0.005 (the paper's recipe).")
    p = mid.select_slider("Noise strength p", ui.NOISE_STRENGTHS[1:], value=0.005, key="qc_d_p",
                          disabled=kind in ("none", "thermal"))
    placement = right.radio("Where the noise acts", NOISE_PLACEMENTS, format_func=PLACEMENT_LABELS.get,
                            key="qc_d_placement", horizontal=True,
                            help="Matters only between layers: at depth 1 the two are the same circuit.")
    left, right = st.columns([1, 2])
    shots = left.number_input("Shots (0: the exact distribution)", 0, 1_000_000, 0, step=100, key="qc_d_shots",
                              help="S > 0 estimates the output from S shots, as a QPU returns it.")
    with right:
        device = _device_choice()
    name = st.text_input("Name", key="qc_d_name", max_chars=80, placeholder="e.g. ring-depth2",
                         help="Saved as hybrid-<name>: letters, digits, '.', '_' and '-'.")
    circuit = ut.circuit_fields(entanglement, depth, variational, kind, p, placement, int(shots), device)
    overwrite = False
    if name.strip() and _name_taken(s.dataset, name):
        overwrite = st.checkbox("Overwrite the model of this name", key="qc_d_overwrite")
    return ut.TrainRequest(s.dataset, name, circuit, overwrite=overwrite,
                           data=st.session_state.get(DATA_KEY, "dataset"))


def _device_choice() -> str | None:
    """A calibrated device from the optional extra's snapshots, or an info line saying how to enable them."""
    names = devices.available_devices()
    if not names:
        st.info(f"No real-device noise here. {ut.DEVICES_HINT}", icon=":material/memory:")
        return None
    choice = st.selectbox("Device noise (IBM calibration snapshot)", [NO_DEVICE, *names], key="qc_d_device",
                          help="Adds that device's calibrated noise after every gate, on its lowest-error "
                               f"connected qubits ({devices.DEFAULT_DEVICE} is the design study's device).")
    return None if choice == NO_DEVICE else choice


def _name_taken(dataset: str, name: str) -> bool:
    try:
        return ut.existing_files(dataset, ut.model_name_for(name)) is not None
    except ValueError:
        return False


def _train_button(request: ut.TrainRequest, running: bool) -> None:
    """What stands in the way (each said), the circuit preview, and the Train button."""
    if request.data == "samples":
        st.warning("Smoke run: this session trains on the shipped samples (train split = test split, a few "
                   "steps), not on the dataset; the model's card says so.", icon=":material/science:")
    found = ut.problems(request)
    if not request.name.strip():
        found = [f for f in found if not f.startswith("Give your design a name")]
    for problem in found:
        st.warning(problem, icon=":material/block:")
    if not found:
        _preview(request)
    blocked = bool(found) or not request.name.strip()
    why = found[0] if found else "Name your design first." if not request.name.strip() else None
    if st.button("Train", key="qc_train", type="primary", icon=":material/model_training:",
                 disabled=blocked or running, help=why):
        _start(request)


def _preview(request: ut.TrainRequest) -> None:
    config = request.design.config_for(request.dataset)
    layers = f"depth {config.depth}" + (", trainable layers" if config.variational else "")
    st.caption(f"{config.n_qubits} qubits, {config.encoding} encoding, {config.entanglement} entanglement, {layers}; "
               f"{config.describe_noise()}.")
    if st.checkbox("Show the circuit", key="qc_d_preview"):
        angles = tuple(example_angles(config).numpy().round(3).ravel().tolist())
        st.image(ui.circuit_png(json.dumps(config.to_dict()), angles), width="stretch")


def _start(request: ut.TrainRequest) -> None:
    st.session_state.pop(RESULT_KEY, None)
    spec = get_spec(request.dataset)

    def work(progress, cancel: threading.Event) -> ut.TrainedDesign:
        progress.update(0, 1, "loading the data and the shipped CNN")

        def on_step(step: int, total: int) -> None:
            message = f"step {step} of {total}" if step < total else "measuring the accuracy, saving"
            progress.update(step, total, message)

        return ut.train_design(request, progress=on_step, cancel=cancel)

    ui.start_job(JOB_KEY, f"Training hybrid-{request.name.strip().removeprefix('hybrid-')} on {spec.display_name}",
                 work)
    st.rerun()


def _keep_result(outcome: ut.TrainedDesign) -> None:
    st.session_state[RESULT_KEY] = outcome
    if not outcome.cancelled and outcome.dataset == st.session_state.get("qs_dataset", outcome.dataset):
        ui.select_hybrid_next_run(outcome.model_name)


def _show_result(s: ui.Settings) -> None:
    outcome: ut.TrainedDesign | None = st.session_state.get(RESULT_KEY)
    if outcome is None:
        return
    if outcome.cancelled:
        st.info(f"Training of {outcome.model_name} was stopped; nothing was saved.", icon=":material/stop_circle:")
        return
    card, files = outcome.card or {}, outcome.files
    by_mode = card.get("clean_test_accuracy_by_grad_mode", {})
    accuracy = ", ".join(f"{100 * v:.2f} % ({k})" for k, v in by_mode.items())
    where = "on the shipped samples it was trained on (a smoke run)" if outcome.on_samples else "clean test accuracy"
    selected = s.hybrid == outcome.model_name
    st.success(
        f"Trained **{outcome.model_name}** for {get_spec(outcome.dataset).display_name} in {outcome.seconds:.0f} s: "
        f"{accuracy} {where}. Saved in `{_shown(files.weights)}` with its card `{_shown(files.card)}`. "
        + ("It is now the sidebar's hybrid: this page shows its circuit, and the Attack Lab attacks it."
           if selected else "Choose it in the sidebar's Hybrid model list to attack it."),
        icon=":material/check_circle:")
    st.page_link("pages/attack_lab.py", label="Attack it in the Attack Lab", icon=":material/swords:")


def _shown(path: Path) -> str:
    """A path relative to the repository when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT.resolve()))
    except ValueError:
        return str(path)
