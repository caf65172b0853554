"""The app's own circuit designs: the Quantum Circuit page trains one, the sidebar lists it, the Attack Lab attacks it.

Headless (``streamlit.testing.v1.AppTest``), with the fixtures of ``test_app.py`` (isolated results, fresh
caches) and a temporary user models folder. The training runs are smoke runs on the shipped samples (the
page's explicit test knob, ``st.session_state["qc_train_data"] = "samples"``): a few steps, seconds.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch
from test_app import TIMEOUT, _isolated, badges, no_exceptions, require_models, run_app, texts  # noqa: F401

from qshield_core import devices, zoo
from qshield_core import user_training as ut
from qshield_core.models import build_model
from qshield_core.quantum import CircuitConfig
from qshield_core.train import TrainingCancelled

QC = "pages/quantum_circuit.py"


@pytest.fixture(autouse=True)
def user_models(tmp_path, monkeypatch):
    """An empty user models folder ($QSHIELD_USER_MODELS) for every test."""
    folder = tmp_path / "user_models"
    monkeypatch.setenv("QSHIELD_USER_MODELS", str(folder))
    monkeypatch.setattr(zoo, "USER_MODELS_DIR", folder)
    return folder


def design_page(name: str = "", samples: bool = True, **query):
    """The Quantum Circuit page with the design's name typed in (and the samples knob set)."""
    at = run_app(QC, **query)
    if samples:
        at.session_state["qc_train_data"] = "samples"
    at.text_input(key="qc_d_name").input(name).run()
    no_exceptions(at)
    return at


def save_user_model(folder, name: str, dataset: str = "mnist") -> zoo.ModelFiles:
    """An untrained user model saved with a card, as training would (fast: no training)."""
    circuit = CircuitConfig.for_classes(10, entanglement="ring", depth=2)
    card = {"dataset": dataset, "model": name, "circuit": circuit.to_dict(), "clean_test_accuracy": 0.5,
            "noise_description": circuit.describe_noise()}
    torch.manual_seed(0)
    return zoo.save_model(build_model(dataset, name, circuit=circuit), card, dataset, name, folder)


def train_button(at):
    return at.button(key="qc_train")


# ----------------------------------------------------------------------------- Train, then attack


def test_the_train_button_produces_a_model_that_the_attack_lab_attacks(user_models):
    require_models("mnist", "classical", "hybrid-full")
    at = design_page("ring2")
    at.selectbox(key="qc_d_entanglement").set_value("ring")
    at.slider(key="qc_d_depth").set_value(2)
    at.toggle(key="qc_d_variational").set_value(True).run()
    assert any("Smoke run" in w.value for w in at.warning), "the page says the knob is set"
    assert "ring entanglement, depth 2, trainable layers" in texts(at)
    assert not train_button(at).disabled
    train_button(at).click().run()
    no_exceptions(at)
    outcome = at.session_state["qc_train_job"].future.result(timeout=TIMEOUT)
    assert not outcome.cancelled and outcome.model_name == "hybrid-ring2"
    at.run()
    no_exceptions(at)

    success = " ".join(s.value for s in at.success)
    assert "Trained **hybrid-ring2** for MNIST" in success and "mnist-hybrid-ring2.safetensors" in success
    assert "shipped samples" in success and "It is now the sidebar's hybrid" in success
    card = json.loads((user_models / "mnist-hybrid-ring2.json").read_text())
    assert card["data"]["source"].startswith("shipped samples") and card["init_from"]["model"] == "mnist-classical"
    assert card["design"]["source"] == ut.SOURCE and card["circuit"]["entanglement"] == "ring"
    assert card["trained_grad_mode"] == "differentiable", "trainable layers train through the circuit"
    hybrid = at.selectbox(key="qs_hybrid")
    assert "hybrid-ring2 (yours)" in hybrid.options and hybrid.value == "hybrid-ring2", "listed and selected"
    assert "depth 2 with trainable layers" in texts(at), "the page now shows the new model's circuit"
    assert any("hybrid-ring2: " in c.value and "smoke run" in c.value for c in at.caption), "the sidebar says so"

    at.switch_page("pages/attack_lab.py").run()
    no_exceptions(at)
    verdicts = badges(at)
    assert set(verdicts) == {"classical", "hybrid-ring2 (paper)"}
    verdict_lines = [m.value for m in at.markdown if "-badge[" in m.value]
    assert len(verdict_lines) == 2, "a verdict for each model"
    assert at.selectbox(key="qs_hybrid").value == "hybrid-ring2", "the choice is kept across pages"


def test_a_running_training_shows_progress_and_stops_on_request(user_models, monkeypatch):
    """``fit`` replaced by one that reports a step and then waits for the Stop button: no timing races."""
    require_models("mnist", "classical", "hybrid-full")
    reached = threading.Event()

    def slow_fit(cfg, *, on_step, cancel, **kwargs):
        on_step(1, 4)
        reached.set()
        assert cancel.wait(TIMEOUT), "the Stop button sets the cancel event"
        raise TrainingCancelled("stopped")

    monkeypatch.setattr(ut, "fit", slow_fit)
    at = design_page("slow")
    train_button(at).click().run()
    assert reached.wait(TIMEOUT)
    at.run()
    no_exceptions(at)
    bars = [p.proto for p in at.get("progress")]
    assert bars and "step 1 of 4" in bars[0].text and bars[0].value == 25
    assert train_button(at).disabled, "one training at a time"
    at.button(key="qc_train_job_stop").click().run()
    assert at.session_state["qc_train_job"].future.result(timeout=TIMEOUT).cancelled
    at.run()
    no_exceptions(at)
    assert any("hybrid-slow was stopped; nothing was saved" in i.value for i in at.info)
    assert not list(user_models.glob("*")) and len(at.selectbox(key="qs_hybrid").options) == 4


