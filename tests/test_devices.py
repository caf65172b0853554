"""Real-device noise: the calibration numbers mapped onto channels, on hand-computed cases.

A small synthetic snapshot (``tests/data/snapshots/tiny/props_tiny.json``, the ``BackendProperties``
format) stands in for the package's; one test reads a real snapshot and skips without the package.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from qshield_core import devices
from qshield_core.devices import (
    DeviceNoise,
    PairCalibration,
    QubitCalibration,
    compose_errors,
    depolarizing_for_error,
    device_noise_from_properties,
    parse_properties,
    route_gate_counts,
    thermal_relaxation_fidelity,
)
from qshield_core.noise import KRAUS, confusion_kraus, confusion_matrix, two_qubit_depolarizing_kraus
from qshield_core.quantum import CircuitConfig, QuantumCircuitLayer, entangling_pairs
from qshield_core.simulator import cnot_matrix

SNAPSHOTS = Path(__file__).parent / "data" / "snapshots"
TINY = json.loads((SNAPSHOTS / "tiny" / "props_tiny.json").read_text())
NOISELESS = {"kind": "none", "p": 0.0, "readout": 0.0}


def apply(kraus, rho: np.ndarray) -> np.ndarray:
    return sum(k @ rho @ k.conj().T for k in kraus)


def average_gate_fidelity(kraus, dim: int) -> float:
    """F = (d F_pro + 1)/(d + 1) with F_pro = sum_k |Tr K_k|^2 / d^2, computed from the Kraus set."""
    process = sum(abs(np.trace(k)) ** 2 for k in kraus) / dim**2
    return (dim * process + 1) / (dim + 1)


def compose(first, second):
    """Kraus set of ``second`` after ``first``."""
    return [b @ a for a in first for b in second]


def one_qubit_device(t1=50e-6, t2=100e-6, length=0.0, error=0.0, p10=0.0, p01=0.0) -> DeviceNoise:
    return DeviceNoise("synthetic", "hand-made", "test", "sx", "cx",
                       (QubitCalibration(0, t1, t2, length, error, p10, p01),), ())


# --------------------------------------------------------------------------- channel arithmetic


def test_t1_only_qubit_decays_as_exp_minus_t_over_t1():
    """T2 = 2 T1 is pure relaxation (no extra dephasing): |1> keeps exp(-t/T1), and a coherence exp(-t/(2 T1))."""
    t1, t = 40e-6, 25e-6
    kraus = KRAUS["ThermalRelaxationError"](0.0, t1, 2 * t1, t)
    excited = apply(kraus, np.diag([0, 1]).astype(complex))
    assert excited[1, 1].real == pytest.approx(math.exp(-t / t1), abs=1e-12)
    plus = apply(kraus, np.full((2, 2), 0.5, dtype=complex))
    assert abs(plus[0, 1]) == pytest.approx(0.5 * math.exp(-t / (2 * t1)), abs=1e-12)


@pytest.mark.parametrize("backend", ["fast", "pennylane"])
def test_t1_only_qubit_through_the_circuit(backend):
    """One wire in |1> (RX(pi)); the device charges its encoding rotation 2 sx pulses of length L: P(1) = e^{-2L/T1}."""
    t1, length = 30e-6, 4e-6
    device = one_qubit_device(t1=t1, t2=2 * t1, length=length, error=0.0)
    assert device.qubits[0].pulse_depolarizing == 0.0  # error 0 < relaxation's: no depolarizing
    config = CircuitConfig.from_dict({"n_qubits": 1, "entanglement": "none", "noise": NOISELESS,
                                      "device": device.to_dict()})
    angles = torch.tensor([[[math.pi, 0.0, 0.0]]], dtype=torch.float64)
    probs = QuantumCircuitLayer(config, backend)(angles).detach()
    expected = math.exp(-2 * length / t1)
    torch.testing.assert_close(probs, torch.tensor([[1 - expected, expected]], dtype=torch.float64), atol=1e-12,
                               rtol=0)


def test_thermal_relaxation_fidelity_by_hand():
    t = 10e-6
    t1 = t2 = t / math.log(2)  # e^{-t/T1} = e^{-t/T2} = 1/2
    assert thermal_relaxation_fidelity(t1, t2, t) == pytest.approx((3 + 2 * 0.5 + 0.5) / 6)
    kraus = KRAUS["ThermalRelaxationError"](0.0, 60e-6, 80e-6, 7e-6)
    assert thermal_relaxation_fidelity(60e-6, 80e-6, 7e-6) == pytest.approx(average_gate_fidelity(kraus, 2), abs=1e-12)


def test_depolarizing_alone_gives_the_target_infidelity():
    """Without relaxation: p = d r / (d - 1), and the channel's average infidelity is r (d = 2 and 4)."""
    assert depolarizing_for_error(0.01, 1.0, 2) == pytest.approx(0.02)
    assert depolarizing_for_error(0.03, 1.0, 4) == pytest.approx(0.04)
    one = KRAUS["DepolarizingChannel"](0.75 * 0.02)  # N&C p = 0.02 in PennyLane's convention
    assert 1 - average_gate_fidelity(one, 2) == pytest.approx(0.01, abs=1e-12)
    assert 1 - average_gate_fidelity(two_qubit_depolarizing_kraus(0.04), 4) == pytest.approx(0.03, abs=1e-12)


