"""Training: seeded determinism (also next to threads that use the global generator), resume with
its history, and the model card the zoo and the app read. Tiny runs on the shipped samples."""

from __future__ import annotations

import hashlib
import shutil
import threading
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_samples
from torch import nn

from qshield_core import lab, rng
from qshield_core.data import SAMPLES_INDEX, list_samples, load_samples
from qshield_core.models import QShieldHybrid, build_model, count_parameters
from qshield_core.quantum import CircuitConfig
from qshield_core.train import (
    GeneratorDropout,
    TrainConfig,
    checkpoint_path,
    default_config,
    fit,
    generator_dropout,
    init_weights,
    predict,
)
from qshield_core.zoo import load_model, sha256_file


@pytest.fixture(autouse=True)
def _samples_and_one_thread():
    """Tiny runs are fastest on one thread (two threads crawl on a loaded 2-core machine)."""
    require_samples()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def quiet(_message: str) -> None:
    pass


def tiny(model: str = "classical", **overrides) -> TrainConfig:
    """The shipped recipe on the 100 MNIST samples, 6 batches of 16 an epoch; hybrids from scratch."""
    cfg = default_config("mnist", model, batch_size=16, epochs=overrides.pop("epochs", 1), extra={"data": "samples"},
                         **overrides)
    return replace(cfg, init_from=None) if "init_from" not in overrides else cfg


def run(cfg: TrainConfig, directory: Path, **kwargs):
    return fit(cfg, out_dir=directory, checkpoint_dir=directory / "checkpoints", log=kwargs.pop("log", quiet),
               **kwargs)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    """Bit for bit (``torch.equal`` would take -0.0 for 0.0)."""
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(bits(a[k]), bits(b[k])) for k in a)


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(-1).view(torch.uint8)


def stable_fields(card: dict) -> dict:
    """The card less what changes between identical runs: timings, and the weights file's SHA-256
    (safetensors writes its metadata in hash-map order, so identical weights can give other bytes)."""
    volatile = ("train_seconds", "train_cpu_seconds", "weights_sha256")
    return dict({k: v for k, v in card.items() if k not in volatile}, history=without_seconds(card["history"]))


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# --------------------------------------------------------------------------- random state


@pytest.mark.parametrize(("dataset", "model_name", "circuit"), [
    ("mnist", "classical", None), ("cifar10", "classical", None),
    ("mnist", "hybrid-full", CircuitConfig(n_qubits=4, variational=True)),
])
def test_init_weights_redraws_torch_default_initialisation(dataset, model_name, circuit):
    torch.manual_seed(3)
    reference = build_model(dataset, model_name, circuit=circuit)
    model = init_weights(build_model(dataset, model_name, circuit=circuit), torch.Generator().manual_seed(3))
    assert same_weights(weights(model), weights(reference))
    other = init_weights(build_model(dataset, model_name, circuit=circuit), torch.Generator().manual_seed(4))
    assert not same_weights(weights(other), weights(reference))


def test_init_weights_lets_a_module_initialise_itself_and_draws_the_rest_as_before():
    """The ResNet-18 backbone draws torchvision's initialisation (its ``reset_parameters_from``); the rest of a hybrid
    on it is re-drawn as torch's default initialisation, from the same generator, after it."""
    model = init_weights(build_model("mnist", "resnet18-hybrid-full"), torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    backbone = build_model("mnist", "resnet18")
    backbone.reset_parameters_from(generator)
    assert same_weights(weights(model.cnn), weights(backbone))
    torch.manual_seed(5)
    head = build_model("mnist", "hybrid-full").fusion
    fusion = init_weights(nn.Sequential(head), generator)[0]
    assert same_weights(weights(model.fusion), weights(fusion))


def test_generator_dropout_draws_from_the_scope_generator():
    layer = GeneratorDropout(0.25).train()
    x = torch.ones(200, 500)
    with rng.seeded(5):
        first = layer(x)
    with rng.seeded(5):
        second = layer(x)
    with rng.seeded(6):
        third = layer(x)
    assert torch.equal(first, second) and not torch.equal(first, third)
    with rng.seeded(5):
        torch_dropout = nn.Dropout(0.25).train()(x)
    assert set(first.unique().tolist()) == set(torch_dropout.unique().tolist())  # same scaling as nn.Dropout
    assert abs(float((first == 0).float().mean()) - 0.25) < 0.01
    assert torch.equal(layer.eval()(x), x)


def test_generator_dropout_swaps_and_restores():
    model = build_model("mnist", "classical")
    dropouts = [m for m in model.modules() if type(m) is nn.Dropout]
    assert dropouts
    with generator_dropout(model):
        assert not any(type(m) is nn.Dropout for m in model.modules())
        assert sum(isinstance(m, GeneratorDropout) for m in model.modules()) == len(dropouts)
    assert [m for m in model.modules() if type(m) is nn.Dropout] == dropouts
    with pytest.raises(TypeError, match="Dropout2d draws from torch's global generator"), \
            generator_dropout(nn.Sequential(nn.Dropout2d(0.1))):
        pass


@pytest.mark.parametrize("model_name", ["classical", "hybrid-full"])
def test_same_config_gives_identical_weights(tmp_path, model_name):
    first = run(tiny(model_name), tmp_path / "a")
    second = run(tiny(model_name), tmp_path / "b")
    assert same_weights(weights(first.model), weights(second.model))
    assert stable_fields(first.card) == stable_fields(second.card)
    other = run(tiny(model_name, seed=1), tmp_path / "c")
    assert not same_weights(weights(first.model), weights(other.model))


def test_fit_leaves_the_global_generators_alone(tmp_path):
    torch.manual_seed(11)
    np.random.seed(11)
    before = torch.get_rng_state(), np.random.get_state()[1].copy()
    run(tiny("hybrid-full"), tmp_path)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1])


