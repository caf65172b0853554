"""Real-device noise from IBM calibration snapshots, offline, mapped onto this project's own channels.

Where the numbers come from: ``qiskit-ibm-runtime`` ships, inside its wheel, calibration snapshots
of several dozen IBM devices (``qiskit_ibm_runtime/fake_provider/backends/<name>/props_<name>.json``,
the ``BackendProperties`` JSON format). They are read here as plain JSON from the installed
package's folder (located with ``importlib.util.find_spec``, which imports nothing: qiskit is never
loaded), so the package is an optional extra (``pip install .[devices]``). A resolved
:class:`DeviceNoise` holds every number it uses, and a model card stores it, so a trained model
loads and runs without the package.

How each calibration number is used, for the chosen qubits (logical wire i runs on physical
qubit ``qubits[i].qubit``):

- ``T1``, ``T2`` of a qubit: thermal relaxation towards |0> over each gate's duration
  (``qml.ThermalRelaxationError``: excited population decays as exp(-t/T1), coherences as
  exp(-t/T2)). T2 is clipped at 2 T1, the physical bound a snapshot's fit can exceed.
- ``sx`` ``gate_length`` and ``gate_error`` of a qubit (``u2`` on the oldest devices): every
  single-qubit rotation of the circuit (an encoding rotation block, a trainable ``Rot``) compiles on
  IBM hardware to rz.sx.rz.sx.rz, rz being virtual (no duration, no error), so it costs
  :data:`PULSES_PER_ROTATION` = 2 pulses: after each rotation block, twice [relaxation over the pulse
  length, then depolarizing that brings the pulse's average gate infidelity up to its gate_error].
- ``cx`` / ``ecr`` / ``cz`` ``gate_length`` and ``gate_error`` of a coupled pair: after each CNOT,
  relaxation of both qubits over the gate's length, then two-qubit depolarizing for the rest of the
  reported error. A CNOT between chosen qubits that are not coupled is routed inside the chosen set
  (:func:`route_gate_counts`: a bridge of 4 native gates at distance 2, and a SWAP of 3 native gates
  there and back for every further step); its length is the sum of those gates' lengths and its
  error composes theirs (:func:`compose_errors`).
- ``prob_meas1_prep0``, ``prob_meas0_prep1`` of a qubit: its asymmetric readout confusion matrix
  (:func:`qshield_core.noise.confusion_matrix`).

The depolarizing probability (:func:`depolarizing_for_error`): a channel E followed by depolarizing
D_p (rho -> (1 - p) rho + p I/d) has average gate fidelity F(D_p E) = F(E) - p (F(E) - 1/d), so
matching the reported error r = 1 - F gives p = d (F(E) - (1 - r)) / (d F(E) - 1), clipped to
[0, 1] (zero where relaxation alone explains the error). This is Qiskit Aer's device noise model
(``qiskit_aer/noise/device/models.py``, ``_device_depolarizing_error``), which also reads IBM's
gate_error (randomized benchmarking's error per gate) as the average gate infidelity. F(E) comes
from the process fidelity F_pro = Tr(S_E)/d^2 as F = (d F_pro + 1)/(d + 1) (Horodecki, Horodecki and
Horodecki, PRA 60, 1888, 1999; Nielsen, Phys. Lett. A 303, 249, 2002).

Left out, as a real device has them: crosstalk and spectator (ZZ) errors (the snapshots' ``general``
``zz_``/``jq_`` numbers are not used); leakage out of the qubit subspace; coherent (unitary) errors
such as over-rotations; non-Markovian effects and drifts between calibrations; relaxation of idle
qubits while other qubits' gates run; noise on the intermediate qubits of a routed CNOT (its whole
error is charged to its two end qubits); the direction of a native two-qubit gate and the
single-qubit gates that turn an ECR or CZ into a CNOT; and relaxation during readout beyond what the
measured confusion matrix holds.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from dataclasses import asdict, dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path

import numpy as np

from .noise import KRAUS, confusion_kraus, confusion_matrix, two_qubit_depolarizing_kraus

PACKAGE = "qiskit_ibm_runtime"
EXTRA_HINT = ("real-device noise reads the calibration snapshots that qiskit-ibm-runtime ships: install the "
              "optional extra with `pip install .[devices]` (or `pip install qiskit-ibm-runtime==0.51.0`)")
PULSES_PER_ROTATION = 2
"""sx pulses per single-qubit rotation block (rz.sx.rz.sx.rz; rz is virtual)."""
PULSE_GATES = ("sx", "u2")
TWO_QUBIT_GATES = ("cx", "ecr", "cz")
MAX_AUTO_QUBITS = 5
"""Largest register whose qubits are chosen automatically (every ordering of every connected set is scored)."""
UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
DEFAULT_DEVICE = "kolkata"


class DeviceUnavailableError(RuntimeError):
    """The calibration snapshot cannot be found (package missing, unknown device) or lacks a number."""


# --------------------------------------------------------------------------- channel arithmetic


def thermal_relaxation_fidelity(t1: float, t2: float, duration: float) -> float:
    """Average gate fidelity of single-qubit thermal relaxation towards |0> over ``duration``.

    Its Pauli transfer matrix has diagonal (1, e^{-t/T2}, e^{-t/T2}, e^{-t/T1}), so F_pro =
    (1 + 2 e^{-t/T2} + e^{-t/T1}) / 4 and F = (2 F_pro + 1) / 3 = (3 + 2 e^{-t/T2} + e^{-t/T1}) / 6.
    """
    return (3 + 2 * math.exp(-duration / t2) + math.exp(-duration / t1)) / 6


def process_fidelity_from_average(fidelity: float, dim: int) -> float:
    """F_pro = ((d + 1) F - 1) / d (Horodecki et al. 1999)."""
    return ((dim + 1) * fidelity - 1) / dim


def average_from_process_fidelity(process_fidelity: float, dim: int) -> float:
    """F = (d F_pro + 1) / (d + 1)."""
    return (dim * process_fidelity + 1) / (dim + 1)


def depolarizing_for_error(error: float, relaxation_fidelity: float, dim: int) -> float:
    """Depolarizing probability p (rho -> (1 - p) rho + p I/d) that, after a channel of average gate
    fidelity ``relaxation_fidelity``, gives average gate infidelity ``error``; clipped to [0, 1].

    p = d (F_relax - (1 - r)) / (d F_relax - 1) (Qiskit Aer's ``_device_depolarizing_error``).
    """
    denominator = dim * relaxation_fidelity - 1
    if denominator <= 0:
        return 0.0
    return float(min(max(dim * (relaxation_fidelity - (1 - error)) / denominator, 0.0), 1.0))


def compose_errors(errors: list[float], dim: int) -> float:
    """Average infidelity of a sequence of gates, each taken as depolarizing: parameters multiply.

    A gate of error r is a depolarizing channel with lambda = 1 - r d / (d - 1) (rho -> lambda rho +
    (1 - lambda) I/d); a sequence has the product of the lambdas, and r = (1 - lambda)(d - 1)/d.
    """
    scale = dim / (dim - 1)
    survival = 1.0
    for error in errors:
        survival *= 1 - scale * error
    return (1 - survival) / scale


def route_gate_counts(distance: int) -> list[int]:
    """Native two-qubit gates on each edge of a path of ``distance`` edges that a CNOT between its ends takes.

    Distance 1: the native gate. Distance 2: the bridge CX(m,b) CX(a,m) CX(m,b) CX(a,m) = CNOT(a, b), two
    gates on each edge. Each further step: a SWAP (3 native gates) moving the control one edge closer
    before the bridge and one moving it back after it.
    """
    if distance < 1:
        raise ValueError(f"A route needs at least one edge, got {distance}.")
    if distance == 1:
        return [1]
    return [6] * (distance - 2) + [2, 2]


# --------------------------------------------------------------------------- the resolved numbers


@dataclass(frozen=True)
class QubitCalibration:
    """One physical qubit's numbers, in seconds and probabilities (as the snapshot gives them, T2 unclipped)."""

    qubit: int
    t1: float
    t2: float
    pulse_length: float
    pulse_error: float
    p_1_given_0: float
    p_0_given_1: float

    @property
    def t2_used(self) -> float:
        """T2 as the relaxation channel uses it: at most 2 T1."""
        return min(self.t2, 2 * self.t1)

    @property
    def pulse_depolarizing(self) -> float:
        """Depolarizing probability after each pulse's relaxation (matches the pulse's gate_error)."""
        relax = thermal_relaxation_fidelity(self.t1, self.t2_used, self.pulse_length)
        return depolarizing_for_error(self.pulse_error, relax, 2)


@dataclass(frozen=True)
class PairCalibration:
    """The CNOT between two logical wires as the chosen qubits run it: native gates on a route."""

    wires: tuple[int, int]
    route: tuple[int, ...]
    native_gates: int
    length: float
    error: float


@dataclass(frozen=True)
class DeviceNoise:
    """A device's noise on the chosen qubits, resolved to this project's channels (module docstring).

    ``qubits[i]`` is the physical qubit logical wire i runs on; ``pairs`` holds every pair of wires.
    """

    backend: str
    snapshot: str
    source: str
    pulse_gate: str
    two_qubit_gate: str
    qubits: tuple[QubitCalibration, ...]
    pairs: tuple[PairCalibration, ...]
    pulses_per_rotation: int = PULSES_PER_ROTATION

    def __post_init__(self) -> None:
        n = len(self.qubits)
        expected = {(i, j) for i in range(n) for j in range(i + 1, n)}
        if {p.wires for p in self.pairs} != expected or len(self.pairs) != len(expected):
            raise ValueError(f"Device noise for {n} qubits needs exactly one pair entry per pair of wires.")
        for q in self.qubits:
            if q.t1 <= 0 or q.t2 <= 0 or q.pulse_length < 0 or not 0 <= q.pulse_error < 1:
                raise ValueError(f"Qubit {q.qubit}: T1, T2 must be positive, the pulse length >= 0, error in [0, 1).")
            confusion_matrix(q.p_1_given_0, q.p_0_given_1)
        for p in self.pairs:
            if p.length < 0 or not 0 <= p.error < 1:
                raise ValueError(f"Pair {p.wires}: the length must be >= 0 and the error in [0, 1).")

    @property
    def n_qubits(self) -> int:
        return len(self.qubits)

    @property
    def physical_qubits(self) -> tuple[int, ...]:
        return tuple(q.qubit for q in self.qubits)

    def pair(self, control: int, target: int) -> PairCalibration:
        wires = (min(control, target), max(control, target))
        return next(p for p in self.pairs if p.wires == wires)

    def pair_depolarizing(self, control: int, target: int) -> float:
        """Two-qubit depolarizing probability after a CNOT's relaxation (matches its error)."""
        pair = self.pair(control, target)
        relax = 1.0
        for wire in pair.wires:
            q = self.qubits[wire]
            relax *= process_fidelity_from_average(thermal_relaxation_fidelity(q.t1, q.t2_used, pair.length), 2)
        return depolarizing_for_error(pair.error, average_from_process_fidelity(relax, 4), 4)

    # ----------------------------------------------------------------- channels, in application order

    def rotation_specs(self, wire: int) -> list[tuple[str, tuple[float, ...]]]:
        """The single-qubit channels after a rotation block on ``wire`` (PennyLane class names)."""
        q = self.qubits[wire]
        pulse = [("ThermalRelaxationError", (0.0, q.t1, q.t2_used, q.pulse_length))]
        if q.pulse_depolarizing > 0:
            pulse.append(("DepolarizingChannel", (0.75 * q.pulse_depolarizing,)))
        return pulse * self.pulses_per_rotation

    def pair_specs(self, control: int, target: int) -> list[tuple[str, tuple[float, ...], tuple[int, ...]]]:
        """The channels after a CNOT: (name, parameters, wires); ``TwoQubitDepolarizing`` is two-qubit."""
        length = self.pair(control, target).length
        specs = [("ThermalRelaxationError", (0.0, self.qubits[w].t1, self.qubits[w].t2_used, length), (w,))
                 for w in (control, target)]
        p = self.pair_depolarizing(control, target)
        if p > 0:
            specs.append(("TwoQubitDepolarizing", (p,), (control, target)))
        return specs

    def readout_matrix(self, wire: int) -> np.ndarray:
        q = self.qubits[wire]
        return confusion_matrix(q.p_1_given_0, q.p_0_given_1)

    @cached_property
    def rotation_kraus(self) -> list[list[list[np.ndarray]]]:
        """Per wire, the Kraus sets of :meth:`rotation_specs` (for the fast simulator)."""
        return [[KRAUS[name](*params) for name, params in self.rotation_specs(w)] for w in range(self.n_qubits)]

    def pair_kraus(self, control: int, target: int) -> list[tuple[tuple[int, ...], list[np.ndarray]]]:
        """(wires, Kraus set) of each channel of :meth:`pair_specs`."""
        return [(wires, two_qubit_depolarizing_kraus(*params) if name == "TwoQubitDepolarizing"
                 else KRAUS[name](*params)) for name, params, wires in self.pair_specs(control, target)]

    def apply_rotation(self, wires) -> None:
        """Queue the channels after a rotation block on each of ``wires`` (inside a QNode)."""
        import pennylane as qml

        for wire in wires:
            for name, params in self.rotation_specs(wire):
                getattr(qml, name)(*params, wires=wire)

    def apply_pair(self, control: int, target: int) -> None:
        import pennylane as qml

        for name, params, wires in self.pair_specs(control, target):
            if name == "TwoQubitDepolarizing":
                qml.QubitChannel(two_qubit_depolarizing_kraus(*params), wires=list(wires))
            else:
                getattr(qml, name)(*params, wires=wires[0])

    def apply_readout(self, wires) -> None:
        import pennylane as qml

        for wire in wires:
            q = self.qubits[wire]
            qml.QubitChannel(confusion_kraus(q.p_1_given_0, q.p_0_given_1), wires=wire)

    # ----------------------------------------------------------------- description and storage

    def describe(self) -> str:
        errors = [p.error for p in self.pairs]
        mean_cx = f", mean CNOT error {np.mean(errors):.2%}" if errors else ""
        return f"{self.backend} qubits {list(self.physical_qubits)} ({self.snapshot}){mean_cx}"

    def channel_table(self) -> dict:
        """The mapped channel parameters (for reports and the README): per wire and per pair."""
        wires = [{"wire": i, "qubit": q.qubit, "t1_us": q.t1 * 1e6, "t2_us": q.t2_used * 1e6,
                  "pulse_ns": q.pulse_length * 1e9, "pulse_error": q.pulse_error,
                  "pulse_depolarizing_p": q.pulse_depolarizing, "p_1_given_0": q.p_1_given_0,
                  "p_0_given_1": q.p_0_given_1} for i, q in enumerate(self.qubits)]
        pairs = [{"wires": list(p.wires), "route": list(p.route), "native_gates": p.native_gates,
                  "length_ns": p.length * 1e9, "error": p.error,
                  "depolarizing_p": self.pair_depolarizing(*p.wires)} for p in self.pairs]
        return {"wires": wires, "pairs": pairs}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, n_qubits: int | None = None,
                  pairs: list[tuple[int, int]] | None = None) -> DeviceNoise:
        """A stored (resolved) device noise, or a request ``{"backend": NAME, "qubits": [..] or None}``
        resolved from the installed snapshot for ``n_qubits`` and the circuit's CNOT ``pairs``."""
        data = dict(data)
        if data.get("qubits") and all(isinstance(q, dict) for q in data["qubits"]):
            data["qubits"] = tuple(QubitCalibration(**q) for q in data["qubits"])
            data["pairs"] = tuple(PairCalibration(**dict(p, wires=tuple(p["wires"]), route=tuple(p["route"])))
                                  for p in data.get("pairs", []))
            return cls(**data)
        unknown = sorted(set(data) - {"backend", "qubits"})
        if unknown or "backend" not in data:
            raise ValueError(f"A device request has 'backend' and optionally 'qubits' (got {sorted(data)}).")
        if n_qubits is None:
            raise ValueError("Resolving a device request needs the circuit's qubit count.")
        return device_noise(data["backend"], n_qubits, pairs or [], data.get("qubits"))


