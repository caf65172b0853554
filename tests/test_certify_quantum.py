"""The quantum-noise certificate (qshield_core.certify.quantum) against random and constructed perturbations."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch

from qshield_core.certify import quantum as Q
from qshield_core.models import build_classifier, build_model
from qshield_core.noise import NoiseModel, amplitude_damping_kraus, depolarizing_kraus, phase_damping_kraus
from qshield_core.quantum import CircuitConfig
from qshield_core.simulator import FastCircuitSimulator, encoded_state
from qshield_core.zoo import model_files

SHIPPED = CircuitConfig(n_qubits=4, entanglement="full", noise=NoiseModel("mixed", 0.005))
CONFIGS = [  # (config, number of classes)
    (CircuitConfig(n_qubits=2, entanglement="ring", noise=NoiseModel("mixed", 0.2, readout=0.03)), 3),
    (CircuitConfig(n_qubits=3, entanglement="linear", depth=2, noise=NoiseModel("depolarizing", 0.1)), 5),
    (SHIPPED, 10),
]


def simulator(config: CircuitConfig) -> FastCircuitSimulator:
    return FastCircuitSimulator(config.n_qubits, config.encoding, config.pairs, config.depth, config.noise)


@functools.lru_cache(maxsize=8)
def circuit_maps(config: CircuitConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    sim = simulator(config)
    return sim.superoperator(), sim.readout


def through_circuit(config: CircuitConfig, rhos: np.ndarray) -> np.ndarray:
    """Outcome probabilities of density matrices (N, d, d) pushed through the circuit's full superoperator,
    then the readout confusion: independent of the effects the certificate reads."""
    superop, readout = circuit_maps(config)
    d = rhos.shape[-1]
    out = torch.from_numpy(np.ascontiguousarray(rhos.reshape(len(rhos), -1))) @ superop.T
    probs = out[:, torch.arange(d) * (d + 1)].real
    return (probs if readout is None else probs @ readout.T).numpy()


def random_angles(config: CircuitConfig, count: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(count, config.n_qubits, 3, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi


def orthogonal_directions(psi: np.ndarray, count: int, gen: torch.Generator) -> np.ndarray:
    """``count`` random unit vectors orthogonal to the unit vector ``psi``."""
    raw = torch.randn(count, len(psi), 2, generator=gen, dtype=torch.float64).numpy()
    chi = raw[..., 0] + 1j * raw[..., 1]
    chi -= (chi @ psi.conj())[:, None] * psi[None]
    return chi / np.linalg.norm(chi, axis=1, keepdims=True)


def random_density(d: int, count: int, gen: torch.Generator) -> np.ndarray:
    raw = torch.randn(count, d, d, 2, generator=gen, dtype=torch.float64).numpy()
    g = raw[..., 0] + 1j * raw[..., 1]
    rho = g @ g.conj().transpose(0, 2, 1)
    return rho / np.trace(rho, axis1=1, axis2=2)[:, None, None]


def trace_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(np.linalg.eigvalsh(a - b)).sum(-1) / 2


def dual_minimisers(psi: np.ndarray, effects: np.ndarray, k: int, num_classes: int) -> list[np.ndarray]:
    """For each competitor j, the pure state minimising <phi|E_k - E_j|phi> at the pure-state radius: the
    lowest eigenvector of t A_j - |psi><psi| at the best t of a grid (the optimal great circle from psi)."""
    proj = np.outer(psi, psi.conj())
    out = []
    for j in range(num_classes):
        if j == k:
            continue
        a = effects[k] - effects[j]
        ts = np.logspace(-3, 4, 300)
        t = ts[int(np.argmax(np.linalg.eigvalsh(ts[:, None, None] * a - proj)[:, 0]))]
        out.append(np.linalg.eigh(t * a - proj)[1][:, 0])
    return out


def perturbations(psi: np.ndarray, effects: np.ndarray, k: int, num_classes: int, tau: float, tau_pure: float,
                  gen: torch.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Random and adversarial states around |psi>: (states within tau (any), states within tau_pure (pure))."""
    d = len(psi)
    rho = np.outer(psi, psi.conj())
    u = 1 - torch.rand(count, generator=gen, dtype=torch.float64).numpy() ** 4  # mostly near the boundary
    chi = orthogonal_directions(psi, count, gen)
    omega = random_density(d, count, gen)
    mixed = rho + (u * tau / trace_distance(rho[None], omega))[:, None, None] * (omega - rho)
    # towards each competitor's most damaging eigenvector: (1 - tau) rho + tau |v><v| is within tau
    worst = [np.linalg.eigh(effects[k] - effects[j])[1][:, 0] for j in range(num_classes) if j != k]
    pushed = np.stack([(1 - tau) * rho + tau * np.outer(v, v.conj()) for v in worst])
    t = np.arcsin(np.clip(u * tau_pure, 0, 1))
    phis = np.cos(t)[:, None] * psi[None] + np.sin(t)[:, None] * chi
    towards = np.stack([v - (psi.conj() @ v) * psi for v in worst + dual_minimisers(psi, effects, k, num_classes)])
    towards /= np.linalg.norm(towards, axis=1, keepdims=True)
    s = math.asin(min(tau_pure, 1.0))
    phis = np.concatenate([phis, math.cos(s) * psi[None] + math.sin(s) * towards])
    pure = np.einsum("na,nb->nab", phis, phis.conj())
    return np.concatenate([mixed, pushed]), pure