def test_training_in_a_thread_is_unaffected_by_other_threads(tmp_path):
    """The app's case: a run in a thread gives the solo run's weights while others draw random numbers."""
    solo = weights(run(tiny("hybrid-full"), tmp_path / "solo").model)
    stop, draws = threading.Event(), {"global": 0, "seeded": 0}

    def global_drawer() -> None:  # unlocked draws from torch's global generator
        while not stop.is_set():
            torch.randn(64)
            draws["global"] += 1

    def seeded_drawer() -> None:  # another seeded computation (an attack, say), re-seeding the globals
        while not stop.is_set():
            with rng.seeded(draws["seeded"]):
                torch.rand(64)
            draws["seeded"] += 1

    result = {}
    others = [threading.Thread(target=global_drawer), threading.Thread(target=seeded_drawer)]
    trainer = threading.Thread(target=lambda: result.update(r=run(tiny("hybrid-full"), tmp_path / "busy")))
    for thread in others:
        thread.start()
    try:
        trainer.start()
        trainer.join(timeout=300)
    finally:
        stop.set()
        for thread in others:
            thread.join()
    assert not trainer.is_alive() and "r" in result
    assert draws["global"] > 0 and draws["seeded"] > 0
    assert same_weights(weights(result["r"].model), solo)


# --------------------------------------------------------------------------- resume


class Interrupted(Exception):
    pass


def interrupt_after_epoch(epoch: int):
    def log(message: str) -> None:
        if message.startswith(f'{{"epoch": {epoch},'):
            raise Interrupted
    return log


def test_resume_gives_the_uninterrupted_run_and_its_history(tmp_path):
    cfg = tiny(epochs=2)
    whole = run(cfg, tmp_path / "whole")
    with pytest.raises(Interrupted):
        run(cfg, tmp_path / "parts", log=interrupt_after_epoch(1))
    assert checkpoint_path(cfg, tmp_path / "parts" / "checkpoints").is_file()
    messages: list[str] = []
    resumed = run(cfg, tmp_path / "parts", resume=True, log=messages.append)
    assert any(m.startswith("resumed from") and "at epoch 1" in m for m in messages)
    assert sum(m.startswith('{"epoch"') for m in messages) == 1  # only epoch 2 was trained again
    assert [row["epoch"] for row in resumed.card["history"]] == [1, 2]
    assert without_seconds(resumed.card["history"]) == without_seconds(whole.card["history"])
    assert same_weights(weights(resumed.model), weights(whole.model))
    assert resumed.card["clean_test_accuracy"] == whole.card["clean_test_accuracy"]


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    run(tiny(), tmp_path)
    with pytest.raises(ValueError, match=r"another configuration.*seed"):
        run(tiny(seed=1), tmp_path, resume=True)


# --------------------------------------------------------------------------- the model card


def samples_checksum(dataset: str) -> str:
    return hashlib.sha256(b"".join(sample.path.read_bytes() for sample in list_samples(dataset))).hexdigest()


