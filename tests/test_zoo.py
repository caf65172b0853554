"""The model zoo: a save/load round trip, refusal of damaged files, and the shipped model cards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import require_samples, shipped_cards

from qshield_core.data import get_spec, load_samples
from qshield_core.models import QShieldHybrid, build_model
from qshield_core.train import default_config, fit, make_optimizer
from qshield_core.zoo import (
    PRETRAINED_DIR,
    ModelUnavailableError,
    available_models,
    load_model,
    model_files,
    read_card,
    save_model,
    sha256_file,
)


def save_small(directory: Path, model_name: str = "classical"):
    torch.manual_seed(0)
    model = build_model("mnist", model_name, grad_mode="differentiable").eval()
    card = {"dataset": "mnist", "model": model_name}
    if isinstance(model, QShieldHybrid):
        card["circuit"] = model.circuit_config.to_dict()
    files = save_model(model, card, "mnist", model_name, directory)
    return model, files


@pytest.mark.parametrize("model_name", ["classical", "dnn", "hybrid-full"])
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
    if card["model"].startswith("hybrid-"):
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
