"""The hybrid's fused head (``fusion_ops.HybridHead``) against the stage-by-stage reference path.

Where it applies (an attack's recorded forward pass on a hybrid with the enhanced encoding, no trainable
rotations, the fast backend's product path, the fusion in evaluation mode, frozen parameters), ``model(x)``
runs everything after the CNN as one node; ``model.details(x)`` keeps the reference stages. Both must
give the same log-probabilities and input gradients (1e-6, float64), in both gradient modes, the paper
mode drawing the same projection from the same generator and cutting the quantum branch as before.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shipped_cards
from torch import nn

from qshield_core import fusion_ops, lab, rng
from qshield_core.data import get_spec
from qshield_core.models import GRAD_MODES, QShieldHybrid, build_model, hybrid_circuit_for
from qshield_core.noise import NoiseModel
from qshield_core.quantum import CircuitConfig

TOL = 1e-6
SHIPPED_NOISE = NoiseModel("mixed", 0.005, t1=5e-5, t2=7e-5, gate_time=5e-8)
DATASETS = ("mnist", "organamnist", "cifar10")


def frozen_hybrid(dataset: str, grad_mode: str, seed: int = 0, dtype: torch.dtype = torch.float64,
                  **circuit) -> QShieldHybrid:
    """An untrained hybrid-full with non-trivial batch-norm statistics in the fusion, frozen, in eval mode."""
    torch.manual_seed(seed)
    config = hybrid_circuit_for("hybrid-full", get_spec(dataset), **{"noise": SHIPPED_NOISE, **circuit})
    model = build_model(dataset, "hybrid-full", circuit=config, grad_mode=grad_mode)
    gen = torch.Generator().manual_seed(seed)
    for layer in model.fusion.mlp:
        if isinstance(layer, nn.BatchNorm1d):
            layer.running_mean.copy_(torch.randn(layer.num_features, generator=gen) * 0.3)
            layer.running_var.copy_(torch.rand(layer.num_features, generator=gen) + 0.5)
            layer.weight.data.copy_(torch.randn(layer.num_features, generator=gen))
    return model.to(dtype).eval().requires_grad_(False)


def images(dataset: str, n: int, dtype: torch.dtype = torch.float64, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *get_spec(dataset).input_shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def outputs_and_gradients(model: QShieldHybrid, x: torch.Tensor, fused: bool, seed: int = 3):
    """Log-probabilities and the input gradient of a random linear functional of them, in ``rng.seeded(seed)``."""
    x = x.clone().requires_grad_(True)
    with rng.seeded(seed):
        out = model(x) if fused else model.details(x).log_probs
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (grad,) = torch.autograd.grad((out * cotangent).sum(), x)
    return out.detach(), grad


def assert_agree(fast, ref, tol: float = TOL) -> None:
    (out, grad), (ref_out, ref_grad) = fast, ref
    assert out.dtype == ref_out.dtype and grad.dtype == ref_grad.dtype
    assert float((out.exp() - ref_out.exp()).abs().max()) < tol, "probabilities"
    assert torch.equal(out.argmax(-1), ref_out.argmax(-1))
    assert float((grad - ref_grad).abs().max() / ref_grad.abs().max()) < tol, "input gradients"


@pytest.fixture
def head_calls(monkeypatch) -> list:
    """Records every call of the fused head."""
    calls: list = []
    apply = fusion_ops.HybridHead.apply
    monkeypatch.setattr(fusion_ops.HybridHead, "apply", lambda *a: calls.append(a) or apply(*a))
    return calls


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
@pytest.mark.parametrize("dataset", DATASETS)
def test_fused_head_equals_reference_path(dataset, grad_mode, head_calls):
    """Batch 6 runs the small matrix products in NumPy and the 128 x 128 ones in torch; batch 1 all in NumPy."""
    model = frozen_hybrid(dataset, grad_mode)
    for batch in (1, 6):
        x = images(dataset, batch, seed=batch)
        fast = outputs_and_gradients(model, x, fused=True)
        assert len(head_calls) == 1
        assert_agree(fast, outputs_and_gradients(model, x, fused=False))
        head_calls.clear()


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
def test_fused_head_on_a_noiseless_circuit_with_readout_error(grad_mode, head_calls):
    model = frozen_hybrid("organamnist", grad_mode, seed=4, noise=NoiseModel("none", 0.0, readout=0.05))
    x = images("organamnist", 3)
    assert_agree(outputs_and_gradients(model, x, fused=True), outputs_and_gradients(model, x, fused=False))
    assert head_calls


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
@pytest.mark.parametrize("dataset", DATASETS)
def test_shipped_models_agree_in_float32_and_float64(dataset, grad_mode, head_calls):
    """The shipped weights: float64 to 1e-6; float32 (as the app runs them) to float32's own rounding."""
    if not any(p.name == f"{dataset}-hybrid-full.json" for p in shipped_cards()):
        pytest.skip(f"{dataset}-hybrid-full is not shipped")
    model = lab.load(dataset, "hybrid-full", grad_mode=grad_mode).model
    assert len(head_calls) == 1  # lab.load's warm-up pass already runs the fused head
    head_calls.clear()
    x = torch.stack([lab.sample_image(e) for e in lab.sample_table(dataset)[:4]])
    fast32, ref32 = (outputs_and_gradients(model, x, fused) for fused in (True, False))
    assert_agree(fast32, ref32, tol=1e-5)
    assert float((fast32[0].exp() - ref32[0].exp()).abs().max()) < TOL
    model.double()
    assert_agree(outputs_and_gradients(model, x.double(), True), outputs_and_gradients(model, x.double(), False))
    model.float()
    assert len(head_calls) == 2