def test_card_has_what_the_zoo_and_the_app_read(tmp_path):
    cfg = tiny(epochs=2)
    result = run(cfg, tmp_path)
    card, images, labels = result.card, *load_samples("mnist")
    assert result.files.card.parent == tmp_path and card["weights_sha256"] == sha256_file(result.files.weights)
    assert (card["dataset"], card["model"], card["epochs"], card["seed"]) == ("mnist", "classical", 2, 0)
    assert card["hyperparameters"] == {k: v for k, v in asdict(cfg).items() if k not in ("dataset", "model")}
    assert card["parameter_count"] == count_parameters(result.model) == count_parameters(build_model("mnist",
                                                                                                     "classical"))
    assert card["n_test"] == len(labels) and card["data"]["train_size"] == len(labels)
    assert "shipped samples" in card["data"]["source"]
    assert card["data"]["checksum"]["value"] == samples_checksum("mnist")
    assert card["data"]["checksum"]["index_sha256"] == hashlib.sha256(SAMPLES_INDEX.read_bytes()).hexdigest()
    accuracy = float((predict(result.model, images) == labels).float().mean())
    assert card["clean_test_accuracy"] == round(accuracy, 4)
    assert [row["epoch"] for row in card["history"]] == [1, 2]
    assert isinstance(card["train_seconds"], float) and {"torch", "pennylane"} <= set(card["versions"])
    assert all(type(m) is not GeneratorDropout for m in result.model.modules())

    loaded, loaded_card = load_model("mnist", "classical", directory=tmp_path)
    assert loaded_card == card
    with torch.no_grad():
        assert torch.equal(loaded(images), result.model(images))
    row = lab.model_cards_frame(tmp_path).iloc[0]
    assert (row["model"], row["n test"], row["parameters"]) == ("classical", len(labels), card["parameter_count"])


def test_hybrid_card_names_its_init_and_loads_back(tmp_path):
    classical = run(tiny(), tmp_path / "classical")
    for path in (classical.files.weights, classical.files.card):
        shutil.copy(path, tmp_path)
    result = run(tiny("hybrid-full", init_from="classical"), tmp_path)
    card, (images, labels) = result.card, load_samples("mnist")
    assert isinstance(result.model, QShieldHybrid)
    assert card["init_from"] == {"model": "mnist-classical", "weights_sha256": classical.card["weights_sha256"],
                                 "train_seconds": classical.card["train_seconds"]}
    assert CircuitConfig.from_dict(card["circuit"]) == result.model.circuit_config
    assert 0.0 <= card["mean_alpha_test"] <= 1.0
    assert card["clean_test_accuracy_by_grad_mode"]["paper"] == card["clean_test_accuracy"]
    paper = float((predict(result.model, images, seed=0) == labels).float().mean())
    assert card["clean_test_accuracy"] == round(paper, 4)  # the paper mode's draws are seeded

    loaded, _ = load_model("mnist", "hybrid-full", directory=tmp_path)
    for mode in ("differentiable", "paper"):
        loaded.grad_mode = result.model.grad_mode = mode
        with torch.no_grad(), rng.seeded(9):
            expected = result.model(images)
        with torch.no_grad(), rng.seeded(9):
            assert torch.equal(loaded(images), expected)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"extra": {"date": "samples"}}, "Unknown TrainConfig.extra keys"),
    ({"extra": {"data": "imagenet"}}, r"extra\['data'\] must be one of"),
    ({"seed": -1}, "non-negative"),
    ({"epochs": 0}, "at least 1"),
])
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig("mnist", "classical", **{"epochs": 1, **kwargs})


def test_unknown_model_and_oversized_batch_are_refused(tmp_path):
    with pytest.raises(ValueError, match="No training recipe"):
        default_config("mnist", "resnet50")
    with pytest.raises(ValueError, match="larger than the 100 training images"):
        run(replace(tiny(), batch_size=128), tmp_path)


def test_a_checkpoint_from_before_the_design_fields_still_resumes(tmp_path):
    """Checkpoints written before TrainConfig had ``circuit`` and ``grad_mode`` store no such keys: they read as
    the defaults, and a changed design is still refused."""
    cfg = tiny(epochs=2)
    with pytest.raises(Interrupted):
        run(cfg, tmp_path, log=interrupt_after_epoch(1))
    path = checkpoint_path(cfg, tmp_path / "checkpoints")
    state = torch.load(path, weights_only=True)
    for key in ("circuit", "grad_mode"):
        del state["config"][key]
    torch.save(state, path)
    messages: list[str] = []
    resumed = run(cfg, tmp_path, resume=True, log=messages.append)
    assert any("at epoch 1" in m for m in messages) and [r["epoch"] for r in resumed.card["history"]] == [1, 2]
    with pytest.raises(ValueError, match=r"another configuration.*grad_mode"):
        run(replace(cfg, grad_mode="differentiable"), tmp_path, resume=True)


def test_a_design_needs_its_circuit():
    with pytest.raises(ValueError, match="give its circuit"):
        TrainConfig("mnist", "hybrid-mine", 1)
    with pytest.raises(ValueError, match="needs a hybrid model"):
        TrainConfig("mnist", "classical", 1, circuit=CircuitConfig().to_dict())
    with pytest.raises(ValueError, match="grad_mode"):
        TrainConfig("mnist", "hybrid-full", 1, grad_mode="sideways")
    cfg = default_config("mnist", "hybrid-mine", circuit=CircuitConfig(depth=2).to_dict())
    assert cfg.grad_mode == "paper" and cfg.circuit["depth"] == 2  # no trainable layers: the shipped recipe
