"""The QShield circuit against hand-computed cases, on the fast backend and on PennyLane."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qshield_core.noise import NOISE_KINDS, NoiseModel
from qshield_core.quantum import (
    CircuitConfig,
    FeatureEncoder,
    QuantumCircuitLayer,
    circuit,
    draw_text,
    entangling_pairs,
    example_angles,
    sample_counts,
)
from qshield_core.rng import seeded
from qshield_core.simulator import qubits_for_classes

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("fast", "pennylane")
NOISELESS = NoiseModel("none", 0.0)


def run(config: CircuitConfig, angles: torch.Tensor, backend: str) -> torch.Tensor:
    return QuantumCircuitLayer(config, backend)(angles.to(torch.float64)).detach()


def basis_angles(bits: str, encoding: str = "enhanced") -> torch.Tensor:
    """Angles that encode the computational basis state ``bits`` (RX(pi) or RY(pi) on each 1)."""
    flips = torch.tensor([math.pi * int(b) for b in bits], dtype=torch.float64)
    if encoding == "angle":
        return flips.unsqueeze(0)
    angles = torch.zeros(1, len(bits), 3, dtype=torch.float64)
    angles[0, :, 0] = flips
    return angles


def one_hot(bits: str) -> torch.Tensor:
    out = torch.zeros(1, 2 ** len(bits), dtype=torch.float64)
    out[0, int(bits, 2)] = 1.0
    return out


# Worked by hand: CNOT(c, t) flips bit t when bit c is 1; wire 0 is the leftmost bit; pairs in order.
#   linear (0,1)(1,2)(2,3); ring adds (3,0); star (0,1)(0,2)(0,3); full (0,1)(0,2)(0,3)(1,2)(1,3)(2,3).
BASIS_CASES = [
    ("1000", "none", 1, "1000"),
    ("1000", "linear", 1, "1111"),
    ("1000", "ring", 1, "0111"),
    ("1000", "star", 1, "1111"),
    ("1000", "full", 1, "1100"),
    ("0100", "linear", 1, "0111"),
    ("0100", "ring", 1, "1111"),
    ("0100", "star", 1, "0100"),
    ("0100", "full", 1, "0110"),
    ("0001", "ring", 1, "1001"),
    ("0001", "full", 1, "0001"),
    ("1100", "full", 1, "1010"),
    ("1000", "linear", 2, "1010"),
    ("1000", "star", 2, "1000"),
    ("1000", "full", 2, "1010"),
    ("101", "ring", 1, "110"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("encoding", ["enhanced", "angle"])
@pytest.mark.parametrize("bits, entanglement, depth, expected", BASIS_CASES)
def test_basis_state_through_entanglers(bits, entanglement, depth, expected, encoding, backend):
    config = CircuitConfig(len(bits), encoding, entanglement, depth, noise=NOISELESS)
    probs = run(config, basis_angles(bits, encoding), backend)
    torch.testing.assert_close(probs, one_hot(expected), atol=1e-12, rtol=0)


def test_entangling_pairs():
    assert entangling_pairs("linear", 4) == [(0, 1), (1, 2), (2, 3)]
    assert entangling_pairs("ring", 4) == [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert entangling_pairs("ring", 2) == [(0, 1)]
    assert entangling_pairs("star", 4) == [(0, 1), (0, 2), (0, 3)]
    assert len(entangling_pairs("full", 4)) == 6 and entangling_pairs("none", 4) == []
    with pytest.raises(ValueError, match="linear"):
        entangling_pairs("all-to-all", 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bell_state(backend):
    angles = torch.zeros(1, 2, 3, dtype=torch.float64)
    angles[0, 0, 1] = math.pi / 2  # RY(pi/2)|0> = |+>, then CNOT(0, 1)
    probs = run(CircuitConfig(2, "enhanced", "linear", noise=NOISELESS), angles, backend)
    torch.testing.assert_close(probs, torch.tensor([[0.5, 0, 0, 0.5]], dtype=torch.float64), atol=1e-12, rtol=0)


def product_probs(single_one: torch.Tensor) -> torch.Tensor:
    """Kronecker product of per-qubit (P(0), P(1)) for each row of ``single_one`` (B, n) = P(1)."""
    out = torch.ones(single_one.shape[0], 1, dtype=torch.float64)
    for wire in range(single_one.shape[1]):
        p1 = single_one[:, wire: wire + 1]
        out = (out.unsqueeze(-1) * torch.stack([1 - p1, p1], -1)).flatten(1)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_product_state_without_entanglement(backend, rng):
    angles = (torch.rand(6, 4, 3, generator=rng, dtype=torch.float64) * 2 - 1) * math.pi
    probs = run(CircuitConfig(4, "enhanced", "none", noise=NOISELESS), angles, backend)
    # RY(b) RX(a)|0> has Bloch z = cos(a) cos(b); RZ does not change the populations.
    p1 = (1 - torch.cos(angles[..., 0]) * torch.cos(angles[..., 1])) / 2
    torch.testing.assert_close(probs, product_probs(p1), atol=1e-12, rtol=0)

    theta = torch.rand(6, 4, generator=rng, dtype=torch.float64) * 2 * math.pi
    probs = run(CircuitConfig(4, "angle", "none", noise=NOISELESS), theta, backend)
    torch.testing.assert_close(probs, product_probs(torch.sin(theta / 2) ** 2), atol=1e-12, rtol=0)


def random_angles(batch: int, rng: torch.Generator, n_qubits: int = 4) -> torch.Tensor:
    return (torch.rand(batch, n_qubits, 3, generator=rng, dtype=torch.float64) * 2 - 1) * math.pi


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entanglement", ["none", "linear", "full"])
def test_full_depolarizing_gives_uniform(entanglement, backend, rng):
    config = CircuitConfig(4, "enhanced", entanglement, depth=2, variational=True,
                           noise=NoiseModel("depolarizing", 1.0, readout=0.2))
    probs = run(config, random_angles(5, rng), backend)
    torch.testing.assert_close(probs, torch.full_like(probs, 1 / 16), atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_amplitude_damping_returns_ground_state(backend, rng):
    config = CircuitConfig(4, "enhanced", "full", noise=NoiseModel("amplitude_damping", 1.0))
    probs = run(config, random_angles(5, rng), backend)
    torch.testing.assert_close(probs, one_hot("0000").expand(5, -1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_thermal_relaxation_decays_to_ground_state(backend, rng):
    noise = NoiseModel("thermal", 0.0, t1=1e-6, t2=1e-6, gate_time=20e-6)  # 20 T1: population left e^-20
    probs = run(CircuitConfig(4, "enhanced", "linear", noise=noise), random_angles(3, rng), backend)
    assert float(probs[:, 0].min()) > 1 - 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_final_phase_damping_leaves_populations(backend, rng):
    angles = random_angles(4, rng)
    clean = run(CircuitConfig(4, "enhanced", "full", noise=NOISELESS), angles, backend)
    damped = run(CircuitConfig(4, "enhanced", "full", noise=NoiseModel("phase_damping", 1.0)), angles, backend)
    torch.testing.assert_close(damped, clean, atol=1e-12, rtol=0)
    # CNOTs only permute populations, so dephasing matters only when a rotation follows it: with
    # trainable rotations in a second layer it does change the output.
    weights = (torch.rand(2, 4, 3, generator=rng, dtype=torch.float64) * 2 - 1) * math.pi
    outputs = []
    for noise in (NOISELESS, NoiseModel("phase_damping", 1.0)):
        layer = QuantumCircuitLayer(CircuitConfig(4, "enhanced", "full", depth=2, variational=True, noise=noise),
                                    backend)
        layer.weights.data = weights.float()
        outputs.append(layer(angles).detach())
    assert float((outputs[1] - outputs[0]).abs().max()) > 1e-3


def cnot_permutation(entanglement: str, n_qubits: int = 4) -> list[int]:
    """Where each basis state goes under the entangling layer (wire 0 is the leading bit)."""
    targets = []
    for state in range(2 ** n_qubits):
        bits = [int(b) for b in f"{state:0{n_qubits}b}"]
        for control, target in entangling_pairs(entanglement, n_qubits):
            bits[target] ^= bits[control]
        targets.append(int("".join(map(str, bits)), 2))
    return targets


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entanglement", ["linear", "star", "full"])
def test_paper_circuit_entanglement_only_permutes_the_probabilities(entanglement, backend, rng):
    """Depth 1, no trainable gate: after a product-state encoding, the CNOT layer moves probability
    between basis states by one fixed permutation, the same for every input."""
    angles = random_angles(6, rng)
    product = run(CircuitConfig(4, "enhanced", "none", noise=NOISELESS), angles, backend)
    entangled = run(CircuitConfig(4, "enhanced", entanglement, noise=NOISELESS), angles, backend)
    moved = torch.zeros_like(product)
    moved[:, cnot_permutation(entanglement)] = product
    torch.testing.assert_close(entangled, moved, atol=1e-10, rtol=0)
    assert cnot_permutation(entanglement) != list(range(16))


@pytest.mark.parametrize("backend", BACKENDS)
def test_readout_error_is_an_independent_bit_flip(backend):
    r = 0.1
    probs = run(CircuitConfig(4, "enhanced", "none", noise=NoiseModel("none", 0.0, readout=r)),
                basis_angles("1000"), backend)
    expected = torch.tensor([[r ** sum(a != b for a, b in zip(f"{k:04b}", "1000", strict=True))
                              * (1 - r) ** sum(a == b for a, b in zip(f"{k:04b}", "1000", strict=True))
                              for k in range(16)]], dtype=torch.float64)
    torch.testing.assert_close(probs, expected, atol=1e-12, rtol=0)


def population_map(noise: NoiseModel) -> torch.Tensor:
    """By hand: the 2x2 map T[out, in] each channel induces on one qubit's populations, in order."""
    def flip(f: float) -> torch.Tensor:
        return torch.tensor([[1 - f, f], [f, 1 - f]], dtype=torch.float64)

    def decay(g: float) -> torch.Tensor:
        return torch.tensor([[1.0, g], [0.0, 1 - g]], dtype=torch.float64)

    p = noise.p
    maps = {
        "none": [],
        "depolarizing": [flip(p / 2)],  # rho -> (1-p) rho + p I/2 flips a population with probability p/2
        "amplitude_damping": [decay(p)],
        "phase_damping": [],  # dephasing leaves populations alone
        # PennyLane's DepolarizingChannel(q): X and Y (each q/3) flip, Z does not: flip 2q/3.
        "mixed": [flip(2 * 0.4 * p / 3), decay(0.3 * p)],
        "thermal": [decay(1 - math.exp(-noise.gate_time / noise.t1))],  # T2 acts on coherences only
    }[noise.kind] + [flip(noise.readout)]
    total = torch.eye(2, dtype=torch.float64)
    for m in maps:
        total = m @ total
    return total


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("noise", [NoiseModel("depolarizing", 0.3), NoiseModel("amplitude_damping", 0.4),
                                   NoiseModel("phase_damping", 0.5), NoiseModel("mixed", 0.6, readout=0.1),
                                   NoiseModel("thermal", 0.0, t1=40e-6, t2=60e-6, gate_time=20e-6)],
                         ids=lambda n: n.kind)