def test_paper_mode_draws_the_same_projection_from_the_same_generator():
    """The fused paper mode's float64 projection is the encoder's, and both paths take one draw from the
    seeded scope's generator (so everything drawn after it is unchanged too)."""
    model = frozen_hybrid("mnist", "paper")
    array = model.encoder.draw_projection_array(torch.Generator().manual_seed(11))
    assert np.array_equal(array, model.encoder.draw_projection(torch.Generator().manual_seed(11)).double().numpy())
    x = images("mnist", 2).requires_grad_(True)
    after = []
    for fused in (True, False):
        with rng.seeded(5) as gen:
            model(x) if fused else model.details(x)
            after.append(torch.randn(4, generator=gen))
    assert torch.equal(*after)


def test_paper_mode_still_cuts_the_quantum_branch(head_calls):
    """On the projection paper mode draws, the differentiable mode gives the same values but another
    gradient: the paper mode's has no quantum-branch term."""
    model = frozen_hybrid("mnist", "paper")
    x = images("mnist", 2)
    paper = outputs_and_gradients(model, x, fused=True, seed=3)
    with rng.seeded(3) as gen:
        model.encoder.fixed_projection.copy_(model.encoder.draw_projection(gen))
    model.grad_mode = "differentiable"
    through = outputs_and_gradients(model, x, fused=True, seed=3)
    torch.testing.assert_close(through[0], paper[0], atol=1e-12, rtol=0)
    assert float((through[1] - paper[1]).abs().max()) > 1e-3 * float(paper[1].abs().max())
    assert len(head_calls) == 2


def test_repeated_backward_passes_agree():
    """DeepFool differentiates one forward pass once per class (retain_graph)."""
    model = frozen_hybrid("mnist", "differentiable")
    x = images("mnist", 2).requires_grad_(True)
    out = model(x)
    first = torch.autograd.grad(out[:, 0].sum(), x, retain_graph=True)[0]
    torch.autograd.grad(out[:, 1].sum(), x, retain_graph=True)
    assert torch.equal(first, torch.autograd.grad(out[:, 0].sum(), x)[0])


