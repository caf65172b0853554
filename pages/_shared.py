"""Streamlit plumbing shared by the pages: the sidebar, cached model loading, background jobs.

Nothing here computes anything about models or attacks: it only decides *which* library call
to make with which settings, and caches what the library returns.

- Models: ``st.cache_resource`` once per process per (dataset, model, gradient mode, noise, file
  stamp), so a model instance is never mutated by a session (switching a gradient mode picks another
  instance instead of flipping an attribute that other sessions share), and a model file that is
  replaced (a user model trained again) or modified is loaded, and checked, again.
- The hybrids: the shipped ones and the user's models trained from circuit designs (``user_models/``),
  by name from the zoo, listed afresh at every run (a model trained in the app appears at once).
- Per-user choices: ``st.session_state`` under keys starting with ``qs_``.
- Long work: a process-wide thread pool; a session keeps only its own :class:`Job` handle in
  its session state and polls it from a fragment, so the page stays usable meanwhile.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import streamlit as st

from qshield_core import lab, zoo
from qshield_core.data import DataError, get_spec
from qshield_core.models import GRAD_MODES, is_hybrid_name
from qshield_core.noise import NOISE_KINDS, NoiseModel
from qshield_core.quantum import CircuitConfig
from qshield_core.zoo import ModelUnavailableError

DATASETS = ("mnist", "organamnist", "cifar10")
HYBRID_CHOICES = ("hybrid-full", "hybrid-star", "hybrid-linear", "hybrid-none")
"""The shipped hybrids; :func:`hybrid_choices` adds the user's models."""
PENDING_HYBRID = "qs_hybrid_pending"
"""Session key: a hybrid to select in the sidebar at the next run (a model just trained)."""
SHIPPED_NOISE = "as trained"
NOISE_STRENGTHS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
READOUT_ERRORS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)
GRAD_MODE_HELP = (
    "paper: as the published code, the quantum branch is cut from autograd and its random projection "
    "is redrawn at every call (gradient masking). differentiable: the same weights, a fixed projection "
    "and real gradients through the simulated circuit (what an adaptive attacker uses)."
)


@dataclass(frozen=True)
class Settings:
    """The sidebar's choices for this session."""

    dataset: str
    hybrid: str
    grad_mode: str
    noise: NoiseModel | None
    """None means the noise model each hybrid was trained with (its card's)."""

    @property
    def noise_key(self) -> tuple | None:
        return None if self.noise is None else tuple(sorted(self.noise.to_dict().items()))

    def noise_label(self) -> str:
        return "as trained" if self.noise is None else self.noise.describe()


QUERY_KEYS = {
    "dataset": "qs_dataset", "hybrid": "qs_hybrid", "mode": "qs_grad_mode", "attack": "lab_attack",
    "class": "lab_class", "sample": "lab_pos", "eps": "lab_eps_{dataset}", "steps": "lab_steps_{attack}",
}
"""URL query parameters that preset a session (e.g. ``?dataset=cifar10&attack=pgd&eps=4&class=3``): a teacher
can hand out a link to a prepared demo. Read once, when a session starts."""


def apply_query_params() -> None:
    """Seed this session's widgets from the URL query parameters, once per session; ignore bad values."""
    if st.session_state.get("qs_query_applied"):
        return
    st.session_state["qs_query_applied"] = True
    params = st.query_params
    dataset = params.get("dataset", "mnist")
    attack = params.get("attack", "pgd")
    converters = {"dataset": str, "hybrid": str, "mode": str, "attack": str, "class": int, "sample": int,
                  "eps": int, "steps": int}
    allowed = {"dataset": DATASETS, "hybrid": hybrid_choices(dataset) if dataset in DATASETS else HYBRID_CHOICES,
               "mode": GRAD_MODES}
    for name, key in QUERY_KEYS.items():
        if name not in params:
            continue
        try:
            value = converters[name](params[name])
        except ValueError:
            continue
        if name in allowed and value not in allowed[name]:
            continue
        st.session_state[key.format(dataset=dataset, attack=attack)] = value