def test_final_layer_noise_is_a_classical_map_on_populations(noise, backend, rng):
    """The paper's circuit (depth 1, no trainable layer) has its noise after the last gate, so it equals
    a fixed per-qubit stochastic matrix applied to the noiseless probabilities."""
    angles = random_angles(5, rng)
    clean = run(CircuitConfig(4, "enhanced", "full", noise=NOISELESS), angles, backend)
    noisy = run(CircuitConfig(4, "enhanced", "full", noise=noise), angles, backend)
    single = population_map(noise)
    full = single
    for _ in range(3):
        full = torch.kron(full, single)
    torch.testing.assert_close(noisy, clean @ full.T, atol=1e-12, rtol=0)
    assert float((noisy - clean).abs().max()) > 1e-3 or noise.kind == "phase_damping"


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_probabilities_are_a_distribution(kind, rng):
    noise = NoiseModel(kind, 0.3, readout=0.05, gate_time=5e-6)
    config = CircuitConfig(4, "enhanced", "ring", depth=2, variational=True, noise=noise)
    probs = run(config, random_angles(16, rng), "fast")
    assert float(probs.min()) >= -1e-12
    torch.testing.assert_close(probs.sum(-1), torch.ones(16, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", [k for k in NOISE_KINDS if k not in ("none", "phase_damping")])
def test_noise_changes_the_output(kind, rng):
    """At the paper's strength and defaults (phase damping alone cannot: see the test above)."""
    angles = random_angles(8, rng)
    clean = run(CircuitConfig(4, "enhanced", "full", noise=NOISELESS), angles, "fast")
    noisy = run(CircuitConfig(4, "enhanced", "full", noise=NoiseModel(kind, 0.005)), angles, "fast")
    assert float((noisy - clean).abs().max()) > 1e-5


def test_depolarizing_convention_is_nielsen_chuang():
    """p -> PennyLane's DepolarizingChannel(3p/4); the paper's mixed recipe uses PennyLane's own p."""
    specs = NoiseModel("depolarizing", 0.2).channel_specs()
    assert specs[0][0] == "DepolarizingChannel" and specs[0][1] == pytest.approx((0.15,))
    mixed = NoiseModel("mixed", 0.01).channel_specs()
    assert [(name, v) for name, (v,) in mixed] == [
        ("DepolarizingChannel", pytest.approx(0.004)), ("AmplitudeDamping", pytest.approx(0.003)),
        ("PhaseDamping", pytest.approx(0.003))]


def _superoperator(kraus) -> np.ndarray:
    return sum(np.kron(k, k.conj()) for k in kraus)


@pytest.mark.parametrize("model", [
    NoiseModel("depolarizing", 0.3), NoiseModel("amplitude_damping", 0.2), NoiseModel("phase_damping", 0.7),
    NoiseModel("mixed", 0.05), NoiseModel("thermal"), NoiseModel("thermal", t1=20e-6, t2=35e-6, gate_time=4e-6),
    NoiseModel("thermal", t1=30e-6, t2=10e-6, gate_time=2e-6),
])
def test_numpy_kraus_matrices_are_pennylanes_channels(model):
    """The fast simulator's Kraus sets act exactly as PennyLane's own channels (same superoperator)."""
    import pennylane as qml

    for ours, (name, params) in zip(model.kraus_per_wire, model.channel_specs(), strict=True):
        theirs = [np.asarray(k) for k in getattr(qml, name)(*params, wires=0).kraus_matrices()]
        assert np.allclose(sum(k.conj().T @ k for k in ours), np.eye(2)), "trace preserving"
        np.testing.assert_allclose(_superoperator(ours), _superoperator(theirs), atol=1e-12)


def test_the_fast_path_does_not_import_pennylane():
    """The app's first page runs the fast simulator; PennyLane loads only to draw or run QNodes."""
    code = ("import sys, torch; from qshield_core import lab; "
            "m = lab.load('mnist', 'hybrid-full'); m.model(torch.rand(2, 1, 28, 28)); "
            "print('pennylane' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "bitflip"}, "Unknown noise"),
    ({"p": 1.5}, r"\[0, 1\]"),
    ({"readout": 0.6}, "Readout"),
    ({"kind": "thermal", "t1": 1e-6, "t2": 3e-6}, "2\\*T1"),
])
def test_invalid_noise_models_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseModel(**kwargs)


def test_circuit_config():
    assert [qubits_for_classes(c) for c in (2, 3, 10, 11, 16, 17)] == [2, 2, 4, 4, 4, 5]
    assert CircuitConfig.for_classes(11).n_qubits == 4
    config = CircuitConfig(entanglement="star", variational=True, depth=3, noise=NoiseModel("thermal", readout=0.01))
    assert config.weight_shape == (3, 4, 3)
    assert CircuitConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="encoding"):
        CircuitConfig(encoding="amplitude")


