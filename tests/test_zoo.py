"""The model zoo: a save/load round trip, refusal of damaged files, and the shipped model cards."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from conftest import require_samples, shipped_cards

from qshield_core import zoo
from qshield_core.data import get_spec, load_samples
from qshield_core.designs import Design
from qshield_core.evaluation import runner
from qshield_core.models import QShieldHybrid, build_model, is_hybrid_name
from qshield_core.quantum import CircuitConfig
from qshield_core.train import default_config, fit, init_weights, make_optimizer, predict
from qshield_core.zoo import (
    PRETRAINED_DIR,
    ModelUnavailableError,
    available_models,
    load_model,
    model_files,
    read_card,
    save_model,
    sha256_file,
    user_model_name,
    user_models,
)


def save_small(directory: Path, model_name: str = "classical"):
    torch.manual_seed(0)
    model = build_model("mnist", model_name, grad_mode="differentiable").eval()
    card = {"dataset": "mnist", "model": model_name}
    if isinstance(model, QShieldHybrid):
        card["circuit"] = model.circuit_config.to_dict()
    files = save_model(model, card, "mnist", model_name, directory)
    return model, files


@pytest.mark.parametrize("model_name", ["classical", "dnn", "hybrid-full", "resnet18", "resnet18-hybrid-full"])
def test_round_trip(tmp_path, model_name):
    model, files = save_small(tmp_path, model_name)
    assert read_card("mnist", model_name, tmp_path)["weights_sha256"] == sha256_file(files.weights)
    loaded, card = load_model("mnist", model_name, grad_mode="differentiable", directory=tmp_path)
    assert not loaded.training and card["model"] == model_name
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_weights_are_not_pickles(tmp_path):
    _, files = save_small(tmp_path)
    header_size = int.from_bytes(files.weights.read_bytes()[:8], "little")
    header = json.loads(files.weights.read_bytes()[8: 8 + header_size])
    assert header["__metadata__"] == {"dataset": "mnist", "model": "classical"}


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def set_card(path: Path, **changes) -> None:
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **changes)))


DAMAGE = {
    "tampered weights": (lambda f: flip_one_byte(f.weights), "weights", "does not match"),
    "truncated weights": (lambda f: truncate(f.weights), "weights", "does not match"),
    "missing weights": (lambda f: f.weights.unlink(), "weights", "not found"),
    "missing weights beside a card": (lambda f: f.weights.unlink(), "weights", "card mnist-classical.json is there"),
    "missing card": (lambda f: f.card.unlink(), "card", "not found"),
    "wrong sha in card": (lambda f: set_card(f.card, weights_sha256="0" * 64), "weights", "does not match"),
    "card not JSON": (lambda f: f.card.write_text("{'dataset': 'mnist',"), "card", "not valid JSON"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_model_is_refused_naming_the_file(tmp_path, damage):
    _, files = save_small(tmp_path)
    apply, which, phrase = DAMAGE[damage]
    apply(files)
    with pytest.raises(ModelUnavailableError) as info:
        load_model("mnist", "classical", directory=tmp_path)
    assert str(getattr(files, which)) in str(info.value)
    assert phrase in str(info.value)


def test_matching_sha_but_unreadable_weights_is_refused(tmp_path):
    """A card re-signed for a corrupted file still cannot load it: safetensors refuses, with the file named."""
    _, files = save_small(tmp_path)
    truncate(files.weights)
    set_card(files.card, weights_sha256=sha256_file(files.weights))
    with pytest.raises(ModelUnavailableError, match=str(files.weights)):
        load_model("mnist", "classical", directory=tmp_path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    _, files = save_small(tmp_path)
    set_card(files.card, dataset="organamnist")  # the card now describes a wider CNN with 11 classes
    renamed = model_files("organamnist", "classical", tmp_path)
    files.card.rename(renamed.card)
    files.weights.rename(renamed.weights)
    with pytest.raises(ModelUnavailableError, match="could not be loaded"):
        load_model("organamnist", "classical", directory=tmp_path)


def test_dnn_trained_on_the_samples_writes_a_card_and_loads_back_by_name(tmp_path):
    """A tiny run of the DNN recipe (Adam, constant lr, no augmentation) on the shipped samples: the card
    describes the paper's DNN, and the zoo rebuilds the same network from the name alone."""
    require_samples()
    cfg = default_config("mnist", "dnn", epochs=2, batch_size=20, extra={"data": "samples"})
    assert (cfg.lr, cfg.weight_decay, cfg.augment, cfg.init_from) == (1e-3, 1e-4, "none", None)
    result = fit(cfg, out_dir=tmp_path, checkpoint_dir=tmp_path / "checkpoints", log=lambda _m: None)
    card = read_card("mnist", "dnn", tmp_path)
    assert card["model"] == "dnn" and card["parameter_count"] == 569_226 and "circuit" not in card
    assert card["architecture"].startswith("mlp(784, 512, 256, 128, 10)") and "no convolution" in card["architecture"]
    assert card["paper_model"]["name"] == "DNN" and card["input"]["output"] == "logits"
    assert [h["epoch"] for h in card["history"]] == [1, 2] and card["history"][1]["train_loss"] < 2.5
    assert "dnn" in available_models("mnist", tmp_path)
    loaded, loaded_card = load_model("mnist", "dnn", directory=tmp_path)
    assert loaded_card["weights_sha256"] == card["weights_sha256"] and not loaded.training
    images, labels = load_samples("mnist")
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), result.model(images), atol=0, rtol=0)
    accuracy = float((loaded(images).argmax(-1) == labels).float().mean())
    assert accuracy == pytest.approx(card["clean_test_accuracy"], abs=1e-4)  # samples: train split = test split