@pytest.mark.parametrize("t1, t2, length, error", [(100e-6, 80e-6, 40e-9, 4e-4), (60e-6, 30e-6, 1e-6, 0.03),
                                                   (120e-6, 200e-6, 35e-9, 5e-4)])
def test_relaxation_then_depolarizing_matches_the_reported_error(t1, t2, length, error):
    q = QubitCalibration(0, t1, t2, length, error, 0.0, 0.0)
    relax = KRAUS["ThermalRelaxationError"](0.0, t1, q.t2_used, length)
    assert 1 - average_gate_fidelity(relax, 2) < error  # relaxation leaves some error to depolarizing
    pulse = compose(relax, KRAUS["DepolarizingChannel"](0.75 * q.pulse_depolarizing))
    assert 1 - average_gate_fidelity(pulse, 2) == pytest.approx(error, rel=1e-9)


def test_two_qubit_gate_matches_the_reported_error():
    device = device_noise_from_properties(TINY, 2, [(0, 1)], qubits=[0, 1])
    channel = None
    for wires, kraus in device.pair_kraus(0, 1):
        full = [np.kron(k, np.eye(2)) if wires == (0,) else np.kron(np.eye(2), k) if wires == (1,) else k
                for k in kraus]
        channel = full if channel is None else compose(channel, full)
    assert 1 - average_gate_fidelity(channel, 4) == pytest.approx(0.01, rel=1e-9)


def test_relaxation_beyond_the_reported_error_gives_no_depolarizing():
    q = QubitCalibration(0, 10e-6, 5e-6, 1e-6, 1e-4, 0.0, 0.0)  # relaxation alone: far more than 1e-4
    assert q.pulse_depolarizing == 0.0
    assert [name for name, _ in one_qubit_device(10e-6, 5e-6, 1e-6, 1e-4).rotation_specs(0)] == [
        "ThermalRelaxationError"] * 2


def test_t2_is_clipped_at_twice_t1():
    q = QubitCalibration(0, 50e-6, 130e-6, 40e-9, 1e-3, 0.0, 0.0)
    assert q.t2_used == 100e-6 and q.t2 == 130e-6


def test_readout_confusion_from_the_two_probabilities():
    matrix = confusion_matrix(0.02, 0.05)
    np.testing.assert_allclose(matrix, [[0.98, 0.05], [0.02, 0.95]])
    for true, column in ((0, matrix[:, 0]), (1, matrix[:, 1])):
        rho = np.zeros((2, 2), dtype=complex)
        rho[true, true] = 1
        np.testing.assert_allclose(np.diag(apply(confusion_kraus(0.02, 0.05), rho)).real, column, atol=1e-15)