def test_circuit_can_be_drawn():
    text = draw_text(CircuitConfig(entanglement="star", noise=NoiseModel("mixed", 0.005, readout=0.01)))
    for gate in ("RX", "RY", "RZ", "╭●", "DepolarizingChannel", "AmplitudeDamping", "PhaseDamping", "BitFlip", "Probs"):
        assert gate in text


# --------------------------------------------------------------------------- feature encoding


def test_enhanced_encoding(rng):
    config = CircuitConfig.for_classes(10)
    encoder = FeatureEncoder(10, config, projection_seed=3)
    logits = torch.randn(7, 10, generator=rng)
    angles = encoder(logits)
    assert angles.shape == (7, 4, 3)
    assert float(angles.abs().max()) < math.pi
    # Standardisation per sample: the angles do not change under a positive affine map of the logits.
    torch.testing.assert_close(encoder(3.0 * logits + 5.0), angles, atol=1e-5, rtol=0)
    # The projection: 0.1 x orthonormal columns, zero-padded to 3n, fixed by the seed.
    projection = encoder.fixed_projection
    torch.testing.assert_close(projection[:, :10].T @ projection[:, :10], 0.01 * torch.eye(10), atol=1e-6, rtol=0)
    assert bool((projection[:, 10:] == 0).all())
    assert torch.equal(FeatureEncoder(10, config, projection_seed=3).fixed_projection, projection)
    assert not torch.equal(FeatureEncoder(10, config, projection_seed=4).fixed_projection, projection)