def test_dnn_optimiser_is_adam_at_a_constant_learning_rate():
    cfg = default_config("cifar10", "dnn")
    model = build_model("cifar10", "dnn")
    opt, sched = make_optimizer(model, cfg, steps=100)
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["weight_decay"] == 1e-4
    for _ in range(50):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == [1e-3]


def test_unknown_model_name_is_refused(tmp_path):
    with pytest.raises(ModelUnavailableError, match="Unknown model"):
        load_model("mnist", "resnet50", directory=tmp_path)


# --------------------------------------------------------------------------- shipped models

REQUIRED = ("dataset", "model", "architecture", "parameter_count", "data", "epochs", "seed", "clean_test_accuracy",
            "n_test", "train_seconds", "versions", "weights_sha256")
REQUIRED_HYBRID = ("mean_alpha_test", "circuit")
TEST_SIZES = {"mnist": 10000, "organamnist": 17778, "cifar10": 10000}
CARDS = shipped_cards()


def test_shipped_models_exist_or_skip():
    if not CARDS:
        pytest.skip(f"no model cards in {PRETRAINED_DIR} yet")
    assert all(card.with_suffix(".safetensors").is_file() for card in CARDS)


@pytest.mark.parametrize("card_path", CARDS, ids=[c.stem for c in CARDS])
def test_shipped_card(card_path):
    card = json.loads(card_path.read_text())
    missing = [k for k in REQUIRED if k not in card]
    if is_hybrid_name(card["model"]):
        missing += [k for k in REQUIRED_HYBRID if k not in card]
        assert 0.0 <= card["mean_alpha_test"] <= 1.0
    assert not missing, f"{card_path.name} lacks {missing}"
    assert card_path.stem == f"{card['dataset']}-{card['model']}"
    assert card["data"]["source"] and card["data"]["checksum"]
    assert card["n_test"] == TEST_SIZES[card["dataset"]]
    assert 0.0 < card["clean_test_accuracy"] <= 1.0 and card["train_seconds"] > 0
    assert {"torch", "pennylane"} <= set(card["versions"])
    assert sha256_file(card_path.with_suffix(".safetensors")) == card["weights_sha256"]


@pytest.mark.parametrize("card_path", CARDS, ids=[c.stem for c in CARDS])
def test_shipped_card_rebuilds_its_architecture_and_recipe(card_path):
    """Every shipped card is rebuilt as the network its weights were saved from (same tensors, bit for bit), and
    today's recipe for its name is the one it was trained with (the ResNet-18 names left the others alone)."""
    from safetensors.torch import load_file

    card = json.loads(card_path.read_text())
    model, _ = load_model(card["dataset"], card["model"])
    saved = load_file(str(card_path.with_suffix(".safetensors")))
    state = model.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    recipe = asdict(default_config(card["dataset"], card["model"]))
    assert {k: recipe[k] for k in card["hyperparameters"]} == card["hyperparameters"]


@pytest.mark.parametrize("card_path", CARDS, ids=[c.stem for c in CARDS])
def test_shipped_model_classifies_the_shipped_samples(card_path):
    require_samples()
    card = json.loads(card_path.read_text())
    model, _ = load_model(card["dataset"], card["model"], grad_mode="differentiable")
    images, labels = load_samples(card["dataset"])
    with torch.no_grad():
        accuracy = float((model(images).argmax(-1) == labels).float().mean())
    # Samples are 10 per class, so allow for class imbalance and sampling: 15 points below the card.
    assert accuracy >= card["clean_test_accuracy"] - 0.15, f"{card_path.stem}: {accuracy:.3f} on samples"
    assert model(images[:1]).shape == (1, get_spec(card["dataset"]).num_classes)


# --------------------------------------------------------------------------- models trained from circuit designs


@pytest.fixture
def model_folders(tmp_path, monkeypatch):
    """Empty shipped and user folders, so that lookups by name see only what a test puts there."""
    shipped, user = tmp_path / "pretrained", tmp_path / "user_models"
    monkeypatch.setattr(zoo, "PRETRAINED_DIR", shipped)
    monkeypatch.setattr(zoo, "USER_MODELS_DIR", user)
    runner._load.cache_clear()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield shipped, user
    torch.set_num_threads(previous)
    runner._load.cache_clear()


