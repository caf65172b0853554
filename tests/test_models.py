"""Models: shapes, the two gradient modes of the hybrid, and the fusion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qshield_core.data import get_spec
from qshield_core.models import (
    DynamicFusion,
    Normalize,
    QShieldHybrid,
    build_model,
    count_parameters,
    fusion_statistics,
    hybrid_circuit_for,
)
from qshield_core.noise import NoiseModel


def images_for(dataset: str, n: int = 4, seed: int = 0) -> torch.Tensor:
    spec = get_spec(dataset)
    return torch.rand(n, *spec.input_shape, generator=torch.Generator().manual_seed(seed))


def hybrid(dataset: str = "mnist", grad_mode: str = "differentiable", seed: int = 0) -> QShieldHybrid:
    torch.manual_seed(seed)
    return build_model(dataset, "hybrid-full", grad_mode=grad_mode).eval()


@pytest.mark.parametrize("dataset", ["mnist", "organamnist", "cifar10"])
@pytest.mark.parametrize("name", ["classical", "dnn", "hybrid-full", "resnet18", "resnet18-hybrid-full"])
def test_models_map_images_to_class_scores(dataset, name):
    model = build_model(dataset, name).eval()
    with torch.no_grad():
        out = model(images_for(dataset))
    assert out.shape == (4, get_spec(dataset).num_classes)
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("grad_mode", ["paper", "differentiable"])
def test_hybrid_outputs_are_log_probabilities(grad_mode):
    model = hybrid("organamnist", grad_mode)
    with torch.no_grad():
        out = model.details(images_for("organamnist", 6))
    assert out.log_probs.shape == (6, 11) and bool((out.log_probs <= 0).all())
    torch.testing.assert_close(out.log_probs.exp().sum(-1), torch.ones(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.quantum_probs.sum(-1), torch.ones(6), atol=1e-5, rtol=0)
    assert out.basis_probs.shape == (6, 16) and out.angles.shape == (6, 4, 3)
    assert bool(((out.alpha > 0) & (out.alpha < 1)).all())
    # log-probabilities are valid logits: softmax gives the fused distribution back.
    torch.testing.assert_close(F.softmax(out.log_probs, -1), out.log_probs.exp(), atol=1e-6, rtol=0)


def quantum_input_gradient(model: QShieldHybrid, images: torch.Tensor) -> torch.Tensor | None:
    """d(sum of a fixed linear functional of the quantum class probabilities) / d(images)."""
    x = images.clone().requires_grad_(True)
    probs = model.details(x).quantum_probs
    if not probs.requires_grad:
        return None
    weights = torch.linspace(-1.0, 1.0, probs.shape[-1])  # not constant: sum(probs) = 1 has zero gradient
    (grad,) = torch.autograd.grad((probs * weights).sum(), x)
    return grad


def test_differentiable_mode_has_gradient_through_the_quantum_branch():
    grad = quantum_input_gradient(hybrid(grad_mode="differentiable"), images_for("mnist"))
    assert grad is not None
    assert float(grad.flatten(1).norm(dim=1).min()) > 0


def test_paper_mode_cuts_the_quantum_branch():
    model = hybrid(grad_mode="paper")
    x = images_for("mnist").requires_grad_(True)
    out = model.details(x)
    assert out.quantum_probs.grad_fn is None and not out.quantum_probs.requires_grad
    assert out.angles.grad_fn is None and out.basis_probs.grad_fn is None
    assert quantum_input_gradient(model, images_for("mnist")) is None
    # The fused output still has a gradient, through the CNN branch only.
    (grad,) = torch.autograd.grad(F.nll_loss(out.log_probs, torch.tensor([0, 1, 2, 3])), x)
    assert float(grad.abs().sum()) > 0


@pytest.mark.parametrize("backend", ["fast", "pennylane"])
def test_paper_mode_is_stochastic_and_differentiable_mode_deterministic(backend):
    model = hybrid(grad_mode="paper")
    model.backend = backend
    x = images_for("mnist")
    with torch.no_grad():
        first, second = model.details(x).quantum_probs, model.details(x).quantum_probs
        assert not torch.allclose(first, second, atol=1e-4)
        torch.manual_seed(42)
        seeded = model.details(x).quantum_probs
        torch.manual_seed(42)
        torch.testing.assert_close(model.details(x).quantum_probs, seeded)
        model.grad_mode = "differentiable"
        torch.testing.assert_close(model(x), model(x), atol=0, rtol=0)


def test_switching_grad_mode_keeps_the_weights():
    model = hybrid(grad_mode="paper")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images_for("mnist")
    with torch.no_grad():
        model.grad_mode = "differentiable"
        reference = model(x)
        model.grad_mode = "paper"
        model(x)
        model.grad_mode = "differentiable"
        again = model(x)
    assert before.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    torch.testing.assert_close(again, reference, atol=0, rtol=0)
    with pytest.raises(ValueError, match="differentiable"):
        model.grad_mode = "exact"


def test_noise_is_part_of_the_hybrid_circuit():
    circuit = hybrid_circuit_for("hybrid-star", get_spec("mnist"))
    assert circuit.entanglement == "star" and circuit.n_qubits == 4
    assert circuit.noise == NoiseModel("mixed", 0.005)


def test_fusion_reduces_to_each_branch():
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    quantum = torch.tensor([[0.2, 0.3, 0.5]])
    only_cnn = DynamicFusion.fuse(logits, quantum, torch.tensor([1.0])).exp()
    only_quantum = DynamicFusion.fuse(logits, quantum, torch.tensor([0.0])).exp()
    # alpha is clamped to [1e-6, 1 - 1e-6], so the other branch keeps an amplitude weight of at most ~1.4e-3.
    torch.testing.assert_close(only_cnn, F.softmax(logits, -1), atol=2e-3, rtol=0)
    torch.testing.assert_close(only_quantum, quantum, atol=2e-5, rtol=0)
    # In between: the amplitude mixture (alpha sqrt(p) + sqrt(1 - alpha^2) sqrt(q))^2, renormalised.
    a = 0.6
    mixed = (a * F.softmax(logits, -1).sqrt() + (1 - a**2) ** 0.5 * quantum.sqrt()) ** 2
    torch.testing.assert_close(DynamicFusion.fuse(logits, quantum, torch.tensor([a])).exp(),
                               mixed / mixed.sum(), atol=1e-6, rtol=0)


def test_fusion_statistics():
    cnn = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    stats = fusion_statistics(cnn, 2 * cnn + 1)
    assert stats.shape == (1, 7)
    std = torch.tensor(1.25).sqrt()
    torch.testing.assert_close(stats[0, :3], torch.stack([std, torch.tensor(4.0), torch.tensor(1.64)]))
    torch.testing.assert_close(stats[0, 3:6], torch.stack([2 * std, torch.tensor(9.0), torch.tensor(1.64)]))
    torch.testing.assert_close(stats[0, 6], torch.tensor(1.0))


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="classical"):
        build_model("mnist", "transformer")


# --------------------------------------------------------------------------- the DNN baseline

DNN_LAYERS = {"mnist": [(784, 512), (512, 256), (256, 128), (128, 10)],
              "organamnist": [(784, 512), (512, 256), (256, 128), (128, 11)],
              "cifar10": [(3072, 1024), (1024, 512), (512, 256), (256, 128), (128, 10)]}
DNN_PARAMETERS = {"mnist": 569_226, "organamnist": 569_355, "cifar10": 3_840_906}


@pytest.mark.parametrize("dataset", ["mnist", "organamnist", "cifar10"])
def test_dnn_is_the_papers_fully_connected_network(dataset):
    """No convolution; the paper's Linear sizes, a BatchNorm and Dropout(0.2) after every hidden layer."""
    model = build_model(dataset, "dnn")
    assert not any(isinstance(m, torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Conv3d) for m in model.modules())
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == DNN_LAYERS[dataset]
    hidden = len(linears) - 1
    assert [m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)] == [
        out for _, out in DNN_LAYERS[dataset][:hidden]]
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.2] * hidden
    assert count_parameters(model) == DNN_PARAMETERS[dataset]
    assert isinstance(model[0], Normalize), "inputs in [0, 1], normalised inside the model like the CNNs"


def test_dnn_logits_depend_on_every_pixel():
    """Fully connected: each class score moves with every input pixel (a CNN's receptive field need not)."""
    model = build_model("organamnist", "dnn").eval()
    x = images_for("organamnist", 2).requires_grad_(True)
    logits = model(x)
    assert logits.shape == (2, 11) and not bool((logits <= 0).all()), "logits, not log-probabilities"
    (grad,) = torch.autograd.grad(logits[:, 3].sum(), x)
    assert bool((grad != 0).all())
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, atol=0, rtol=0)  # eval mode: dropout off, deterministic
