"""Training a design for the app (``qshield_core.user_training``): checks, progress, cancel, where it is saved.

The runs are smoke runs on the shipped samples (``data="samples"``, two steps), in a temporary user models folder.
"""

from __future__ import annotations

import threading

import pytest
from conftest import require_samples

from qshield_core import devices, zoo
from qshield_core import user_training as ut
from qshield_core.models import QShieldHybrid


@pytest.fixture(autouse=True)
def user_models(tmp_path, monkeypatch):
    require_samples()
    if not zoo.model_files("mnist", "classical").weights.is_file():
        pytest.skip("the shipped mnist-classical model is not in pretrained/ yet")
    folder = tmp_path / "user_models"
    monkeypatch.setenv("QSHIELD_USER_MODELS", str(folder))
    monkeypatch.setattr(zoo, "USER_MODELS_DIR", folder)
    return folder


def request(name: str = "ring2", **kwargs) -> ut.TrainRequest:
    circuit = kwargs.pop("circuit", ut.circuit_fields("ring", depth=2, variational=True, noise_kind="depolarizing",
                                                     p=0.02, noise_placement="end", shots=None))
    return ut.TrainRequest("mnist", name, circuit, data=kwargs.pop("data", "samples"), **kwargs)


def test_a_design_trains_from_the_shipped_cnn_into_the_user_models_folder(user_models):
    steps = []
    outcome = ut.train_design(request(), progress=lambda step, total: steps.append((step, total)))
    assert not outcome.cancelled and outcome.model_name == "hybrid-ring2"
    assert steps == [(1, 2), (2, 2)], "100 samples in batches of 50: two steps, each reported"
    assert outcome.files.weights == user_models / "mnist-hybrid-ring2.safetensors" and outcome.files.card.is_file()
    assert not list(zoo.PRETRAINED_DIR.glob("*ring2*")), "never in pretrained/"
    card = outcome.card
    assert outcome.on_samples and card["data"]["source"].startswith("shipped samples"), "the card says so"
    assert card["init_from"]["model"] == "mnist-classical" and card["epochs"] == 1
    assert card["hyperparameters"]["lr"] == 1e-3 and card["hyperparameters"]["cnn_lr_scale"] == 0.1, "hybrid recipe"
    assert card["trained_grad_mode"] == "differentiable" and card["design"]["source"] == ut.SOURCE
    circuit = card["circuit"]
    assert (circuit["entanglement"], circuit["depth"], circuit["variational"], circuit["noise_placement"]) == (
        "ring", 2, True, "end")
    assert circuit["noise"]["kind"] == "depolarizing" and circuit["noise"]["p"] == 0.02
    assert zoo.user_models("mnist") == ["hybrid-ring2"]
    model, _ = zoo.load_model("mnist", "hybrid-ring2")  # found by name, checked against its card
    assert isinstance(model, QShieldHybrid) and model.circuit_config.depth == 2


def test_cancel_stops_between_steps_and_saves_nothing(user_models):
    cancel, steps = threading.Event(), []

    def progress(step: int, total: int) -> None:
        steps.append(step)
        cancel.set()

    outcome = ut.train_design(request("stopped"), progress=progress, cancel=cancel)
    assert outcome.cancelled and outcome.files is None and steps == [1], "stopped before the second step"
    assert not user_models.exists() or not list(user_models.iterdir())
    assert ut.problems(request("stopped")) == [], "the name is free again"


def test_an_existing_name_needs_an_explicit_overwrite(user_models):
    ut.train_design(request("twice"))
    assert any("already exists" in p and "overwrite it explicitly" in p for p in ut.problems(request("twice")))
    with pytest.raises(ValueError, match="already exists"):
        ut.train_design(request("twice"))
    assert ut.problems(request("twice", overwrite=True)) == []


@pytest.mark.parametrize(("name", "message"), [
    ("", "Give your design a name"),
    ("../up", "use letters, digits"),
    ("hybrid-star", "a shipped model's name"),
    ("x" * 81, "at most 80"),
])
def test_bad_names_are_refused(name, message):
    found = ut.problems(request(name))
    assert len(found) == 1 and message in found[0]


def test_missing_data_says_where_to_put_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    found = ut.problems(request(data="dataset", data_root=str(empty)))
    assert len(found) == 1 and "MNIST is not on disk" in found[0] and str(empty) in found[0]
    assert "QSHIELD_DATA_ROOT" in found[0] and "train-images-idx3-ubyte" in found[0]
    assert ut.problems(request(data="samples", data_root=str(empty))) == [], "the samples need no dataset"


def test_device_noise_without_the_extra_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(devices, "snapshot_root", lambda: None)
    found = ut.problems(request(circuit=ut.circuit_fields(device="kolkata")))
    assert found == [ut.DEVICES_HINT] and 'pip install -e ".[devices]"' in found[0] and "make devices" in found[0]


def test_other_requests_are_refused_with_the_reason():
    assert "python -m qshield_core train --dataset cifar10" in ut.problems(ut.TrainRequest("cifar10", "x"))[0]
    assert "cannot be built" in ut.problems(request(circuit={"depth": 0}))[0]
    assert "data must be one of" in ut.problems(request(data="elsewhere"))[0]
    assert ut.circuit_fields(noise_kind="none", p=0.5, shots=0)["noise"] == {"kind": "none", "p": 0.0}