@pytest.mark.parametrize("config, num_classes", CONFIGS, ids=["2q-mixed-readout", "3q-depol-depth2", "shipped"])
def test_certified_radius_is_never_violated(config, num_classes, rng):
    channel = Q.circuit_channel(config)
    states = encoded_state(random_angles(config, 6, rng), config.encoding).numpy()
    flips_outside = 0
    for psi in states:
        cert = Q.certify_state(channel, psi, num_classes)
        k = cert.predicted
        assert np.argmax(through_circuit(config, np.outer(psi, psi.conj())[None])[0, :num_classes]) == k
        assert cert.radius_operator >= (cert.radius_elementary or 0.0) - 1e-12
        assert cert.radius_pure >= cert.radius - 1e-12
        inside_any, inside_pure = perturbations(psi, channel.effects, k, num_classes, cert.radius * (1 - 1e-9),
                                                cert.radius_pure * (1 - 1e-9), rng, 600)
        rho = np.outer(psi, psi.conj())
        assert trace_distance(rho[None], inside_any).max() <= cert.radius + 1e-9
        assert trace_distance(rho[None], inside_pure).max() <= cert.radius_pure + 1e-9
        for sigmas in (inside_any, inside_pure):
            assert (through_circuit(config, sigmas)[:, :num_classes].argmax(1) == k).all()
        _, beyond_pure = perturbations(psi, channel.effects, k, num_classes, cert.radius,
                                       min(1.0, 1.1 * cert.radius_pure), rng, 200)
        flips_outside += int((through_circuit(config, beyond_pure)[:, :num_classes].argmax(1) != k).sum())
    assert flips_outside > 0  # 10% past the pure-state radius the same trials do flip: they have teeth


def test_pure_radius_is_attained_by_the_dual_minimiser(rng):
    """At the pure-state radius, the minimiser of the dual is a pure state at that distance that ties."""
    channel = Q.circuit_channel(SHIPPED)
    psi = encoded_state(random_angles(SHIPPED, 1, rng), "enhanced").numpy()[0]
    cert = Q.certify_state(channel, psi, 10)
    e = channel.effects
    best = None
    for j in range(10):
        if j == cert.predicted:
            continue
        a = e[cert.predicted] - e[j]
        ts = np.logspace(-3, 4, 4000)
        values = [np.linalg.eigvalsh(t * a - np.outer(psi, psi.conj()))[0] for t in ts]
        t = ts[int(np.argmax(values))]
        phi = np.linalg.eigh(t * a - np.outer(psi, psi.conj()))[1][:, 0]
        distance = math.sqrt(max(0.0, 1 - abs(psi.conj() @ phi) ** 2))
        if best is None or distance < best[0]:
            best = (distance, (phi.conj() @ a @ phi).real)
    assert best[0] == pytest.approx(cert.radius_pure, abs=2e-3)
    assert abs(best[1]) < 2e-3  # q_k = q_j there: the radius cannot be larger


def bloch_angles(z: float) -> torch.Tensor:
    """RY angle giving the Bloch vector (sqrt(1 - z^2), 0, z) on one qubit."""
    return torch.tensor([[[0.0, math.acos(z), 0.0]]], dtype=torch.float64)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.4])