@pytest.mark.parametrize("backend", ["fast", "pennylane"])
def test_readout_confusion_through_the_circuit(backend):
    device = one_qubit_device(t1=1.0, t2=2.0, p10=0.02, p01=0.05)  # T1 of a second, no gate time: readout only
    config = CircuitConfig.from_dict({"n_qubits": 1, "entanglement": "none", "noise": NOISELESS,
                                      "device": device.to_dict()})
    angles = torch.tensor([[[0.0, 0.0, 0.0]], [[math.pi, 0.0, 0.0]]], dtype=torch.float64)  # |0>, |1>
    probs = QuantumCircuitLayer(config, backend)(angles).detach()
    torch.testing.assert_close(probs, torch.tensor([[0.98, 0.02], [0.05, 0.95]], dtype=torch.float64), atol=1e-12,
                               rtol=0)


def test_compose_errors_and_routes_by_hand():
    lam = 1 - 4 / 3 * 0.01
    assert compose_errors([0.01, 0.01], 4) == pytest.approx((1 - lam**2) * 3 / 4)
    assert compose_errors([0.02], 4) == pytest.approx(0.02)
    assert route_gate_counts(1) == [1] and route_gate_counts(2) == [2, 2] and route_gate_counts(3) == [6, 2, 2]


def test_bridge_is_a_cnot_between_the_ends():
    """CX(m, b) CX(a, m) CX(m, b) CX(a, m) = CNOT(a, b): the 4-gate route at distance 2."""
    a, m, b = 0, 1, 2
    bridge = cnot_matrix(a, m, 3) @ cnot_matrix(m, b, 3) @ cnot_matrix(a, m, 3) @ cnot_matrix(m, b, 3)
    np.testing.assert_array_equal(bridge, cnot_matrix(a, b, 3))


# --------------------------------------------------------------------------- the mapping of a snapshot


def test_parse_properties_of_the_synthetic_snapshot():
    calibration = parse_properties(TINY, "props_tiny.json")
    assert sorted(calibration.qubits) == [0, 1, 2, 3, 4]  # qubit 5 has no T2
    q0 = calibration.qubits[0]
    assert (q0.t1, q0.t2, q0.pulse_length, q0.pulse_error) == pytest.approx((100e-6, 80e-6, 40e-9, 2e-4))
    assert (q0.p_1_given_0, q0.p_0_given_1) == (0.01, 0.02)
    assert calibration.edges == {(0, 1): pytest.approx((300e-9, 0.01)), (1, 2): pytest.approx((400e-9, 0.02)),
                                 (2, 3): pytest.approx((350e-9, 0.008))}  # lower-error direction; 3-4 broken
    assert (calibration.pulse_gate, calibration.two_qubit_gate) == ("sx", "cx")
    assert "2026-01-01" in calibration.snapshot


def test_mapping_of_the_synthetic_snapshot():
    device = device_noise_from_properties(TINY, 4, entangling_pairs("linear", 4), snapshot="props_tiny.json")
    assert device.physical_qubits == (0, 1, 2, 3)  # the only 4 connected qubits; ties go to the smaller order
    assert device.pair(0, 1) == PairCalibration((0, 1), (0, 1), 1, pytest.approx(300e-9), pytest.approx(0.01))
    bridge = device.pair(2, 0)  # 0-1-2: 2 gates on each edge
    assert (bridge.route, bridge.native_gates) == ((0, 1, 2), 4)
    assert bridge.length == pytest.approx(2 * 300e-9 + 2 * 400e-9)
    assert bridge.error == pytest.approx(compose_errors([0.01, 0.01, 0.02, 0.02], 4))
    far = device.pair(0, 3)
    assert (far.route, far.native_gates) == ((0, 1, 2, 3), 10)
    assert far.length == pytest.approx(6 * 300e-9 + 2 * 400e-9 + 2 * 350e-9)
    rebuilt = DeviceNoise.from_dict(json.loads(json.dumps(device.to_dict())))
    assert rebuilt == device
    table = device.channel_table()
    assert table["wires"][2]["t2_us"] == pytest.approx(180.0)  # 200 us clipped at 2 T1