# --------------------------------------------------------------------------- snapshots


def snapshot_root() -> Path | None:
    """The installed package's ``fake_provider/backends`` folder, or None (nothing is imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "fake_provider" / "backends"
    return root if root.is_dir() else None


def available_devices() -> list[str]:
    """Names of the devices with a calibration snapshot (empty without the package)."""
    root = snapshot_root()
    return [] if root is None else sorted(p.name for p in root.iterdir() if list(p.glob("props_*.json")))


def device_key(name: str) -> str:
    """``fake_kolkata``, ``ibmq_kolkata``, ``ibm_kolkata``, ``Kolkata`` -> ``kolkata``."""
    key = name.strip().lower()
    for prefix in ("fake_", "ibmq_", "ibm_"):
        key = key.removeprefix(prefix)
    return key


def snapshot_path(name: str) -> Path:
    root = snapshot_root()
    if root is None:
        raise DeviceUnavailableError(f"No calibration snapshots: {EXTRA_HINT}.")
    folder = root / device_key(name)
    candidates = [folder / f"props_{device_key(name)}.json", *sorted(folder.glob("props_*.json"))]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise DeviceUnavailableError(f"Unknown device {name!r}; snapshots exist for: {', '.join(available_devices())}.")
    return path


def load_snapshot(name: str) -> dict:
    """A device's calibration snapshot (``BackendProperties`` JSON) as a dict."""
    return json.loads(snapshot_path(name).read_text())


