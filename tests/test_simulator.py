"""The fast backend against PennyLane (the reference), over the whole circuit family.

PennyLane runs ``default.qubit`` for noiseless circuits and ``default.mixed`` otherwise, with
parameter broadcasting and backprop; everything is in float64 and compared to 1e-5 on the output
probabilities and on the gradients with respect to the input angles and the trainable weights.
Circuits without trainable rotations take the fast backend's product path (a fixed real Pauli
transfer map); it is checked here against the general density-matrix/statevector path as well.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qshield_core import simulator
from qshield_core.devices import DeviceNoise, device_noise_from_properties
from qshield_core.models import build_model
from qshield_core.noise import NoiseModel
from qshield_core.quantum import (
    ENCODINGS,
    ENTANGLEMENTS,
    CircuitConfig,
    QuantumCircuitLayer,
    entangling_pairs,
    fast_simulator,
)
from qshield_core.simulator import MAX_PRODUCT_QUBITS, FastCircuitSimulator, ProductStateProbabilities

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


def test_simulator_maps_are_cached_for_fixed_weights():
    sim = FastCircuitSimulator(4, "enhanced", [(0, 1)], 1, NOISE_MODELS["mixed"])
    angles = make_angles(CircuitConfig(), 2, seed=1)
    first = sim.probabilities(angles)
    assert torch.complex128 in sim._fixed_cache and torch.float64 in sim._transfer_cache
    torch.testing.assert_close(sim.probabilities(angles), first, atol=0, rtol=0)
    assert sim.transfer_matrix(torch.float32) is sim.transfer_matrix(torch.float32)


# --------------------------------------------------------------------------- the product path

PRODUCT_TOL = 1e-10  # float64; both paths are exact, so only rounding separates them
PRODUCT_NOISE = ["none", "mixed", "thermal", "readout", "mixed+readout"]


def general_and_product(config: CircuitConfig, angles: torch.Tensor, cotangent: torch.Tensor):
    """(probabilities, input gradient) of the general path and of the product path, in that order."""
    sim = FastCircuitSimulator(config.n_qubits, config.encoding, config.pairs, config.depth, config.noise)
    results = []
    for run in (sim.general_probabilities, sim.probabilities):
        a = angles.clone().requires_grad_(True)
        probs = run(a)
        (grad,) = torch.autograd.grad((probs * cotangent).sum(), a)
        results.append((probs.detach(), grad))
    return results


@pytest.mark.parametrize("encoding, entanglement, noise", list(itertools.product(ENCODINGS, ENTANGLEMENTS,
                                                                                   PRODUCT_NOISE)))
def test_product_path_equals_general_path(encoding, entanglement, noise):
    config = CircuitConfig(4, encoding, entanglement, 1, False, NOISE_MODELS[noise])
    seed = len(encoding) * 100 + ENTANGLEMENTS.index(entanglement) * 10 + PRODUCT_NOISE.index(noise)
    angles = make_angles(config, BATCH, seed)
    cotangent = torch.randn(BATCH, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (general, general_grad), (product, product_grad) = general_and_product(config, angles, cotangent)
    assert float(general_grad.abs().max()) > 1e-3
    torch.testing.assert_close(product, general, atol=PRODUCT_TOL, rtol=0)
    torch.testing.assert_close(product_grad, general_grad, atol=PRODUCT_TOL, rtol=0)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_product_path_serves_deeper_fixed_circuits(encoding):
    """Depth 2 without trainable rotations is still a fixed map after the encoding: same result."""
    config = CircuitConfig(3, encoding, "ring", 2, False, NOISE_MODELS["mixed+readout"])
    angles = make_angles(config, 3, seed=21)
    cotangent = torch.randn(3, 8, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    (general, general_grad), (product, product_grad) = general_and_product(config, angles, cotangent)
    torch.testing.assert_close(product, general, atol=PRODUCT_TOL, rtol=0)
    torch.testing.assert_close(product_grad, general_grad, atol=PRODUCT_TOL, rtol=0)


@pytest.mark.parametrize("encoding, entanglement, noise", [("enhanced", "full", "shipped"),
                                                           ("angle", "ring", "mixed+readout"),
                                                           ("enhanced", "star", "none")])
def test_product_path_equals_pennylane_to_1e6(encoding, entanglement, noise):
    noise_model = NoiseModel("mixed", 0.005) if noise == "shipped" else NOISE_MODELS[noise]
    config = CircuitConfig(4, encoding, entanglement, 1, False, noise_model)
    angles = make_angles(config, BATCH, seed=31)
    cotangent = torch.randn(BATCH, 16, generator=torch.Generator().manual_seed(31), dtype=torch.float64)
    fast_probs, (fast_grad,) = outputs_and_gradients(make_layer(config, "fast", 0), angles, cotangent)
    ref_probs, (ref_grad,) = outputs_and_gradients(make_layer(config, "pennylane", 0), angles, cotangent)
    torch.testing.assert_close(fast_probs, ref_probs, atol=1e-6, rtol=0)
    torch.testing.assert_close(fast_grad, ref_grad, atol=1e-6, rtol=0)


def test_product_path_float32_matches_float64():
    config = CircuitConfig(4, "enhanced", "full", 1, False, NoiseModel("mixed", 0.005))
    layer = make_layer(config, "fast", 0)
    angles = make_angles(config, 64, seed=41)
    cotangent = torch.randn(64, 16, generator=torch.Generator().manual_seed(41), dtype=torch.float64)
    double, (double_grad,) = outputs_and_gradients(layer, angles, cotangent)
    single, (single_grad,) = outputs_and_gradients(layer.float(), angles.float(), cotangent.float())
    assert single.dtype == torch.float32 and single_grad.dtype == torch.float32
    torch.testing.assert_close(single.double(), double, atol=1e-6, rtol=0)
    torch.testing.assert_close(single_grad.double(), double_grad, atol=1e-6, rtol=0)
    # Small probabilities keep float32's relative precision (the fusion reads their logarithms):
    # near |0...0> most of the 16 probabilities are tiny.
    near_zero = angles * 0.01
    double = layer.double()(near_zero).detach()
    single = layer.float()(near_zero.float()).detach()
    assert float(double.min()) < 1e-8
    assert float(((single.double() - double).abs() / double).max()) < 1e-6


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_product_path_gradcheck(encoding):
    sim = FastCircuitSimulator(3, encoding, [(0, 1), (1, 2)], 1, NOISE_MODELS["mixed+readout"])
    angles = make_angles(CircuitConfig(3, encoding), 2, seed=51).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: ProductStateProbabilities.apply(a, sim.transfer_matrix(), encoding),
                                    (angles,))


def test_product_path_batch_equals_per_sample_and_needs_no_graph_without_gradient():
    sim = FastCircuitSimulator(4, "enhanced", entangling_pairs("full", 4), 1, NOISE_MODELS["mixed+readout"])
    angles = make_angles(CircuitConfig(), 6, seed=61)
    batch = sim.probabilities(angles)
    single = torch.cat([sim.probabilities(angles[i: i + 1]) for i in range(6)])
    torch.testing.assert_close(batch, single, atol=1e-12, rtol=0)
    with torch.no_grad():
        assert sim.probabilities(angles.requires_grad_(True)).grad_fn is None
    assert sim.probabilities(angles).grad_fn is not None


def test_product_path_is_not_twice_differentiable():
    sim = FastCircuitSimulator(2, "enhanced", [(0, 1)], 1, NOISE_MODELS["none"])
    angles = make_angles(CircuitConfig(2), 1, seed=71).requires_grad_(True)
    (grad,) = torch.autograd.grad(sim.probabilities(angles)[0, 1], angles, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(grad.sum(), angles)


def test_general_path_serves_trainable_circuits_and_large_registers(monkeypatch):
    """Trainable rotations change the map at every step, and 4^n grows fast: both take the general path."""
    calls = []
    real = simulator.product_state_probabilities
    monkeypatch.setattr(simulator, "product_state_probabilities", lambda *a: calls.append(a) or real(*a))
    variational = make_layer(CircuitConfig(4, "enhanced", "full", 1, True, NOISE_MODELS["mixed"]), "fast", 3)
    variational(make_angles(CircuitConfig(), 2, seed=81))
    assert not calls and not variational._fast.product_path_applies(variational.weights)
    big = FastCircuitSimulator(MAX_PRODUCT_QUBITS + 1, "angle", [], 1, NOISE_MODELS["none"])
    assert not big.product_path_applies(None)
    assert big.probabilities(make_angles(CircuitConfig(MAX_PRODUCT_QUBITS + 1, "angle"), 2, seed=82)).shape == (
        2, 2 ** (MAX_PRODUCT_QUBITS + 1))
    assert not calls
    fixed = make_layer(CircuitConfig(4, "enhanced", "full", 1, False, NOISE_MODELS["mixed"]), "fast", 3)
    fixed(make_angles(CircuitConfig(), 2, seed=83))
    assert len(calls) == 1


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


# --------------------------------------------------------------------------- designs: noise placement, device noise


def exaggerated_device(n_qubits: int = 4) -> DeviceNoise:
    """The synthetic snapshot's chain, with gate times stretched so that every channel shows above the tolerance."""
    props = json.loads((Path(__file__).parent / "data" / "snapshots" / "tiny" / "props_tiny.json").read_text())
    device = device_noise_from_properties(props, n_qubits, entangling_pairs("full", n_qubits))
    qubits = tuple(replace(q, pulse_length=q.pulse_length * 100, pulse_error=0.02) for q in device.qubits)
    pairs = tuple(replace(p, length=p.length * 10, error=min(0.3, p.error * 5)) for p in device.pairs)
    return replace(device, qubits=qubits, pairs=pairs)


