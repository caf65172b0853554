"""BPDA (Athalye et al. 2018, arXiv 1802.00420): ``StraightThrough`` reads the target, differentiates the surrogate."""

from __future__ import annotations

import pytest
import torch
from conftest import require_samples
from torch import nn

from qshield_core.attacks import StraightThrough
from qshield_core.data import load_samples
from qshield_core.rng import seeded
from qshield_core.zoo import load_model


class Recorder(nn.Module):
    """Runs ``inner`` and remembers its last output and whether autograd was on during the call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.outputs: list[torch.Tensor] = []
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        out = self.inner(x)
        self.outputs.append(out)
        return out


class Staircase(nn.Module):
    """A gradient-masking toy target: a linear map rounded to steps of 2^-20 (zero gradient almost everywhere)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.linear.weight.data.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(2.0**20 * self.linear(x.flatten(1))) / 2.0**20


def input_gradient(model: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """d/dx of sum(weights * model(x)): a fixed, non-uniform upstream gradient."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((model(x) * weights).sum(), x)
    return grad


@pytest.fixture
def toys():
    gen = torch.Generator().manual_seed(0)
    # Target outputs of order 1 (20 fractional bits), surrogate outputs of order 100: here the other way of
    # writing it, s + (t - s).detach(), rounds away from t (checked below).
    target = Staircase(torch.randn(10, 12, generator=gen) / 2)
    surrogate = nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 10))
    for p in surrogate.parameters():
        p.data.copy_(torch.randn(p.shape, generator=gen))
    surrogate[-1].weight.data.mul_(100)
    x = torch.rand(64, 1, 3, 4, generator=gen)
    weights = torch.randn(64, 10, generator=gen)
    return target, surrogate, x, weights


def test_values_are_exactly_the_targets(toys):
    target, surrogate, x, _ = toys
    out = StraightThrough(target, surrogate)(x)
    with torch.no_grad():
        t, s = target(x), surrogate(x)
        assert torch.equal(out, t), "bit for bit the target's outputs"
        assert not torch.equal(s + (t - s), t), "a toy where rounding would show"
        assert (out - s).abs().mean() > 1, "the toy surrogate really is another function"
    assert out.requires_grad, "differentiable, through the surrogate"


def test_gradient_is_exactly_the_surrogates(toys):
    target, surrogate, x, weights = toys
    grad = input_gradient(StraightThrough(target, surrogate), x, weights)
    assert torch.equal(grad, input_gradient(surrogate, x, weights))
    assert grad.abs().sum() > 0
    assert input_gradient(target, x, weights).abs().sum() == 0, "the staircase target alone gives no gradient"


def test_target_gets_no_backward_pass(toys):
    target, surrogate, x, weights = toys
    spy = Recorder(target)
    (StraightThrough(spy, surrogate)(x) * weights).sum().backward()  # a full backward pass, weights included
    assert spy.grad_enabled == [False], "one forward pass, under no_grad"
    assert not spy.outputs[0].requires_grad
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in surrogate.parameters())


def test_training_flag_follows_the_target(toys):
    target, surrogate, _, _ = toys
    assert StraightThrough(target.eval(), surrogate).training is False
    assert StraightThrough(target.train(), surrogate).training is True


@pytest.fixture(scope="module")
def mnist_hybrid():
    """The shipped MNIST hybrid in paper mode (target) and its differentiable twin (surrogate), 8 test images."""
    require_samples()
    paper, _ = load_model("mnist", "hybrid-full", grad_mode="paper")
    twin, _ = load_model("mnist", "hybrid-full", grad_mode="differentiable")
    images, _ = load_samples("mnist")
    weights = torch.randn(8, 10, generator=torch.Generator().manual_seed(1))
    return paper, twin, images[:8], weights


def test_shipped_hybrid_values_are_the_paper_models(mnist_hybrid):
    paper, twin, x, _ = mnist_hybrid
    spy = Recorder(paper)
    with seeded(3):
        out = StraightThrough(spy, twin)(x)
    assert torch.equal(out, spy.outputs[0]), "the very values of the target's forward pass"
    with seeded(3), torch.no_grad():
        again = paper(x)
    assert torch.equal(out, again), "same seeded draw of the random projection, same values"
    with torch.no_grad():
        assert (out - twin(x)).abs().max() > 1e-3, "the twin's outputs differ (fixed projection)"


def test_shipped_hybrid_gradient_is_the_twins(mnist_hybrid):
    paper, twin, x, weights = mnist_hybrid
    spy = Recorder(paper)
    with seeded(4):
        grad = input_gradient(StraightThrough(spy, twin), x, weights)
    assert torch.equal(grad, input_gradient(twin, x, weights))
    with seeded(4):
        own = input_gradient(paper, x, weights)  # the paper model's own gradient: its CNN branch only
    assert (grad - own).abs().max() > 1e-3 * own.abs().max(), "not the paper model's masked gradient"
    assert spy.grad_enabled == [False]
    assert all(p.grad is None for p in paper.parameters())