def test_random_projection_is_fresh_each_call(rng):
    encoder = FeatureEncoder(11, CircuitConfig.for_classes(11))
    logits = torch.randn(3, 11, generator=rng)
    assert not torch.allclose(encoder(logits, random_projection=True), encoder(logits, random_projection=True))
    torch.manual_seed(5)
    first = encoder(logits, random_projection=True)
    torch.manual_seed(5)
    torch.testing.assert_close(encoder(logits, random_projection=True), first)


def test_angle_encoding(rng):
    encoder = FeatureEncoder(10, CircuitConfig.for_classes(10, encoding="angle"))
    logits = torch.randn(5, 10, generator=rng) * 4
    angles = encoder(logits)
    assert angles.shape == (5, 4)
    assert float(angles.min()) > 0 and float(angles.max()) < 2 * math.pi
    groups = torch.tensor_split(logits, 4, dim=-1)
    torch.testing.assert_close(angles[:, 1], 2 * math.pi * torch.sigmoid(groups[1].mean(-1)))


# --------------------------------------------------------------------------- designs: placement, shots, cards

OLD_CARD_CIRCUIT = {"n_qubits": 4, "encoding": "enhanced", "entanglement": "full", "depth": 1, "variational": False,
                    "noise": {"kind": "mixed", "p": 0.005, "readout": 0.0, "t1": 5e-05, "t2": 7e-05,
                              "gate_time": 5e-08}}