DESIGNS = {
    "end-mixed": dict(noise=NoiseModel("mixed", 0.4, readout=0.05), noise_placement="end"),
    "device": dict(noise=NoiseModel("none", 0.0), device=exaggerated_device()),
    "device+depolarizing-end": dict(noise=NoiseModel("depolarizing", 0.2, readout=0.03), noise_placement="end",
                                    device=exaggerated_device()),
}
DESIGN_CASES = list(itertools.product(ENCODINGS, ("linear", "full"), (1, 2), (False, True), DESIGNS))


@pytest.mark.parametrize("encoding, entanglement, depth, variational, design", DESIGN_CASES)
def test_fast_equals_pennylane_for_designs(encoding, entanglement, depth, variational, design):
    config = CircuitConfig(4, encoding, entanglement, depth, variational, **DESIGNS[design])
    seed = 1000 + DESIGN_CASES.index((encoding, entanglement, depth, variational, design))
    angles = make_angles(config, BATCH, seed)
    cotangent = torch.randn(BATCH, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    fast_probs, fast_grads = outputs_and_gradients(make_layer(config, "fast", seed), angles, cotangent)
    ref_probs, ref_grads = outputs_and_gradients(make_layer(config, "pennylane", seed), angles, cotangent)
    torch.testing.assert_close(fast_probs, ref_probs, atol=TOL, rtol=0)
    for fast_grad, ref_grad in zip(fast_grads, ref_grads, strict=True):
        assert float(ref_grad.abs().max()) > 1e-3
        torch.testing.assert_close(fast_grad, ref_grad, atol=TOL, rtol=0)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("design", DESIGNS)
def test_product_path_serves_designs(encoding, design):
    """Device noise and end placement are still one fixed map after the encoding: the product path equals the
    density-matrix path."""
    config = CircuitConfig(4, encoding, "full", 2, False, **DESIGNS[design])
    angles = make_angles(config, 3, seed=91)
    cotangent = torch.randn(3, 16, generator=torch.Generator().manual_seed(91), dtype=torch.float64)
    sim = fast_simulator(config)
    results = []
    for path in (sim.general_probabilities, sim.probabilities):
        a = angles.clone().requires_grad_(True)
        probs = path(a)
        results.append((probs.detach(), torch.autograd.grad((probs * cotangent).sum(), a)[0]))
    (general, general_grad), (product, product_grad) = results
    torch.testing.assert_close(product, general, atol=PRODUCT_TOL, rtol=0)
    torch.testing.assert_close(product_grad, general_grad, atol=PRODUCT_TOL, rtol=0)


def test_device_noise_changes_the_output_and_acts_per_gate():
    angles = make_angles(CircuitConfig(), 4, seed=93)
    clean = fast_simulator(CircuitConfig(noise=NOISE_MODELS["none"])).probabilities(angles)
    noisy = fast_simulator(CircuitConfig(noise=NOISE_MODELS["none"], device=exaggerated_device())).probabilities(angles)
    assert float((noisy - clean).abs().max()) > 1e-2
    # Without CNOTs there is no two-qubit noise: only the rotation blocks' single-qubit channels remain.
    device = exaggerated_device()
    sparse = fast_simulator(CircuitConfig(entanglement="none", noise=NOISE_MODELS["none"], device=device))
    assert torch.equal(sparse.device_entangler, torch.eye(256, dtype=torch.complex128))
    assert sparse.device_rotation is not None and not sparse.is_pure
    dense = fast_simulator(CircuitConfig(noise=NOISE_MODELS["none"], device=device))
    plain = torch.as_tensor(simulator.entangler_matrix(entangling_pairs("full", 4), 4))
    assert float((dense.device_entangler - torch.kron(plain, plain.conj())).abs().max()) > 1e-2


def test_the_paper_circuit_keeps_its_operation_order():
    """Cards without the new fields run the exact operations they always ran (bit for bit), and the general
    composition used by the new designs agrees with it to rounding."""
    for variational in (False, True):
        config = CircuitConfig(4, "enhanced", "full", 2, variational, NOISE_MODELS["mixed+readout"])
        sim = fast_simulator(config)
        weights = None if not variational else make_layer(config, "fast", 5).weights.detach()
        superop = torch.eye(256, dtype=torch.complex128)
        for layer in range(2):
            unitary = sim._layer_unitary(None if weights is None else weights[layer], torch.complex128)
            superop = sim.noise_superop @ torch.kron(unitary, unitary.conj()) @ superop
        old = superop[torch.arange(16) * 17].transpose(0, 1).contiguous()
        assert torch.equal(sim._readout_map(weights, torch.complex128), old)
        torch.testing.assert_close(sim._channel(weights, torch.complex128)[torch.arange(16) * 17].transpose(0, 1), old,
                                   atol=1e-14, rtol=0)


def test_embed_operator_places_a_two_qubit_gate():
    cnot = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]])
    for control, target in ((0, 1), (1, 0), (0, 3), (3, 1), (2, 0)):
        np.testing.assert_array_equal(simulator.embed_operator(cnot, (control, target), 4).numpy(),
                                      simulator.cnot_matrix(control, target, 4))