def sidebar() -> Settings:
    """Draw the shared sidebar and return (and store) the session's settings.

    Every page calls this first (rather than ``app.py``), so the sidebar is drawn exactly once per run
    however the page is reached: through ``st.navigation`` or run directly (as ``AppTest.switch_page``
    and Streamlit's first run of a folder named ``pages/`` do).
    """
    _leave_pages_folder_mode()
    apply_query_params()
    _keep_sidebar_state()
    with st.sidebar:
        st.markdown("### QShield")
        dataset = st.selectbox("Dataset", DATASETS, key="qs_dataset", format_func=lambda d: get_spec(d).display_name)
        choices = hybrid_choices(dataset)
        _select_pending_hybrid(choices)
        drop_invalid("qs_hybrid", choices)
        hybrid = st.selectbox("Hybrid model", choices, key="qs_hybrid", format_func=hybrid_label,
                              help="The shipped hybrids differ in the circuit's entanglement pattern (hybrid-full is "
                                   "the paper's main model); yours are the designs trained on the Quantum Circuit "
                                   "page (user_models/).")
        grad_mode = st.radio("Hybrid gradient mode", GRAD_MODES, key="qs_grad_mode", horizontal=True,
                             help=GRAD_MODE_HELP)
        kind = st.selectbox("Noise model", (SHIPPED_NOISE, *NOISE_KINDS), key="qs_noise_kind",
                            help="Replaces the circuit's noise model at inference; the weights stay the same.")
        noise = None
        if kind != SHIPPED_NOISE:
            p = 0.0
            if kind not in ("none", "thermal"):
                p = st.select_slider("Noise strength p", NOISE_STRENGTHS, value=0.005, key="qs_noise_p")
            readout = st.select_slider("Readout error", READOUT_ERRORS, value=0.0, key="qs_readout")
            noise = NoiseModel(kind=kind, p=p, readout=readout)
        settings = Settings(dataset, hybrid, grad_mode, noise)
        _model_status(settings)
    return settings


def _leave_pages_folder_mode() -> None:
    """Give a deep link its real page on the server's first visit.

    Until ``app.py`` has called ``st.navigation`` once in the process, Streamlit runs a folder named
    ``pages/`` in its legacy mode: a first visit to ``/story?step=3`` would run that page alone (no wide
    layout, a navigation made of file names) for every session until someone opens the root URL. Leave
    that mode the way ``st.navigation`` itself does and, on a session's first run (nothing clicked yet, so
    nothing is lost), run again through ``app.py``. (AppTest re-enters that mode at every run of a page it
    switched to; from the second run of a session on, the page just goes on, as before.)
    """
    from streamlit.runtime.pages_manager import PagesManager

    first_run = not st.session_state.get("qs_session_started")
    st.session_state["qs_session_started"] = True
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        if first_run:
            st.rerun()


def hybrid_choices(dataset: str) -> tuple[str, ...]:
    """The shipped hybrids (the paper's backbone's, e.g. ``resnet18-hybrid-full``, once shipped), then the user's
    models for ``dataset`` (by name, from the user models folder)."""
    other_backbones = [m for m in zoo.available_models(dataset) if is_hybrid_name(m) and m not in HYBRID_CHOICES]
    return (*HYBRID_CHOICES, *other_backbones, *zoo.user_models(dataset))


def is_user_model(name: str) -> bool:
    """A hybrid trained from a circuit design (user_models/), not one of the shipped models."""
    return name.startswith("hybrid-") and not zoo.is_builtin_name(name)


def hybrid_label(name: str) -> str:
    return f"{name} (yours)" if is_user_model(name) else name


def select_hybrid_next_run(name: str) -> None:
    """Make ``name`` the sidebar's hybrid from the next run on (e.g. a model just trained)."""
    st.session_state[PENDING_HYBRID] = name


def _select_pending_hybrid(choices: tuple[str, ...]) -> None:
    """Apply :func:`select_hybrid_next_run` before the selectbox is drawn (a drawn widget's value cannot change)."""
    pending = st.session_state.pop(PENDING_HYBRID, None)
    if pending in choices:
        st.session_state["qs_hybrid"] = pending


def shipped_only_note(s: Settings, what: str) -> None:
    """Say that this page covers the shipped models only, when the sidebar's hybrid is one of the user's."""
    if is_user_model(s.hybrid):
        st.info(f"{what} cover the shipped models only; **{s.hybrid}** (yours) is not among them. Attack it in the "
                "Attack Lab, the Gallery, or a fresh sweep of the Robustness Explorer, or evaluate it with "
                f"`python -m qshield_core evaluate --dataset {s.dataset} --model {s.hybrid} ...`.",
                icon=":material/info:")


SIDEBAR_KEYS = ("qs_dataset", "qs_hybrid", "qs_grad_mode", "qs_noise_kind", "qs_noise_p", "qs_readout")