def package_version() -> str:
    try:
        return f"{PACKAGE.replace('_', '-')} {metadata.version(PACKAGE.replace('_', '-'))}"
    except metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- parsing and choosing


def _values(entries: list[dict]) -> dict[str, float]:
    out = {}
    for entry in entries:
        if entry.get("value") is not None and entry.get("unit", "") in UNITS:
            out[entry["name"]] = float(entry["value"]) * UNITS[entry.get("unit", "")]
    return out


@dataclass(frozen=True)
class Calibration:
    """A snapshot's usable numbers: good qubits, their pulse gate, and the coupled pairs' best native gate."""

    backend: str
    snapshot: str
    pulse_gate: str
    two_qubit_gate: str
    qubits: dict[int, QubitCalibration]
    edges: dict[tuple[int, int], tuple[float, float]]  # sorted pair -> (length, error)

    @cached_property
    def adjacency(self) -> dict[int, set[int]]:
        adjacent: dict[int, set[int]] = {q: set() for q in self.qubits}
        for a, b in self.edges:
            adjacent[a].add(b)
            adjacent[b].add(a)
        return adjacent


def parse_properties(props: dict, snapshot: str = "") -> Calibration:
    """The numbers this mapping uses, from a ``BackendProperties`` dict (module docstring).

    Qubits missing T1, T2, a pulse gate or the readout probabilities, and gates reported with error
    >= 1 (IBM's mark of a broken gate), are left out; of a pair's two directions the lower-error one is kept.
    """
    gates = props.get("gates", [])
    names = {g.get("gate") for g in gates}
    pulse_gate = next((g for g in PULSE_GATES if g in names), None)
    two_qubit_gate = next((g for g in TWO_QUBIT_GATES if g in names), None)
    if pulse_gate is None:
        raise DeviceUnavailableError(f"Snapshot {snapshot or props.get('backend_name')} has no sx or u2 gate.")
    pulses: dict[int, tuple[float, float]] = {}
    edges: dict[tuple[int, int], tuple[float, float]] = {}
    for gate in gates:
        values = _values(gate.get("parameters", []))
        if "gate_length" not in values or not 0 <= values.get("gate_error", 1.0) < 1:
            continue
        entry = (values["gate_length"], values["gate_error"])
        if gate.get("gate") == pulse_gate and len(gate["qubits"]) == 1:
            pulses[gate["qubits"][0]] = entry
        elif gate.get("gate") == two_qubit_gate and len(gate["qubits"]) == 2:
            key = tuple(sorted(gate["qubits"]))
            if key not in edges or entry[1] < edges[key][1]:
                edges[key] = entry
    qubits = {}
    for index, entries in enumerate(props.get("qubits", [])):
        values = _values(entries)
        needed = ("T1", "T2", "prob_meas1_prep0", "prob_meas0_prep1")
        if index in pulses and all(k in values for k in needed) and values["T1"] > 0 and values["T2"] > 0:
            qubits[index] = QubitCalibration(index, values["T1"], values["T2"], *pulses[index],
                                             values["prob_meas1_prep0"], values["prob_meas0_prep1"])
    edges = {k: v for k, v in edges.items() if k[0] in qubits and k[1] in qubits}
    date = props.get("last_update_date", "")
    label = f"{snapshot or 'props'}, calibrated {date}" if date else (snapshot or "props")
    return Calibration(str(props.get("backend_name", "")), label, pulse_gate, two_qubit_gate or "", qubits, edges)