def test_one_qubit_depolarizing_radius_is_attained(p):
    """One qubit, depolarizing noise (Bloch shrink 1 - p), Z measurement: flipping needs z' <= 0, at trace
    distance z/2 for mixed states (straight down) and sin((pi/2 - acos z)/2) for pure ones (to the equator)."""
    config = CircuitConfig(n_qubits=1, entanglement="none", noise=NoiseModel("depolarizing", p))
    channel = Q.circuit_channel(config)
    z = 0.6
    psi = encoded_state(bloch_angles(z), "enhanced").numpy()[0]
    cert = Q.certify_state(channel, psi, 2)
    assert cert.predicted == 0
    assert cert.contraction == pytest.approx(1 - p, abs=1e-12)
    assert cert.radius_operator == pytest.approx(z / 2, abs=1e-12)
    assert cert.radius_elementary == pytest.approx(z / 2, abs=1e-12)
    assert cert.radius_pure == pytest.approx(math.sin((math.pi / 2 - math.acos(z)) / 2), abs=1e-7)
    x = math.sqrt(1 - z * z)
    for delta, flips in ((1e-6, True), (-1e-6, False)):  # Bloch vector (x, 0, -delta): at distance (z + delta)/2
        sigma = np.array([[1 - delta, x], [x, 1 + delta]], dtype=np.complex128) / 2
        distance = trace_distance(np.outer(psi, psi.conj())[None], sigma[None])[0]
        assert distance == pytest.approx(z / 2 + delta / 2, abs=1e-9)
        assert bool(through_circuit(config, sigma[None])[0].argmax() != 0) == flips
    equator = np.array([math.cos(math.pi / 4), math.sin(math.pi / 4)], dtype=np.complex128)  # nearest pure state
    assert math.sqrt(1 - abs(psi @ equator) ** 2) == pytest.approx(cert.radius_pure, abs=1e-7)
    assert cert.du_weight == pytest.approx(p, abs=1e-12)
    assert cert.radius_du <= cert.radius_operator + 1e-12
    if p == 0:
        assert cert.radius_du == 0.0


def test_du_bound_grows_with_global_noise_but_not_past_the_exact_radius(rng):
    """Global depolarizing noise leaves every decision unchanged: tau_op and tau_pure do not move with p,
    while Du et al.'s radius grows from 0 and stays below tau_pure."""
    psi = encoded_state(random_angles(SHIPPED, 1, rng), "enhanced").numpy()
    base = SHIPPED.with_noise(NoiseModel("none", 0.0))
    rows = []
    for p in (0.0, 0.05, 0.3, 0.8, 0.99):
        channel = Q.circuit_channel(base, global_depolarizing=p)
        assert channel.global_depolarizing_weight == pytest.approx(p, abs=1e-9)
        r = Q._radii(channel, psi, 10)
        rows.append((float(r["operator"][0]), float(r["pure"][0]), float(r["du"][0])))
    operators, pures, dus = zip(*rows, strict=True)
    assert np.ptp(operators) < 1e-9 and np.ptp(pures) < 1e-6
    assert dus[0] == 0.0 and all(b > a for a, b in itertools.pairwise(dus))
    assert max(dus) <= pures[0]


def test_du_formula_by_hand():
    assert Q.du_epsilon(0.1, 0.01, 16) == pytest.approx(math.log(1 + 16 * 0.9 * 0.01 / 0.1))
    assert Q.du_epsilon(0.0, 0.01, 16) == math.inf
    tau = Q.du_radius(0.1, 0.6, 0.2, 16)
    assert math.exp(2 * Q.du_epsilon(0.1, tau, 16)) == pytest.approx(0.6 / 0.2)  # the condition holds with equality
    assert Q.du_radius(0.0, 0.6, 0.2, 16) == 0.0
    assert Q.du_radius(0.1, 0.2, 0.6, 16) == 0.0


@pytest.mark.parametrize("q", [0.0, 0.01, 0.3, 0.75])
def test_qubit_contraction_coefficients_by_hand(q):
    assert Q.qubit_contraction_coefficient(depolarizing_kraus(q)) == pytest.approx(1 - 4 * q / 3, abs=1e-12)
    assert Q.qubit_contraction_coefficient(amplitude_damping_kraus(q)) == pytest.approx(math.sqrt(1 - q), abs=1e-12)
    assert Q.qubit_contraction_coefficient(phase_damping_kraus(q)) == pytest.approx(1.0, abs=1e-12)