def test_a_card_without_the_new_fields_is_todays_circuit():
    """A card written before noise placement, shots and device noise existed: the same config and the same
    PennyLane circuit, gate for gate (encoding, CNOTs, the noise channels, nothing else)."""
    import pennylane as qml

    config = CircuitConfig.from_dict(OLD_CARD_CIRCUIT)
    assert config == CircuitConfig(noise=NoiseModel("mixed", 0.005))
    assert (config.noise_placement, config.shots, config.device) == ("every_layer", None, None)
    assert not QuantumCircuitLayer(config).randomised
    tape = qml.tape.make_qscript(circuit)(example_angles(config).unsqueeze(0), torch.zeros(0), config)
    names = [op.name for op in tape.operations]
    assert names == ["RX", "RY", "RZ"] * 4 + ["CNOT"] * 6 + ["DepolarizingChannel", "AmplitudeDamping",
                                                              "PhaseDamping"] * 4


def test_design_round_trips_through_json():
    config = CircuitConfig(3, "angle", "ring", 3, True, NoiseModel("thermal", readout=0.02), noise_placement="end",
                           shots=250)
    assert CircuitConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="Unknown circuit field"):
        CircuitConfig.from_dict({"n_qubit": 4})
    for bad, match in (({"noise_placement": "middle"}, "noise placement"), ({"shots": 0}, "shots"),
                       ({"shots": 2.5}, "shots"), ({"shots": True}, "shots")):
        with pytest.raises(ValueError, match=match):
            CircuitConfig(**bad)