def not_taken(model: QShieldHybrid, x: torch.Tensor, calls: list) -> bool:
    """Whether a forward pass of ``model`` with autograd recording skipped the fused head."""
    logits = model.cnn(x)
    skipped = model.fused_head(logits) is None
    model(x.clone().requires_grad_(True))
    return skipped and not calls


@pytest.mark.parametrize("case", ["variational", "angle", "shots", "training", "parameters want gradients"])
def test_fused_head_is_not_taken_where_it_does_not_apply(case, head_calls):
    circuit = {"variational": {"variational": True}, "angle": {"encoding": "angle"}, "shots": {"shots": 100}}
    model = frozen_hybrid("mnist", "differentiable", **circuit.get(case, {}))
    if case == "training":
        model.train()
    if case == "parameters want gradients":
        model.fusion.requires_grad_(True)
    assert not_taken(model, images("mnist", 2).requires_grad_(True), head_calls)


def test_fused_head_is_not_taken_without_autograd(head_calls):
    """Evaluation keeps the bit-identical stages: no autograd, or an input that needs no gradient."""
    model = frozen_hybrid("mnist", "paper", dtype=torch.float32)
    x = images("mnist", 3, dtype=torch.float32)
    with torch.no_grad(), rng.seeded(2):
        out = model(x)
    with torch.no_grad(), rng.seeded(2):
        assert torch.equal(out, model.details(x).log_probs)
    with rng.seeded(2):
        assert torch.equal(model(x), out)
    assert not head_calls


def test_fused_head_follows_changed_weights(head_calls):
    """The cached float64 constants are rebuilt when a weight changes in place, is reloaded or converted."""
    model = frozen_hybrid("mnist", "differentiable")
    x = images("mnist", 2)
    outputs_and_gradients(model, x, fused=True)
    with torch.no_grad():
        model.fusion.mlp[0].weight.mul_(1.5)
        model.fusion.mlp[3].running_var.add_(0.25)
    assert_agree(outputs_and_gradients(model, x, fused=True), outputs_and_gradients(model, x, fused=False))
    state = {k: v.clone() for k, v in frozen_hybrid("mnist", "differentiable", seed=9).state_dict().items()}
    model.load_state_dict(state)
    assert_agree(outputs_and_gradients(model, x, fused=True), outputs_and_gradients(model, x, fused=False))
    model.float()
    fast = outputs_and_gradients(model, x.float(), fused=True)
    assert_agree(fast, outputs_and_gradients(model, x.float(), fused=False), tol=1e-5)
    assert len(head_calls) == 4


def test_circuit_config_default_is_what_the_fused_head_serves():
    """The shipped circuits: enhanced encoding, no trainable rotations, exact probabilities."""
    config = CircuitConfig.for_classes(10)
    assert config.encoding == "enhanced" and not config.variational and config.shots is None


@pytest.mark.parametrize("dataset", DATASETS)
def test_the_compiled_head_computes_the_numpy_formulas(dataset):
    """fusion_jit's kernels against fusion_ops' NumPy head (its reference), float64 weights: to 1e-12, values and
    gradients, both gradient modes, one image and a batch."""
    from qshield_core import fusion_jit

    model = frozen_hybrid(dataset, "differentiable")
    for n in (1, 6):
        logits = model.cnn(images(dataset, n)).detach().requires_grad_(True)
        head = model.fused_head(logits)
        features = logits.detach().numpy()
        expected, stash = fusion_ops._head_forward(features, head, head.projection[0])
        np.testing.assert_allclose(fusion_jit.head_forward(features, head, head.projection[0]), expected,
                                   atol=1e-12, rtol=0)
        cotangent = np.random.default_rng(n).normal(size=expected.shape)
        for through in (True, False):
            np.testing.assert_allclose(
                fusion_jit.head_backward(features, cotangent, head, head.projection[0], through),
                fusion_ops._head_backward(cotangent, head, head.projection[1], stash, through), atol=1e-12, rtol=0)