def test_a_trained_design_is_saved_apart_loads_by_name_and_is_refused_when_tampered(model_folders, tmp_path):
    require_samples()
    shipped, user = model_folders
    design = Design("tiny-depth2", {"entanglement": "ring", "depth": 2, "variational": True,
                                    "noise": {"kind": "depolarizing", "p": 0.05}, "noise_placement": "end"},
                    "a test design", "inline")
    circuit = design.config_for("mnist")
    name = user_model_name(design.name)
    cfg = replace(default_config("mnist", name, epochs=1, batch_size=16, circuit=circuit.to_dict(),
                                 extra={"data": "samples", "design": design.card_entry()}), init_from=None)
    assert cfg.grad_mode == "differentiable"  # trainable layers learn only with a gradient through the circuit
    result = fit(cfg, checkpoint_dir=tmp_path / "checkpoints", log=lambda _m: None)
    assert result.files.card.parent == user and not shipped.exists()
    card = result.card
    assert CircuitConfig.from_dict(card["circuit"]) == circuit == result.model.circuit_config
    assert card["design"] == design.card_entry() and card["trained_grad_mode"] == "differentiable"
    assert "noise once after the last layer" in card["noise_description"]
    images, labels = load_samples("mnist")
    assert result.model.grad_mode == "differentiable"  # left in the mode it was trained in
    for mode in ("differentiable", "paper"):  # each mode's accuracy measured in that mode, as predict sees it
        result.model.grad_mode = mode
        measured = float((predict(result.model, images, seed=cfg.seed) == labels).float().mean())
        assert card["clean_test_accuracy_by_grad_mode"][mode] == round(measured, 4)
    assert card["clean_test_accuracy"] == card["clean_test_accuracy_by_grad_mode"]["differentiable"]
    initial = init_weights(build_model("mnist", name, circuit=circuit), torch.Generator().manual_seed(cfg.seed))
    assert not torch.equal(initial.quantum.weights, result.model.quantum.weights)  # the circuit's layers trained

    assert name in user_models("mnist") and name not in available_models("mnist")
    loaded, loaded_card = load_model("mnist", name, grad_mode="differentiable")  # by name alone
    assert loaded_card == card
    result.model.grad_mode = "differentiable"
    with torch.no_grad():
        assert torch.equal(loaded(images), result.model(images))
    flip_one_byte(result.files.weights)
    with pytest.raises(ModelUnavailableError, match="does not match") as info:
        load_model("mnist", name)
    assert str(result.files.weights) in str(info.value)


def test_shipped_models_come_first_and_design_names_are_checked(model_folders):
    shipped, user = model_folders
    torch.manual_seed(0)
    circuit = CircuitConfig.for_classes(10, depth=2)
    for folder, seed in ((shipped, 1), (user, 2)):
        torch.manual_seed(seed)
        model = build_model("mnist", "hybrid-twice", circuit=circuit)
        save_model(model, {"dataset": "mnist", "model": "hybrid-twice", "circuit": circuit.to_dict(), "seed": seed},
                   "mnist", "hybrid-twice", folder)
    assert load_model("mnist", "hybrid-twice")[1]["seed"] == 1
    assert zoo.find_directory("mnist", "hybrid-twice") == shipped
    for bad in ("full", "hybrid-none", "../escape", "a/b", ""):
        with pytest.raises(ValueError):
            user_model_name(bad)
    assert user_model_name("my.design_2") == "hybrid-my.design_2"
    with pytest.raises(ModelUnavailableError, match="Unknown model"):
        load_model("mnist", "hybrid-../../etc")


def test_a_finite_shot_design_is_judged_over_draws_and_gets_eot(model_folders):
    require_samples()
    _, user = model_folders
    for name, shots in (("hybrid-exact", None), ("hybrid-sampled", 500)):
        torch.manual_seed(0)
        circuit = CircuitConfig.for_classes(10, shots=shots)
        save_model(build_model("mnist", name, circuit=circuit), {"dataset": "mnist", "model": name,
                                                                 "circuit": circuit.to_dict()}, "mnist", name, user)
    assert runner.has_finite_shots("mnist", "hybrid-sampled") and not runner.has_finite_shots("mnist", "hybrid-exact")
    cells = runner.plan_cells(["mnist"], ["hybrid-exact", "hybrid-sampled"], ["differentiable"], ["eot-pgd"], n=10,
                              source="samples")
    assert [c.model for c in cells] == ["hybrid-sampled"]  # EOT only where the model is randomised
    record = runner.evaluate_cell("mnist", "hybrid-sampled", "differentiable", "fgsm", None, 10, source="samples",
                                  draws=2)
    assert record["draws"]["n_draws"] == 2 and record["model"] == "hybrid-sampled"