def _keep_sidebar_state() -> None:
    """Keep the sidebar's choices when the user switches page.

    Streamlit drops a widget's state when a run does not draw it, and a widget on another page is
    another widget; re-assigning the keys at the top of every run is Streamlit's documented way to
    carry them across pages.
    """
    for key in SIDEBAR_KEYS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def _model_status(s: Settings) -> None:
    st.markdown("**Models**")
    for name in ("classical", s.hybrid):
        loaded = get_model(s.dataset, name, s.grad_mode, s.noise)
        if loaded.model is None:
            st.error(f"{name}: unavailable. {loaded.error}", icon=":material/block:")
        else:
            st.caption(f":material/check_circle: {name}: {_accuracy_text(loaded.card)}")


def _accuracy_text(card: dict) -> str:
    acc = card.get("clean_test_accuracy")
    if acc is None:
        return "no accuracy on card"
    if str(card.get("data", {}).get("source", "")).startswith("shipped samples"):
        return f"{100 * acc:.2f} % on the shipped samples it was trained on (a smoke run, not a test accuracy)"
    return f"{100 * acc:.2f} % clean test accuracy"


# --------------------------------------------------------------------------- models


def _file_stamp(dataset: str, model_name: str) -> tuple:
    """(mtime, size) of the card and weights the zoo would load: a replaced or modified file changes it."""
    if not zoo.NAME_PATTERN.fullmatch(model_name.removeprefix("hybrid-")):
        return ()
    files = zoo.model_files(dataset, model_name, zoo.find_directory(dataset, model_name))
    stamp = []
    for path in (files.card, files.weights):
        try:
            stat = path.stat()
        except OSError:
            stamp.append(None)
        else:
            stamp.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(stamp)


@st.cache_resource(max_entries=48, show_spinner="Loading model…")
def _load(dataset: str, model_name: str, grad_mode: str, noise_key: tuple | None, stamp: tuple = ()
          ) -> lab.LoadedModel:
    """Raises on failure, and Streamlit does not cache exceptions: a repaired file is picked up.
    ``stamp`` (:func:`_file_stamp`) only keys the cache."""
    noise = None if noise_key is None else NoiseModel(**dict(noise_key))
    return lab.load(dataset, model_name, grad_mode=grad_mode, noise=noise)


def get_model(dataset: str, model_name: str, grad_mode: str = "paper", noise: NoiseModel | None = None
              ) -> lab.LoadedModel:
    """A shared, read-only model instance, or a :class:`lab.LoadedModel` whose ``error`` says why not."""
    is_hybrid = is_hybrid_name(model_name)
    key = None if (noise is None or not is_hybrid) else tuple(sorted(noise.to_dict().items()))
    try:
        return _load(dataset, model_name, grad_mode if is_hybrid else "paper", key, _file_stamp(dataset, model_name))
    except ModelUnavailableError as err:
        return lab.LoadedModel(dataset, model_name, grad_mode if is_hybrid else None, None, {}, str(err))


def model_set(s: Settings, both_modes: bool = False, with_dnn: bool = False) -> dict[str, lab.LoadedModel]:
    """The models a page compares, by display key: classical, optionally the paper's DNN baseline, the hybrid,
    optionally its other mode."""
    models = {"classical": get_model(s.dataset, "classical")}
    if with_dnn:
        models["dnn"] = get_model(s.dataset, "dnn")
    modes = GRAD_MODES if both_modes else (s.grad_mode,)
    for mode in modes:
        models[f"{s.hybrid} ({mode})"] = get_model(s.dataset, s.hybrid, mode, s.noise)
    return models


def twin_of(s: Settings) -> lab.LoadedModel:
    """The hybrid's differentiable twin (the BPDA surrogate)."""
    return get_model(s.dataset, s.hybrid, "differentiable", s.noise)


@st.cache_data(max_entries=64, show_spinner=False)
def samples_of(dataset: str) -> list[dict]:
    """The shipped samples as plain dicts (cacheable)."""
    return lab.sample_table(dataset)


def committed_records() -> list[dict]:
    """The committed results (``results/*.json``); each file that cannot be read is shown as an error."""
    records, problems = lab.load_results()
    for problem in problems:
        st.error(problem)
    return records


# --------------------------------------------------------------------------- background jobs


@dataclass
class Job:
    """A long computation running in the process-wide pool on behalf of one session."""

    title: str
    future: Future
    progress: lab.Progress
    cancel: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.perf_counter)

    @property
    def done(self) -> bool:
        return self.future.done()