def layer_output(config: CircuitConfig, angles: torch.Tensor, backend: str, weights=None) -> torch.Tensor:
    layer = QuantumCircuitLayer(config, backend).double()
    if weights is not None:
        layer.weights.data = weights
    return layer(angles).detach()


def placements(config: CircuitConfig) -> tuple[CircuitConfig, CircuitConfig]:
    return replace(config, noise_placement="every_layer"), replace(config, noise_placement="end")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("noise", [NoiseModel("mixed", 0.3, readout=0.05), NoiseModel("amplitude_damping", 0.4)],
                         ids=lambda n: n.kind)
def test_noise_placement_matters_only_between_layers(noise, backend, rng):
    angles = random_angles(4, rng)
    weights = (torch.rand(2, 4, 3, generator=rng, dtype=torch.float64) * 2 - 1) * math.pi
    # Depth 1: after every layer is after the last.
    every, end = placements(CircuitConfig(4, "enhanced", "full", 1, True, noise))
    torch.testing.assert_close(layer_output(end, angles, backend, weights[:1]),
                               layer_output(every, angles, backend, weights[:1]), atol=1e-12, rtol=0)
    # Depth 2 with entanglement: the noise between the layers is carried through the second one.
    every, end = placements(CircuitConfig(4, "enhanced", "full", 2, True, noise))
    difference = layer_output(every, angles, backend, weights) - layer_output(end, angles, backend, weights)
    assert float(difference.abs().max()) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_local_depolarizing_commutes_with_single_qubit_layers(backend, rng):
    """No entanglement: every layer is single-qubit unitaries, which commute with local depolarizing, so p after
    each of 3 layers equals 1 - (1 - p)^3 once at the end (the depolarizing parameters multiply)."""
    p = 0.2
    angles = random_angles(4, rng)
    weights = (torch.rand(3, 4, 3, generator=rng, dtype=torch.float64) * 2 - 1) * math.pi
    every = CircuitConfig(4, "enhanced", "none", 3, True, NoiseModel("depolarizing", p))
    end = replace(every, noise=NoiseModel("depolarizing", 1 - (1 - p) ** 3), noise_placement="end")
    torch.testing.assert_close(layer_output(every, angles, backend, weights),
                               layer_output(end, angles, backend, weights), atol=1e-12, rtol=0)
    once = replace(every, noise_placement="end")
    assert float((layer_output(once, angles, backend, weights) - layer_output(every, angles, backend, weights))
                 .abs().max()) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_dephasing_between_cnot_layers_leaves_the_populations(backend, rng):
    """Without trainable rotations the layers are CNOT permutations, which map dephasing-only noise onto itself:
    the measured populations are the same wherever the phase damping acts."""
    angles = random_angles(4, rng)
    every, end = placements(CircuitConfig(4, "enhanced", "full", 3, False, NoiseModel("phase_damping", 0.6)))
    torch.testing.assert_close(layer_output(every, angles, backend), layer_output(end, angles, backend), atol=1e-12,
                               rtol=0)