def connected_subsets(adjacency: dict[int, set[int]], size: int) -> list[tuple[int, ...]]:
    """Every connected set of ``size`` qubits, once each, as sorted tuples in sorted order."""
    level = {frozenset([q]) for q in adjacency}
    for _ in range(size - 1):
        level = {s | {n} for s in level for q in s for n in adjacency[q] if n not in s}
    return sorted(tuple(sorted(s)) for s in level)


def _simple_paths(adjacency: dict[int, set[int]], members: set[int], start: int, end: int) -> list[tuple[int, ...]]:
    paths, stack = [], [(start, (start,))]
    while stack:
        node, path = stack.pop()
        if node == end:
            paths.append(path)
            continue
        stack.extend((n, (*path, n)) for n in sorted(adjacency[node] & members) if n not in path)
    return paths


def best_route(calibration: Calibration, members: set[int], a: int, b: int) -> PairCalibration | None:
    """The cheapest route between physical qubits ``a`` and ``b`` inside ``members`` (fewest native gates,
    then lowest composed error, then the smallest path), with logical wires left as (0, 0)."""
    adjacency = calibration.adjacency
    best = None
    for path in _simple_paths(adjacency, members, a, b):
        edges = [tuple(sorted(e)) for e in itertools.pairwise(path)]
        counts = route_gate_counts(len(edges))
        errors = [calibration.edges[e][1] for e, c in zip(edges, counts, strict=True) for _ in range(c)]
        length = sum(calibration.edges[e][0] * c for e, c in zip(edges, counts, strict=True))
        key = (sum(counts), compose_errors(errors, 4), path)
        if best is None or key < best[0]:
            best = (key, PairCalibration((0, 0), path, sum(counts), length, key[1]))
    return None if best is None else best[1]