def test_measured_contraction_without_noise_is_one_and_weights_by_hand():
    for n in (1, 2, 4):
        config = CircuitConfig(n_qubits=n, entanglement="full" if n > 1 else "none", noise=NoiseModel("none", 0.0))
        channel = Q.circuit_channel(config)
        assert channel.measured_contraction == pytest.approx(1.0, abs=1e-12)
        assert channel.global_depolarizing_weight == 0.0
    local = Q.circuit_channel(CircuitConfig(n_qubits=3, entanglement="ring", noise=NoiseModel("depolarizing", 0.2)))
    assert local.global_depolarizing_weight == pytest.approx(0.2**3, rel=1e-6)  # only the all-wires branch
    damping = Q.circuit_channel(CircuitConfig(n_qubits=2, noise=NoiseModel("amplitude_damping", 0.3)))
    assert damping.global_depolarizing_weight == 0.0  # non-unital, no constant component
    shipped = Q.circuit_channel(SHIPPED)
    assert 0 < shipped.global_depolarizing_weight < (4 / 3 * 0.4 * 0.005) ** 4
    lower, upper = shipped.contraction_bounds
    assert lower <= upper <= 1.0


def test_p_zero_leaves_only_the_noise_free_bounds(rng):
    config = SHIPPED.with_noise(NoiseModel("mixed", 0.0))
    channel = Q.circuit_channel(config)
    psi = encoded_state(random_angles(config, 1, rng), "enhanced").numpy()[0]
    cert = Q.certify_state(channel, psi, 10)
    assert cert.contraction == pytest.approx(1.0, abs=1e-12) and cert.du_weight == 0.0 and cert.radius_du == 0.0
    mass = cert.class_mass
    assert cert.radius_elementary == pytest.approx(mass * cert.gap / 2, abs=1e-12)
    assert cert.radius_operator > 0


def test_superoperator_matches_the_simulator(rng):
    config = CircuitConfig(n_qubits=3, entanglement="ring", depth=2, variational=True,
                           noise=NoiseModel("mixed", 0.1, readout=0.02))
    sim = simulator(config)
    angles = random_angles(config, 4, rng)
    weights = torch.rand(config.weight_shape, generator=rng, dtype=torch.float64)
    rho = sim.final_density_matrix(angles, weights)
    probs = torch.diagonal(rho, dim1=-2, dim2=-1).real @ sim.readout.T
    assert torch.allclose(probs, sim.probabilities(angles, weights), atol=1e-12)
    channel = Q.circuit_channel(config, weights)
    assert np.allclose(channel.probabilities(encoded_state(angles, "enhanced").numpy()), probs.numpy(), atol=1e-12)


def hybrid(num_classes: int = 10):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_model("mnist" if num_classes == 10 else "organamnist", "hybrid-full",
                           grad_mode="differentiable").eval()


def test_logit_ball_bound_and_encoder_reach_hold(rng):
    model = hybrid()
    reach = Q.encoder_reach_bound(model)
    assert reach == pytest.approx(math.pi * 0.1 * math.sqrt(10) / 2, rel=1e-6)
    zero = np.zeros(16, dtype=np.complex128)
    zero[0] = 1
    for scale in (0.01, 1.0, 30.0):
        z = torch.randn(200, 10, generator=rng, dtype=torch.float64) * scale
        states = encoded_state(model.encoder(z), "enhanced").detach().numpy()
        assert (np.sqrt(1 - np.abs(states @ zero) ** 2) <= reach + 1e-12).all()
    for _ in range(20):
        z = torch.randn(10, generator=rng, dtype=torch.float64) * 3
        radius = float(z.std(unbiased=False)) * 0.5
        bound = Q.state_distance_bound(model, z, radius)
        assert Q.certified_logit_radius(model, z, bound) == pytest.approx(radius, rel=1e-6)
        dz = torch.randn(300, 10, generator=rng, dtype=torch.float64)
        dz = dz / dz.norm(dim=1, keepdim=True) * radius * torch.rand(300, 1, generator=rng, dtype=torch.float64)
        a = encoded_state(model.encoder(z[None]), "enhanced").detach().numpy()[0]
        b = encoded_state(model.encoder(z[None] + dz), "enhanced").detach().numpy()
        assert (np.sqrt(np.clip(1 - np.abs(b @ a.conj()) ** 2, 0, 1)) <= bound + 1e-12).all()


def test_cnn_lipschitz_bound_dominates_the_local_slopes(rng):
    cnn = build_classifier("mnist").eval()
    bound, factors = Q.cnn_lipschitz_upper_bound(cnn, (1, 28, 28), iterations=30)
    assert len(factors) >= 8 and bound > 0
    images = torch.rand(4, 1, 28, 28, generator=rng)
    local = Q.logit_jacobian_norms(cnn, images)
    assert (local <= bound).all() and (local > 0).all()
    delta = torch.randn(images.shape, generator=rng) * 1e-3
    with torch.no_grad():
        ratio = (cnn(images + delta) - cnn(images)).norm(dim=1) / delta.flatten(1).norm(dim=1)
    assert (ratio <= local * 1.01 + 1e-6).all()