@st.cache_resource
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="qshield-job")


def start_job(key: str, title: str, work: Callable[[lab.Progress, threading.Event], Any]) -> Job:
    """Run ``work(progress, cancel)`` in the background and keep its handle in this session."""
    progress = lab.Progress()
    cancel = threading.Event()
    job = Job(title, _pool().submit(work, progress, cancel), progress, cancel)
    st.session_state[key] = job
    return job


def job_of(key: str) -> Job | None:
    return st.session_state.get(key)


def show_job(key: str, on_result: Callable[[Any], None]) -> None:
    """Poll this session's job every half second; hand its result over when it ends."""

    @st.fragment(run_every=0.5)
    def _poll() -> None:
        job = job_of(key)
        if job is None:
            return
        if not job.done:
            fraction, message = job.progress.snapshot()
            st.progress(fraction, text=f"{job.title}: {message} ({time.perf_counter() - job.started:.0f} s)")
            if st.button("Stop", key=f"{key}_stop"):
                job.cancel.set()
            return
        del st.session_state[key]
        try:
            on_result(job.future.result())
        except Exception as err:
            st.session_state[f"{key}_error"] = f"{type(err).__name__}: {err}"
        st.rerun()

    if job_of(key) is not None:
        _poll()
    error = st.session_state.pop(f"{key}_error", None)
    if error:
        st.error(f"The background run failed: {error}")


def start_sweep(job_key: str, title: str, s: Settings, attacks: list[str], eps_values: list[float],
                n_images: int, both_modes: bool = True) -> dict[str, lab.LoadedModel]:
    """Run :func:`lab.sweep` on the sidebar's models in the background; returns the models it attacks."""
    models = model_set(s, both_modes=both_modes)
    twin, classical, dataset = twin_of(s), models["classical"], s.dataset

    def work(progress: lab.Progress, cancel: threading.Event) -> lab.Sweep:
        return lab.sweep(dataset, models, attacks, eps_values, n_images, twin=twin, classical=classical,
                         progress=progress, cancel=cancel)

    start_job(job_key, title, work)
    return models


def sweep_result(job_key: str, result_key: str) -> lab.Sweep | None:
    """Show the progress of this session's sweep; its latest finished result (kept under ``result_key``)."""
    show_job(job_key, lambda result: st.session_state.__setitem__(result_key, result))
    return st.session_state.get(result_key)


# --------------------------------------------------------------------------- image pickers


def pick_sample(dataset: str, key: str) -> dict | None:
    """A shipped sample chosen by class and position; None (with a message) when none are shipped."""
    try:
        table = samples_of(dataset)
    except DataError as err:
        st.error(f"No shipped samples: {err}")
        return None
    spec = get_spec(dataset)
    classes = sorted({row["label"] for row in table})
    drop_invalid(f"{key}_class", classes)
    left, right = st.columns(2)
    label = left.selectbox("Class", classes, key=f"{key}_class", format_func=lambda c: f"{c}: {spec.class_names[c]}")
    rows = [row for row in table if row["label"] == label]
    drop_invalid(f"{key}_pos", range(len(rows)))
    position = right.selectbox("Sample", range(len(rows)), key=f"{key}_pos",
                               format_func=lambda i: f"{rows[i]['split']} #{rows[i]['index']}")
    return rows[min(position, len(rows) - 1)]


def drop_invalid(key: str, options) -> None:
    """Forget a preset widget value (e.g. from the URL) that is not among the widget's options."""
    if key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]


def clamp_state(key: str, low: int, high: int) -> None:
    """Keep a preset slider value (e.g. from the URL) inside the slider's range."""
    if key in st.session_state:
        st.session_state[key] = min(max(int(st.session_state[key]), low), high)


@st.cache_data(max_entries=256, show_spinner=False)
def sample_pixels(entry: dict) -> np.ndarray:
    """The (C, H, W) float pixels of a shipped sample (cached)."""
    return lab.sample_image(entry).numpy()


@st.cache_data(max_entries=64, show_spinner=False)
def circuit_png(config_json: str, angles: tuple) -> bytes:
    """PennyLane's drawing of the circuit with these angles, as PNG bytes (cached)."""
    config = CircuitConfig.from_dict(json.loads(config_json))
    shaped = np.asarray(angles, dtype=np.float64).reshape(config.n_qubits, -1)
    return lab.circuit_png(config, shaped[:, 0] if config.encoding == "angle" else shaped)