def _resolve(calibration: Calibration, physical: tuple[int, ...], source: str) -> DeviceNoise:
    members = set(physical)
    pairs = []
    for i, j in itertools.combinations(range(len(physical)), 2):
        route = best_route(calibration, members, physical[i], physical[j])
        if route is None:
            raise ValueError(f"Qubits {list(physical)} of {calibration.backend} are not connected.")
        pairs.append(PairCalibration((i, j), route.route, route.native_gates, route.length, route.error))
    return DeviceNoise(calibration.backend, calibration.snapshot, source, calibration.pulse_gate,
                       calibration.two_qubit_gate, tuple(calibration.qubits[q] for q in physical), tuple(pairs))


def choose_qubits(calibration: Calibration, n_qubits: int, pairs: list[tuple[int, int]]) -> tuple[int, ...]:
    """The connected qubits, in wire order, with the lowest error budget for the circuit's CNOT ``pairs``.

    Budget: the composed error of each CNOT of ``pairs`` (routed as :func:`best_route`) plus, per qubit,
    :data:`PULSES_PER_ROTATION` pulse errors and the mean of its two readout errors. Every ordering of
    every connected set is scored; ties go to the smallest (sorted set, ordering). Deterministic.
    """
    if n_qubits > MAX_AUTO_QUBITS:
        raise ValueError(f"Automatic qubit choice covers at most {MAX_AUTO_QUBITS} qubits; name them ('qubits').")
    best = None
    for subset in connected_subsets(calibration.adjacency, n_qubits):
        members = set(subset)
        routes = {(a, b): best_route(calibration, members, a, b).error for a, b in itertools.combinations(subset, 2)}
        single = sum(PULSES_PER_ROTATION * calibration.qubits[q].pulse_error
                     + (calibration.qubits[q].p_1_given_0 + calibration.qubits[q].p_0_given_1) / 2 for q in subset)
        for order in itertools.permutations(subset):
            cost = single + sum(routes[tuple(sorted((order[c], order[t])))] for c, t in pairs)
            key = (cost, subset, order)
            if best is None or key < best:
                best = key
    if best is None:
        raise ValueError(f"{calibration.backend} has no {n_qubits} connected qubits with complete calibration.")
    return best[2]