def test_noise_to_certify_and_attack_on_an_untrained_hybrid(rng):
    model = hybrid()
    image = torch.rand(1, 28, 28, generator=rng)
    cert = Q.quantum_certificate(model, image)
    ps = (0.0, 1.0)
    assert Q.noise_to_certify(model, image, 0.0, ps=ps).p == 0.0
    assert Q.noise_to_certify(model, image, 1.5, ps=ps).p is None
    found = Q.noise_to_certify(model, image, cert.radius_pure * 1.02, ps=ps, refine=2)
    assert found.p is None or found.radius_at_p >= cert.radius_pure * 1.02
    first = Q.encoded_state_attack(model, image[None], 0.1, steps=3, generator=torch.Generator().manual_seed(5))
    again = Q.encoded_state_attack(model, image[None], 0.1, steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first[0], again[0]) and 0 < float(first[0][0]) <= 1
    view = Q.pixel_view(model, image, 0.1, cnn_bound=1e3, steps=3, generator=torch.Generator().manual_seed(5))
    assert view.tau == cert.radius_pure
    assert view.certified_pixel_radius_l2 == pytest.approx(view.certified_logit_radius / 1e3)
    assert view.certified_pixel_radius_linf == pytest.approx(view.certified_pixel_radius_l2 / 28)
    assert 0 < view.empirical_state_distance_at_eps <= view.state_bound_at_eps <= 1
    with pytest.raises(TypeError):
        Q.quantum_certificate(build_classifier("mnist"), image)


@pytest.mark.parametrize("dataset", ["mnist", "organamnist"])
def test_shipped_quantum_branch_is_provably_constant(dataset):
    if not model_files(dataset, "hybrid-full").weights.is_file():
        pytest.skip(f"shipped {dataset} hybrid-full weights missing")
    from qshield_core.data import load_samples
    from qshield_core.zoo import load_model

    model, _ = load_model(dataset, "hybrid-full", grad_mode="differentiable")
    images, _ = load_samples(dataset)
    certs = Q.quantum_certificates(model, images[:8])
    with torch.no_grad():
        out = model.details(images[:8])
    assert [c.predicted for c in certs] == out.quantum_probs.argmax(1).tolist()
    assert [c.fused_predicted for c in certs] == out.log_probs.argmax(1).tolist()
    assert all(c.radius_pure > 0.3 and c.radius_du < 1e-9 for c in certs)
    proof = Q.global_certificate(model)
    assert proof.proved and proof.constant_class == 0 and proof.center_radius_pure > proof.reach_bound


def test_rank_one_eigenvalue_matches_brute_force(rng):
    raw = torch.randn(200, 16, 2, generator=rng, dtype=torch.float64).numpy()
    psi = raw[..., 0] + 1j * raw[..., 1]
    psi /= np.linalg.norm(psi, axis=1, keepdims=True)
    diagonal = torch.randn(200, 16, generator=rng, dtype=torch.float64).numpy()
    diagonal[:50, 0] = diagonal[:50].min(1) - 1  # an isolated lowest level ...
    psi[:50, 0] = 0  # ... that psi does not touch: the answer is that level itself
    psi[:50] /= np.linalg.norm(psi[:50], axis=1, keepdims=True)
    exact = np.linalg.eigvalsh(np.einsum("bi,ij->bij", diagonal, np.eye(16)) - np.einsum("bi,bj->bij", psi, psi.conj()))
    found = Q.lowest_rank_one(diagonal, np.abs(psi) ** 2)
    assert np.allclose(found, exact[:, 0], atol=1e-12) and (found <= exact[:, 0] + 1e-13).all()


@pytest.mark.parametrize("config, g", [(CONFIGS[0][0], 0.0), (CONFIGS[0][0], 0.3), (SHIPPED, 0.0),
                                       (CircuitConfig(n_qubits=2, noise=NoiseModel("depolarizing", 0.5)), 0.1)])
def test_structured_choi_minimum_equals_the_full_spectrum(config, g):
    channel = Q.circuit_channel(config, global_depolarizing=g)
    assert channel.choi_minimum is not None
    full = Q.CircuitChannel(channel.n_qubits, channel.superop)  # no structure given: the full eigensolve
    assert channel.global_depolarizing_weight == pytest.approx(full.global_depolarizing_weight, abs=1e-12)