def test_qubit_choice_follows_the_errors():
    """Wire 0 talks to both others, so it sits in the middle of a 3-qubit path: {1, 2, 3} (edges 0.02 + 0.008)
    beats {0, 1, 2} (0.01 + 0.02) once the qubits' own errors are added; the outer wires tie, the smaller order wins."""
    chosen = devices.choose_qubits(parse_properties(TINY), 3, [(0, 1), (0, 2)])
    assert chosen == (2, 1, 3)
    calibration = parse_properties(TINY)
    single = {q: 2 * c.pulse_error + (c.p_1_given_0 + c.p_0_given_1) / 2 for q, c in calibration.qubits.items()}
    cost_123 = single[1] + single[2] + single[3] + 0.02 + 0.008
    cost_012 = single[0] + single[1] + single[2] + 0.01 + 0.02
    assert cost_123 < cost_012


def test_unconnected_or_unknown_qubits_are_refused():
    with pytest.raises(ValueError, match="not connected"):
        device_noise_from_properties(TINY, 2, [(0, 1)], qubits=[0, 3])
    with pytest.raises(ValueError, match="lack complete calibration"):
        device_noise_from_properties(TINY, 2, [(0, 1)], qubits=[2, 5])
    with pytest.raises(ValueError, match="no 5 connected qubits"):
        device_noise_from_properties(TINY, 5, [])


def test_a_device_request_resolves_from_the_snapshot_folder(monkeypatch):
    monkeypatch.setattr(devices, "snapshot_root", lambda: SNAPSHOTS)
    config = CircuitConfig.from_dict({"entanglement": "linear", "device": {"backend": "fake_tiny", "qubits": None}})
    assert config.device.physical_qubits == (0, 1, 2, 3) and config.device.snapshot.startswith("props_tiny.json")
    assert CircuitConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # stored resolved
    with pytest.raises(devices.DeviceUnavailableError, match="Unknown device"):
        devices.snapshot_path("nowhere")


def test_missing_package_says_how_to_enable_it(monkeypatch):
    monkeypatch.setattr(devices, "snapshot_root", lambda: None)
    with pytest.raises(devices.DeviceUnavailableError, match=r"pip install \.\[devices\]"):
        CircuitConfig.from_dict({"device": {"backend": "kolkata"}})


def test_a_real_snapshot():
    if devices.snapshot_root() is None:
        pytest.skip("qiskit-ibm-runtime is not installed (the optional extra: pip install .[devices])")
    props = devices.load_snapshot("kolkata")
    device = devices.device_noise("kolkata", 4, entangling_pairs("full", 4))
    coupled = {tuple(sorted(g["qubits"])) for g in props["gates"] if g["gate"] == "cx"}
    physical = device.physical_qubits
    assert len(set(physical)) == 4
    assert sum(tuple(sorted((a, b))) in coupled for i, a in enumerate(physical) for b in physical[i + 1:]) >= 3
    for wire, qubit in enumerate(physical):  # the card's numbers are the snapshot's, in seconds
        entries = {e["name"]: e["value"] for e in props["qubits"][qubit]}
        assert device.qubits[wire].t1 == pytest.approx(entries["T1"] * 1e-6)
        assert device.qubits[wire].p_0_given_1 == pytest.approx(entries["prob_meas0_prep1"])
    assert devices.device_noise("kolkata", 4, entangling_pairs("full", 4)) == device  # deterministic