# ----------------------------------------------------------------------------- what stands in the way


def test_without_the_dataset_the_button_says_where_to_put_it(tmp_path, monkeypatch):
    require_models("mnist", "classical", "hybrid-full")
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("QSHIELD_DATA_ROOT", str(empty))
    at = design_page("mine", samples=False)
    warning = " ".join(w.value for w in at.warning)
    assert "MNIST is not on disk" in warning and str(empty) in warning and "QSHIELD_DATA_ROOT" in warning
    assert "MNIST/raw/train-images-idx3-ubyte" in warning
    assert train_button(at).disabled and "not on disk" in train_button(at).help


@pytest.mark.parametrize(("name", "message"), [
    ("../evil", "use letters, digits, '.', '_' and '-'"),
    ("full", "a shipped model's name"),
    ("a b", "use letters, digits"),
])
def test_bad_names_are_refused_with_a_message(name, message):
    require_models("mnist", "classical", "hybrid-full")
    at = design_page(name)
    assert any(message in w.value for w in at.warning), [w.value for w in at.warning]
    assert train_button(at).disabled


def test_a_taken_name_asks_for_another_or_an_explicit_overwrite(user_models):
    require_models("mnist", "classical", "hybrid-full")
    save_user_model(user_models, "hybrid-taken")
    at = design_page("taken")
    assert any("hybrid-taken already exists" in w.value and "overwrite it explicitly" in w.value for w in at.warning)
    assert train_button(at).disabled
    at.checkbox(key="qc_d_overwrite").check().run()
    assert not [w for w in at.warning if "already exists" in w.value] and not train_button(at).disabled


def test_an_unnamed_design_cannot_be_trained_yet():
    require_models("mnist", "classical", "hybrid-full")
    at = design_page("")
    assert train_button(at).disabled and train_button(at).help == "Name your design first."
    assert not [w for w in at.warning if "name" in w.value.lower()], "no warning before anything is typed"


def test_cifar10_designs_train_from_the_command_line():
    require_models("cifar10", "classical", "hybrid-full")
    at = design_page("mine", dataset="cifar10")
    assert any("MNIST and OrganAMNIST" in w.value and "python -m qshield_core train" in w.value for w in at.warning)
    assert train_button(at).disabled


def test_device_noise_lists_the_devices_or_says_how_to_enable_them(monkeypatch):
    require_models("mnist", "classical", "hybrid-full")
    if devices.snapshot_root() is not None:
        at = design_page("dev")
        assert devices.DEFAULT_DEVICE in at.selectbox(key="qc_d_device").options
        at.selectbox(key="qc_d_device").set_value(devices.DEFAULT_DEVICE).run()
        no_exceptions(at)
        assert "device noise: " in texts(at) and not train_button(at).disabled
    monkeypatch.setattr(devices, "snapshot_root", lambda: None)
    at = design_page("dev")
    assert not [s for s in at.selectbox if s.key == "qc_d_device"]
    assert any('pip install -e ".[devices]"' in i.value and "make devices" in i.value for i in at.info)


# ----------------------------------------------------------------------------- the sidebar


def test_user_models_join_the_sidebar_and_a_tampered_one_is_unavailable(user_models):
    require_models("mnist", "classical", "hybrid-full")
    save_user_model(user_models, "hybrid-good")
    bad = save_user_model(user_models, "hybrid-bad")
    data = bytearray(bad.weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.weights.write_bytes(bytes(data))
    at = run_app()
    options = at.selectbox(key="qs_hybrid").options
    assert options[:4] == ["hybrid-full", "hybrid-star", "hybrid-linear", "hybrid-none"]
    assert set(options[4:]) == {"hybrid-good (yours)", "hybrid-bad (yours)"}

    at.selectbox(key="qs_hybrid").set_value("hybrid-bad").run()
    no_exceptions(at)
    errors = " ".join(e.value for e in at.error)
    assert "hybrid-bad: unavailable" in errors and "does not match its model card" in errors
    assert "mnist-hybrid-bad.safetensors" in errors
    assert set(badges(at)) == {"classical"}, "the classical CNN is still attacked"

    at.selectbox(key="qs_hybrid").set_value("hybrid-good").run()
    no_exceptions(at)
    assert set(badges(at)) == {"classical", "hybrid-good (paper)"}
    at.switch_page("pages/claims.py").run()
    no_exceptions(at)
    assert any("cover the shipped models only" in i.value and "hybrid-good" in i.value for i in at.info)

    at.selectbox(key="qs_dataset").set_value("organamnist").run()
    no_exceptions(at)
    assert at.selectbox(key="qs_hybrid").value == "hybrid-full", "a user model of another dataset is not kept"


def test_every_other_page_works_with_a_user_model_in_the_sidebar(user_models):
    """The pages that cover the shipped models only say so; the others take the user's hybrid by name."""
    require_models("mnist", "classical", "hybrid-full")
    save_user_model(user_models, "hybrid-mine")
    at = run_app(hybrid="hybrid-mine")  # a link may name a user model too
    assert at.selectbox(key="qs_hybrid").value == "hybrid-mine"
    for page in ("pages/gallery.py", "pages/story.py", "pages/robustness_explorer.py", "pages/attacker_cost.py",
                 "pages/certified.py", "pages/about.py"):
        at.switch_page(page).run()
        no_exceptions(at)
        assert at.selectbox(key="qs_hybrid").value == "hybrid-mine", page
        if page == "pages/gallery.py":
            assert "hybrid-mine" in texts(at) and at.button(key="gal_compute").label == "Compute", "computed on request"
        if page == "pages/robustness_explorer.py":
            assert any("cover the shipped models only" in i.value for i in at.info)