def device_noise_from_properties(props: dict, n_qubits: int, pairs: list[tuple[int, int]],
                                 qubits: list[int] | None = None, snapshot: str = "",
                                 source: str = "calibration snapshot") -> DeviceNoise:
    """:class:`DeviceNoise` for ``n_qubits`` wires from a ``BackendProperties`` dict.

    ``qubits`` names the physical qubit of each wire (they must be connected); by default
    :func:`choose_qubits` picks them for the circuit's CNOT ``pairs``.
    """
    calibration = parse_properties(props, snapshot)
    if qubits is None:
        physical = choose_qubits(calibration, n_qubits, pairs)
    else:
        physical = tuple(int(q) for q in qubits)
        if len(physical) != n_qubits or len(set(physical)) != n_qubits:
            raise ValueError(f"Name {n_qubits} distinct qubits for the {n_qubits} wires (got {list(physical)}).")
        missing = [q for q in physical if q not in calibration.qubits]
        if missing:
            raise ValueError(f"Qubits {missing} of {calibration.backend} lack complete calibration data.")
    return _resolve(calibration, physical, source)


def device_noise(name: str, n_qubits: int, pairs: list[tuple[int, int]],
                 qubits: list[int] | None = None) -> DeviceNoise:
    """:class:`DeviceNoise` from the installed snapshot of device ``name`` (e.g. ``kolkata``)."""
    path = snapshot_path(name)
    props = json.loads(path.read_text())
    return device_noise_from_properties(props, n_qubits, pairs, qubits, snapshot=path.name, source=package_version())


__all__ = [
    "DEFAULT_DEVICE",
    "Calibration",
    "DeviceNoise",
    "DeviceUnavailableError",
    "PairCalibration",
    "QubitCalibration",
    "available_devices",
    "choose_qubits",
    "compose_errors",
    "depolarizing_for_error",
    "device_noise",
    "device_noise_from_properties",
    "parse_properties",
    "route_gate_counts",
    "thermal_relaxation_fidelity",
]