def test_finite_shots_are_unbiased_with_the_multinomial_variance():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    shots, repeats = 40, 20000
    counts = sample_counts(p.expand(repeats, -1), shots, torch.Generator().manual_seed(3))
    assert torch.equal(counts.sum(-1), torch.full((repeats,), float(shots), dtype=torch.float64))
    estimates = counts / shots
    sigma = torch.sqrt(p * (1 - p) / shots / repeats)
    assert bool(((estimates.mean(0) - p).abs() < 4.5 * sigma).all())  # unbiased
    variance = estimates.var(0)
    torch.testing.assert_close(variance, p * (1 - p) / shots, rtol=0.05, atol=0)  # p (1 - p) / S
    covariance = ((estimates[:, 0] - p[0]) * (estimates[:, 1] - p[1])).mean()
    assert float(covariance) == pytest.approx(-float(p[0] * p[1]) / shots, rel=0.1)  # -p_i p_j / S
    sparse = torch.tensor([0.0, 0.4, 0.0, 0.6, 0.0], dtype=torch.float64)  # impossible outcomes never show
    counts = sample_counts(sparse.expand(500, -1), 10**6, torch.Generator().manual_seed(4))
    assert float(counts[:, [0, 2, 4]].abs().sum()) == 0 and bool((counts.sum(-1) == 10**6).all())


def test_finite_shots_draw_from_the_seeded_scope_and_never_the_global_generator(rng):
    config = CircuitConfig(noise=NoiseModel("mixed", 0.05), shots=100)
    layer = QuantumCircuitLayer(config).double()
    angles = random_angles(6, rng)
    with seeded(4):
        first = layer(angles)
    with seeded(4):
        again = layer(angles)
    with seeded(5):
        other = layer(angles)
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.testing.assert_close(first * 100, (first * 100).round(), atol=1e-9, rtol=0)  # frequencies of 100 shots
    state = torch.get_rng_state()
    outside = [layer(angles) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state) and not torch.equal(*outside)
    assert layer.randomised


@pytest.mark.parametrize("variational", [False, True])
def test_finite_shots_pass_the_exact_gradient_straight_through(variational, rng):
    config = CircuitConfig(4, "enhanced", "ring", 2, variational, NoiseModel("mixed", 0.1), shots=64)
    layer = QuantumCircuitLayer(config).double()
    angles = random_angles(3, rng).requires_grad_(True)
    cotangent = torch.randn(3, 16, generator=rng, dtype=torch.float64)
    with seeded(0):
        sampled = layer(angles)
    exact = layer.exact_probabilities(angles)
    assert float((sampled - exact).abs().max()) > 1e-3
    inputs = [angles] + ([layer.weights] if variational else [])
    through_samples = torch.autograd.grad((sampled * cotangent).sum(), inputs)
    through_exact = torch.autograd.grad((exact * cotangent).sum(), inputs)
    for a, b in zip(through_samples, through_exact, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_finite_shots_are_the_same_on_both_backends(rng):
    config = CircuitConfig(4, "enhanced", "full", 2, False, NoiseModel("mixed", 0.1, readout=0.02), shots=200)
    angles = random_angles(5, rng)
    outputs = []
    for backend in BACKENDS:
        with seeded(8):
            outputs.append(layer_output(config, angles, backend))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-12, rtol=0)


def test_a_finite_shot_hybrid_is_randomised_in_both_modes():
    from qshield_core.evaluation import is_randomised
    from qshield_core.models import build_model

    exact = build_model("mnist", "hybrid-full", grad_mode="differentiable")
    sampled = build_model("mnist", "hybrid-full", circuit=CircuitConfig.for_classes(10, shots=1000),
                          grad_mode="differentiable")
    assert not is_randomised(exact) and is_randomised(sampled)
    sampled.grad_mode = "paper"
    assert is_randomised(sampled)
