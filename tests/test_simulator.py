"""The fast backend against PennyLane (the reference), over the whole circuit family.

PennyLane runs ``default.qubit`` for noiseless circuits and ``default.mixed`` otherwise, with
parameter broadcasting and backprop; everything is in float64 and compared to 1e-5 on the output
probabilities and on the gradients with respect to the input angles and the trainable weights.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from qshield_core.models import build_model
from qshield_core.noise import NoiseModel
from qshield_core.quantum import ENCODINGS, ENTANGLEMENTS, CircuitConfig, QuantumCircuitLayer
from qshield_core.simulator import FastCircuitSimulator

TOL = 1e-5
BATCH = 4

# Strengths well above the paper's 0.005 so that a wrong channel shows far above the tolerance.
NOISE_MODELS = {
    "none": NoiseModel("none", 0.0),
    "depolarizing": NoiseModel("depolarizing", 0.2),
    "amplitude_damping": NoiseModel("amplitude_damping", 0.25),
    "phase_damping": NoiseModel("phase_damping", 0.3),
    "mixed": NoiseModel("mixed", 0.4),
    "thermal": NoiseModel("thermal", 0.0, t1=50e-6, t2=70e-6, gate_time=8e-6),
    "readout": NoiseModel("none", 0.0, readout=0.08),
    "mixed+readout": NoiseModel("mixed", 0.2, readout=0.05),
}

COMBINATIONS = list(itertools.product(ENCODINGS, ENTANGLEMENTS, (1, 2), (False, True), NOISE_MODELS))


def make_layer(config: CircuitConfig, backend: str, seed: int) -> QuantumCircuitLayer:
    layer = QuantumCircuitLayer(config, backend).double()
    if config.variational:
        gen = torch.Generator().manual_seed(seed)
        layer.weights.data = (torch.rand(config.weight_shape, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    return layer


def make_angles(config: CircuitConfig, batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, config.n_qubits, 3) if config.encoding == "enhanced" else (batch, config.n_qubits)
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi


def outputs_and_gradients(layer: QuantumCircuitLayer, angles: torch.Tensor, cotangent: torch.Tensor):
    """Probabilities and the gradients of <cotangent, probabilities> w.r.t. angles (and weights)."""
    angles = angles.clone().requires_grad_(True)
    probs = layer(angles)
    inputs = [angles] + ([layer.weights] if layer.weights is not None else [])
    grads = torch.autograd.grad((probs * cotangent).sum(), inputs)
    return probs.detach(), [g.detach() for g in grads]


@pytest.mark.parametrize("encoding, entanglement, depth, variational, noise", COMBINATIONS)
def test_fast_equals_pennylane(encoding, entanglement, depth, variational, noise):
    config = CircuitConfig(4, encoding, entanglement, depth, variational, NOISE_MODELS[noise])
    seed = COMBINATIONS.index((encoding, entanglement, depth, variational, noise))
    angles = make_angles(config, BATCH, seed)
    cotangent = torch.randn(BATCH, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    fast_probs, fast_grads = outputs_and_gradients(make_layer(config, "fast", seed), angles, cotangent)
    ref_probs, ref_grads = outputs_and_gradients(make_layer(config, "pennylane", seed), angles, cotangent)
    torch.testing.assert_close(fast_probs, ref_probs, atol=TOL, rtol=0)
    assert len(fast_grads) == len(ref_grads)
    for fast_grad, ref_grad in zip(fast_grads, ref_grads, strict=True):
        assert float(ref_grad.abs().max()) > 1e-3  # a real gradient, not two zeros agreeing
        torch.testing.assert_close(fast_grad, ref_grad, atol=TOL, rtol=0)


@pytest.mark.parametrize("backend", ["fast", "pennylane"])
@pytest.mark.parametrize("noise", ["none", "mixed+readout"])
def test_batch_equals_per_sample(backend, noise):
    config = CircuitConfig(4, "enhanced", "full", 2, True, NOISE_MODELS[noise])
    layer = make_layer(config, backend, seed=7)
    angles = make_angles(config, 6, seed=8)
    batch = layer(angles).detach()
    single = torch.cat([layer(angles[i: i + 1]).detach() for i in range(6)])
    assert batch.shape == (6, 16)
    torch.testing.assert_close(batch, single, atol=1e-12, rtol=0)


ZERO_NOISE = [NoiseModel(kind, 0.0) for kind in ("depolarizing", "amplitude_damping", "phase_damping", "mixed")] + [
    NoiseModel("thermal", 0.0, gate_time=0.0)]


@pytest.mark.parametrize("backend", ["fast", "pennylane"])
@pytest.mark.parametrize("noise", ZERO_NOISE, ids=lambda n: n.kind)
def test_zero_strength_equals_noiseless(backend, noise):
    angles = make_angles(CircuitConfig(), 5, seed=3)
    clean = make_layer(CircuitConfig(4, "enhanced", "ring", 2, True, NOISE_MODELS["none"]), backend, 11)(angles)
    zero = make_layer(CircuitConfig(4, "enhanced", "ring", 2, True, noise), backend, 11)(angles)
    torch.testing.assert_close(zero.detach(), clean.detach(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("noise", ["mixed+readout", "none"])
@pytest.mark.parametrize("variational", [False, True])
def test_paper_loop_equals_fast_and_has_no_gradient(noise, variational):
    config = CircuitConfig(4, "enhanced", "full", 1, variational, NOISE_MODELS[noise])
    angles = make_angles(config, 3, seed=5).requires_grad_(True)
    fast = make_layer(config, "fast", 9)(angles)
    loop = make_layer(config, "paper-loop", 9)(angles)
    torch.testing.assert_close(loop, fast.detach(), atol=TOL, rtol=0)
    assert not loop.requires_grad and loop.grad_fn is None


def test_float32_fast_path_is_accurate():
    config = CircuitConfig(4, "enhanced", "full", 2, True, NOISE_MODELS["mixed"])
    layer = make_layer(config, "fast", 4)
    angles = make_angles(config, 32, seed=4)
    reference = layer(angles).detach()
    single = layer.float()(angles.float()).detach()
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), reference, atol=TOL, rtol=0)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="paper-loop"):
        QuantumCircuitLayer(CircuitConfig(), "qiskit")


def test_simulator_readout_map_is_cached_for_fixed_weights():
    sim = FastCircuitSimulator(4, "enhanced", [(0, 1)], 1, NOISE_MODELS["mixed"])
    angles = make_angles(CircuitConfig(), 2, seed=1)
    first = sim.probabilities(angles)
    assert torch.complex128 in sim._fixed_cache
    torch.testing.assert_close(sim.probabilities(angles), first, atol=0, rtol=0)


@pytest.mark.parametrize("noise", ["none", "mixed+readout"])
def test_hybrid_image_gradients_agree_across_backends(noise):
    """The whole hybrid in differentiable mode: same outputs and image gradients on both backends."""
    torch.manual_seed(0)
    circuit = CircuitConfig.for_classes(10, entanglement="full", noise=NOISE_MODELS[noise])
    model = build_model("mnist", "hybrid-full", circuit=circuit, grad_mode="differentiable").double().eval()
    images = torch.rand(3, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([1, 4, 7])
    results = []
    for backend in ("fast", "pennylane"):
        model.backend = backend
        x = images.clone().requires_grad_(True)
        out = model.details(x)
        loss = torch.nn.functional.nll_loss(out.log_probs, labels) + out.quantum_probs[:, 0].sum()
        (grad,) = torch.autograd.grad(loss, x)
        results.append((out.quantum_probs.detach(), out.log_probs.detach(), grad))
    for fast, ref in zip(*results, strict=True):
        torch.testing.assert_close(fast, ref, atol=TOL, rtol=0)
